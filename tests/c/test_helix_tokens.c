/* Helix requests made with a caller's own token (the websocket mode's user token) next
 * to the app's: a 429 to a user-token request is that user's bucket, so it neither holds
 * nor empties the app's mirrored bucket; a server message quoting the user's token is
 * starred out of the error like the app's own secrets. The user token's own OAuth
 * answers (validation) are capped like the app's: a 200 KB validation answer is
 * refused with response_too_large, not buffered and believed. And the other way round:
 * while the app's bucket is held after its 429, a user-token request (not the app's
 * bucket) is still sent. */
#include "support.h"
#include "internal.h"
#include "hostile.h"

typedef struct call {
  int done, status;
  char code[32], msg[512];
} call;

static void on_resp(void *user, const tw_response *r) {
  call *k = user;
  k->status = r->status;
  snprintf(k->code, sizeof k->code, "%s", r->error ? r->error->code : "");
  snprintf(k->msg, sizeof k->msg, "%s", r->error ? r->error->message : "");
  k->done = 1;
}
static int one_done(void *a) { return ((call *)a)->done; }

/* an id server whose validation answer is 200 KB of valid JSON */
static void big_validate(int fd, const char *req, void *arg) {
  const char *cid = arg;
  if (!strstr(req, "/validate")) {
    hs_json(fd, 404, "{\"message\":\"not found\"}");
    return;
  }
  size_t pad = 200u << 10;
  char *body = malloc(pad + 512);
  int n = snprintf(body, 512, "{\"client_id\":\"%s\",\"login\":\"big\",\"user_id\":\"77\",\"scopes\":[],"
                   "\"expires_in\":3600,\"pad\":\"", cid);
  memset(body + n, 'a', pad);
  memcpy(body + n + pad, "\"}", 3);
  char head[256];
  int hn = snprintf(head, sizeof head,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n",
                    strlen(body));
  hs_write(fd, head, (size_t)hn);
  hs_write(fd, body, strlen(body));
  free(body);
}

/* a Helix whose app bucket is empty for 30 s: the conduits endpoint answers 429, the
 * subscriptions endpoint (called with a user's token here) 200 */
static void held_api(int fd, const char *req, void *arg) {
  (void)arg;
  if (strstr(req, "/token")) {
    hs_json(fd, 200, "{\"access_token\":\"apptoken12345\",\"expires_in\":3600,\"token_type\":\"bearer\"}");
  } else if (strstr(req, "/validate")) {
    hs_json(fd, 200, "{\"client_id\":\"x\",\"expires_in\":3600}");
  } else if (strstr(req, "/eventsub/conduits")) {
    hs_printf(fd,
              "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nConnection: close\r\n"
              "Ratelimit-Limit: 800\r\nRatelimit-Remaining: 0\r\nRatelimit-Reset: %lld\r\nContent-Length: 48\r\n\r\n"
              "{\"error\":\"Too Many Requests\",\"status\":429,\"x\":1}",
              (long long)time(NULL) + 30);
  } else {
    hs_json(fd, 200, "{\"data\":[],\"total\":0}");
  }
}

typedef struct held {
  tw_client *c;
} held;
static int app_held(void *a) {
  tw_ratelimit rl;
  tw_client_ratelimit(((held *)a)->c, &rl);
  return rl.hold_until > 0;
}

static void app_hold(void) {
  hserver hs;
  if (hs_start(&hs, held_api, NULL) != 0) {
    ok(0, "the held Helix starts");
    return;
  }
  char api[128], auth[128];
  snprintf(api, sizeof api, "http://%s/helix", hs.base);
  snprintf(auth, sizeof auth, "http://%s/oauth2", hs.base);
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = "x";
  o.client_secret = "secretsecret";
  o.api_base = api;
  o.auth_base = auth;
  o.eventsub_ws = "ws://127.0.0.1:1/ws";
  o.validate_interval_s = 0;
  tw_client *c = tw_client_new(&o, &err);
  call ka = {0}, ku = {0};
  held h = {c};
  tw_helix(c, "GET", "/eventsub/conduits", NULL, 0, on_resp, &ka, &err);
  ok(wait_until(c, app_held, &h, 10), "the app's request got a bucket 429: the app's bucket is held");
  ok(tw_helix_with_token(c, "usertoken12345", "GET", "/eventsub/subscriptions", NULL, 0, on_resp, &ku, &err) == 0,
     "a user-token request queued meanwhile");
  ok(wait_until(c, one_done, &ku, 5) && ku.status == 200 && !ka.done,
     "it is answered while the app's request still waits for the app's reset (%d)", ku.status);
  tw_client_free(c);
  hs_stop(&hs);
}

