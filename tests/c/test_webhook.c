/* The HTTP server and the webhook receiver from C: the request parser's verdicts, then
 * raw requests on real sockets against a receiver on the client's loop — verification
 * in order (forged, malformed, stale, future, replayed, truncated), the limits (10 MB
 * body, headers, a request trickling in, connections), challenges, revocations,
 * pipelining, a deferred answer, the end of a rotation's grace period. Signatures are
 * made here with OpenSSL's one-shot HMAC (and one by the emulator's own signer). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/hmac.h>
#include <sys/socket.h>

#include "support.h"

#define SECRET "webhook-secret-0123"

typedef struct state {
  tw_client *c;
  int notifications, revocations, errors;
  char last_id[128], last_type[64], last_status[64];
  tw_transport_kind last_transport;
  int last_event_len;       /* elements of a batched `events` array, -1 for an object */
  tw_httpd_reply *held;
  int sunk;
} state;

static void on_event(void *user, const tw_event *ev) {
  state *st = user;
  if (ev->type == TW_EV_NOTIFICATION || ev->type == TW_EV_REVOCATION) {
    if (ev->type == TW_EV_NOTIFICATION) st->notifications++;
    else st->revocations++;
    snprintf(st->last_id, sizeof st->last_id, "%s", ev->msg->id);
    snprintf(st->last_type, sizeof st->last_type, "%s", ev->msg->type ? ev->msg->type : "");
    snprintf(st->last_status, sizeof st->last_status, "%s", ev->msg->status ? ev->msg->status : "");
    st->last_transport = ev->msg->transport;
    st->last_event_len = tw_json_type(ev->msg->doc, ev->msg->event) == TW_JSON_ARR
                             ? (int)tw_json_len(ev->msg->doc, ev->msg->event)
                             : -1;
  } else if (ev->type == TW_EV_ERROR) {
    st->errors++;
  }
}

#include "webhook_support.h"

static void sink(void *user, tw_webhook *w, const tw_msg *m, tw_httpd_reply *reply) {
  state *st = user;
  (void)w;
  (void)m;
  st->sunk++;
  st->held = reply; /* answered later, by the test */
}

static void parser_tests(void) {
  tw_http_limits lim = {.max_body = 100, .max_header_bytes = 512, .max_headers = 4};
  tw_http_request rq;
  const char *a = "POST /x?y=1 HTTP/1.1\r\nContent-Length: 3\r\nX-A:  v \r\n\r\nabcGET / HTTP/1.0\r\n\r\n";
  long r = tw_http_parse(a, strlen(a), &lim, &rq);
  size_t vl = 0;
  const char *v = tw_http_header_get(&rq, "x-a", &vl);
  ok(r == (long)(strlen(a) - strlen("GET / HTTP/1.0\r\n\r\n")) && rq.body_len == 3 && memcmp(rq.body, "abc", 3) == 0 &&
         rq.path_len == 2 && rq.query_len == 3 && rq.keep_alive && v && vl == 1 && *v == 'v',
     "parse: a request with a body, its query and a header (case-insensitive, trimmed)");
  long r2 = tw_http_parse(a + r, strlen(a) - (size_t)r, &lim, &rq);
  ok(r2 > 0 && !rq.keep_alive && rq.minor == 0, "parse: the pipelined HTTP/1.0 request after it");
  ok(tw_http_parse(a, 30, &lim, &rq) == 0, "parse: a partial head needs more bytes");
  size_t hl = (size_t)(strstr(a, "\r\n\r\n") - a) + 4;
  ok(tw_http_parse(a, hl + 1, &lim, &rq) == 0 && rq.head_len == hl && rq.body_len == 3,
     "parse: a whole head, partial body: head and body lengths known");
  const char *big = "POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n";
  ok(tw_http_parse(big, strlen(big), &lim, &rq) == -413, "parse: Content-Length over the cap -> 413");
  const char *many = "GET / HTTP/1.1\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n";
  ok(tw_http_parse(many, strlen(many), &lim, &rq) == -431, "parse: too many headers -> 431");
  char longh[700];
  memset(longh, 'a', sizeof longh);
  memcpy(longh, "GET / HTTP/1.1\r\nX: ", 19);
  ok(tw_http_parse(longh, sizeof longh, &lim, &rq) == -431, "parse: an endless header block -> 431");
  const char *te = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  ok(tw_http_parse(te, strlen(te), &lim, &rq) == -501, "parse: Transfer-Encoding -> 501");
  const char *two = "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
  ok(tw_http_parse(two, strlen(two), &lim, &rq) == -400, "parse: two different Content-Lengths -> 400");
  const char *ver = "GET / HTTP/2.0\r\n\r\n";
  ok(tw_http_parse(ver, strlen(ver), &lim, &rq) == -505, "parse: HTTP/2.0 -> 505");
  const char *bad[] = {"GET  / HTTP/1.1\r\n\r\n", "GET x HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
                       "GET / HTTP/1.1\r\n folded: x\r\n\r\n", "POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"};
  int all = 1;
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) all &= tw_http_parse(bad[i], strlen(bad[i]), &lim, &rq) == -400;
  ok(all, "parse: malformed request lines, headers and lengths -> 400");
}

