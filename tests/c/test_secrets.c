/* Secrets never leak: every error path the client can be driven down here — a wrong
 * client secret, a given token that is invalid (with and without a secret to replace
 * it), tokens revoked mid-run, Helix 401s, 4xx and 5xx with bodies, TLS failures of the
 * websocket, of Helix and of OAuth — with libwebsockets logging everything it can, and
 * then the client secrets and every token the client held are looked for in all that
 * was written to stderr and in every error, event status and response error the client
 * reported. */
#include <fcntl.h>
#include <libwebsockets.h>

#include "support.h"
#include "hostile.h"

static mock M;
static char *reported; /* every error code, message and status the client reported */
static size_t reported_len;
static char tokens[16][512];
static int ntokens;

static void note(const char *what, const char *s) {
  if (!s) return;
  size_t n = strlen(what) + strlen(s) + 3;
  reported = realloc(reported, reported_len + n + 1);
  reported_len += (size_t)snprintf(reported + reported_len, n + 1, "%s: %s\n", what, s);
}

static void remember_token(tw_client *c) {
  const char *t = tw_client_token(c);
  if (!t || ntokens >= 16) return;
  for (int i = 0; i < ntokens; i++)
    if (strcmp(tokens[i], t) == 0) return;
  snprintf(tokens[ntokens++], sizeof tokens[0], "%s", t);
}

typedef struct rec {
  tw_client *c;
  int ready, errors, tokens, done;
} rec;

static void on_event(void *u, const tw_event *ev) {
  rec *r = u;
  if (ev->type == TW_EV_TOKEN) {
    r->tokens++;
    remember_token(r->c);
  }
  if (ev->type == TW_EV_READY) r->ready++;
  if (ev->error) {
    r->errors++;
    note(ev->error->code, ev->error->message);
  }
  note(ev_name(ev->type), ev->status);
}

static void on_resp(void *u, const tw_response *res) {
  rec *r = u;
  r->done++;
  if (res->error) note(res->error->code, res->error->message);
}
static int done_c(void *a) { return ((rec *)a)->done > 0; }
static int ready_c(void *a) { return ((rec *)a)->ready > 0; }
static int errors_c(void *a) { return ((rec *)a)->errors > 0; }

static tw_client *client(rec *r, const char *secret, const char *token, const char *api, const char *auth,
                         const char *ws) {
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = M.client_id;
  o.client_secret = secret;
  o.access_token = token;
  o.api_base = api ? api : M.api_base;
  o.auth_base = auth ? auth : M.auth_base;
  o.eventsub_ws = ws ? ws : M.eventsub_ws;
  o.http_retries = 1;
  o.backoff_min_s = 0.05;
  o.backoff_max_s = 0.2;
  tw_error err;
  memset(r, 0, sizeof *r);
  r->c = tw_client_new(&o, &err);
  if (!r->c) {
    ok(0, "a client starts: %s", err.message);
    return NULL;
  }
  tw_client_on_event(r->c, on_event, r);
  tw_client_opts back;
  tw_client_get_options(r->c, &back);
  ok(!back.client_secret && !back.access_token, "the options read back hold no secret and no token");
  return r->c;
}

static int helix_get(rec *r, const char *path) {
  tw_error err;
  r->done = 0;
  if (tw_helix(r->c, "GET", path, NULL, 0, on_resp, r, &err) != 0) return 0;
  int answered = wait_until(r->c, done_c, r, 20);
  remember_token(r->c);
  return answered;
}

static void ctl(const char *method, const char *path, const char *body) {
  cJSON_Delete(mock_call(&M, method, path, body));
}

/* A server that quotes the request back in its error messages: the OAuth request's body
 * (the client secret) when arg is "token", else the Helix request's Authorization
 * header (the token), which it hands out itself. */
