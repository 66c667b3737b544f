/* The core under faults, from C: every close code, a revoked token mid-run, 429s and
 * 5xx from Helix, malformed frames, duplicate message ids, stale timestamps. */
#include "support.h"

typedef struct state {
  int ready, enabled, disabled, reconnects, notifications;
  int enabled_at_disable; /* enables counted when the last disable came */
  int errors;
  char last_error_code[32];
  char last_disabled_status[64];
  int tokens;
  int resp_done, resp_status;
  char resp_code[32];
} state;

static void on_event(void *user, const tw_event *ev) {
  state *st = user;
  switch (ev->type) {
  case TW_EV_READY: st->ready++; break;
  case TW_EV_SHARD_ENABLED: st->enabled++; break;
  case TW_EV_SHARD_DISABLED:
    st->disabled++;
    st->enabled_at_disable = st->enabled;
    snprintf(st->last_disabled_status, sizeof st->last_disabled_status, "%s", ev->status ? ev->status : "");
    break;
  case TW_EV_RECONNECT: st->reconnects++; break;
  case TW_EV_TOKEN: st->tokens++; break;
  case TW_EV_ERROR:
    st->errors++;
    snprintf(st->last_error_code, sizeof st->last_error_code, "%s", ev->error->code);
    break;
  case TW_EV_NOTIFICATION: st->notifications++; break;
  default: break;
  }
}

static void on_resp(void *user, const tw_response *r) {
  state *st = user;
  st->resp_status = r->status;
  snprintf(st->resp_code, sizeof st->resp_code, "%s", r->error ? r->error->code : "");
  st->resp_done = 1;
}

static int is_ready(void *a) { return ((state *)a)->ready > 0; }
static int resp_done(void *a) { return ((state *)a)->resp_done; }
static int want_notes, want_errors;
static int want_disabled;
static int enabled_again(void *a) {
  /* this close's disable seen, then an enable after it (not a late one of the last close) */
  const state *st = a;
  return st->disabled >= want_disabled && st->enabled > st->enabled_at_disable;
}
static int notes(void *a) { return ((state *)a)->notifications >= want_notes; }
static int errors_seen(void *a) { return ((state *)a)->errors >= want_errors; }