/* HTTPS: a self-signed certificate; a child process posts with libcurl (which offers h2
 * and http/1.1 by ALPN: the server takes http/1.1) while the parent runs the loop */
static void tls_test(tw_client *c, state *st, double now) {
  if (system("command -v openssl >/dev/null") != 0) {
    ok(1, "# SKIP openssl missing: HTTPS not tested here");
    return;
  }
  char dir[] = "/tmp/twwh-XXXXXX", cmd[512], cert[128], key[128];
  if (!mkdtemp(dir)) return;
  snprintf(cmd, sizeof cmd,
           "cd %s && openssl req -x509 -newkey rsa:2048 -keyout k.pem -out c.pem -days 1 -nodes -subj /CN=127.0.0.1 "
           ">/dev/null 2>&1",
           dir);
  ok(system(cmd) == 0, "a self-signed certificate");
  snprintf(cert, sizeof cert, "%s/c.pem", dir);
  snprintf(key, sizeof key, "%s/k.pem", dir);
  tw_error err;
  tw_httpd_opts ho = TW_HTTPD_OPTS_INIT;
  ho.tls_cert = cert;
  ho.tls_key = key;
  tw_httpd *h = tw_httpd_open(c, &ho, &err);
  ok(h && tw_httpd_tls(h), "an HTTPS server: %s", h ? "listening" : err.message);
  ho.tls_key = "/nonexistent.pem";
  ok(tw_httpd_open(c, &ho, &err) == NULL && strcmp(err.code, "tls") == 0, "a missing key file: error 'tls'");
  if (!h) return;
  tw_webhook_opts wo = {.path = "/tls", .secret = SECRET};
  tw_webhook *w = tw_webhook_listen(h, &wo, &err);
  char *rq = request("/tls", "notification", "m-tls", now, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL);
  int before = st->notifications, fds[2];
  if (pipe(fds) != 0) return;
  pid_t pid = fork();
  if (pid == 0) {
    /* the headers of the raw request, as curl headers */
    struct curl_slist *hl = NULL;
    char *line = strtok(strstr(rq, "\r\n") + 2, "\r\n");
    while (line && strncmp(line, "Content-Length", 14) != 0) {
      hl = curl_slist_append(hl, line);
      line = strtok(NULL, "\r\n");
    }
    char url[128];
    snprintf(url, sizeof url, "https://127.0.0.1:%d/tls", tw_httpd_port(h));
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, NOTIF_BODY);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, 10L);
    long code = 0, ver = 0;
    if (curl_easy_perform(e) == CURLE_OK) {
      curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
      curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &ver);
    }
    curl_easy_cleanup(e);
    curl_slist_free_all(hl);
    free(rq);
    char out[64];
    int n = snprintf(out, sizeof out, "%ld %ld", code, ver);
    _exit(write(fds[1], out, (size_t)n) < 0 ? 1 : 0);
  }
  close(fds[1]);
  int status;
  double end = now_s() + 15;
  while (waitpid(pid, &status, WNOHANG) == 0 && now_s() < end) tw_client_step(c, 10);
  char res[64] = {0};
  if (read(fds[0], res, sizeof res - 1) < 0) res[0] = 0;
  close(fds[0]);
  long code = 0, ver = 0;
  sscanf(res, "%ld %ld", &code, &ver);
  ok(code == 204 && ver == CURL_HTTP_VERSION_1_1 && st->notifications == before + 1,
     "a signed notification over HTTPS (HTTP/1.1 by ALPN): %ld, delivered", code);
  free(rq);
  tw_webhook_close(w);
  tw_httpd_close(h);
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) ok(0, "cleanup");
}

