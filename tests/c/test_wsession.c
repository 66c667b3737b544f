/* The plain websocket mode from C alone (no Lua) against the emulator: a user token's
 * session, a subscription made with it, events delivered exactly once (the ledger), a
 * session_reconnect that keeps the session, a close that makes a new one, and the
 * object freed with requests in flight. */
#include "support.h"

typedef struct state {
  tw_wsession *ws;
  int connected, reconnected, disconnected, freed, errors, bad_holder;
  int notifications;
  idset seen;
  int dups_seen;
  int resp_done, resp_status;
  char sub_id[64];
} state;

static void on_event(void *user, const tw_event *ev) {
  state *st = user;
  switch (ev->type) {
  case TW_EV_WS_CONNECTED: st->connected++; break;
  case TW_EV_WS_RECONNECTED: st->reconnected++; break;
  case TW_EV_WS_DISCONNECTED: st->disconnected++; break;
  case TW_EV_FREED:
    if (ev->wsession == st->ws) st->freed++;
    break;
  case TW_EV_ERROR:
    st->errors++;
    fprintf(stderr, "# error: %s %d %s\n", ev->error->code, ev->error->status, ev->error->message);
    break;
  case TW_EV_NOTIFICATION:
    if (ev->wsession != st->ws || ev->msg->wsession != st->ws || ev->conduit || ev->shard) st->bad_holder++;
    if (!idset_add(&st->seen, ev->msg->id)) st->dups_seen++;
    st->notifications++;
    break;
  default: break;
  }
}

static void on_resp(void *user, const tw_response *r) {
  state *st = user;
  st->resp_status = r->status;
  if (r->body) {
    const char *id = tw_json_str(r->body, tw_json_getp(r->body, 0, "data.0.id"), NULL);
    if (id) snprintf(st->sub_id, sizeof st->sub_id, "%s", id);
  }
  st->resp_done = 1;
}

static int connected1(void *a) { return ((state *)a)->connected >= 1; }
static int connected2(void *a) { return ((state *)a)->connected >= 2; }
static int reconnected(void *a) { return ((state *)a)->reconnected >= 1; }
static int resp_done(void *a) { return ((state *)a)->resp_done; }
static int freed(void *a) { return ((state *)a)->freed >= 1; }
static int target;
static int got_all(void *a) { return ((state *)a)->notifications >= target; }

/* the ledger's delivered notifications of subscription sub: how many, and all in seen */
static int ledger_check(mock *m, const state *st, const char *sub, int *n) {
  cJSON *l = mock_call(m, "GET", "/ledger", NULL);
  int all = l != NULL;
  *n = 0;
  cJSON *e;
  cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(l, "entries")) {
    cJSON *s = cJSON_GetObjectItemCaseSensitive(e, "subscription_id");
    cJSON *status = cJSON_GetObjectItemCaseSensitive(e, "status");
    cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "message_id");
    if (!cJSON_IsString(s) || strcmp(s->valuestring, sub) || !cJSON_IsString(status) ||
        strcmp(status->valuestring, "delivered"))
      continue;
    (*n)++;
    if (!cJSON_IsString(id) || !idset_has(&st->seen, id->valuestring)) all = 0;
  }
  cJSON_Delete(l);
  return all;
}

static int creates(mock *m) {
  cJSON *s = mock_call(m, "GET", "/state", NULL);
  cJSON *r = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(s, "helix_calls"), "by_route");
  int n = json_int(r, "POST /eventsub/subscriptions");
  cJSON_Delete(s);
  return n < 0 ? 0 : n;
}

static int subscribe(tw_client *c, state *st, const char *user_id, const char *channel) {
  char body[512];
  snprintf(body, sizeof body,
           "{\"type\":\"channel.chat.message\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"%s\","
           "\"user_id\":\"%s\"},\"transport\":{\"method\":\"websocket\",\"session_id\":\"%s\"}}",
           channel, user_id, tw_wsession_session_id(st->ws));
  st->resp_done = 0;
  tw_error err;
  if (tw_wsession_helix(st->ws, "POST", "/eventsub/subscriptions", body, strlen(body), on_resp, st, &err) != 0)
    return 0;
  return wait_until(c, resp_done, st, 10) && st->resp_status == 202;
}

