/* test_ops_core.c - the core pieces the conduit operations added, against the emulator:
 * tw_shard_renumber, new shards connecting while the conduit grows, the lag histogram
 * of the shard stats, and a direct handover's old socket kept until traffic arrives on
 * the new one. */
#include "support.h"

typedef struct st {
  int ready, ops_done, ops_failed, notifications;
} st;

static void on_event(void *user, const tw_event *ev) {
  st *s = user;
  if (ev->type == TW_EV_READY) s->ready++;
  if (ev->type == TW_EV_NOTIFICATION) s->notifications++;
}
static void on_op(void *user, const tw_op_result *r) {
  st *s = user;
  if (r->error) s->ops_failed++;
  else s->ops_done++;
}
static int ready(void *a) { return ((st *)a)->ready > 0; }
static int op_over(void *a) { return ((st *)a)->ops_done + ((st *)a)->ops_failed > 0; }
static int want_notes;
static int notes(void *a) { return ((st *)a)->notifications >= want_notes; }


static mock *g_m;
static char g_sess[128];
/* whether the emulator lists session g_sess as connected */
static int session_connected(const char *sid) {
  cJSON *o = mock_call(g_m, "GET", "/sessions", NULL);
  int conn = -1;
  cJSON *s;
  cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(o, "sessions")) {
    cJSON *id = cJSON_GetObjectItemCaseSensitive(s, "id");
    if (cJSON_IsString(id) && strcmp(id->valuestring, sid) == 0)
      conn = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "connected"));
  }
  cJSON_Delete(o);
  return conn;
}
static double last_check;
static int old_closed(void *a) {
  (void)a;
  if (now_s() - last_check < 0.1) return 0;
  last_check = now_s();
  return session_connected(g_sess) == 0;
}

int main(void) {
  tw_set_lws_log_level(0);
  mock m = {0};
  if (mock_start(&m) != 0) {
    ok(0, "the emulator starts");
    return done_testing();
  }
  g_m = &m;
  st s = {0};
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.backoff_max_s = 1;
  emu_conduit e;
  ok(emu_conduit_open(&e, &m, &o, on_event, &s, 2, ready, &s, 10), "a 2-shard conduit is ready");
  tw_client *c = e.c;
  tw_conduit *cd = e.cd;

  /* renumber: refused onto a taken id or a bad one; moves the shard otherwise */
  tw_shard *s1 = tw_conduit_find_shard(cd, "1");
  ok(tw_shard_renumber(s1, "0", &err) == TW_EINVAL && strcmp(err.code, "busy") == 0,
     "renumber onto a shard run here is refused (%s)", err.code);
  ok(tw_shard_renumber(s1, "x", &err) == TW_EINVAL && strcmp(err.code, "invalid_argument") == 0,
     "renumber to a non-number is refused (%s)", err.code);
  ok(tw_shard_renumber(s1, "7", &err) == 0, "renumber 1 -> 7");
  ok(tw_conduit_find_shard(cd, "7") == s1 && tw_conduit_find_shard(cd, "1") == NULL &&
         strcmp(tw_shard_id(s1), "7") == 0 && tw_conduit_shard(cd, 1) == s1 && tw_conduit_nshards(cd) == 2,
     "the shard is found under its new id, in order");
  ok(tw_shard_renumber(s1, "1", &err) == 0 && tw_conduit_find_shard(cd, "1") == s1, "and back to 1");

  /* growth: the new sockets connect while Update Conduits is in flight */
  size_t first = 0;
  int rc = tw_conduit_add_shards(cd, 2, on_op, &s, &first, &err);
  const char *st2 = tw_shard_state(tw_conduit_shard(cd, first));
  ok(rc == 0 && strcmp(st2, "connecting") == 0, "a new shard is connecting as add_shards returns (%s)", st2);
  ok(wait_until(c, op_over, &s, 10) && s.ops_done == 1, "the growth completed");
  ok(strcmp(tw_shard_state(tw_conduit_shard(cd, first)), "enabled") == 0 &&
         strcmp(tw_shard_state(tw_conduit_shard(cd, first + 1)), "enabled") == 0 && tw_conduit_shard_count(cd) == 4,
     "both new shards enabled, 4 shards on Twitch (%d)", tw_conduit_shard_count(cd));

  /* subscriptions on 40 channels, then 400 events: every one counted in a lag bucket */
  char chans[40 * 8 + 8];
  int subs = subscribe_channels(c, e.id, 5100, 40, chans, sizeof chans);
  ok(subs == 40, "40 channels subscribed (%d)", subs);
  char body[1024];
  snprintf(body, sizeof body, "{\"type\":\"stream.online\",\"channels\":%s,\"count\":10}", chans);
  cJSON_Delete(mock_call(&m, "POST", "/trigger", body));
  want_notes = 400;
  int arrived = wait_until(c, notes, &s, 10);
  ok(arrived, "400 notifications arrived (%d)", s.notifications);
  uint64_t total_n = 0, total_b = 0, slow = 0;
  for (size_t i = 0; i < tw_conduit_nshards(cd); i++) {
    tw_shard_stats ss;
    tw_shard_get_stats(tw_conduit_shard(cd, i), &ss);
    total_n += ss.notifications;
    for (int k = 0; k < TW_LAG_BUCKETS; k++) total_b += ss.lag_buckets[k];
    for (int k = 13; k < TW_LAG_BUCKETS; k++) slow += ss.lag_buckets[k]; /* >= 4 s */
  }
  ok(total_n == 400 && total_b == total_n, "every notification is in one lag bucket (%llu of %llu)",
     (unsigned long long)total_b, (unsigned long long)total_n);
  ok(slow == 0, "none of them took 4 s or more on loopback (%llu)", (unsigned long long)slow);

  /* direct handover: the old socket stays until traffic arrives on the new one */
  tw_shard *s0 = tw_conduit_find_shard(cd, "0");
  snprintf(g_sess, sizeof g_sess, "%s", tw_shard_session_id(s0));
  s.ops_done = s.ops_failed = 0;
  ok(tw_shard_handover(s0, on_op, &s, &err) == 0, "handover of shard 0 started");
  ok(wait_until(c, op_over, &s, 10) && s.ops_done == 1 && strcmp(tw_shard_session_id(s0), g_sess) != 0,
     "handover completed on a new session");
  ok(session_connected(g_sess) == 1, "the old socket is still open (no traffic on the new one yet)");
  cJSON_Delete(mock_call(&m, "POST", "/trigger", body));
  last_check = 0;
  ok(wait_until(c, old_closed, NULL, 8), "traffic came: the old socket closed");
  cJSON *ss = mock_call(&m, "GET", "/sessions", NULL);
  cJSON *x;
  int clean = 0;
  cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(ss, "sessions")) {
    cJSON *id = cJSON_GetObjectItemCaseSensitive(x, "id");
    if (cJSON_IsString(id) && strcmp(id->valuestring, g_sess) == 0)
      clean = json_int(x, "close_code") == 1000 && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(x, "clean"));
  }
  cJSON_Delete(ss);
  ok(clean, "with a close handshake (1000, clean)");
  tw_client_free(c);
  mock_stop(&m);
  return done_testing();
}