static int ws_settled(void *a) {
  tw_wsession *ws = a;
  return tw_wsession_error(ws) != NULL || strcmp(tw_wsession_state(ws), "validating") != 0;
}

static void oauth_cap(const mock *m) {
  hserver hs;
  if (hs_start(&hs, big_validate, (void *)m->client_id) != 0) {
    ok(0, "the hostile id server starts");
    return;
  }
  char auth[128];
  snprintf(auth, sizeof auth, "http://%s/oauth2", hs.base);
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = m->client_id;
  o.client_secret = m->client_secret;
  o.api_base = m->api_base;
  o.auth_base = auth;
  o.eventsub_ws = "ws://127.0.0.1:1/ws";
  o.http_retries = 0;
  tw_client *c = tw_client_new(&o, &err);
  tw_wsession_opts wo = {.access_token = "sometokenvalue1234"};
  tw_wsession *ws = c ? tw_wsession_open(c, &wo, &err) : NULL;
  ok(ws != NULL, "a session opened against the hostile id server");
  if (ws) {
    wait_until(c, ws_settled, ws, 10);
    const tw_error *e = tw_wsession_error(ws);
    ok(e && strcmp(e->code, "response_too_large") == 0 && strcmp(tw_wsession_state(ws), "failed") == 0,
       "a 200 KB validation answer fails the session with response_too_large (state %s, %s)",
       tw_wsession_state(ws), e ? e->code : "no error");
  }
  tw_client_free(c);
  hs_stop(&hs);
}

int main(void) {
  tw_set_lws_log_level(0);
  mock m = {0};
  if (mock_start(&m) != 0) {
    ok(0, "the emulator starts");
    return done_testing();
  }
  cJSON *u = mock_call(&m, "POST", "/users", "{\"login\":\"hxuser\",\"scopes\":[\"user:read:chat\"]}");
  cJSON *tokv = u ? cJSON_GetObjectItemCaseSensitive(u, "access_token") : NULL;
  char token[128];
  snprintf(token, sizeof token, "%s", cJSON_IsString(tokv) ? tokv->valuestring : "");
  cJSON_Delete(u);
  ok(token[0] != 0, "a user authorised the app");

  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  mock_client_opts(&m, &o);
  tw_client *c = tw_client_new(&o, &err);
  ok(c != NULL, "client created");

  call k = {0};
  tw_ratelimit rl;
  int rc = tw_helix(c, "GET", "/eventsub/conduits", NULL, 0, on_resp, &k, &err);
  ok(rc == 0 && wait_until(c, one_done, &k, 20) && k.status == 200, "an app request answered");
  tw_client_ratelimit(c, &rl);
  int lim = rl.limit;
  ok(lim > 0 && rl.remaining > lim - 10, "the app bucket is mirrored: %.0f of %d", rl.remaining, lim);

  /* the user's bucket answers 429 once: the request waits for that reset and succeeds */
  cJSON_Delete(mock_call(&m, "POST", "/faults",
                         "{\"helix\":[{\"status\":429,\"count\":1,\"path\":\"/eventsub/subscriptions\"}]}"));
  memset(&k, 0, sizeof k);
  rc = tw_helix_with_token(c, token, "GET", "/eventsub/subscriptions", NULL, 0, on_resp, &k, &err);
  ok(rc == 0 && wait_until(c, one_done, &k, 20) && k.status == 200,
     "the user-token request is retried after its 429 and answered");
  tw_client_ratelimit(c, &rl);
  ok(rl.remaining > lim - 20, "the user's 429 did not empty the app's bucket: %.0f of %d left", rl.remaining, lim);
  ok(rl.hold_until == 0, "the app's bucket is not held by the user's 429");

  /* a server message quoting the user's token */
  char fault[512];
  snprintf(fault, sizeof fault,
           "{\"helix\":[{\"status\":400,\"count\":1,\"path\":\"/eventsub/subscriptions\",\"message\":\"bad token %s here\"}]}",
           token);
  cJSON_Delete(mock_call(&m, "POST", "/faults", fault));
  memset(&k, 0, sizeof k);
  ok(tw_helix_with_token(c, token, "GET", "/eventsub/subscriptions", NULL, 0, on_resp, &k, &err) == 0 &&
         wait_until(c, one_done, &k, 20) && k.status == 400,
     "the user-token request fails with 400");
  ok(!strstr(k.msg, token) && strstr(k.msg, "bad token"), "the user's token is starred out of the message: %s", k.msg);

  tw_client_free(c);
  oauth_cap(&m);
  app_hold();
  mock_stop(&m);
  return done_testing();
}
