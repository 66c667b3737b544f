/* The client's one Helix rate-limit bucket, from C: mirrored from the Ratelimit-*
 * headers (tw_client_ratelimit), paced by its refill with no 429, bot calls served before
 * background ones, and the 429s that are final (no rate-limit header; the cost ceiling)
 * against the bucket 429 that is waited out. */
#include "support.h"

typedef struct call {
  int done, status, order;
  char code[32];
} call;

static int order_seq;

static void on_resp(void *user, const tw_response *r) {
  call *k = user;
  k->status = r->status;
  snprintf(k->code, sizeof k->code, "%s", r->error ? r->error->code : "");
  k->order = ++order_seq;
  k->done = 1;
}

static int one_done(void *a) { return ((call *)a)->done; }

typedef struct many {
  call *k;
  int n;
} many;
static int all_done(void *a) {
  many *m = a;
  for (int i = 0; i < m->n; i++)
    if (!m->k[i].done) return 0;
  return 1;
}

static double by_status(mock *m, const char *st) {
  cJSON *o = mock_call(m, "GET", "/helix_calls", NULL);
  cJSON *bs = o ? cJSON_GetObjectItemCaseSensitive(o, "by_status") : NULL;
  cJSON *v = bs ? cJSON_GetObjectItemCaseSensitive(bs, st) : NULL;
  double n = cJSON_IsNumber(v) ? v->valuedouble : 0;
  cJSON_Delete(o);
  return n;
}

static double total_calls(mock *m) {
  cJSON *o = mock_call(m, "GET", "/helix_calls", NULL);
  cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, "total") : NULL;
  double n = cJSON_IsNumber(v) ? v->valuedouble : 0;
  cJSON_Delete(o);
  return n;
}

static int one_call(tw_client *c, call *k, int prio, const char *method, const char *path, const char *body) {
  tw_error err;
  memset(k, 0, sizeof *k);
  if (tw_helix_prio(c, prio, method, path, body, body ? strlen(body) : 0, on_resp, k, &err) != 0) return -1;
  if (!wait_until(c, one_done, k, 20)) return -2;
  return k->status;
}

int main(void) {
  tw_set_lws_log_level(0);
  mock m = {0};
  if (mock_start(&m) != 0) {
    ok(0, "the emulator starts");
    return done_testing();
  }
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  mock_client_opts(&m, &o);
  o.http_max_inflight = 4;
  tw_client *c = tw_client_new(&o, &err);
  call k;
  tw_ratelimit rl;
  tw_client_ratelimit(c, &rl);
  ok(rl.limit == -1 && rl.remaining == -1 && rl.reset == -1, "before any answer the bucket is unknown");

  /* mirrored from the headers */
  int st = one_call(c, &k, TW_PRIO_BOT, "GET", "/eventsub/conduits", NULL);
  tw_client_ratelimit(c, &rl);
  ok(st == 200 && rl.limit == 800 && rl.remaining >= 799 && rl.remaining < 800.5 && rl.reset > 0 &&
         rl.sent[0] == 1 && rl.sent[1] == 0,
     "after one answer: limit 800, remaining %.1f, reset %lld", rl.remaining, (long long)rl.reset);
  tw_error perr;
  ok(tw_helix_prio(c, 7, "GET", "/x", NULL, 0, on_resp, &k, &perr) == TW_EINVAL &&
         strcmp(perr.code, "invalid_argument") == 0,
     "an unknown priority is refused");

  /* a 429 without rate-limit headers (too many subscriptions with that type and
   * condition) is final: one attempt, limit_exceeded */
  cJSON_Delete(mock_call(&m, "POST", "/faults",
                         "{\"helix\":[{\"status\":429,\"ratelimit_headers\":false,\"message\":"
                         "\"maximum subscriptions with type and condition exceeded\"}]}"));
  double t0 = total_calls(&m);
  st = one_call(c, &k, TW_PRIO_BACKGROUND, "GET", "/eventsub/conduits", NULL);
  ok(st == 429 && strcmp(k.code, "limit_exceeded") == 0 && total_calls(&m) == t0 + 1,
     "a 429 without Ratelimit-* headers is final: %s after %.0f call(s)", k.code, total_calls(&m) - t0);
  /* the cost ceiling with Remaining 0: final too */
  cJSON_Delete(mock_call(&m, "POST", "/faults",
                         "{\"helix\":[{\"status\":429,\"message\":\"The maximum total cost has been reached\"}]}"));
  t0 = total_calls(&m);
  st = one_call(c, &k, TW_PRIO_BOT, "GET", "/eventsub/conduits", NULL);
  ok(st == 429 && strcmp(k.code, "limit_exceeded") == 0 && total_calls(&m) == t0 + 1,
     "the cost-ceiling 429 is final even with Remaining 0 (%s)", k.code);
  tw_client_ratelimit(c, &rl);
  ok(rl.final_429 == 2, "two final 429s counted (%llu)", (unsigned long long)rl.final_429);
  /* the bucket 429 (Remaining 0) is waited out and retried */
  cJSON_Delete(mock_call(&m, "POST", "/faults", "{\"helix\":[{\"status\":429}]}"));
  t0 = total_calls(&m);
  st = one_call(c, &k, TW_PRIO_BOT, "GET", "/eventsub/conduits", NULL);
  ok(st == 200 && total_calls(&m) == t0 + 2, "a bucket 429 is waited out and retried once (%d)", st);

  /* pacing by the refill: a bucket of 120 points a minute (2 a second) set to 5 points,
   * 15 calls: no 429, and the client waited for the refill */
  cJSON_Delete(mock_call(&m, "POST", "/config", "{\"rate_limit\":120}"));
  cJSON_Delete(mock_call(&m, "POST", "/ratelimit", "{\"level\":5}"));
  one_call(c, &k, TW_PRIO_BOT, "GET", "/eventsub/conduits", NULL); /* learns the new bucket */
  double r429 = by_status(&m, "429");
  enum { NB = 15 };
  static call ks[NB + 1];
  memset(ks, 0, sizeof ks);
  for (int i = 0; i < NB; i++)
    tw_helix_prio(c, TW_PRIO_BACKGROUND, "GET", "/eventsub/conduits", NULL, 0, on_resp, &ks[i], &err);
  /* once the background calls wait for the bucket, a bot call overtakes them */
  int waiting = 0;
  for (int s = 0; s < 200 && !waiting; s++) {
    tw_client_step(c, 20);
    tw_client_ratelimit(c, &rl);
    waiting = rl.waiting[1] > 0 && ks[0].done;
  }
  int ahead = rl.waiting[1];
  tw_helix_prio(c, TW_PRIO_BOT, "GET", "/eventsub/conduits", NULL, 0, on_resp, &ks[NB], &err);
  many mm = {ks, NB + 1};
  int all = wait_until(c, all_done, &mm, 30);
  int later = 0;
  for (int i = 0; i < NB; i++) later += ks[i].order > ks[NB].order;
  int ok200 = 0;
  for (int i = 0; i <= NB; i++) ok200 += ks[i].status == 200;
  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  ok(waiting && all && ok200 == NB + 1, "15 background calls and a bot call at 2 points/s all answered 200 (%d)",
     ok200);
  ok(by_status(&m, "429") == r429, "no 429 while paced by the refill");
  ok(later >= ahead && ahead > 0, "the bot call went before the %d background calls waiting (%d answered later)",
     ahead, later);
  ok(cs.helix_rate_waits > 0, "the client waited for the refill (%llu waits)",
     (unsigned long long)cs.helix_rate_waits);
  tw_client_free(c);
  mock_stop(&m);
  return done_testing();
}
