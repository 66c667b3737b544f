/* The client against hostile servers: websocket servers that lie in the welcome, never
 * end a fragmented message, give absurd reconnect URLs, never answer the upgrade or
 * answer it with a wrong key; Helix and OAuth servers that answer 50 MB, fail mid-body,
 * or send a chunked body that never ends; and (through the emulator) a server that
 * drops a shard as soon as it is enabled.
 *
 * The servers are small functions in tests/c/hostile.h run in child processes. Each
 * scenario runs in its own process, all of them at once (most of the time is waiting),
 * so a sanitizer abort in one is that scenario's failure. TW_HOSTILE_ONLY=<name> runs
 * one. */
#include "internal.h"
#include "support.h"
#include "hostile.h"


/* ---- a bare websocket session against a hostile server ------------------------------ */
typedef struct wrec {
  tw_client *c;
  int welcomes, keepalives, errors, closed, close_code, reconnects;
  char why[160], err_code[48], err_msg[256];
  int reconnect_opened; /* tw_ws_open of the reconnect URL: 1 opened, 0 refused */
} wrec;

static void w_welcome(void *o, tw_session *ss, const char *sid) { ((wrec *)o)->welcomes++; }
static void w_keepalive(void *o, tw_session *ss) { ((wrec *)o)->keepalives++; }
static void w_message(void *o, tw_session *ss, tw_msg *m) {}
static void w_error(void *o, tw_session *ss, const tw_error *e) {
  wrec *r = o;
  r->errors++;
  snprintf(r->err_code, sizeof r->err_code, "%s", e->code);
  snprintf(r->err_msg, sizeof r->err_msg, "%s", e->message);
}
static void w_closed(void *o, tw_session *ss, int code, const char *why) {
  wrec *r = o;
  r->closed++;
  r->close_code = code;
  snprintf(r->why, sizeof r->why, "%s", why ? why : "");
}
static const tw_session_ops nobody = {0};
static void w_reconnect(void *o, tw_session *ss, const char *url) {
  wrec *r = o;
  r->reconnects++;
  tw_session *n = tw_ws_open(r->c, url, &nobody, NULL, NULL); /* what a shard does with it */
  r->reconnect_opened = n != NULL;
  if (n) tw_ws_close(n, 1000);
}
static const tw_session_ops wops = {w_welcome, w_reconnect, w_message, w_keepalive, w_error, w_closed};

static size_t max_message = 1 << 20;
static tw_client *ws_client(const hserver *s) {
  char url[128];
  snprintf(url, sizeof url, "ws://%s/ws", s->base);
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = "hostile-client";
  o.client_secret = "hostile-secret";
  o.eventsub_ws = url;
  o.max_message_bytes = max_message;
  tw_error err;
  tw_client *c = tw_client_new(&o, &err);
  if (!c) check(0, "the client starts (%s)", err.message);
  return c;
}

static int w_closed_c(void *a) { return ((wrec *)a)->closed > 0; }
static int w_keepalive_c(void *a) { return ((wrec *)a)->keepalives > 0 || ((wrec *)a)->closed; }
static int w_reconnect_c(void *a) { return ((wrec *)a)->reconnects > 0 || ((wrec *)a)->closed; }

static tw_session *ws_open(wrec *r, const hserver *s) {
  memset(r, 0, sizeof *r);
  r->c = ws_client(s);
  if (!r->c) return NULL;
  char url[128];
  snprintf(url, sizeof url, "ws://%s/ws", s->base);
  return tw_ws_open(r->c, url, &wops, r, NULL);
}

static void ws_end(wrec *r, tw_session *ss) {
  if (!r->closed) {
    tw_ws_close(ss, 1000);
    wait_until(r->c, w_closed_c, r, 10);
  }
  tw_client_free(r->c);
}

/* welcome with keepalive_timeout_seconds = the text in arg, a keepalive 200 ms later,
 * then silence until the client goes */
static void srv_keepalive(int fd, const char *req, void *arg) {
  hs_ws_upgrade(fd, req, 0);
  hs_ws_welcome(fd, arg);
  usleep(200000);
  hs_ws_keepalive(fd);
  hs_ws_read_close(fd, 20000);
}