int main(void) {
  tw_set_lws_log_level(0);
  parser_tests();
  int sanitized = getenv("SANITIZED") && *getenv("SANITIZED");
  state *st = calloc(1, sizeof *st);
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = "test-client";
  o.access_token = "test-token";
  o.api_base = "http://127.0.0.1:9/helix";
  o.auth_base = "http://127.0.0.1:9/oauth2";
  o.eventsub_ws = "ws://127.0.0.1:9/ws";
  tw_client *c = tw_client_new(&o, &err);
  ok(c != NULL, "client: %s", c ? "created" : err.message);
  if (!c) return done_testing();
  st->c = c;
  tw_client_on_event(c, on_event, st);
  tw_httpd_opts ho = TW_HTTPD_OPTS_INIT;
  ho.max_body = 65536;
  ho.max_conns = 6;
  ho.request_timeout_s = 1.0;
  tw_httpd *h = tw_httpd_open(c, &ho, &err);
  ok(h != NULL && tw_httpd_port(h) > 0, "server listens on a free port");
  port = tw_httpd_port(h);
  tw_webhook_opts wo = {.path = "/wh", .secret = SECRET};
  tw_webhook *w = tw_webhook_listen(h, &wo, &err);
  ok(w != NULL, "webhook route");
  tw_webhook_opts bad = {.path = "/bad", .secret = "short"};
  ok(tw_webhook_listen(h, &bad, &err) == NULL && strcmp(err.code, "invalid_argument") == 0,
     "a secret under 10 characters is refused");

  double now = wall();
  ok(send_one(c, request("/wh", "notification", "m-1", now, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL)) == 204 &&
         st->notifications == 1 && strcmp(st->last_id, "m-1") == 0 && st->last_transport == TW_TRANSPORT_WEBHOOK &&
         strcmp(st->last_type, "stream.online") == 0,
     "a signed notification: 204, delivered once with its id, type and transport webhook");
  ok(send_one(c, request("/wh", "notification", "m-1", now, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL)) == 204 &&
         st->notifications == 1,
     "the same id again: 204 (Twitch stops retrying), not delivered");
  ok(send_one(c, request("/wh", "notification", "m-2", now, NOTIF_BODY, "another-secret-xyz", NULL, strlen(NOTIF_BODY),
                         NULL)) == 403 &&
         st->notifications == 1,
     "a forged signature: 403, not delivered");
  ok(send_one(c, request("/wh", "notification", "m-2", now, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL)) == 204 &&
         st->notifications == 2 && strcmp(st->last_id, "m-2") == 0,
     "the real message with the forged one's id is still delivered (a forgery spends no id)");
  ok(send_one(c, request("/wh", "notification", "m-3", now, NOTIF_BODY, NULL, "sha256=zz", strlen(NOTIF_BODY), NULL)) ==
             403 &&
         send_one(c, request("/wh", "notification", "m-3", now, NOTIF_BODY, NULL,
                             "md5=00000000000000000000000000000000000000000000000000000000000000000",
                             strlen(NOTIF_BODY), NULL)) == 403,
     "malformed signatures: 403");
  const char *nohdr = "POST /wh HTTP/1.1\r\nTwitch-Eventsub-Message-Id: m-4\r\nContent-Length: 2\r\n\r\n{}";
  ok(roundtrip(c, nohdr, strlen(nohdr), NULL) == 400, "missing headers: 400");
  ok(send_one(c, request("/wh", "notification", "m-5", now - 601, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL)) ==
         403,
     "a correctly signed message older than 10 minutes: 403");
  ok(send_one(c, request("/wh", "notification", "m-6", now + 90, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL)) ==
         403,
     "a correctly signed message 90 s in the future: 403");
  ok(send_one(c, request("/wh", "notification", "m-7", now, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY) - 20, NULL)) ==
         403,
     "a truncated body (signed whole, sent short): 403");
  ok(send_one(c, request("/wh", "notification", "m-6", now, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL)) == 204 &&
         st->notifications == 3,
     "ids refused for their timestamp are not spent either");
  const char *getr = "GET /wh HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
  ok(roundtrip(c, getr, strlen(getr), NULL) == 405, "not POST: 405");
  const char *nf = "POST /nowhere HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
  ok(roundtrip(c, nf, strlen(nf), NULL) == 404, "an unknown path: 404");

  /* a challenge: 200 text/plain with the raw challenge and its length */
  const char *chb = "{\"challenge\":\"pogchamp-kappa-360noscope-vohiyo\",\"subscription\":{\"id\":\"sub-9\","
                    "\"status\":\"webhook_callback_verification_pending\",\"type\":\"stream.online\",\"version\":\"1\"}}";
  char *resp = NULL;
  char *rq = request("/wh", "webhook_callback_verification", "m-ch", now, chb, NULL, NULL, strlen(chb), NULL);
  int s = roundtrip(c, rq, strlen(rq), &resp);
  free(rq);
  char *bodyp = resp ? strstr(resp, "\r\n\r\n") : NULL;
  ok(s == 200 && strstr(resp, "Content-Type: text/plain") && strstr(resp, "Content-Length: 32\r\n") && bodyp &&
         strcmp(bodyp + 4, "pogchamp-kappa-360noscope-vohiyo") == 0,
     "a challenge: 200 text/plain, Content-Length, the raw challenge");
  free(resp);

  /* revocation */
  const char *rvb = "{\"subscription\":{\"id\":\"sub-1\",\"status\":\"authorization_revoked\",\"type\":\"stream.online\","
                    "\"version\":\"1\"}}";
  ok(send_one(c, request("/wh", "revocation", "m-rv", now, rvb, NULL, NULL, strlen(rvb), NULL)) == 204 &&
         st->revocations == 1 && strcmp(st->last_status, "authorization_revoked") == 0,
     "a revocation: 204 and the revocation event with the status");

  /* pipelining on one keep-alive connection: answers in order */
  char *p1 = request("/wh", "notification", "m-p1", now, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL);
  char *p2 = request("/wh", "notification", "m-p2", now, NOTIF_BODY, "wrong-secret-123", NULL, strlen(NOTIF_BODY), NULL);
  char *p3 = request("/wh", "notification", "m-p3", now, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL);
  size_t l1 = strlen(p1), l2 = strlen(p2), l3 = strlen(p3);
  char *all = malloc(l1 + l2 + l3 + 1);
  memcpy(all, p1, l1);
  memcpy(all + l1, p2, l2);
  memcpy(all + l1 + l2, p3, l3 + 1);
  int fd = sock_open(), closed;
  sock_send(c, fd, all, l1 + l2 + l3);
  resp = read_responses(c, fd, 3, 5, &closed);
  char *r1 = strstr(resp, "HTTP/1.1 "), *r2 = r1 ? strstr(r1 + 1, "HTTP/1.1 ") : NULL,
       *r3 = r2 ? strstr(r2 + 1, "HTTP/1.1 ") : NULL;
  ok(r3 && status_of(r1) == 204 && status_of(r2) == 403 && status_of(r3) == 204 && !closed && st->notifications == 5,
     "three pipelined requests: 204, 403, 204 in order, the connection kept");
  free(resp);
  free(p1);
  free(p2);
  free(p3);
  free(all);

  /* a deferred answer: the sink answers later; the next pipelined request waits */
  tw_webhook_set_sink(w, sink, st);
  p1 = request("/wh", "notification", "m-d1", now, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL);
  sock_send(c, fd, p1, strlen(p1));
  sock_send(c, fd, p1, strlen(p1));
  resp = read_responses(c, fd, 1, 0.3, &closed);
  ok(resp[0] == 0 && st->sunk == 1 && st->held != NULL, "a sink holds the answer: nothing written yet, one request taken");
  free(resp);
  tw_httpd_reply *held = st->held;
  st->held = NULL; /* the next request may reach the sink inside the call below */
  tw_httpd_respond(held, 204, NULL, NULL, 0, NULL);
  resp = read_responses(c, fd, 1, 5, &closed);
  ok(status_of(resp) == 204 && st->sunk == 2 && st->held != NULL, "answered later: 204, then the next request reaches the sink");
  free(resp);
  close(fd);
  tw_client_step(c, 20);
  ok(tw_httpd_reply_gone(st->held), "its connection closed meanwhile: the reply says so");
  tw_httpd_respond(st->held, 204, NULL, NULL, 0, NULL); /* goes nowhere, frees the connection */
  st->held = NULL;
  /* held longer than request_timeout (1 s): the application's delay is no 408 */
  fd = sock_open();
  sock_send(c, fd, p1, strlen(p1));
  uint64_t t1 = tw_client_now_ms(c);
  int turns = 0;
  while (tw_client_now_ms(c) - t1 < 1300) {
    tw_client_step(c, 50);
    turns++;
  }
  held = st->held;
  st->held = NULL;
  ok(held && !tw_httpd_reply_gone(held) && turns < 200,
     "a reply held past request_timeout: the connection waits, its timer does not spin (%d loop turns)", turns);
  tw_httpd_respond(held, 204, NULL, NULL, 0, NULL);
  resp = read_responses(c, fd, 1, 5, &closed);
  ok(status_of(resp) == 204, "then answered 204, not 408");
  free(resp);
  close(fd);
  tw_webhook_set_sink(w, NULL, NULL);
  free(p1);

  /* limits */
  char head[256];
  int n = snprintf(head, sizeof head, "POST /wh HTTP/1.1\r\nContent-Length: %d\r\n\r\n", 10 * 1024 * 1024);
  fd = sock_open();
  sock_send(c, fd, head, (size_t)n);
  char *chunk = calloc(1, 65536);
  memset(chunk, 'x', 65536);
  sock_send(c, fd, chunk, 65536); /* the rest of the 10 MB never needs to be read */
  resp = read_responses(c, fd, 1, 5, &closed);
  ok(status_of(resp) == 413 && st->notifications == 5, "a 10 MB body: 413, nothing delivered");
  free(resp);
  close(fd);

  /* a sender that writes its whole body before it reads (as curl does): the server goes
   * on reading and dropping after its 413, so the connection is not reset under the
   * sender and the answer stays readable */
  fd = sock_open();
  size_t want_sent = 4u << 20, sent = 0;
  int send_failed = 0;
  n = snprintf(head, sizeof head, "POST /wh HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", want_sent);
  sock_send(c, fd, head, (size_t)n);
  double send_end = now_s() + 20;
  while (sent < want_sent && now_s() < send_end) {
    size_t k = want_sent - sent < 65536 ? want_sent - sent : 65536;
    ssize_t wr = send(fd, chunk, k, MSG_NOSIGNAL);
    if (wr > 0) sent += (size_t)wr;
    else if (wr < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) tw_client_step(c, 5);
    else {
      send_failed = errno;
      break;
    }
  }
  resp = read_responses(c, fd, 1, 5, &closed);
  ok(sent == want_sent && !send_failed && status_of(resp) == 413,
     "a 4 MB body written whole before reading: all of it taken (%zu bytes, error %d), then the 413 read (%d)", sent,
     send_failed, status_of(resp));
  free(resp);
  close(fd);
  free(chunk);
  char hdrs[8192];
  n = snprintf(hdrs, sizeof hdrs, "POST /wh HTTP/1.1\r\n");
  for (int i = 0; i < 80; i++) n += snprintf(hdrs + n, sizeof hdrs - (size_t)n, "X-%d: y\r\n", i);
  n += snprintf(hdrs + n, sizeof hdrs - (size_t)n, "\r\n");
  ok(roundtrip(c, hdrs, (size_t)n, NULL) == 431, "80 headers: 431");
  /* a request trickling in one byte every 100 ms: 408 after request_timeout (1 s) */
  p1 = request("/wh", "notification", "m-t", now, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL);
  fd = sock_open();
  int got = 0;
  closed = 0;
  for (size_t i = 0; i < strlen(p1) && !closed && !got; i++) {
    sock_send(c, fd, p1 + i, 1);
    double until = now_s() + 0.1;
    while (now_s() < until) tw_client_step(c, 20);
    char b[512];
    ssize_t r = recv(fd, b, sizeof b - 1, 0);
    if (r > 0) {
      b[r] = 0;
      got = status_of(b);
    } else if (r == 0) {
      closed = 1;
    }
  }
  ok(got == 408 && st->notifications == 5, "a request trickling one byte per 100 ms: 408, not delivered");
  close(fd);
  free(p1);
  /* connections over the cap: 503 */
  int fds[8], nfd = 0;
  for (int i = 0; i < 6; i++) fds[nfd++] = sock_open();
  tw_client_step(c, 20);
  int extra = sock_open();
  resp = read_responses(c, extra, 1, 5, &closed);
  ok(status_of(resp) == 503, "a connection over max_conns: 503");
  free(resp);
  close(extra);
  for (int i = 0; i < nfd; i++) close(fds[i]);
  tw_client_step(c, 20);
  tw_httpd_stats hs;
  tw_httpd_get_stats(h, &hs);
  ok(hs.too_large == 2 && hs.headers_too_large == 1 && hs.timeouts == 1 && hs.refused_conns == 1 && hs.not_found == 1,
     "the server counted each refusal (413 %llu, 431 %llu, 408 %llu, 503 %llu, 404 %llu)",
     (unsigned long long)hs.too_large, (unsigned long long)hs.headers_too_large, (unsigned long long)hs.timeouts,
     (unsigned long long)hs.refused_conns, (unsigned long long)hs.not_found);

  /* rotation: both secrets during the grace period, then only the new one */
  ok(tw_webhook_rotate(w, "the-next-secret-456", 0.3, &err) == 0, "rotate with a 0.3 s grace period");
  ok(send_one(c, request("/wh", "notification", "m-r1", now, NOTIF_BODY, SECRET, NULL, strlen(NOTIF_BODY), NULL)) == 204 &&
         send_one(c, request("/wh", "notification", "m-r2", now, NOTIF_BODY, "the-next-secret-456", NULL,
                             strlen(NOTIF_BODY), NULL)) == 204 &&
         st->notifications == 7,
     "during the grace period: the old and the new secret");
  uint64_t t0 = tw_client_now_ms(c);
  while (tw_client_now_ms(c) - t0 < 400) tw_client_step(c, 50);
  ok(send_one(c, request("/wh", "notification", "m-r3", now, NOTIF_BODY, SECRET, NULL, strlen(NOTIF_BODY), NULL)) == 403 &&
         st->notifications == 7,
     "after it: the old secret is refused");
  tw_webhook_stats ws;
  tw_webhook_get_stats(w, &ws);
  ok(ws.old_secret == 1 && ws.duplicates == 1 && ws.stale == 1 && ws.future == 1 && ws.bad_signature >= 5,
     "route counters: old_secret %llu, duplicates %llu, stale %llu, future %llu, bad_signature %llu",
     (unsigned long long)ws.old_secret, (unsigned long long)ws.duplicates, (unsigned long long)ws.stale,
     (unsigned long long)ws.future, (unsigned long long)ws.bad_signature);
  ok(st->errors == 0, "no error events: refusals are answered and counted, never passed on");

  /* the emulator's own signer agrees with the receiver */
  mock m = {0};
  if (!sanitized && mock_start(&m) == 0) {
    char ts[64], body[1024];
    iso(wall(), ts, sizeof ts);
    cJSON *q = cJSON_CreateObject();
    cJSON_AddStringToObject(q, "secret", "the-next-secret-456");
    cJSON_AddStringToObject(q, "message_id", "m-emu");
    cJSON_AddStringToObject(q, "timestamp", ts);
    cJSON_AddStringToObject(q, "body", NOTIF_BODY);
    char *qs = cJSON_PrintUnformatted(q);
    cJSON *a = mock_call(&m, "POST", "/sign", qs);
    cJSON *sg = a ? cJSON_GetObjectItemCaseSensitive(a, "signature") : NULL;
    snprintf(body, sizeof body, "%s", cJSON_IsString(sg) ? sg->valuestring : "");
    rq = request("/wh", "notification", "m-emu", now, NOTIF_BODY, NULL, body, strlen(NOTIF_BODY), NULL);
    /* the request's own timestamp must be the signed one */
    char *tsp = strstr(rq, "Timestamp: ") + 11;
    memcpy(tsp, ts, strlen(ts));
    ok(roundtrip(c, rq, strlen(rq), NULL) == 204 && st->notifications == 8, "a signature made by the emulator verifies");
    free(rq);
    free(qs);
    cJSON_Delete(q);
    cJSON_Delete(a);
    mock_stop(&m);
  }

  tls_test(c, st, now);

  /* a batched type: the events array as Twitch sent it */
  const char *bb = "{\"subscription\":{\"id\":\"sub-b\",\"status\":\"enabled\",\"type\":\"channel.batch.test\","
                   "\"version\":\"1\"},\"events\":[{\"id\":\"1\"},{\"id\":\"2\"},{\"id\":\"3\"}]}";
  int nb = st->notifications;
  ok(send_one(c, request("/wh", "notification", "m-batch", now, bb, "the-next-secret-456", NULL, strlen(bb), NULL)) == 204 &&
         st->notifications == nb + 1 && st->last_event_len == 3,
     "a batched notification: one delivery with its events array (3)");

  tw_webhook_close(w);
  ok(send_one(c, request("/wh", "notification", "m-x", now, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL)) == 404,
     "a closed route: 404");
  tw_httpd_close(h);
  tw_client_step(c, 20);
  ok(sock_open() < 0, "a closed server no longer listens");
  ok(tw_client_free(c) == TW_OK, "client freed");
  /* a client freed with its server open and a request half-way in */
  c = tw_client_new(&o, &err);
  h = c ? tw_httpd_open(c, NULL, &err) : NULL;
  w = h ? tw_webhook_listen(h, &wo, &err) : NULL;
  port = tw_httpd_port(h);
  fd = sock_open();
  const char *half = "POST /wh HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc";
  sock_send(c, fd, half, strlen(half));
  tw_client_step(c, 20);
  ok(w && fd >= 0 && tw_client_free(c) == TW_OK, "a client freed with its server, a route and a connection open");
  tw_webhook_close(w); /* after the client: only frees */
  close(fd);
  free(st);
  return done_testing();
}
