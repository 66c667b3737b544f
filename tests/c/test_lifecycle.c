/* The shard lifecycle driven through the C API alone (no Lua) against the emulator,
 * under a steady stream: add shards to a running conduit, release two, point one shard
 * at another's socket, hand a socket over, hold a shard. The emulator's ledger shows
 * every event produced was delivered and handled exactly once. */
#include "support.h"

typedef struct state {
  int ready, enabled, disabled, released, freed_shards, lost, errors;
  int notifications, dups;
  idset ids; /* message ids handled */
  int ops_done, ops_failed;
  size_t op_shards;
  tw_shard *last_disabled;
} state;

static void on_event(void *user, const tw_event *ev) {
  state *st = user;
  switch (ev->type) {
  case TW_EV_READY: st->ready++; break;
  case TW_EV_SHARD_ENABLED: st->enabled++; break;
  case TW_EV_SHARD_DISABLED:
    st->disabled++;
    st->last_disabled = ev->shard;
    break;
  case TW_EV_SHARD_RELEASED: st->released++; break;
  case TW_EV_SHARD_LOST:
    st->lost++;
    printf("# lost: %s\n", ev->error ? ev->error->message : "?");
    break;
  case TW_EV_FREED:
    if (ev->shard) st->freed_shards++;
    break;
  case TW_EV_ERROR:
    st->errors++;
    fprintf(stderr, "# error: %s %d %s\n", ev->error->code, ev->error->status, ev->error->message);
    break;
  case TW_EV_NOTIFICATION:
    if (!idset_add(&st->ids, ev->msg->id)) st->dups++;
    else st->notifications++;
    if (ev->msg->transport != TW_TRANSPORT_WEBSOCKET) st->errors++;
    break;
  default: break;
  }
}

static void on_op(void *user, const tw_op_result *r) {
  state *st = user;
  if (r->error) {
    st->ops_failed++;
    fprintf(stderr, "# op failed: %s %s\n", r->error->code, r->error->message);
  } else {
    st->ops_done++;
    st->op_shards += r->nshards;
  }
}

static int target_ops, target_n;
static int ready(void *a) { return ((state *)a)->ready > 0; }
static int ops_reached(void *a) { return ((state *)a)->ops_done + ((state *)a)->ops_failed >= target_ops; }
static int notes_reached(void *a) { return ((state *)a)->notifications >= target_n; }
static int disabled_reached(void *a) { return ((state *)a)->disabled >= target_n; }
static tw_shard *watched;
static int watched_enabled(void *a) { (void)a; return strcmp(tw_shard_state(watched), "enabled") == 0; }
static int watched_connecting(void *a) { (void)a; return strcmp(tw_shard_state(watched), "idle") != 0; }


/* the stream is over once the ledger holds all of it, none pending, and all of it handled
 * (the ledger is read at most every 200 ms) */
static mock *g_mock;
static double last_poll;
static int stream_settled(void *a) {
  state *st = a;
  if (now_s() - last_poll < 0.2) return 0;
  last_poll = now_s();
  cJSON *l = mock_call(g_mock, "GET", "/ledger", NULL);
  int done = json_int(l, "pending") == 0 && json_int(l, "delivered") + json_int(l, "dropped") >= 7200 &&
             st->notifications >= json_int(l, "delivered");
  cJSON_Delete(l);
  return done;
}

static int mock_shard_count(mock *m, const char *cid) {
  int n = -1;
  cJSON *st = mock_call(m, "GET", "/state", NULL);
  cJSON *c;
  cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(st, "conduits")) {
    cJSON *cidv = cJSON_GetObjectItemCaseSensitive(c, "id");
    if (cJSON_IsString(cidv) && strcmp(cidv->valuestring, cid) == 0) n = json_int(c, "shard_count");
  }
  cJSON_Delete(st);
  return n;
}

typedef struct resp {
  int status, done;
} resp;
static void on_resp(void *user, const tw_response *r) {
  resp *x = user;
  x->status = r->status;
  x->done = 1;
}
static int resp_done(void *a) { return ((resp *)a)->done; }