static void keepalive_case(const char *ka) {
  hserver s;
  hs_start(&s, srv_keepalive, (void *)ka);
  wrec r;
  tw_session *ss = ws_open(&r, &s);
  check(ss != NULL, "the session opens");
  check(wait_until(r.c, w_keepalive_c, &r, 10) && r.keepalives == 1 && !r.closed,
        "keepalive_timeout_seconds %s: the session is still up for the keepalive 200 ms after the welcome "
        "(closed %d: %s)",
        ka, r.closed, r.why);
  check(r.errors == 1 && strcmp(r.err_code, "bad_message") == 0 && strstr(r.err_msg, ka) &&
            strstr(r.err_msg, "10..600"),
        "the bad value is reported: %s: %s", r.err_code, r.err_msg);
  ws_end(&r, ss);
  hs_stop(&s);
}
static void scenario_keepalive_huge(void) { keepalive_case("1000000000000"); }
static void scenario_keepalive_int64(void) { keepalive_case("9223372036854775807"); }

/* FIN=0 text, then continuation frames for ever (until the client's close frame, which is
 * answered with its code; 64 MB at most) */
static void srv_endless(int fd, const char *req, void *arg) {
  hs_ws_upgrade(fd, req, 0);
  hs_ws_welcome(fd, "10");
  static char chunk[1000];
  memset(chunk, 'a', sizeof chunk);
  hs_ws_frame(fd, 0, 1, "{\"metadata\":", 12);
  for (int i = 0; i < 65536; i++) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) > 0) {
      int code = hs_ws_read_close(fd, 2000);
      unsigned char b[2] = {(unsigned char)(code >> 8), (unsigned char)code};
      hs_ws_frame(fd, 1, 8, b, 2);
      usleep(200000);
      return;
    }
    if (hs_ws_frame(fd, 0, 0, chunk, sizeof chunk)) return;
  }
  hs_ws_read_close(fd, 20000);
}
static void scenario_endless_fragments(void) {
  hserver s;
  hs_start(&s, srv_endless, NULL);
  max_message = 4096;
  wrec r;
  tw_session *ss = ws_open(&r, &s);
  check(wait_until(r.c, w_closed_c, &r, 10), "the session ends (%s)", r.why);
  check(r.errors >= 1 && strcmp(r.err_code, "message_too_large") == 0, "message_too_large is reported (%s: %s)",
        r.err_code, r.err_msg);
  check(r.close_code == 1009, "the client closed with 1009, the server's answer says %d", r.close_code);
  ws_end(&r, ss);
  hs_stop(&s);
}

/* welcome, then session_reconnect with a reconnect_url of arg bytes */
static void srv_reconnect_url(int fd, const char *req, void *arg) {
  size_t n = (size_t)(uintptr_t)arg;
  hs_ws_upgrade(fd, req, 0);
  hs_ws_welcome(fd, "10");
  char *url = malloc(n + 1);
  int k = snprintf(url, n + 1, "ws://127.0.0.1:9/ws?x=");
  memset(url + k, 'a', n - (size_t)k);
  url[n] = 0;
  char *m = malloc(n + 512);
  snprintf(m, n + 512,
           "{\"metadata\":{\"message_id\":\"r1\",\"message_type\":\"session_reconnect\",\"message_timestamp\":"
           "\"2030-01-01T00:00:00Z\"},\"payload\":{\"session\":{\"id\":\"AgoQhostile\",\"status\":\"reconnecting\","
           "\"keepalive_timeout_seconds\":null,\"reconnect_url\":\"%s\"}}}",
           url);
  hs_ws_text(fd, m);
  free(url);
  free(m);
  hs_ws_read_close(fd, 20000);
}
static void reconnect_url_case(size_t n, int want_open) {
  hserver s;
  hs_start(&s, srv_reconnect_url, (void *)(uintptr_t)n);
  wrec r;
  tw_session *ss = ws_open(&r, &s);
  check(wait_until(r.c, w_reconnect_c, &r, 10) && r.reconnects == 1, "session_reconnect arrives (%s)", r.why);
  check(r.reconnect_opened == want_open, "a reconnect_url of %zu bytes is %s", n, want_open ? "used" : "refused");
  ws_end(&r, ss);
  hs_stop(&s);
}
static void scenario_reconnect_url_long(void) {
  reconnect_url_case(2047, 1);
  reconnect_url_case(2048, 0);
  reconnect_url_case(100000, 0);
}