static int helix_call(tw_client *c, state *st, const char *method, const char *path, const char *body) {
  tw_error err;
  st->resp_done = 0;
  if (tw_helix(c, method, path, body, body ? strlen(body) : 0, on_resp, st, &err) != 0) return -1;
  if (!wait_until(c, resp_done, st, 20)) return -2;
  return st->resp_status;
}


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
  mock_client_opts(&m, &o);
  o.backoff_min_s = 0.05;
  o.backoff_max_s = 0.5;
  tw_client *c = tw_client_new(&o, &err);
  tw_client_on_event(c, on_event, st);
  tw_conduit_opts co = {.shards = 2};
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  ok(wait_until(c, is_ready, st, 10), "a conduit of 2 shards is ready");

  /* every close code: the shard is disabled with the matching status, then reconnected
   * and reassigned */
  static const struct { int code; const char *status; } codes[] = {
      {4000, "websocket_internal_error"},   {4001, "websocket_received_inbound_traffic"},
      {4002, "websocket_failed_ping_pong"}, {4003, "websocket_connection_unused"},
      {4004, "websocket_failed_to_reconnect"}, {4005, "websocket_network_timeout"},
      {4006, "websocket_network_error"},    {4007, "websocket_invalid_reconnect"},
      {1000, "websocket_disconnected"}};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    tw_shard *s = tw_conduit_shard(cd, 1);
    char path[256], body[64], old[128];
    snprintf(old, sizeof old, "%s", tw_shard_session_id(s) ? tw_shard_session_id(s) : "");
    snprintf(path, sizeof path, "/sessions/%s/close", old);
    snprintf(body, sizeof body, "{\"code\":%d}", codes[i].code);
    int dis = st->disabled;
    want_disabled = dis + 1;
    cJSON_Delete(mock_call(&m, "POST", path, body));
    int back = wait_until(c, enabled_again, st, 10);
    ok(back && st->disabled == dis + 1 && strcmp(st->last_disabled_status, codes[i].status) == 0 &&
           strcmp(tw_shard_state(s), "enabled") == 0 && strcmp(tw_shard_session_id(s), old) != 0,
       "close %d: shard disabled as %s, then reconnected and reassigned", codes[i].code,
       st->last_disabled_status);
  }

  /* a revoked token mid-run: the next Helix call gets a new token and succeeds */
  int tokens = st->tokens;
  cJSON_Delete(mock_call(&m, "POST", "/tokens/revoke", "{\"all\":true}"));
  int status = helix_call(c, st, "GET", "/eventsub/conduits", NULL);
  ok(status == 200 && st->tokens == tokens + 1, "a 401 mid-run fetched a new token and the call succeeded (%d)",
     status);

  /* 429 and 5xx are absorbed */
  cJSON_Delete(mock_call(&m, "POST", "/faults", "{\"helix\":[{\"status\":429,\"count\":2}]}"));
  status = helix_call(c, st, "GET", "/eventsub/conduits", NULL);
  ok(status == 200, "two 429s in a row are waited out (%d)", status);
  cJSON_Delete(mock_call(&m, "POST", "/faults", "{\"helix\":[{\"status\":500,\"count\":1},{\"status\":503,\"count\":1}]}"));
  status = helix_call(c, st, "GET", "/eventsub/conduits", NULL);
  ok(status == 200, "a 500 then a 503 are retried (%d)", status);
  /* on an endpoint the conduit's own background calls (Get Conduit Shards, whose path
   * the fault's prefix would match) do not use, so they cannot take one of the five */
  cJSON_Delete(mock_call(&m, "POST", "/faults",
                         "{\"helix\":[{\"status\":503,\"count\":5,\"path\":\"/eventsub/subscriptions\"}]}"));
  status = helix_call(c, st, "GET", "/eventsub/subscriptions", NULL);
  ok(status == 503 && strcmp(st->resp_code, "server_error") == 0,
     "503 on the first try and all 4 retries ends in a clear error (%d %s)", status, st->resp_code);
  status = helix_call(c, st, "GET", "/eventsub/conduits", NULL);
  ok(status == 200, "the next call succeeds (%d)", status);

  /* subscriptions for events */
  char body[512];
  snprintf(body, sizeof body,
           "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"77\"},"
           "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
           tw_conduit_id(cd));
  ok(helix_call(c, st, "POST", "/eventsub/subscriptions", body) == 202, "subscribed (%d)", st->resp_status);

  /* a duplicate message id is delivered once */
  cJSON_Delete(mock_call(&m, "POST", "/faults", "{\"duplicate_next\":3}"));
  int n0 = st->notifications;
  cJSON *t = mock_call(&m, "POST", "/trigger", "{\"type\":\"stream.online\",\"channels\":[\"77\"],\"count\":5}");
  int produced = json_int(t, "produced");
  cJSON_Delete(t);
  want_notes = n0 + produced;
  wait_until(c, notes, st, 5);
  for (int i = 0; i < 10; i++) tw_client_step(c, 20); /* room for a wrong extra delivery */
  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  ok(st->notifications - n0 == produced && cs.duplicates >= 3, "5 events with 3 sent twice: 5 delivered, %llu dropped as duplicates",
     (unsigned long long)cs.duplicates);

  /* a stale timestamp is reported, not delivered */
  cJSON_Delete(mock_call(&m, "POST", "/faults", "{\"stale_next\":1}"));
  n0 = st->notifications;
  want_errors = st->errors + 1;
  cJSON_Delete(mock_call(&m, "POST", "/trigger", "{\"type\":\"stream.online\",\"channels\":[\"77\"],\"count\":1}"));
  ok(wait_until(c, errors_seen, st, 5) && strcmp(st->last_error_code, "stale_message") == 0 && st->notifications == n0,
     "a message 11 minutes old is reported as %s and not delivered", st->last_error_code);

  /* a malformed frame is reported and survived */
  want_errors = st->errors + 1;
  snprintf(body, sizeof body, "{\"malformed_frame\":{\"session_id\":\"%s\"}}",
           tw_shard_session_id(tw_conduit_shard(cd, 0)));
  cJSON_Delete(mock_call(&m, "POST", "/faults", body));
  ok(wait_until(c, errors_seen, st, 5) && strcmp(st->last_error_code, "bad_message") == 0,
     "a malformed frame is reported (%s)", st->last_error_code);
  n0 = st->notifications;
  cJSON_Delete(mock_call(&m, "POST", "/trigger", "{\"type\":\"stream.online\",\"channels\":[\"77\"],\"count\":3}"));
  want_notes = n0 + 3;
  ok(wait_until(c, notes, st, 5), "events still flow after it");

  tw_client_free(c);
  free(st);
  mock_stop(&m);
  return done_testing();
}
