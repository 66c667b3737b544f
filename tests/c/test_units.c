/* Unit tests of the core's small parts: de-duplication, backoff, timestamps, codes. */
#include "../../csrc/core/internal.h"
#include "support.h"

static int free_in_cb_rc;
static void free_in_callback(void *user) { free_in_cb_rc = tw_client_free(user); }

int main(void) {
  tw_set_lws_log_level(0);
  /* de-duplication: exact, windowed, bounded */
  tw_dedupe *d = tw_dedupe_new(1000, 1000);
  ok(!tw_dedupe_seen(d, "a", 1, 0), "a new id is not a duplicate");
  ok(tw_dedupe_seen(d, "a", 1, 10), "the same id again is a duplicate");
  ok(!tw_dedupe_seen(d, "b", 1, 20), "another id is not");
  ok(!tw_dedupe_seen(d, "a", 1, 2000), "an id outside the window is forgotten");
  int dup = 0;
  char id[64];
  for (int i = 0; i < 5000; i++) {
    snprintf(id, sizeof id, "e76c6bd4-55c9-4987-8304-%012d", i);
    dup += tw_dedupe_seen(d, id, strlen(id), 3000);
  }
  ok(dup == 0, "5000 distinct ids: no false duplicates (%d)", dup);
  int again = 0;
  for (int i = 4000; i < 5000; i++) {
    snprintf(id, sizeof id, "e76c6bd4-55c9-4987-8304-%012d", i);
    again += tw_dedupe_seen(d, id, strlen(id), 3001);
  }
  ok(again == 1000, "the newest 1000 (the bound) are remembered (%d)", again);
  snprintf(id, sizeof id, "e76c6bd4-55c9-4987-8304-%012d", 10);
  ok(!tw_dedupe_seen(d, id, strlen(id), 3002), "the oldest were evicted by the bound");
  char longid[100];
  memset(longid, 'x', 99);
  longid[99] = 0;
  ok(!tw_dedupe_seen(d, longid, 99, 3003) && tw_dedupe_seen(d, longid, 99, 3004), "ids longer than a slot work");
  tw_dedupe_free(d);

  /* a big table under churn stays correct */
  d = tw_dedupe_new(1u << 16, 1u << 30);
  int bad = 0;
  for (int i = 0; i < 200000; i++) {
    snprintf(id, sizeof id, "%d", i);
    if (tw_dedupe_seen(d, id, strlen(id), (uint64_t)i)) bad++;
    if (i >= 10 && !tw_dedupe_seen(d, id, strlen(id), (uint64_t)i)) bad++;
  }
  ok(bad == 0, "200k inserts with eviction keep exact answers (%d wrong)", bad);
  /* the prefetch hint reads only inside what it is given, whatever the text */
  static const char *const hints[] = {
      "", "{", "{\"metadata\":{\"message_id\":\"", "{\"metadata\":{\"message_id\":\"\"}}",
      "{\"metadata\":{\"message_id\":\"a\\\"b\"}}", "{\"metadata\":{\"message_id\":\"abc",
      "{\"metadata\":{\"message_id\":\"0b7f3361-672b-4d39-b307-dd5b576c9b27\"}}", "\"message_id\":\"x\""};
  for (size_t i = 0; i < sizeof hints / sizeof hints[0]; i++) {
    size_t n = strlen(hints[i]);
    char *copy = malloc(n ? n : 1); /* exactly n bytes, no terminator: ASan sees any overread */
    memcpy(copy, hints[i], n);
    tw_dedupe_prefetch(d, copy, n);
    free(copy);
  }
  tw_dedupe_prefetch(NULL, "x", 1);
  ok(!tw_dedupe_seen(d, "0b7f3361-672b-4d39-b307-dd5b576c9b27", 36, 300000) &&
         tw_dedupe_seen(d, "0b7f3361-672b-4d39-b307-dd5b576c9b27", 36, 300001),
     "the prefetch hint changes no answer");
  tw_dedupe_free(d);

  /* against a model: random ids, time passing, the window and the bound both evicting */
  {
    enum { MAXN = 300, OPS = 60000 };
    int q_id[MAXN];
    uint64_t q_t[MAXN];
    int qh = 0, qn = 0, wrong = 0, dups = 0;
    uint64_t now = 0, r = 7;
    d = tw_dedupe_new(MAXN, 50);
    for (int op = 0; op < OPS; op++) {
      r = r * 6364136223846793005ull + 1442695040888963407ull;
      int k = (int)((r >> 33) % 700);
      now += (r >> 20) % 3;
      while (qn && now - q_t[qh] > 50) { qh = (qh + 1) % MAXN; qn--; }
      int want = 0;
      for (int i = 0; i < qn; i++)
        if (q_id[(qh + i) % MAXN] == k) { want = 1; break; }
      if (!want) {
        if (qn == MAXN) { qh = (qh + 1) % MAXN; qn--; }
        q_id[(qh + qn) % MAXN] = k;
        q_t[(qh + qn) % MAXN] = now;
        qn++;
      }
      snprintf(id, sizeof id, "1b7a3c2e-0000-4000-8000-%012d", k);
      int got = tw_dedupe_seen(d, id, strlen(id), now);
      dups += got;
      if (got != want) wrong++;
    }
    ok(wrong == 0 && dups > 1000, "60k random ids agree with a model of window + bound (%d wrong, %d duplicates)",
       wrong, dups);
    tw_dedupe_free(d);
  }

  /* backoff */
  uint64_t rng = 42;
  int in_range = 1;
  for (unsigned a = 0; a < 20; a++) {
    uint64_t ms = tw_backoff_ms(&rng, 0.25, 30, a);
    if (ms < 250 || ms > 30000) in_range = 0;
  }
  ok(in_range, "backoff stays within [min, max]");
  ok(tw_backoff_ms(&rng, 0.25, 30, 0) == 250, "the first retry waits exactly the minimum");
  uint64_t a1 = tw_backoff_ms(&rng, 1, 1000, 10), a2 = tw_backoff_ms(&rng, 1, 1000, 10);
  ok(a1 != a2, "backoff is jittered (%llu vs %llu)", (unsigned long long)a1, (unsigned long long)a2);

  /* timestamps */
  double t;
  ok(tw_parse_rfc3339("2019-11-16T10:11:12.634234626Z", &t) && (long long)t == 1573899072LL,
     "RFC3339 with nanoseconds parses");
  ok(tw_parse_rfc3339("2019-11-16T10:11:12+01:00", &t) && (long long)t == 1573895472LL, "offsets apply");
  ok(tw_parse_rfc3339("2019-11-16T10:11:12.634234626Z", &t) && t - 1573899072.0 > 0.6342346 &&
         t - 1573899072.0 < 0.6342347,
     "the fraction is kept to the nanosecond");
  ok(tw_parse_rfc3339("2019-11-16T10:11:12.5Z", &t) && t == 1573899072.5, "a one-digit fraction");
  ok(tw_parse_rfc3339("2019-11-16T10:11:12.12345678901234567890123Z", &t) && t - 1573899072.0 > 0.1234567 &&
         t - 1573899072.0 < 0.1234568,
     "digits beyond the eighteenth are read and ignored");
  ok(!tw_parse_rfc3339("2019-11-16T10:11:12.Z", &t), "a fraction needs a digit");
  ok(!tw_parse_rfc3339("2019-11-16 10:11:12Z", &t), "a malformed timestamp is refused");
  ok(!tw_parse_rfc3339("garbage", &t), "garbage is refused");

  /* codes */
  ok(strcmp(tw_http_code(429), "rate_limited") == 0 && strcmp(tw_http_code(503), "server_error") == 0 &&
         strcmp(tw_http_code(401), "unauthorized") == 0,
     "HTTP statuses map to stable codes");
  ok(strcmp(tw_close_status(4002), "websocket_failed_ping_pong") == 0 &&
         strcmp(tw_close_status(1000), "websocket_disconnected") == 0,
     "close codes map to shard statuses");

  /* client options are checked */
  tw_error err;
  tw_client_opts z = {0};
  z.client_id = "x";
  z.client_secret = "s";
  ok(tw_client_new(&z, &err) == NULL && strcmp(err.code, "invalid_argument") == 0 &&
         strstr(err.message, "tw_client_opts_init"),
     "options not started from the defaults are refused with a clear message (%s)", err.message);
  tw_client_opts o;
  tw_client_opts_init(&o);
  ok(o.keepalive_slack_s == 5 && o.max_age_s == 600 && o.http_retries == 4 && o.http_timeout_s == 15 &&
         o.validate_interval_s == 3600 && o.verify_interval_s == 300 && o.patch_batch == 100 &&
         o.max_message_bytes == 1u << 20 && o.dedupe_max == 1000000 && o.dedupe_window_s == 600,
     "tw_client_opts_init fills the documented defaults");
  {
    tw_client *bare = tw_client_new(&o, &err); /* a queue worker's client: no credentials */
    ok(bare != NULL, "a client without credentials can be made (%s)", bare ? "" : err.message);
    tw_error e2;
    int rc = bare ? tw_helix(bare, "GET", "/eventsub/conduits", NULL, 0, NULL, NULL, &e2) : -1;
    ok(rc == TW_EINVAL && strcmp(e2.code, "no_credentials") == 0 && strstr(e2.message, "client_id"),
       "its Helix calls fail at once with no_credentials, naming what is missing");
    if (bare) tw_client_free(bare);
  }
  o.client_id = "x";
  {
    tw_client *noauth = tw_client_new(&o, &err);
    tw_error e2;
    int rc = noauth ? tw_helix(noauth, "GET", "/eventsub/conduits", NULL, 0, NULL, NULL, &e2) : -1;
    ok(rc == TW_EINVAL && strcmp(e2.code, "no_credentials") == 0 && strstr(e2.message, "client_secret"),
       "with a client_id but neither secret nor token, Helix calls fail with no_credentials too");
    if (noauth) tw_client_free(noauth);
  }
  o.client_secret = "s";
  o.api_base = "ftp://x";
  ok(tw_client_new(&o, &err) == NULL && strstr(err.message, "api_base"), "bad base URLs are refused");
  o.api_base = NULL;
  o.keepalive_s = 5;
  ok(tw_client_new(&o, &err) == NULL && strstr(err.message, "keepalive"), "keepalive out of range is refused");
  o.keepalive_s = 0;
  o.http_retries = -1;
  ok(tw_client_new(&o, &err) == NULL && strstr(err.message, "http_retries"), "negative http_retries are refused");
  o.http_retries = 0;
  o.keepalive_slack_s = 0;
  o.max_age_s = 0;
  o.validate_interval_s = 0;
  o.verify_interval_s = 0;
  tw_client *c = tw_client_new(&o, &err);
  ok(c != NULL, "a client starts without any network (%s)", c ? "" : err.message);
  if (c) {
    tw_client_opts got;
    tw_client_get_options(c, &got);
    ok(got.http_retries == 0 && got.keepalive_slack_s == 0 && got.max_age_s == 0 && got.validate_interval_s == 0 &&
           got.verify_interval_s == 0 && got.http_timeout_s == 15 && got.client_secret == NULL,
       "0 is taken as 0 (retries %d, slack %g, max_age %g), the rest keeps its defaults", got.http_retries,
       got.keepalive_slack_s, got.max_age_s);
    free_in_cb_rc = 1;
    tw_timer_start(c, 0, 0, free_in_callback, c);
    for (int i = 0; i < 50 && free_in_cb_rc == 1; i++) tw_client_step(c, 10);
    ok(free_in_cb_rc == TW_EBUSY, "tw_client_free from inside a callback refuses (TW_EBUSY) and frees nothing");
    ok(tw_client_pollfd(c) >= 0, "the client has a pollable fd");
    tw_conduit_opts co = {.shards = -1};
    ok(tw_conduit_open(c, &co, &err) == NULL && strcmp(err.code, "invalid_argument") == 0, "negative shards refused");
    co.shards = 2;
    co.offset = 3;
    co.total = 4;
    ok(tw_conduit_open(c, &co, &err) == NULL && strstr(err.message, "exceeds total"), "offset+shards > total refused");
    ok(tw_helix(c, "GET", "no-slash", NULL, 0, NULL, NULL, &err) == TW_EINVAL, "a Helix path must start with /");
    ok(tw_client_free(c) == TW_OK, "tw_client_free after step has returned frees the client");
  }
  return done_testing();
}