int main(void) {
  tw_set_lws_log_level(0);
  mock m = {0};
  if (mock_start(&m) != 0) {
    ok(0, "the emulator starts");
    return done_testing();
  }
  ok(1, "the emulator starts");
  cJSON *u = mock_call(&m, "POST", "/users", "{\"login\":\"cbot\",\"scopes\":[\"user:read:chat\"]}");
  cJSON *tokv = cJSON_GetObjectItemCaseSensitive(u, "access_token");
  cJSON *uidv = cJSON_GetObjectItemCaseSensitive(u, "user_id");
  ok(cJSON_IsString(tokv) && cJSON_IsString(uidv), "a user authorised the app");
  char token[128], uid[32];
  snprintf(token, sizeof token, "%s", cJSON_IsString(tokv) ? tokv->valuestring : "");
  snprintf(uid, sizeof uid, "%s", cJSON_IsString(uidv) ? uidv->valuestring : "");
  cJSON_Delete(u);

  state *st = calloc(1, sizeof *st);
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  mock_client_opts(&m, &o);
  o.backoff_min_s = 0.05;
  o.backoff_max_s = 0.5;
  tw_client *c = tw_client_new(&o, &err);
  ok(c != NULL, "client created");
  tw_client_on_event(c, on_event, st);

  tw_wsession_opts wo = {.access_token = NULL};
  ok(tw_wsession_open(c, &wo, &err) == NULL && strcmp(err.code, "invalid_argument") == 0,
     "a session needs an access token (%s)", err.code);
  wo.access_token = token;
  st->ws = tw_wsession_open(c, &wo, &err);
  ok(st->ws != NULL && strcmp(tw_wsession_state(st->ws), "validating") == 0, "session opened, validating");
  ok(wait_until(c, connected1, st, 10), "welcomed (TW_EV_WS_CONNECTED)");
  ok(strcmp(tw_wsession_state(st->ws), "connected") == 0 && tw_wsession_user_id(st->ws) &&
         strcmp(tw_wsession_user_id(st->ws), uid) == 0 && strcmp(tw_wsession_login(st->ws), "cbot") == 0 &&
         tw_wsession_nscopes(st->ws) == 1 && strcmp(tw_wsession_scope(st->ws, 0), "user:read:chat") == 0,
     "the token was validated: user id, login and scopes");
  ok(subscribe(c, st, uid, "9101") && st->sub_id[0], "a websocket subscription made with the user token");
  char sub1[64];
  snprintf(sub1, sizeof sub1, "%s", st->sub_id);

  target = 50;
  cJSON_Delete(mock_call(&m, "POST", "/faults", "{\"duplicate_next\":1}"));
  cJSON_Delete(mock_call(&m, "POST", "/trigger", "{\"type\":\"channel.chat.message\",\"channels\":[\"9101\"],\"count\":50}"));
  int w = wait_until(c, got_all, st, 10);
  ok(w, "50 notifications arrived (%d)", st->notifications);
  int n = 0;
  int all = ledger_check(&m, st, sub1, &n);
  ok(all && n >= 50, "every delivered message of the ledger was handled (%d entries)", n);
  tw_wsession_stats ss;
  tw_wsession_get_stats(st->ws, &ss);
  ok(st->dups_seen == 0 && st->notifications == 50 && ss.notifications == 50 && ss.duplicates == 1,
     "exactly once: the emulator's duplicate absorbed (%d handled, %d dup)", st->notifications, (int)ss.duplicates);
  ok(st->bad_holder == 0, "every notification names the session, no conduit or shard");

  /* session_reconnect: the same session on a new socket */
  char path[160];
  snprintf(path, sizeof path, "/sessions/%s/reconnect", tw_wsession_session_id(st->ws));
  int before = creates(&m);
  cJSON_Delete(mock_call(&m, "POST", path, "{}"));
  ok(wait_until(c, reconnected, st, 10), "TW_EV_WS_RECONNECTED");
  target = 60;
  cJSON_Delete(mock_call(&m, "POST", "/trigger", "{\"type\":\"channel.chat.message\",\"channels\":[\"9101\"],\"count\":10}"));
  ok(wait_until(c, got_all, st, 10) && st->connected == 1, "events flow on the new socket, no new session");
  ok(ledger_check(&m, st, sub1, &n) && st->dups_seen == 0, "still exactly once against the ledger");
  ok(creates(&m) == before, "no subscription created again");

  /* a close that is not a session_reconnect: a new session */
  snprintf(path, sizeof path, "/sessions/%s/close", tw_wsession_session_id(st->ws));
  cJSON_Delete(mock_call(&m, "POST", path, "{\"code\":4000}"));
  w = wait_until(c, connected2, st, 10);
  ok(w && st->disconnected == 1, "a new session after the close (%d outages)", st->disconnected);
  tw_wsession_get_stats(st->ws, &ss);
  ok(ss.sessions == 2 && ss.reconnects == 1 && ss.last_close_code == 4000, "stats: 2 sessions, 1 reconnect, 4000");

  /* closed with a request in flight: the answer still comes, then the object is freed */
  ok(subscribe(c, st, uid, "9102"), "subscribed on the new session");
  st->resp_done = 0;
  ok(tw_wsession_helix(st->ws, "GET", "/eventsub/subscriptions", NULL, 0, on_resp, st, &err) == 0, "a request in flight");
  tw_wsession_close(st->ws);
  ok(strcmp(tw_wsession_state(st->ws), "closing") == 0, "closing");
  ok(wait_until(c, freed, st, 10) && st->resp_done && st->resp_status == 200, "answered, then freed (TW_EV_FREED)");

  /* the client freed with a session validating and a request queued: nothing leaks */
  st->ws = tw_wsession_open(c, &wo, &err);
  ok(wait_until(c, connected1, st, 10) && st->ws, "another session");
  st->resp_done = 0;
  tw_wsession_helix(st->ws, "GET", "/eventsub/subscriptions", NULL, 0, on_resp, st, &err);
  tw_wsession_open(c, &wo, &err); /* validating */
  ok(tw_client_free(c) == TW_OK, "client freed with sessions open and requests in flight");
  ok(st->errors == 0, "no error events (%d)", st->errors);
  idset_free(&st->seen);
  free(st);
  mock_stop(&m);
  return done_testing();
}
