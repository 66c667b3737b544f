/* The core driven from C alone (no Lua) against the emulator: a conduit of 4 shards,
 * subscriptions, triggered events delivered exactly once, a killed socket recovered. */
#include "support.h"

typedef struct state {
  tw_client *c;
  int ready, enabled, disabled, errors, reconnects;
  int notifications;
  char ids[4096][40];
  int dups_seen;
  int resp_status;
  int resp_done;
  char resp_body[4096];
} state;

static void on_event(void *user, const tw_event *ev) {
  state *st = user;
  switch (ev->type) {
  case TW_EV_READY: st->ready++; break;
  case TW_EV_SHARD_ENABLED: st->enabled++; break;
  case TW_EV_SHARD_DISABLED: st->disabled++; break;
  case TW_EV_RECONNECT: st->reconnects++; break;
  case TW_EV_ERROR: st->errors++; fprintf(stderr, "# error: %s %d %s\n", ev->error->code, ev->error->status, ev->error->message); break;
  case TW_EV_NOTIFICATION: {
    for (int i = 0; i < st->notifications && i < 4096; i++)
      if (strcmp(st->ids[i], ev->msg->id) == 0) st->dups_seen++;
    if (st->notifications < 4096) snprintf(st->ids[st->notifications], 40, "%s", ev->msg->id);
    st->notifications++;
    break;
  }
  default: break;
  }
}

static void on_resp(void *user, const tw_response *r) {
  state *st = user;
  st->resp_status = r->status;
  snprintf(st->resp_body, sizeof st->resp_body, "%.*s", (int)r->raw_len, r->raw ? r->raw : "");
  st->resp_done = 1;
}

static int is_ready(void *a) { return ((state *)a)->ready > 0; }
static int resp_done(void *a) { return ((state *)a)->resp_done; }
static int target;
static int got_all(void *a) { return ((state *)a)->notifications >= target; }
static int got_disabled_and_back(void *a) { state *st = a; return st->disabled >= 1 && st->enabled >= 5; }


int main(void) {
  tw_set_lws_log_level(0);
  mock m = {0};
  if (mock_start(&m) != 0) {
    ok(0, "the emulator starts");
    return done_testing();
  }
  ok(1, "the emulator starts");
  state *st = calloc(1, sizeof *st);
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  mock_client_opts(&m, &o);
  tw_client *c = tw_client_new(&o, &err);
  ok(c != NULL, "client created");
  st->c = c;
  tw_client_on_event(c, on_event, st);

  tw_conduit_opts co = {.shards = 4};
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  ok(cd != NULL, "conduit open started");
  ok(wait_until(c, is_ready, st, 10), "conduit ready: all 4 shards enabled");
  ok(st->enabled == 4, "4 shard_enabled events (%d)", st->enabled);
  ok(tw_conduit_id(cd) != NULL && tw_conduit_shard_count(cd) == 4, "conduit id known, 4 shards");
  cJSON *state_ = mock_call(&m, "GET", "/state", NULL);
  cJSON *calls = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(state_, "helix_calls"), "by_route");
  ok(json_int(calls, "PATCH /eventsub/conduits/shards") == 1, "the 4 shards were assigned in one PATCH (%d)",
     json_int(calls, "PATCH /eventsub/conduits/shards"));
  cJSON_Delete(state_);

  /* subscribe 10 channels to stream.online */
  int subs_ok = 0;
  for (int ch = 1; ch <= 10; ch++) {
    char body[512];
    snprintf(body, sizeof body,
             "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"%d\"},"
             "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
             1000 + ch, tw_conduit_id(cd));
    st->resp_done = 0;
    tw_helix(c, "POST", "/eventsub/subscriptions", body, strlen(body), on_resp, st, &err);
    if (wait_until(c, resp_done, st, 5) && st->resp_status == 202) subs_ok++;
  }
  ok(subs_ok == 10, "10 subscriptions created with the conduit transport (%d)", subs_ok);

  cJSON *t = mock_call(&m, "POST", "/trigger",
                       "{\"type\":\"stream.online\",\"channels\":[\"1001\",\"1002\",\"1003\",\"1004\",\"1005\","
                       "\"1006\",\"1007\",\"1008\",\"1009\",\"1010\"],\"count\":20}");
  int produced = json_int(t, "produced");
  cJSON_Delete(t);
  ok(produced == 200, "the emulator produced 200 notifications (%d)", produced);
  target = produced;
  int all = wait_until(c, got_all, st, 10);
  ok(all, "all %d notifications handled (%d)", produced, st->notifications);
  ok(st->dups_seen == 0, "none twice");

  /* kill one shard's socket: it is reconnected and reassigned */
  tw_shard *s0 = tw_conduit_shard(cd, 0);
  char sid[128];
  snprintf(sid, sizeof sid, "%s", tw_shard_session_id(s0) ? tw_shard_session_id(s0) : "");
  char path[256];
  snprintf(path, sizeof path, "/sessions/%s/close", sid);
  cJSON_Delete(mock_call(&m, "POST", path, "{\"code\":4006}"));
  ok(wait_until(c, got_disabled_and_back, st, 10), "a closed shard is disabled, reconnected and enabled again");
  ok(tw_shard_session_id(s0) && strcmp(tw_shard_session_id(s0), sid) != 0, "with a new session");
  tw_shard_stats ss;
  tw_shard_get_stats(s0, &ss);
  ok(ss.last_close_code == 4006 && ss.connects == 2, "close code recorded (%d), two connects (%llu)",
     ss.last_close_code, (unsigned long long)ss.connects);

  /* session_reconnect under a steady stream: nothing lost, nothing doubled */
  int before = st->notifications;
  cJSON *sr = mock_call(&m, "POST", "/stream",
                        "{\"type\":\"stream.online\",\"channels\":[\"1001\",\"1002\",\"1003\",\"1004\","
                        "\"1005\",\"1006\",\"1007\",\"1008\",\"1009\",\"1010\"],\"rate\":400,\"count\":800}");
  ok(sr != NULL, "a steady stream started");
  cJSON_Delete(sr);
  target = before + 100;
  wait_until(c, got_all, st, 10);
  int reconnects_before = st->reconnects;
  for (size_t i = 0; i < tw_conduit_nshards(cd); i++) {
    tw_shard *sh = tw_conduit_shard(cd, i);
    snprintf(path, sizeof path, "/sessions/%s/reconnect", tw_shard_session_id(sh));
    cJSON_Delete(mock_call(&m, "POST", path, "{}"));
  }
  target = before + 800;
  all = wait_until(c, got_all, st, 15);
  ok(all, "all 800 streamed notifications handled (%d)", st->notifications - before);
  ok(st->reconnects - reconnects_before == 4, "4 shards went through session_reconnect (%d)",
     st->reconnects - reconnects_before);
  ok(st->dups_seen == 0, "still none twice");
  cJSON *led = mock_call(&m, "GET", "/ledger", NULL);
  int delivered = json_int(led, "delivered"), dropped = json_int(led, "dropped");
  cJSON_Delete(led);
  ok(delivered == st->notifications && dropped == 0, "ledger: %d delivered, %d dropped; handled %d", delivered,
     dropped, st->notifications);

  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  ok(cs.notifications == (uint64_t)st->notifications, "client counters agree (%llu)", (unsigned long long)cs.notifications);
  tw_conduit_close(cd);
  for (int i = 0; i < 20; i++) tw_client_step(c, 10);
  tw_client_free(c);
  ok(1, "client freed");
  free(st);
  mock_stop(&m);
  return done_testing();
}