/* accepts TCP, reads the upgrade, never answers */
static void srv_silent(int fd, const char *req, void *arg) { sleep(60); }
static void scenario_upgrade_unanswered(void) {
  hserver s;
  hs_start(&s, srv_silent, NULL);
  wrec r;
  tw_session *ss = ws_open(&r, &s);
  check(wait_until(r.c, w_closed_c, &r, 25), "the session gives up on an unanswered upgrade (%s)", r.why);
  check(r.welcomes == 0 && r.why[0], "no welcome, and a reason: %s", r.why);
  ws_end(&r, ss);
  hs_stop(&s);
}

static void srv_bad_accept(int fd, const char *req, void *arg) {
  hs_ws_upgrade(fd, req, 1);
  hs_ws_welcome(fd, "10");
  hs_ws_read_close(fd, 5000);
}
static void scenario_wrong_accept_key(void) {
  hserver s;
  hs_start(&s, srv_bad_accept, NULL);
  wrec r;
  tw_session *ss = ws_open(&r, &s);
  check(wait_until(r.c, w_closed_c, &r, 10), "the session ends");
  check(r.welcomes == 0 && strstr(r.why, "Sec-WebSocket-Accept"), "the welcome after a wrong key is not read: %s",
        r.why);
  ws_end(&r, ss);
  hs_stop(&s);
}

/* ---- Helix and OAuth ---------------------------------------------------------------- */
typedef struct hrec {
  int done, status, errors;
  size_t raw_len;
  int has_body;
  char code[48], msg[256];
} hrec;
static void on_resp(void *u, const tw_response *r) {
  hrec *h = u;
  h->done++;
  h->status = r->status;
  h->raw_len = r->raw_len;
  h->has_body = r->body != NULL;
  snprintf(h->code, sizeof h->code, "%s", r->error ? r->error->code : "");
  snprintf(h->msg, sizeof h->msg, "%s", r->error ? r->error->message : "");
}
static int h_done(void *a) { return ((hrec *)a)->done > 0; }

static void answer_token(int fd) { hs_json(fd, 200, "{\"access_token\":\"hostiletoken\",\"expires_in\":3600}"); }
static void answer_validate(int fd) { hs_json(fd, 200, "{\"client_id\":\"hostile-client\",\"expires_in\":3600}"); }