int main(void) {
  tw_set_lws_log_level(0);
  mock m = {0};
  if (mock_start(&m) != 0) {
    ok(0, "the emulator starts");
    return done_testing();
  }
  state *st = calloc(1, sizeof *st);
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.backoff_max_s = 1;
  emu_conduit e;
  int up = emu_conduit_open(&e, &m, &o, on_event, st, 4, ready, st, 10);
  tw_client *c = e.c;
  tw_conduit *cd = e.cd;
  ok(c != NULL, "client created");
  ok(up, "a 4-shard conduit is ready");
  const char *cidbuf = e.id;

  /* 100 channels subscribed over the conduit */
  char chans[100 * 8 + 8];
  int subs = subscribe_channels(c, cidbuf, 3000, 100, chans, sizeof chans);
  ok(subs == 100, "100 channels subscribed (%d)", subs);

  /* a steady stream: 600 events/s for 12 s, over the 100 channels */
  char body[2048];
  snprintf(body, sizeof body, "{\"type\":\"stream.online\",\"channels\":%s,\"rate\":600,\"count\":7200}", chans);
  cJSON *sr = mock_call(&m, "POST", "/stream", body);
  ok(sr != NULL, "a stream of 7200 events at 600/s started");
  cJSON_Delete(sr);
  target_n = 300;
  int flowing = wait_until(c, notes_reached, st, 10);
  ok(flowing, "events flow (%d)", st->notifications);

  /* add 3 shards: the conduit grows on Twitch, they are enabled */
  size_t first = 0;
  int rc = tw_conduit_add_shards(cd, 3, on_op, st, &first, &err);
  ok(rc == 0 && tw_conduit_nshards(cd) == 7, "add_shards started: 7 shards run here now (%zu)", tw_conduit_nshards(cd));
  target_ops = 1;
  ok(wait_until(c, ops_reached, st, 10) && st->ops_done == 1 && st->op_shards == 3, "add completed with the 3 new shards");
  ok(mock_shard_count(&m, cidbuf) == 7, "the conduit has 7 shards on Twitch (%d)", mock_shard_count(&m, cidbuf));
  int enabled_new = 0;
  for (size_t i = first; i < first + 3; i++)
    enabled_new += strcmp(tw_shard_state(tw_conduit_shard(cd, i)), "enabled") == 0;
  ok(enabled_new == 3, "the 3 new shards are enabled (%d)", enabled_new);
  ok(tw_conduit_add_shards(cd, 0, NULL, NULL, NULL, &err) == TW_EINVAL && strcmp(err.code, "invalid_argument") == 0,
     "add_shards(0) is refused: %s", err.code);

  /* release shard 1 (old) and shard 5 (new) */
  tw_shard *s1 = tw_conduit_find_shard(cd, "1"), *s5 = tw_conduit_find_shard(cd, "5");
  char sess1[128], sess5[128];
  snprintf(sess1, sizeof sess1, "%s", tw_shard_session_id(s1));
  snprintf(sess5, sizeof sess5, "%s", tw_shard_session_id(s5));
  tw_client_stats cs0;
  tw_client_get_stats(c, &cs0);
  ok(tw_shard_release(s1, on_op, st, &err) == 0 && tw_shard_release(s5, on_op, st, &err) == 0, "two releases started");
  ok(tw_shard_release(s1, on_op, st, &err) != 0 && strcmp(err.code, "closed") == 0, "a second release is refused (%s)",
     err.code);
  target_ops = 3;
  ok(wait_until(c, ops_reached, st, 10) && st->ops_done == 3, "both releases completed");
  ok(st->released == 2 && st->freed_shards == 2, "shard_released twice, two shards freed (%d, %d)", st->released,
     st->freed_shards);
  ok(tw_conduit_nshards(cd) == 5 && !tw_conduit_find_shard(cd, "1") && !tw_conduit_find_shard(cd, "5"),
     "5 shards run here, 1 and 5 are gone");
  char now1[128];
  mock_shard_session(&m, cidbuf, "1", now1, sizeof now1);
  ok(strcmp(now1, sess1) == 0, "Twitch keeps released shard 1 on its closed session (%s)", now1);

  /* point shard 4 at shard 6's socket: it gives up its own */
  tw_shard *s4 = tw_conduit_find_shard(cd, "4"), *s6 = tw_conduit_find_shard(cd, "6");
  ok(tw_shard_point_at(s4, s6, on_op, st, &err) == 0, "point_at started");
  target_ops = 4;
  ok(wait_until(c, ops_reached, st, 10) && st->ops_done == 4, "point_at completed");
  char on4[128];
  mock_shard_session(&m, cidbuf, "4", on4, sizeof on4);
  ok(strcmp(on4, tw_shard_session_id(s6)) == 0, "Twitch sends shard 4's events to shard 6's session");
  ok(tw_shard_held(s4), "a pointed shard is held");

  /* hand shard 0's socket over to a new one */
  tw_shard *s0 = tw_conduit_find_shard(cd, "0");
  char before0[128];
  snprintf(before0, sizeof before0, "%s", tw_shard_session_id(s0));
  ok(tw_shard_handover(s0, on_op, st, &err) == 0, "handover started");
  ok(tw_shard_handover(s0, on_op, st, &err) == TW_EINVAL && strcmp(err.code, "busy") == 0,
     "a second operation on the shard is refused (%s)", err.code);
  target_ops = 5;
  ok(wait_until(c, ops_reached, st, 10) && st->ops_done == 5, "handover completed");
  char on0[128];
  mock_shard_session(&m, cidbuf, "0", on0, sizeof on0);
  ok(strcmp(tw_shard_session_id(s0), before0) != 0 && strcmp(on0, tw_shard_session_id(s0)) == 0,
     "shard 0 is on a new session, on Twitch too");

  /* hold shard 2: when its socket ends it is not reconnected until it is let go */
  tw_shard *s2 = tw_conduit_find_shard(cd, "2");
  ok(tw_shard_hold(s2, 1) == 0 && tw_shard_held(s2), "shard 2 held");
  int dis_before = st->disabled;
  char path[256];
  snprintf(path, sizeof path, "/sessions/%s/close", tw_shard_session_id(s2));
  cJSON_Delete(mock_call(&m, "POST", path, "{\"code\":4000}"));
  target_n = dis_before + 1;
  ok(wait_until(c, disabled_reached, st, 5) && st->last_disabled == s2, "held shard 2 disabled once");
  ok(strcmp(tw_shard_state(s2), "idle") == 0, "and left idle (%s)", tw_shard_state(s2));
  watched = s2;
  ok(!wait_until(c, watched_connecting, st, 1.5), "not reconnected while held (%s)", tw_shard_state(s2));
  ok(st->disabled == dis_before + 1, "one shard_disabled for it (%d)", st->disabled - dis_before);
  ok(tw_shard_hold(s2, 0) == 0, "let go");
  ok(wait_until(c, watched_enabled, st, 10), "then reconnected and enabled again");

  /* another owner points shard 3 elsewhere: verification reports it lost, then (the
   * default policy) points it back at this process's socket */
  tw_shard *s3 = tw_conduit_find_shard(cd, "3");
  char own3[128], patch[512];
  snprintf(own3, sizeof own3, "%s", tw_shard_session_id(s3));
  snprintf(patch, sizeof patch,
           "{\"conduit_id\":\"%s\",\"shards\":[{\"id\":\"3\",\"transport\":{\"method\":\"websocket\","
           "\"session_id\":\"%s\"}}]}",
           cidbuf, tw_shard_session_id(s6));
  resp x = {0};
  tw_helix(c, "PATCH", "/eventsub/conduits/shards", patch, strlen(patch), on_resp, &x, &err);
  int repointed = wait_until(c, resp_done, &x, 5) && x.status == 202;
  ok(repointed, "shard 3 repointed from outside (%d)", x.status);
  int lost_before = st->lost;
  ok(tw_conduit_verify(cd, on_op, st, &err) == 0, "verification asked for");
  target_ops = 6;
  ok(wait_until(c, ops_reached, st, 10) && st->ops_done == 6, "verification completed");
  ok(st->lost == lost_before + 1, "shard 3 reported lost once (%d)", st->lost - lost_before);
  watched = s3;
  char on3[128] = "";
  for (int i = 0; i < 100 && strcmp(on3, own3) != 0; i++) {
    tw_client_step(c, 50);
    mock_shard_session(&m, cidbuf, "3", on3, sizeof on3);
  }
  ok(strcmp(on3, own3) == 0, "and reassigned to its own session on Twitch");

  /* the rest of the stream, then the ledger */
  g_mock = &m;
  ok(wait_until(c, stream_settled, st, 30), "the stream ended and the ledger settled");
  cJSON *sg = mock_call(&m, "GET", "/ledger", NULL);
  int delivered = json_int(sg, "delivered"), dropped = json_int(sg, "dropped");
  cJSON *le;
  cJSON_ArrayForEach(le, cJSON_GetObjectItemCaseSensitive(sg, "entries")) {
    cJSON *stv = cJSON_GetObjectItemCaseSensitive(le, "status");
    if (cJSON_IsString(stv) && strcmp(stv->valuestring, "delivered") != 0) {
      char *txt = cJSON_PrintUnformatted(le);
      printf("# not delivered: %s\n", txt);
      free(txt);
    }
  }
  cJSON_Delete(sg);
  ok(delivered == 7200 && dropped == 0, "ledger: all 7200 produced events delivered, none dropped (%d, %d)", delivered,
     dropped);
  ok(st->notifications == delivered && st->dups == 0, "each handled exactly once (%d handled, %d duplicates)",
     st->notifications, st->dups);
  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  ok(cs.duplicates < 50, "the core dropped %llu doubles (a few are the overlap of a handover)",
     (unsigned long long)cs.duplicates);
  ok(st->errors == 0, "no errors reported (%d)", st->errors);
  ok(st->lost == 1, "verification found nothing else lost (%d)", st->lost);
  cJSON *ms = mock_call(&m, "GET", "/state", NULL);
  int gets = json_int(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ms, "helix_calls"), "by_route"),
                      "GET /eventsub/conduits/shards");
  cJSON_Delete(ms);
  ok(gets >= 2, "verifications read Get Conduit Shards (%d reads)", gets);

  tw_conduit_close(cd);
  for (int i = 0; i < 20; i++) tw_client_step(c, 10);
  tw_client_free(c);
  idset_free(&st->ids);
  free(st);
  mock_stop(&m);
  return done_testing();
}
