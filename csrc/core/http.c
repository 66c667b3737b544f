/* http.c - libcurl multi driven by the client's libuv loop.
 *
 * One uv_poll_t per socket curl asks about (CURLMOPT_SOCKETFUNCTION), one uv_timer_t for
 * curl's timeout (CURLMOPT_TIMERFUNCTION). Completions are collected with
 * curl_multi_info_read after curl returns, and only then handed to callbacks, so the
 * callbacks may start new requests freely. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

struct tw_http_req {
  tw_http *h;
  CURL *easy;
  struct curl_slist *headers;
  char *body;
  tw_buf resp;
  tw_http_fn cb;
  void *user;
  int rl_limit, rl_remaining;
  int64_t rl_reset;
  size_t max_body;      /* 0: 64 MB */
  bool too_large;
  char errbuf[CURL_ERROR_SIZE];
  tw_http_req *next, *prev;
};

typedef struct sock {
  uv_poll_t poll;
  curl_socket_t fd;
  tw_http *h;
  struct sock *next, *prev;
} sock;

struct tw_http {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;
  tw_http_req *reqs;
  sock *socks;
  bool in_check;
};

static void check_done(tw_http *h);

static void on_poll(uv_poll_t *p, int status, int events) {
  sock *s = p->data;
  tw_http *h = s->h;
  int how = 0, running;
  if (status < 0) how = CURL_CSELECT_ERR;
  else {
    if (events & UV_READABLE) how |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) how |= CURL_CSELECT_OUT;
  }
  curl_multi_socket_action(h->multi, s->fd, how, &running);
  check_done(h);
}

static void free_sock(uv_handle_t *hd) { free(hd->data); }

static void sock_close(sock *s) {
  tw_http *h = s->h;
  if (s->prev) s->prev->next = s->next;
  else h->socks = s->next;
  if (s->next) s->next->prev = s->prev;
  uv_poll_stop(&s->poll);
  uv_close((uv_handle_t *)&s->poll, free_sock); /* freed later: safe inside on_poll */
  curl_multi_assign(h->multi, s->fd, NULL);
}

static int on_socket(CURL *e, curl_socket_t fd, int what, void *up, void *sp) {
  tw_http *h = up;
  sock *s = sp;
  (void)e;
  if (what == CURL_POLL_REMOVE) {
    if (s) sock_close(s);
    return 0;
  }
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->fd = fd;
    s->h = h;
    if (uv_poll_init_socket(h->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->poll.data = s;
    s->next = h->socks;
    if (h->socks) h->socks->prev = s;
    h->socks = s;
    curl_multi_assign(h->multi, fd, s);
  }
  int ev = 0;
  if (what & CURL_POLL_IN) ev |= UV_READABLE;
  if (what & CURL_POLL_OUT) ev |= UV_WRITABLE;
  uv_poll_start(&s->poll, ev, on_poll);
  return 0;
}

static void on_timer(uv_timer_t *t) {
  tw_http *h = t->data;
  int running;
  curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(h);
}

static int on_curl_timer(CURLM *m, long ms, void *up) {
  tw_http *h = up;
  (void)m;
  if (ms < 0) uv_timer_stop(&h->timer);
  else uv_timer_start(&h->timer, on_timer, (uint64_t)ms, 0); /* 0: next iteration, never inline */
  return 0;
}

tw_http *tw_http_new(uv_loop_t *loop) {
  tw_http *h = calloc(1, sizeof *h);
  if (!h) return NULL;
  h->loop = loop;
  h->multi = curl_multi_init();
  if (!h->multi) {
    free(h);
    return NULL;
  }
  uv_timer_init(loop, &h->timer);
  h->timer.data = h;
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
  curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 16L);
  return h;
}

static void req_free(tw_http_req *r) {
  tw_http *h = r->h;
  if (r->prev) r->prev->next = r->next;
  else h->reqs = r->next;
  if (r->next) r->next->prev = r->prev;
  curl_multi_remove_handle(h->multi, r->easy);
  curl_easy_cleanup(r->easy);
  curl_slist_free_all(r->headers);
  free(r->body);
  tw_buf_free(&r->resp);
  free(r);
}

static void free_http(uv_handle_t *hd) { free(hd->data); }

void tw_http_free(tw_http *h) {
  if (!h) return;
  while (h->reqs) { /* cancelled: the owner frees its state, nothing reaches users */
    tw_http_req *r = h->reqs;
    tw_http_result out = {.status = -1, .curl = CURLE_ABORTED_BY_CALLBACK, .body = "", .curl_error = "cancelled",
                          .rl_limit = -1, .rl_remaining = -1, .rl_reset = -1};
    if (r->cb) r->cb(r->user, &out);
    req_free(r);
  }
  while (h->socks) sock_close(h->socks); /* curl may not report REMOVE for cached sockets */
  curl_multi_cleanup(h->multi); /* removes remaining sockets through on_socket */
  uv_timer_stop(&h->timer);
  h->timer.data = h;
  uv_close((uv_handle_t *)&h->timer, free_http);
}