/* OAuth and Helix on one server: the token and validation are normal unless arg says */
static void srv_helix(int fd, const char *req, void *arg) {
  const char *mode = arg;
  static char buf[65536];
  if (strstr(req, "/oauth2/token")) {
    if (strcmp(mode, "token50mb") != 0) {
      answer_token(fd);
      return;
    }
    size_t total = (size_t)50 << 20;
    hs_printf(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n", total);
    const char *head = "{\"expires_in\":3600,\"access_token\":\"";
    hs_write(fd, head, strlen(head));
    memset(buf, 'A', sizeof buf);
    size_t sent = strlen(head);
    while (sent + sizeof buf < total - 2) {
      if (hs_write(fd, buf, sizeof buf)) return;
      sent += sizeof buf;
    }
    memset(buf, 'A', total - 2 - sent);
    hs_write(fd, buf, total - 2 - sent);
    hs_write(fd, "\"}", 2);
    return;
  }
  if (strstr(req, "/oauth2/validate")) {
    answer_validate(fd);
    return;
  }
  if (strcmp(mode, "midbody") == 0) { /* a 100 KB answer that stops after 600 bytes */
    hs_printf(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"data\":[");
    memset(buf, ' ', 600);
    hs_write(fd, buf, 600);
    return;
  }
  if (strcmp(mode, "big_conduits") == 0) { /* 2 MB of valid JSON for an endpoint that answers a few KB */
    size_t pad = (size_t)2 << 20;
    hs_printf(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n{\"data\":[],\"p\":\"",
              pad + 18);
    memset(buf, 'p', sizeof buf);
    for (size_t s = 0; s < pad; s += sizeof buf)
      if (hs_write(fd, buf, sizeof buf < pad - s ? sizeof buf : pad - s)) return;
    hs_write(fd, "\"}", 2);
    return;
  }
  if (strcmp(mode, "chunked_fast") == 0 || strcmp(mode, "chunked_trickle") == 0) {
    int trickle = mode[8] == 't';
    hs_printf(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    hs_printf(fd, "9\r\n{\"data\":[\r\n");
    memset(buf, ' ', sizeof buf);
    for (int i = 0; i < 100000; i++) {
      if (trickle) {
        if (hs_printf(fd, "8\r\n        \r\n")) return;
        usleep(50000);
      } else {
        if (hs_printf(fd, "%zx\r\n", sizeof buf) || hs_write(fd, buf, sizeof buf) || hs_write(fd, "\r\n", 2)) return;
      }
    }
    return;
  }
  hs_json(fd, 200, "{\"data\":[]}");
}

static tw_client *helix_client(const hserver *s, double timeout_s, int retries) {
  char api[128], auth[128];
  snprintf(api, sizeof api, "http://%s/helix", s->base);
  snprintf(auth, sizeof auth, "http://%s/oauth2", s->base);
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = "hostile-client";
  o.client_secret = "hostile-secret";
  o.api_base = api;
  o.auth_base = auth;
  o.eventsub_ws = "ws://127.0.0.1:9/ws";
  o.http_timeout_s = timeout_s;
  o.http_retries = retries;
  tw_error err;
  tw_client *c = tw_client_new(&o, &err);
  if (!c) check(0, "the client starts (%s)", err.message);
  return c;
}

static void helix_case(const char *mode, const char *path, double timeout_s, int retries, hrec *h, tw_client_stats *st) {
  hserver s;
  hs_start(&s, srv_helix, (void *)mode);
  tw_client *c = helix_client(&s, timeout_s, retries);
  memset(h, 0, sizeof *h);
  tw_error err;
  check(tw_helix(c, "GET", path, NULL, 0, on_resp, h, &err) == 0, "GET %s is queued", path);
  check(wait_until(c, h_done, h, 20), "%s: GET %s is answered (%s: %s)", mode, path, h->code, h->msg);
  tw_client_get_stats(c, st);
  tw_client_free(c);
  hs_stop(&s);
}

static void scenario_token_50mb(void) {
  hrec h;
  tw_client_stats st;
  helix_case("token50mb", "/users", 15, 2, &h, &st);
  check(strcmp(h.code, "response_too_large") == 0 && strstr(h.msg, "response too large"),
        "a 50 MB token answer is refused: %s: %s", h.code, h.msg);
  check(st.token_fetches == 1, "and not fetched again (%llu fetches)", (unsigned long long)st.token_fetches);
}

static void scenario_helix_midbody(void) {
  hrec h;
  tw_client_stats st;
  helix_case("midbody", "/users", 15, 1, &h, &st);
  check(h.status == 0 && strcmp(h.code, "network") == 0, "an answer cut mid-body is a network failure: %d %s: %s",
        h.status, h.code, h.msg);
  check(h.raw_len == 0 && !h.has_body, "the cut body is neither handed on nor parsed (raw_len %zu)", h.raw_len);
  check(st.helix_retries == 1, "it was retried (%llu)", (unsigned long long)st.helix_retries);
}

static void scenario_helix_too_large(void) {
  hrec h;
  tw_client_stats st;
  helix_case("big_conduits", "/eventsub/conduits", 15, 3, &h, &st);
  check(h.status == 0 && strcmp(h.code, "response_too_large") == 0 && strstr(h.msg, "response too large"),
        "2 MB from Get Conduits is too large: %d %s: %s", h.status, h.code, h.msg);
  check(h.raw_len == 0 && !h.has_body && st.helix_retries == 0, "not parsed, not retried (%llu retries)",
        (unsigned long long)st.helix_retries);
  helix_case("chunked_fast", "/streams", 15, 3, &h, &st);
  check(strcmp(h.code, "response_too_large") == 0 && h.raw_len == 0,
        "a chunked body that never ends stops at the cap: %s: %s", h.code, h.msg);
}

static void scenario_helix_chunked_trickle(void) {
  hrec h;
  tw_client_stats st;
  helix_case("chunked_trickle", "/streams", 1, 0, &h, &st);
  check(h.status == 0 && strcmp(h.code, "timeout") == 0 && h.raw_len == 0,
        "a chunked body trickling for ever times out, nothing parsed: %s: %s", h.code, h.msg);
}

/* ---- a server that drops a shard as soon as it is enabled (the emulator) ------------ */
static mock M;
typedef struct brec {
  tw_client *c;
  int enabled, ready;
  uint64_t attempt_at_enable[16];
} brec;
static void b_event(void *u, const tw_event *ev) {
  brec *b = u;
  if (ev->type == TW_EV_READY) b->ready++;
  if (ev->type != TW_EV_SHARD_ENABLED || b->enabled >= 16) return;
  tw_shard_stats ss;
  tw_shard_get_stats(ev->shard, &ss);
  b->attempt_at_enable[b->enabled++] = ss.backoff_attempt;
  char path[256];
  snprintf(path, sizeof path, "/sessions/%s/drop", tw_shard_session_id(ev->shard));
  cJSON_Delete(mock_call(&M, "POST", path, "{}"));
}
static int five_enables(void *a) { return ((brec *)a)->enabled >= 5; }
static void scenario_backoff_grows(void) {
  if (mock_start(&M) != 0) {
    check(0, "the emulator starts");
    return;
  }
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = M.client_id;
  o.client_secret = M.client_secret;
  o.api_base = M.api_base;
  o.auth_base = M.auth_base;
  o.eventsub_ws = M.eventsub_ws;
  o.backoff_min_s = 0.02;
  o.backoff_max_s = 1;
  tw_error err;
  brec b = {0};
  b.c = tw_client_new(&o, &err);
  tw_client_on_event(b.c, b_event, &b);
  tw_conduit_opts co = {.shards = 1};
  check(tw_conduit_open(b.c, &co, &err) != NULL, "a conduit opens");
  check(wait_until(b.c, five_enables, &b, 20), "the shard was enabled (and dropped) 5 times");
  int grows = 1;
  for (int i = 0; i < b.enabled; i++) {
    fprintf(stderr, "#     enable %d: backoff step %llu\n", i + 1, (unsigned long long)b.attempt_at_enable[i]);
    if (b.attempt_at_enable[i] != (uint64_t)i) grows = 0;
  }
  check(grows, "each drop right after an enable backs off one step further (0, 1, 2, 3, 4)");
  tw_client_free(b.c);
  mock_stop(&M);
}

/* ====================================================================================== */
static const scenario scenarios[] = {
    {"keepalive_huge", "a welcome's keepalive_timeout_seconds of 10^12 is clamped and reported", scenario_keepalive_huge},
    {"keepalive_int64", "a keepalive_timeout_seconds of 2^63-1 is clamped and reported (no overflow)",
     scenario_keepalive_int64},
    {"endless_fragments", "an endless fragmented message is closed with 1009 as max_message_bytes passes",
     scenario_endless_fragments},
    {"reconnect_url_long", "a reconnect_url over 2,047 bytes is refused, never cut", scenario_reconnect_url_long},
    {"upgrade_unanswered", "TCP accepted and the upgrade never answered: the session gives up",
     scenario_upgrade_unanswered},
    {"wrong_accept_key", "a wrong Sec-WebSocket-Accept ends the session before any frame", scenario_wrong_accept_key},
    {"token_50mb", "a 50 MB token answer is refused as too large", scenario_token_50mb},
    {"helix_midbody", "a Helix answer that fails mid-body is not parsed", scenario_helix_midbody},
    {"helix_too_large", "small-answer endpoints cap the body; an endless chunked body stops at the cap",
     scenario_helix_too_large},
    {"helix_chunked_trickle", "a chunked body trickling for ever times out", scenario_helix_chunked_trickle},
    {"backoff_grows", "a shard dropped as soon as it is enabled backs off further each time", scenario_backoff_grows},
};
#define NSC (sizeof scenarios / sizeof scenarios[0])

int main(void) {
  tw_set_lws_log_level(0);
  signal(SIGPIPE, SIG_IGN);
  const char *only = getenv("TW_HOSTILE_ONLY");
  pid_t pids[NSC];
  for (size_t i = 0; i < NSC; i++) {
    pids[i] = 0;
    if (only && strcmp(only, scenarios[i].name) != 0) continue;
    fflush(stdout);
    fflush(stderr);
    pids[i] = fork();
    if (pids[i] == 0) {
      /* each child's log goes out in one piece at its end */
      char path[64];
      snprintf(path, sizeof path, "/tmp/tw-hostile-%d.log", (int)getpid());
      if (!freopen(path, "w", stderr)) _exit(3);
      scenarios[i].fn();
      fflush(stderr);
      exit(child_failed); /* exit: LeakSanitizer checks the child */
    }
  }
  for (size_t i = 0; i < NSC; i++) {
    if (!pids[i]) continue;
    int status = 0;
    waitpid(pids[i], &status, 0);
    char path[64], line[512];
    snprintf(path, sizeof path, "/tmp/tw-hostile-%d.log", (int)pids[i]);
    printf("# %s\n", scenarios[i].name);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f)) fputs(line, stdout);
    if (f) fclose(f);
    unlink(path);
    passed_line(&scenarios[i], status);
  }
  return done_testing();
}