static void srv_echo(int fd, const char *req, void *arg) {
  char quoted[2048] = "", body[2400];
  const char *what = strcmp(arg, "token") == 0 || !strstr(req, "/oauth2/token") ? strstr(req, "\r\n\r\n") : NULL;
  if (strcmp(arg, "token") != 0 && strstr(req, "/oauth2/token")) {
    hs_json(fd, 200, "{\"access_token\":\"echoed-token-5d1c7e90\",\"expires_in\":3600}");
    return;
  }
  if (strstr(req, "/oauth2/validate")) {
    hs_json(fd, 200, "{\"client_id\":\"twconduit-mock-client\",\"expires_in\":3600}");
    return;
  }
  if (strcmp(arg, "token") != 0) what = strcasestr(req, "Authorization:");
  for (size_t i = 0; what && what[i] && i < sizeof quoted - 1; i++) /* JSON-safe: no quotes, no control bytes */
    quoted[i] = what[i] == '"' || what[i] == '\\' || (unsigned char)what[i] < 32 ? ' ' : what[i];
  snprintf(body, sizeof body, "{\"status\":400,\"message\":\"refused: %s\"}", quoted);
  hs_json(fd, strcmp(arg, "token") == 0 ? 400 : 403, body);
}

int main(void) {
  if (mock_start(&M) != 0) { /* before stderr is captured: the emulator's own output is not the client's */
    ok(0, "the emulator starts");
    return done_testing();
  }
  static const char bad_secret[] = "wrong-secret-7f3a9c1e55d2";
  static const char given_token[] = "given-token-0b8e4d2c91aa";
  static const char odd_secret[] = "odd secret+/=4c2e9a";
  snprintf(tokens[ntokens++], sizeof tokens[0], "%s", given_token);

  char cap[] = "/tmp/tw-secrets-XXXXXX";
  int capfd = mkstemp(cap);
  fflush(stderr);
  int saved = dup(2);
  dup2(capfd, 2);
  lws_set_log_level((1 << LLL_COUNT) - 1, NULL); /* everything libwebsockets can say */

  rec r;
  /* a wrong client secret */
  if (client(&r, bad_secret, NULL, NULL, NULL, NULL)) {
    ok(helix_get(&r, "/eventsub/conduits") && r.errors > 0, "a wrong secret: the request fails, errors reported");
    tw_client_free(r.c);
  }
  /* a given token that is invalid, no secret to get another */
  if (client(&r, NULL, given_token, NULL, NULL, NULL)) {
    ok(helix_get(&r, "/eventsub/conduits") && r.errors > 0, "an invalid given token without a secret fails");
    tw_client_free(r.c);
  }
  /* an invalid given token with the right secret, then Helix 401s, revoked tokens, 4xx and
   * 5xx with bodies, all on a running conduit */
  if (client(&r, M.client_secret, given_token, NULL, NULL, NULL)) {
    tw_conduit_opts co = {.shards = 1};
    tw_error err;
    tw_conduit_open(r.c, &co, &err);
    ok(wait_until(r.c, ready_c, &r, 15), "a conduit is ready after the given token was replaced");
    ctl("POST", "/tokens/revoke", "{\"all\":true}");
    ok(helix_get(&r, "/eventsub/conduits"), "a request after every token was revoked is answered");
    ctl("POST", "/faults", "{\"helix\":[{\"status\":401,\"count\":2}]}");
    ok(helix_get(&r, "/eventsub/conduits"), "401 twice: answered");
    ctl("POST", "/faults", "{\"helix\":[{\"status\":503,\"count\":2},{\"status\":400},{\"status\":429,\"count\":1}]}");
    ok(helix_get(&r, "/eventsub/conduits") && helix_get(&r, "/eventsub/conduits"), "5xx, 400 and 429: answered");
    ok(helix_get(&r, "/eventsub/subscriptions?status=nope") && helix_get(&r, "/nope"), "400 and 404 with bodies");
    tw_client_free(r.c);
    ok(ntokens >= 3, "the client held %d tokens, all looked for", ntokens - 1);
  }
  /* TLS failures: wss, and https for Helix and OAuth, against a plain-text server */
  char wss[1024], https_api[1024], https_auth[1024];
  snprintf(wss, sizeof wss, "wss%s", M.eventsub_ws + 2);
  snprintf(https_api, sizeof https_api, "https%s", M.api_base + 4);
  snprintf(https_auth, sizeof https_auth, "https%s", M.auth_base + 4);
  if (client(&r, M.client_secret, NULL, https_api, https_auth, wss)) {
    tw_conduit_opts co = {.shards = 1};
    tw_error err;
    tw_conduit_open(r.c, &co, &err);
    ok(helix_get(&r, "/eventsub/conduits") && r.errors > 0, "OAuth over TLS to a plain server fails, reported");
    tw_client_free(r.c);
  }
  if (client(&r, M.client_secret, NULL, NULL, NULL, wss)) {
    tw_conduit_opts co = {.shards = 1};
    tw_error err;
    tw_conduit_open(r.c, &co, &err);
    ok(wait_until(r.c, errors_c, &r, 15), "a wss shard against a plain server fails, reported");
    remember_token(r.c);
    tw_client_free(r.c);
  }
  if (client(&r, M.client_secret, NULL, https_api, NULL, NULL)) {
    ok(helix_get(&r, "/eventsub/conduits") && r.errors >= 0, "Helix over TLS to a plain server fails");
    tw_client_free(r.c);
  }

  /* servers that quote the secret or the token back in their error messages */
  hserver es;
  char api[128], auth[128];
  if (hs_start(&es, srv_echo, "token") == 0) {
    snprintf(auth, sizeof auth, "http://%s/oauth2", es.base);
    if (client(&r, M.client_secret, NULL, NULL, auth, NULL)) {
      ok(helix_get(&r, "/eventsub/conduits") && r.errors > 0, "an OAuth server quoting the secret back: refused");
      tw_client_free(r.c);
    }
    if (client(&r, odd_secret, NULL, NULL, auth, NULL)) { /* quoted as the form body has it, URL-encoded */
      ok(helix_get(&r, "/eventsub/conduits") && r.errors > 0, "the same with a secret that is URL-encoded");
      tw_client_free(r.c);
    }
    hs_stop(&es);
  }
  if (hs_start(&es, srv_echo, "helix") == 0) {
    snprintf(api, sizeof api, "http://%s/helix", es.base);
    snprintf(auth, sizeof auth, "http://%s/oauth2", es.base);
    if (client(&r, M.client_secret, NULL, api, auth, NULL)) {
      ok(helix_get(&r, "/eventsub/conduits"), "a Helix server quoting the token back: refused");
      tw_client_free(r.c);
    }
    hs_stop(&es);
  }

  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  lws_set_log_level(LLL_ERR, NULL);
  /* what was written */
  off_t len = lseek(capfd, 0, SEEK_END);
  char *out = calloc(1, (size_t)len + 1);
  if (pread(capfd, out, (size_t)len, 0) != len) len = 0;
  close(capfd);
  unlink(cap);
  ok(reported_len > 0 && strstr(reported, "auth_failed") && strstr(reported, "unauthorized") &&
         strstr(reported, "server_error") && strstr(reported, "TLS"),
     "the errors were reported (auth_failed, unauthorized, server_error, TLS): %zu bytes", reported_len);
  fprintf(stderr, "# %lld bytes on stderr, %zu bytes of reports, %d secrets and tokens looked for\n", (long long)len,
          reported_len, ntokens + 4);
  const char *secrets[20] = {bad_secret, M.client_secret, odd_secret, "odd%20secret%2B%2F%3D4c2e9a"};
  int ns = 4;
  for (int i = 0; i < ntokens; i++) secrets[ns++] = tokens[i];
  int leaks = 0;
  for (int i = 0; i < ns; i++) {
    if (strstr(out, secrets[i]) || (reported && strstr(reported, secrets[i]))) {
      leaks++;
      fprintf(stderr, "# LEAK: %.6s... appears\n", secrets[i]);
    }
  }
  ok(len > 0 && strstr(out, "LWS") && strstr(out, "D: "), "stderr was captured with libwebsockets' debug output");
  ok(leaks == 0, "no secret and no token appears on stderr or in any report");
  if (getenv("TW_SECRETS_SHOW")) fprintf(stderr, "%s\n--- stderr ---\n%s\n", reported ? reported : "", out);
  free(out);
  free(reported);
  mock_stop(&M);
  return done_testing();
}