static size_t on_write(char *p, size_t sz, size_t n, void *ud) {
  tw_http_req *r = ud;
  if (r->resp.len + sz * n > (r->max_body ? r->max_body : (64u << 20))) { /* refuse absurd bodies */
    r->too_large = true;
    return 0;
  }
  return tw_buf_append(&r->resp, p, sz * n) == 0 ? sz * n : 0;
}

static int header_int(const char *p, size_t n, const char *name, int64_t *out) {
  size_t ln = strlen(name);
  if (n <= ln + 1 || strncasecmp(p, name, ln) != 0 || p[ln] != ':') return 0;
  const char *v = p + ln + 1;
  const char *end = p + n;
  while (v < end && (*v == ' ' || *v == '\t')) v++;
  int64_t x = 0;
  int any = 0;
  while (v < end && *v >= '0' && *v <= '9') {
    x = x * 10 + (*v - '0');
    v++;
    any = 1;
    if (x > (int64_t)1 << 50) break;
  }
  if (!any) return 0;
  *out = x;
  return 1;
}

void tw_http_header_line(const char *p, size_t len, int *limit, int *remaining, int64_t *reset) {
  int64_t v;
  if (len >= 7 && strncmp(p, "HTTP/", 5) == 0) { /* a new response (redirect/100): reset */
    *limit = *remaining = -1;
    *reset = -1;
  } else if (header_int(p, len, "ratelimit-remaining", &v)) *remaining = v > INT_MAX ? INT_MAX : (int)v;
  else if (header_int(p, len, "ratelimit-limit", &v)) *limit = v > INT_MAX ? INT_MAX : (int)v;
  else if (header_int(p, len, "ratelimit-reset", &v)) *reset = v;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud) {
  tw_http_req *r = ud;
  tw_http_header_line(p, sz * n, &r->rl_limit, &r->rl_remaining, &r->rl_reset);
  return sz * n;
}

tw_http_req *tw_http_start(tw_http *h, const char *method, const char *url, const char *const *headers,
                           const char *body, size_t body_len, long timeout_ms, tw_http_fn cb, void *user) {
  tw_http_req *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->h = h;
  r->cb = cb;
  r->user = user;
  r->rl_limit = r->rl_remaining = -1;
  r->rl_reset = -1;
  r->easy = curl_easy_init();
  if (!r->easy) {
    free(r);
    return NULL;
  }
  for (size_t i = 0; headers && headers[i]; i++) {
    struct curl_slist *l = curl_slist_append(r->headers, headers[i]);
    if (!l) goto fail;
    r->headers = l;
  }
  CURL *e = r->easy;
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  if (strcmp(method, "GET") == 0) curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  if (body) {
    r->body = tw_strndup(body, body_len);
    if (!r->body) goto fail;
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)body_len);
  } else if (strcmp(method, "POST") == 0 || strcmp(method, "PATCH") == 0 || strcmp(method, "PUT") == 0) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 10000 ? timeout_ms : 10000L);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  r->next = h->reqs;
  if (h->reqs) h->reqs->prev = r;
  h->reqs = r;
  if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
    req_free(r);
    return NULL;
  }
  return r;
fail:
  curl_slist_free_all(r->headers);
  curl_easy_cleanup(r->easy);
  free(r);
  return NULL;
}

static void check_done(tw_http *h) {
  if (h->in_check) return;
  h->in_check = true;
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(h->multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    tw_http_req *r = NULL;
    CURLcode res = m->data.result; /* read before remove: m is invalid afterwards */
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(h->multi, r->easy);
    if (res != CURLE_OK) tw_buf_free(&r->resp); /* a failed transfer's body is never parsed */
    tw_http_result out = {
        .status = res == CURLE_OK ? (int)status : 0,
        .curl = res,
        .too_large = r->too_large,
        .body = r->resp.p ? r->resp.p : "",
        .body_len = r->resp.len,
        .rl_limit = r->rl_limit,
        .rl_remaining = r->rl_remaining,
        .rl_reset = r->rl_reset,
        .curl_error = r->too_large ? "response too large" : r->errbuf[0] ? r->errbuf : curl_easy_strerror(res),
    };
    if (r->cb) r->cb(r->user, &out);
    req_free(r);
  }
  h->in_check = false;
}

void tw_http_set_max_body(tw_http_req *r, size_t max) {
  if (r) r->max_body = max;
}
