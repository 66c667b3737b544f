/* Helix requests made with a caller's own token (the websocket mode's user token) next
 * to the app's: a 429 to a user-token request is that user's bucket, so it neither holds
 * nor empties the app's mirrored bucket; a server message quoting the user's token is
 * starred out of the error like the app's own secrets. */
#include "support.h"
#include "internal.h"

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
  o.client_id = m.client_id;
  o.client_secret = m.client_secret;
  o.api_base = m.api_base;
  o.auth_base = m.auth_base;
  o.eventsub_ws = m.eventsub_ws;
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
  mock_stop(&m);
  return done_testing();
}
