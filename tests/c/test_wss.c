/* wss end to end: the emulator's own TLS listener (--tls-cert, a certificate made here
 * with openssl, trusted through SSL_CERT_FILE). Chat notifications larger in all than the
 * client's plaintext buffer arrive once each, as the ledger says; a session_reconnect
 * names a wss:// URL and the client follows it without a loss. Skipped, with a passing
 * note, when openssl is missing. */
#include "support.h"

static int ready, enabled, reconnects, errors;
static char last_error[300];
static idset seen;
static int doubles;
static void on_event(void *u, const tw_event *ev) {
  (void)u;
  if (ev->type == TW_EV_READY) ready++;
  if (ev->type == TW_EV_SHARD_ENABLED) enabled++;
  if (ev->type == TW_EV_RECONNECT) reconnects++;
  if (ev->type == TW_EV_NOTIFICATION) {
    char id[64];
    snprintf(id, sizeof id, "%.*s", (int)ev->msg->id_len, ev->msg->id);
    if (!idset_add(&seen, id)) doubles++;
  }
  if (ev->type == TW_EV_ERROR) {
    errors++;
    snprintf(last_error, sizeof last_error, "%s: %s", ev->error->code, ev->error->message);
  }
}
static int is_ready(void *a) { (void)a; return ready > 0; }
static size_t want;
static int got(void *a) { (void)a; return seen.n >= want; }
static int reconnected(void *a) { (void)a; return reconnects > 0; }
static void on_resp(void *u, const tw_response *r) { *(int *)u = r->status; }
static int resp_in(void *a) { return *(int *)a != 0; }

/* delivered entries of the ledger that the client did not handle, and the delivered count */
static int ledger_missing(mock *m, int *delivered) {
  cJSON *l = mock_call(m, "GET", "/ledger", NULL);
  int missing = 0;
  *delivered = 0;
  cJSON *e;
  cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(l, "entries")) {
    cJSON *st = cJSON_GetObjectItemCaseSensitive(e, "status");
    cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "message_id");
    if (!cJSON_IsString(st) || strcmp(st->valuestring, "delivered") != 0 || !cJSON_IsString(id)) continue;
    (*delivered)++;
    if (!idset_has(&seen, id->valuestring)) missing++;
  }
  cJSON_Delete(l);
  return missing;
}

int main(void) {
  tw_set_lws_log_level(0);
  if (system("command -v openssl >/dev/null") != 0) {
    ok(1, "# SKIP openssl missing: the emulator's wss not tested here");
    return done_testing();
  }
  char dir[] = "/tmp/twconduit-wss-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "cd %s && openssl req -x509 -newkey rsa:2048 -keyout k.pem -out tls.crt -days 1 -nodes -subj /CN=127.0.0.1 "
           "-addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1",
           dir);
  ok(system(cmd) == 0, "a self-signed certificate for 127.0.0.1");
  mock m = {0};
  char crt[300], key[300];
  snprintf(crt, sizeof crt, "%s/tls.crt", dir);
  snprintf(key, sizeof key, "%s/k.pem", dir);
  if (mock_start(&m, "--tls-cert", crt, "--tls-key", key) != 0) {
    ok(0, "the emulator starts with a wss listener");
    return done_testing();
  }
  const char *wss = m.eventsub_wss;
  ok(strncmp(wss, "wss://127.0.0.1:", 16) == 0, "the emulator announces its wss URL (%s)", wss);

  setenv("SSL_CERT_FILE", crt, 1);
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.eventsub_ws = wss;
  o.backoff_min_s = 0.1;
  emu_conduit e;
  int up = emu_conduit_open(&e, &m, &o, on_event, NULL, 2, is_ready, NULL, 15);
  tw_client *c = e.c;
  tw_conduit *cd = e.cd;
  ok(up, "2 shards connect to the emulator over wss and are assigned");
  if (!up) printf("# last client error: %s\n", last_error);

  const char *chans[] = {"41", "42", "43", "44"};
  int subs_ok = 1;
  for (int i = 0; i < 4; i++) {
    char body[512];
    snprintf(body, sizeof body,
             "{\"type\":\"channel.chat.message\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"%s\","
             "\"user_id\":\"1\"},\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
             chans[i], tw_conduit_id(cd) ? tw_conduit_id(cd) : "");
    int st = 0;
    tw_helix(c, "POST", "/eventsub/subscriptions", body, strlen(body), on_resp, &st, &err);
    wait_until(c, resp_in, &st, 5);
    subs_ok = subs_ok && st == 202;
  }
  ok(subs_ok, "4 chat subscriptions on the conduit");

  /* 4 × 150 × ~1.7 KB: about 1 MB of plaintext, several passes of the client's buffer */
  int n = getenv("SANITIZED") ? 50 : 150;
  snprintf(cmd, sizeof cmd, "{\"type\":\"channel.chat.message\",\"channels\":[\"41\",\"42\",\"43\",\"44\"],\"count\":%d}",
           n);
  cJSON_Delete(mock_call(&m, "POST", "/trigger", cmd));
  want = (size_t)(4 * n);
  int arrived = wait_until(c, got, NULL, 20);
  int delivered = 0, missing = ledger_missing(&m, &delivered);
  ok(arrived && delivered == 4 * n && missing == 0 && doubles == 0,
     "%d chat notifications over wss: ledger %d delivered, %d of them not handled, %d doubles", 4 * n, delivered,
     missing, doubles);

  /* session_reconnect over wss: the URL is the wss listener's, the client moves there */
  char sid[64];
  mock_shard_session(&m, tw_conduit_id(cd), "0", sid, sizeof sid);
  char path[160];
  snprintf(path, sizeof path, "/sessions/%s/reconnect", sid);
  cJSON *r = mock_call(&m, "POST", path, "{}");
  cJSON *url = cJSON_GetObjectItemCaseSensitive(r, "reconnect_url");
  char prefix[160];
  snprintf(prefix, sizeof prefix, "%s?reconnect_id=", wss);
  ok(cJSON_IsString(url) && strncmp(url->valuestring, prefix, strlen(prefix)) == 0,
     "the reconnect URL is on the wss listener (%s)", cJSON_IsString(url) ? url->valuestring : "none");
  cJSON_Delete(r);
  ok(wait_until(c, reconnected, NULL, 10), "the shard follows session_reconnect over wss");
  cJSON_Delete(mock_call(&m, "POST", "/trigger", cmd));
  want += (size_t)(4 * n);
  arrived = wait_until(c, got, NULL, 20);
  missing = ledger_missing(&m, &delivered);
  char after[64];
  mock_shard_session(&m, tw_conduit_id(cd), "0", after, sizeof after);
  ok(arrived && delivered == 8 * n && missing == 0 && doubles == 0 && strcmp(after, sid) == 0,
     "after the reconnect: ledger %d delivered, %d not handled, %d doubles, same session (%s)", delivered, missing,
     doubles, after);
  ok(errors == 0, "no error reported (%s)", errors ? last_error : "none");
  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  ok(cs.ws_connects == 3 && cs.tls_takeovers == cs.ws_connects,
     "each of the %llu wss connections (2 shards, 1 reconnect) went on in the core's TLS 1.3 record layer after its "
     "handshake (%llu)", (unsigned long long)cs.ws_connects, (unsigned long long)cs.tls_takeovers);
  tw_client_free(c);

  /* many shards, at most 4 TLS handshakes at once: every shard comes up, the cap holds */
  int shards = getenv("SANITIZED") ? 24 : 50;
  o.tls_handshakes = 4;
  c = tw_client_new(&o, &err);
  tw_client_on_event(c, on_event, NULL);
  ready = 0;
  tw_conduit_opts co = {.shards = shards};
  cd = tw_conduit_open(c, &co, &err);
  up = wait_until(c, is_ready, NULL, 60);
  tw_client_get_stats(c, &cs);
  ok(up && cs.tls_takeovers == (uint64_t)shards,
     "%d shards over wss with tls_handshakes = 4 all come up (%llu connections taken over)", shards,
     (unsigned long long)cs.tls_takeovers);
  ok(cs.tls_handshakes_max >= 1 && cs.tls_handshakes_max <= 4, "at most 4 handshakes were in flight at once (%llu)",
     (unsigned long long)cs.tls_handshakes_max);
  int subs2 = 1;
  for (int i = 0; i < 8; i++) {
    char body[512];
    snprintf(body, sizeof body,
             "{\"type\":\"channel.chat.message\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"%d\","
             "\"user_id\":\"1\"},\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
             51 + i, tw_conduit_id(cd) ? tw_conduit_id(cd) : "");
    int st = 0;
    tw_helix(c, "POST", "/eventsub/subscriptions", body, strlen(body), on_resp, &st, &err);
    wait_until(c, resp_in, &st, 5);
    subs2 = subs2 && st == 202;
  }
  snprintf(cmd, sizeof cmd,
           "{\"type\":\"channel.chat.message\",\"channels\":[\"51\",\"52\",\"53\",\"54\",\"55\",\"56\",\"57\",\"58\"],"
           "\"count\":20}");
  cJSON_Delete(mock_call(&m, "POST", "/trigger", cmd));
  want += 160;
  arrived = wait_until(c, got, NULL, 20);
  missing = ledger_missing(&m, &delivered);
  ok(subs2 && arrived && missing == 0 && doubles == 0 && delivered == 8 * n + 160,
     "160 more notifications over those shards: ledger %d delivered in all, %d not handled, %d doubles", delivered,
     missing, doubles);
  ok(errors == 0, "no error reported (%s)", errors ? last_error : "none");
  tw_client_free(c);
  idset_free(&seen);
  mock_stop(&m);
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) ok(0, "cleanup");
  return done_testing();
}
