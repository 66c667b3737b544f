/* httpd.c - a small HTTP/1.1 server on the client's libuv loop.
 *
 * It exists for the webhook receiver (webhook.c) and for other routes on the same port
 * (metrics, a status page): exact-path routes, keep-alive and pipelining, Content-Length
 * bodies only, optional TLS over OpenSSL memory BIOs, and hard limits — body size (413),
 * header bytes and count (431), a started request must be whole within
 * request_timeout_s (408), at most max_conns connections (503 for the next). Every
 * refusal is answered with its status, counted, and closes the connection.
 *
 * A route may answer later than its call (tw_httpd_respond from any later loop turn):
 * the connection then holds its next pipelined requests, so answers keep request order.
 * The reply lives inside the connection; a connection closed while its reply is pending
 * stays allocated (socket gone) until the reply is given, which then goes nowhere.
 *
 * tw_http_parse is pure (no allocation, no state): the fuzzer calls it directly. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "internal.h"

/* ---- parsing ---- */

static bool tchar(unsigned char ch) {
  return isalnum(ch) || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static bool ieq(const char *a, size_t alen, const char *b) {
  size_t blen = strlen(b);
  if (alen != blen) return false;
  for (size_t i = 0; i < alen; i++)
    if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i])) return false;
  return true;
}

const char *tw_http_header_get(const tw_http_request *rq, const char *name, size_t *len) {
  for (int i = 0; i < rq->nheaders; i++)
    if (ieq(rq->headers[i].name, rq->headers[i].name_len, name)) {
      if (len) *len = rq->headers[i].value_len;
      return rq->headers[i].value;
    }
  return NULL;
}

/* contains token tok in a comma-separated header value (case-insensitive) */
static bool has_token(const char *v, size_t n, const char *tok) {
  size_t i = 0;
  while (i < n) {
    while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
    size_t s = i;
    while (i < n && v[i] != ',') i++;
    size_t e = i;
    while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
    if (e > s && ieq(v + s, e - s, tok)) return true;
  }
  return false;
}

long tw_http_parse(const char *buf, size_t len, const tw_http_limits *lim, tw_http_request *rq) {
  rq->head_len = 0;
  rq->body_len = 0;
  size_t maxh = lim->max_header_bytes;
  /* end of the head: the first CRLF CRLF (a bare LF LF is accepted too) */
  size_t scan = len < maxh + 4 ? len : maxh + 4, end = 0;
  for (size_t i = 0; i + 1 < scan; i++) {
    if (buf[i] != '\n') continue;
    if (buf[i + 1] == '\n') {
      end = i + 2;
      break;
    }
    if (buf[i + 1] == '\r' && i + 2 < scan && buf[i + 2] == '\n') {
      end = i + 3;
      break;
    }
  }
  if (!end) {
    if (len > maxh) return -431;
    /* a request line that already cannot be valid is refused without waiting */
    for (size_t i = 0; i < len && buf[i] != '\n'; i++)
      if (buf[i] == '\0') return -400;
    return 0;
  }
  if (end > maxh + 4) return -431;
  rq->nheaders = 0;
  rq->query = NULL;
  rq->query_len = 0;
  rq->body = NULL;
  rq->body_len = 0;
  rq->head_len = end;
  /* request line: METHOD SP target SP HTTP/1.x */
  size_t p = 0;
  while (p < end && tchar((unsigned char)buf[p])) p++;
  if (p == 0 || p >= end || buf[p] != ' ') return -400;
  rq->method = buf;
  rq->method_len = p;
  size_t t0 = ++p;
  while (p < end && buf[p] != ' ' && buf[p] != '\r' && buf[p] != '\n') {
    if ((unsigned char)buf[p] <= 0x20 || (unsigned char)buf[p] == 0x7f) return -400;
    p++;
  }
  if (p == t0 || p >= end || buf[p] != ' ' || buf[t0] != '/') return -400;
  rq->path = buf + t0;
  const char *q = memchr(buf + t0, '?', p - t0);
  rq->path_len = q ? (size_t)(q - (buf + t0)) : p - t0;
  if (q) {
    rq->query = q + 1;
    rq->query_len = (size_t)(buf + p - (q + 1));
  }
  p++;
  if (end - p < 9 || memcmp(buf + p, "HTTP/1.", 7) != 0) {
    if (end - p >= 5 && memcmp(buf + p, "HTTP/", 5) == 0) return -505;
    return -400;
  }
  if (buf[p + 7] != '0' && buf[p + 7] != '1') return -505;
  rq->minor = buf[p + 7] - '0';
  p += 8;
  if (buf[p] == '\r') p++;
  if (buf[p] != '\n') return -400;
  p++;
  /* headers */
  bool have_cl = false, conn_close = false, conn_keep = false;
  size_t cl = 0;
  while (p < end) {
    if (buf[p] == '\n') break;
    if (buf[p] == '\r' && p + 1 < end && buf[p + 1] == '\n') break;
    size_t n0 = p;
    while (p < end && tchar((unsigned char)buf[p])) p++;
    if (p == n0 || p >= end || buf[p] != ':') return -400; /* also refuses obs-fold */
    size_t nlen = p - n0;
    p++;
    while (p < end && (buf[p] == ' ' || buf[p] == '\t')) p++;
    size_t v0 = p;
    while (p < end && buf[p] != '\n') {
      unsigned char ch = (unsigned char)buf[p];
      if ((ch < 0x20 && ch != '\t' && ch != '\r') || ch == 0x7f) return -400;
      if (ch == '\r' && (p + 1 >= end || buf[p + 1] != '\n')) return -400;
      p++;
    }
    if (p >= end) return -400;
    size_t v1 = p;
    p++;
    while (v1 > v0 && (buf[v1 - 1] == '\r' || buf[v1 - 1] == ' ' || buf[v1 - 1] == '\t')) v1--;
    if (rq->nheaders >= lim->max_headers || rq->nheaders >= TW_HTTP_MAX_HEADERS) return -431;
    tw_http_header *h = &rq->headers[rq->nheaders++];
    h->name = buf + n0;
    h->name_len = nlen;
    h->value = buf + v0;
    h->value_len = v1 - v0;
    if (ieq(h->name, nlen, "content-length")) {
      if (h->value_len == 0 || h->value_len > 18) return h->value_len > 18 ? -413 : -400;
      size_t v = 0;
      for (size_t i = 0; i < h->value_len; i++) {
        if (h->value[i] < '0' || h->value[i] > '9') return -400;
        v = v * 10 + (size_t)(h->value[i] - '0');
      }
      if (have_cl && v != cl) return -400; /* differing lengths: request smuggling */
      have_cl = true;
      cl = v;
    } else if (ieq(h->name, nlen, "transfer-encoding")) {
      return -501;
    } else if (ieq(h->name, nlen, "connection")) {
      conn_close |= has_token(h->value, h->value_len, "close");
      conn_keep |= has_token(h->value, h->value_len, "keep-alive");
    }
  }
  rq->keep_alive = rq->minor == 1 ? !conn_close : conn_keep && !conn_close;
  if (have_cl && cl > lim->max_body) return -413;
  if (!have_cl) cl = 0;
  rq->body_len = cl;
  if (len - end < cl) return 0; /* head_len and body_len tell how much is still to come */
  rq->body = buf + end;
  rq->body_len = cl;
  return (long)(end + cl);
}

/* ---- the server ---- */

typedef struct route {
  char *path;
  size_t len;
  tw_httpd_route_fn fn;
  void *user;
  void (*drop)(void *user); /* told when the server closes (internal users) */
} route;

typedef struct conn conn;

struct tw_httpd_reply {
  conn *cn;
  bool pending; /* a route was called and has not answered */
};

struct conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  tw_httpd *h;
  char *in;           /* plaintext received, [off, off+len) unparsed */
  size_t off, len, cap;
  size_t need;        /* > 0: bytes the current request takes (head parsed, body coming) */
  size_t used;        /* bytes of the request being answered */
  uint64_t req_start; /* loop ms when the current request's first byte came; 0: idle */
  uint64_t last;      /* loop ms of the last activity */
  tw_httpd_reply reply;
  bool closing, processing, close_after, closed_handles, reading;
  bool lingering, shut_done, peer_eof; /* closing: the peer's bytes read and dropped until it ends */
  size_t discarded;
  uv_shutdown_t sd;
  int handles;        /* uv handles still to be closed */
  SSL *ssl;
  BIO *rbio, *wbio;
  tw_buf out;         /* answers of one processing pass, written at its end (one write
                         for a pipelined batch) */
  conn *prev, *next;
};

struct tw_httpd {
  tw_client *c;
  uv_tcp_t listener;
  bool listening, closing, freed_listener;
  bool abort;         /* the client is being freed: connections close at once */
  int port;
  route *routes;
  int nroutes, cap_routes;
  tw_httpd_opts o;
  tw_http_limits lim;
  SSL_CTX *ssl_ctx;
  conn *conns;
  conn *lingering; /* closing connections still reading (prev/next link them) */
  int nlinger;      /* how many: at most max_conns (a flood of refusals lingers no more) */
  int nconns;
  int live;           /* connections not yet freed (pending replies keep them) */
  tw_httpd_stats st;
  char tls_scratch[65536]; /* ciphertext read buffer (one loop thread: one at a time) */
  struct tw_httpd *next; /* the client's servers */
};

typedef struct wreq {
  uv_write_t w;
  uv_buf_t b;
  char data[];
} wreq;

static void conn_close(conn *cn);
static void process(conn *cn);

/* the server leaves the client's list when it closes, so what is freed later (close
 * callbacks, perhaps on a host's loop after tw_client_free) never touches the client */
static void unlink_server(tw_httpd *h) {
  for (tw_httpd **pp = &h->c->httpds; *pp; pp = &(*pp)->next)
    if (*pp == h) {
      *pp = h->next;
      break;
    }
  h->next = NULL;
}

static void maybe_free_server(tw_httpd *h) {
  if (!h->closing || !h->freed_listener || h->live > 0) return;
  for (int i = 0; i < h->nroutes; i++) free(h->routes[i].path);
  free(h->routes);
  if (h->ssl_ctx) SSL_CTX_free(h->ssl_ctx);
  free(h);
}

static void conn_maybe_free(conn *cn) {
  if (!cn->closed_handles || cn->handles > 0 || cn->reply.pending) return;
  tw_httpd *h = cn->h;
  if (cn->ssl) SSL_free(cn->ssl); /* frees both BIOs */
  free(cn->in);
  tw_buf_free(&cn->out);
  free(cn);
  h->live--;
  maybe_free_server(h);
}

static void on_conn_handle_closed(uv_handle_t *hd) {
  conn *cn = hd->data;
  cn->handles--;
  conn_maybe_free(cn);
}

static void on_write(uv_write_t *w, int status) {
  (void)status;
  free(w->data);
}

/* writes raw bytes (ciphertext or plaintext) to the socket */
static void sock_write(conn *cn, const char *p, size_t n) {
  if (cn->closing || n == 0) return;
  uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
  int r = uv_try_write((uv_stream_t *)&cn->tcp, &b, 1);
  if (r == (int)n) return;
  if (r < 0 && r != UV_EAGAIN) {
    conn_close(cn);
    return;
  }
  size_t done = r > 0 ? (size_t)r : 0;
  wreq *wr = malloc(sizeof *wr + (n - done));
  if (!wr) {
    conn_close(cn);
    return;
  }
  memcpy(wr->data, p + done, n - done);
  wr->b = uv_buf_init(wr->data, (unsigned)(n - done));
  wr->w.data = wr;
  if (uv_write(&wr->w, (uv_stream_t *)&cn->tcp, &wr->b, 1, on_write) != 0) {
    free(wr);
    conn_close(cn);
  }
}

static void tls_flush(conn *cn) {
  char buf[16384];
  int n;
  while ((n = BIO_read(cn->wbio, buf, sizeof buf)) > 0) sock_write(cn, buf, (size_t)n);
}

static void conn_write_now(conn *cn, const char *p, size_t n) {
  if (!cn->ssl) {
    sock_write(cn, p, n);
    return;
  }
  while (n > 0 && !cn->closing) {
    int w = SSL_write(cn->ssl, p, n > 1 << 30 ? 1 << 30 : (int)n);
    if (w <= 0) {
      cn->h->st.tls_errors++;
      conn_close(cn);
      return;
    }
    p += w;
    n -= (size_t)w;
    tls_flush(cn);
  }
}

/* writes what the pass answered */
static void flush_out(conn *cn) {
  if (cn->out.len == 0) return;
  size_t n = cn->out.len;
  cn->out.len = 0;
  conn_write_now(cn, cn->out.p, n);
}

static void conn_write(conn *cn, const char *p, size_t n) {
  if (cn->closing) return;
  if (!cn->processing) {
    conn_write_now(cn, p, n);
    return;
  }
  if (tw_buf_append(&cn->out, p, n) != 0) {
    flush_out(cn);
    conn_write_now(cn, p, n);
  } else if (cn->out.len >= 65536) {
    flush_out(cn);
  }
}

static const char *reason(int status) {
  switch (status) {
  case 200: return "OK";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 400: return "Bad Request";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 413: return "Content Too Large";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 503: return "Service Unavailable";
  case 505: return "HTTP Version Not Supported";
  default: return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
  }
}

static void send_response(conn *cn, int status, const char *ctype, const char *body, size_t blen, const char *extra,
                          bool close) {
  char head[512];
  int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\n%s%s%s%s\r\n", status, reason(status),
                   blen, ctype ? "Content-Type: " : "", ctype ? ctype : "", ctype ? "\r\n" : "",
                   close ? "Connection: close\r\n" : "");
  if (n < 0 || (size_t)n >= sizeof head) n = 0;
  size_t elen = extra ? strlen(extra) : 0;
  if (!elen && blen <= 2048) { /* one write for the common small answer */
    char all[512 + 2048];
    memcpy(all, head, (size_t)n);
    if (blen) memcpy(all + n, body, blen);
    conn_write(cn, all, (size_t)n + blen);
  } else {
    if (elen) {
      conn_write(cn, head, (size_t)n - 2);
      conn_write(cn, extra, elen);
      conn_write(cn, "\r\n", 2);
    } else {
      conn_write(cn, head, (size_t)n);
    }
    if (blen) conn_write(cn, body, blen);
  }
  cn->h->st.responses++;
}

/* answers a refused request and closes the connection */
static void refuse(conn *cn, int status) {
  tw_httpd_stats *st = &cn->h->st;
  if (status == 413) st->too_large++;
  else if (status == 431) st->headers_too_large++;
  else if (status == 408) st->timeouts++;
  else if (status == 503) st->refused_conns++;
  else st->bad_requests++;
  char msg[64];
  int n = snprintf(msg, sizeof msg, "%d %s\n", status, reason(status));
  send_response(cn, status, "text/plain", msg, (size_t)n, NULL, true);
  flush_out(cn);
  conn_close(cn);
}

/* a server's connection lists (open: h->conns, lingering: h->lingering) */
static void conn_push(conn **head, conn *cn) {
  cn->prev = NULL;
  cn->next = *head;
  if (*head) (*head)->prev = cn;
  *head = cn;
}
static void conn_unlink(conn **head, conn *cn) {
  if (cn->prev) cn->prev->next = cn->next;
  else *head = cn->next;
  if (cn->next) cn->next->prev = cn->prev;
  cn->prev = cn->next = NULL;
}

static void finish_close(conn *cn) {
  if (cn->closed_handles) return;
  cn->closed_handles = true;
  if (cn->lingering) {
    cn->h->nlinger--;
    conn_unlink(&cn->h->lingering, cn);
  }
  uv_timer_stop(&cn->timer);
  uv_close((uv_handle_t *)&cn->timer, on_conn_handle_closed);
  uv_close((uv_handle_t *)&cn->tcp, on_conn_handle_closed);
}

static void on_shutdown(uv_shutdown_t *sd, int status) {
  conn *cn = sd->data;
  cn->shut_done = true;
  if (status < 0 || !cn->lingering || cn->peer_eof) finish_close(cn);
}

/* A lingering close: the answer (a 413 to a body still arriving, say) is written and the
 * write side shut, while what the peer still sends is read and dropped until it ends, up
 * to 16 MB or the close timer's 2 s. Closing with unread bytes would make the kernel
 * reset the connection, and the peer could lose the answer before reading it. */
#define LINGER_MAX (16u << 20)
static void on_alloc_discard(uv_handle_t *hd, size_t sug, uv_buf_t *b) {
  conn *cn = hd->data;
  (void)sug;
  *b = uv_buf_init(cn->h->tls_scratch, sizeof cn->h->tls_scratch);
}
static void on_read_discard(uv_stream_t *st, ssize_t nread, const uv_buf_t *b) {
  conn *cn = st->data;
  (void)b;
  if (nread > 0) cn->discarded += (size_t)nread;
  if (nread < 0 || cn->discarded > LINGER_MAX) {
    cn->peer_eof = true;
    uv_read_stop(st);
    if (cn->shut_done || nread != UV_EOF) finish_close(cn);
  }
}

static void on_close_timer(uv_timer_t *t) { finish_close(t->data); }

/* Closes after the queued answers are written (a peer that does not read gets 2 s). */
static void conn_close(conn *cn) {
  if (cn->closing) return;
  if (!cn->h->abort) flush_out(cn); /* what this pass answered (a route that closed its server) */
  if (cn->closing) return;          /* that write failed and closed it */
  cn->closing = true;
  tw_httpd *h = cn->h;
  conn_unlink(&h->conns, cn);
  h->nconns--;
  h->st.open_conns = h->nconns;
  uv_read_stop((uv_stream_t *)&cn->tcp);
  cn->sd.data = cn;
  if (!h->abort && uv_shutdown(&cn->sd, (uv_stream_t *)&cn->tcp, on_shutdown) == 0) {
    uv_timer_start(&cn->timer, on_close_timer, 2000, 0);
    if (!h->closing && !cn->peer_eof && h->nlinger < h->o.max_conns &&
        uv_read_start((uv_stream_t *)&cn->tcp, on_alloc_discard, on_read_discard) == 0) {
      cn->lingering = true;
      h->nlinger++;
      conn_push(&h->lingering, cn);
    }
  } else {
    finish_close(cn);
  }
}

static void on_alloc(uv_handle_t *hd, size_t sug, uv_buf_t *b);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b);

/* the answered request's bytes go; reading resumes */
static void consume(conn *cn) {
  cn->off += cn->used;
  cn->len -= cn->used;
  cn->used = 0;
  if (cn->len == 0) cn->off = 0;
  cn->req_start = cn->len ? uv_now(cn->h->c->loop) : 0;
  if (!cn->reading && !cn->closing) {
    cn->reading = true;
    uv_read_start((uv_stream_t *)&cn->tcp, on_alloc, on_read);
  }
}

void tw_httpd_respond(tw_httpd_reply *rp, int status, const char *ctype, const char *body, size_t blen,
                      const char *extra) {
  if (!rp || !rp->pending) return;
  conn *cn = rp->cn;
  rp->pending = false;
  if (cn->closing) {
    conn_maybe_free(cn);
    return;
  }
  bool close = cn->close_after || cn->h->closing;
  send_response(cn, status, ctype, body, blen, extra, close);
  if (close) {
    flush_out(cn);
    conn_close(cn);
    return;
  }
  if (!cn->processing) { /* answered later than the route's call */
    consume(cn);
    process(cn);
  }
}

int tw_httpd_reply_gone(const tw_httpd_reply *rp) { return !rp || rp->cn->closing; }

static const route *find_route(const tw_httpd *h, const char *p, size_t n) {
  for (int i = 0; i < h->nroutes; i++)
    if (h->routes[i].len == n && memcmp(h->routes[i].path, p, n) == 0) return &h->routes[i];
  return NULL;
}

static void arm_timer(conn *cn);

/* parses and dispatches the buffered requests, one at a time */
static void process(conn *cn) {
  tw_httpd *h = cn->h;
  if (cn->processing) return;
  cn->processing = true;
  while (!cn->closing && !cn->reply.pending && cn->len > 0) {
    if (cn->need && cn->len < cn->need) break; /* the body is still coming */
    tw_http_request rq;
    long r = tw_http_parse(cn->in + cn->off, cn->len, &h->lim, &rq);
    if (r < 0) {
      refuse(cn, (int)-r);
      break;
    }
    if (r == 0) { /* head parsed: no re-parse until the whole body is here */
      if (rq.head_len) cn->need = rq.head_len + rq.body_len;
      break;
    }
    cn->need = 0;
    h->st.requests++;
    cn->close_after = !rq.keep_alive;
    cn->used = (size_t)r;
    cn->reply.pending = true;
    const route *rt = find_route(h, rq.path, rq.path_len);
    if (rt) {
      rt->fn(rt->user, &rq, &cn->reply);
    } else {
      h->st.not_found++;
      tw_httpd_respond(&cn->reply, 404, "text/plain", "not found\n", 10, NULL);
    }
    if (cn->closing) break;
    if (cn->reply.pending) {
      /* answered later: the request's bytes stay where they are until then (reads go on
       * into the buffer's spare room only, so a peer's close is still seen) */
      if (cn->ssl) {
        cn->reading = false;
        uv_read_stop((uv_stream_t *)&cn->tcp);
      }
      break;
    }
    consume(cn);
  }
  flush_out(cn);
  cn->processing = false;
  if (!cn->closing) arm_timer(cn);
}

static void on_timer(uv_timer_t *t) {
  conn *cn = t->data;
  uint64_t now = uv_now(cn->h->c->loop);
  tw_httpd *h = cn->h;
  if (cn->reply.pending) { /* the application is answering: not the peer's fault */
    uv_timer_start(&cn->timer, on_timer, (uint64_t)(h->o.request_timeout_s * 1000), 0);
    return;
  }
  if (cn->req_start && now - cn->req_start >= (uint64_t)(h->o.request_timeout_s * 1000)) {
    refuse(cn, 408);
    return;
  }
  if (!cn->req_start && now - cn->last >= (uint64_t)(h->o.idle_timeout_s * 1000)) {
    conn_close(cn);
    return;
  }
  arm_timer(cn);
}

static void arm_timer(conn *cn) {
  tw_httpd *h = cn->h;
  uint64_t now = uv_now(h->c->loop), due;
  if (cn->reply.pending) due = now + (uint64_t)(h->o.request_timeout_s * 1000); /* looked at again then */
  else if (cn->req_start) due = cn->req_start + (uint64_t)(h->o.request_timeout_s * 1000);
  else due = cn->last + (uint64_t)(h->o.idle_timeout_s * 1000);
  uint64_t in = due > now ? due - now : 0;
  /* re-arm only when the timer would fire too late (no timer work per request) */
  if (uv_is_active((uv_handle_t *)&cn->timer) && uv_timer_get_due_in(&cn->timer) <= in) return;
  uv_timer_start(&cn->timer, on_timer, in, 0);
}

static void on_alloc(uv_handle_t *hd, size_t sug, uv_buf_t *b) {
  conn *cn = hd->data;
  (void)sug;
  size_t want = 65536;
  if (cn->ssl) { /* ciphertext goes to a side buffer, plaintext to cn->in */
    *b = uv_buf_init(cn->h->tls_scratch, sizeof cn->h->tls_scratch);
    return;
  }
  if (cn->reply.pending) { /* nothing may move: the spare room, or stop reading */
    size_t room = cn->cap - cn->off - cn->len;
    *b = uv_buf_init(room >= 1024 ? cn->in + cn->off + cn->len : NULL, room >= 1024 ? (unsigned)room : 0);
    return;
  }
  if (cn->off && cn->off + cn->len + want > cn->cap) {
    memmove(cn->in, cn->in + cn->off, cn->len);
    cn->off = 0;
  }
  if (cn->off + cn->len + want > cn->cap) {
    size_t ncap = cn->cap ? cn->cap : 65536 + 1;
    while (ncap < cn->off + cn->len + want) ncap *= 2;
    char *p = realloc(cn->in, ncap);
    if (!p) {
      *b = uv_buf_init(NULL, 0);
      return;
    }
    cn->in = p;
    cn->cap = ncap;
  }
  *b = uv_buf_init(cn->in + cn->off + cn->len, (unsigned)(cn->cap - cn->off - cn->len));
}

static bool buffer_limit(conn *cn) {
  tw_httpd *h = cn->h;
  size_t lim = h->lim.max_header_bytes + h->lim.max_body + 8;
  return cn->len > lim;
}

static bool take_plain(conn *cn, const char *p, size_t n) {
  if (cn->off && cn->off + cn->len + n > cn->cap) {
    memmove(cn->in, cn->in + cn->off, cn->len);
    cn->off = 0;
  }
  if (cn->off + cn->len + n > cn->cap) {
    size_t ncap = cn->cap ? cn->cap : 16384;
    while (ncap < cn->off + cn->len + n) ncap *= 2;
    char *q = realloc(cn->in, ncap);
    if (!q) return false;
    cn->in = q;
    cn->cap = ncap;
  }
  memcpy(cn->in + cn->off + cn->len, p, n);
  cn->len += n;
  return true;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b) {
  conn *cn = st->data;
  if (cn->closing) return;
  if (nread == UV_ENOBUFS && cn->reply.pending) { /* full while an answer is pending */
    cn->reading = false;
    uv_read_stop(st);
    return;
  }
  if (nread < 0) {
    cn->peer_eof = true; /* nothing more will come: no lingering */
    conn_close(cn);
    return;
  }
  if (nread == 0) return;
  tw_httpd *h = cn->h;
  uint64_t now = uv_now(h->c->loop);
  bool was_idle = cn->len == 0;
  if (cn->ssl) {
    BIO_write(cn->rbio, b->base, (int)nread);
    char plain[16384];
    for (;;) {
      int r = SSL_read(cn->ssl, plain, sizeof plain);
      if (r > 0) {
        if (!take_plain(cn, plain, (size_t)r)) {
          conn_close(cn);
          return;
        }
        continue;
      }
      int e = SSL_get_error(cn->ssl, r);
      tls_flush(cn);
      if (e == SSL_ERROR_WANT_READ) break;
      if (e != SSL_ERROR_ZERO_RETURN) h->st.tls_errors++;
      conn_close(cn);
      return;
    }
    if (cn->closing) return;
  } else {
    cn->len += (size_t)nread;
  }
  cn->last = now;
  if (was_idle && cn->len > 0) cn->req_start = now;
  if (cn->reply.pending) return; /* kept for after the answer */
  if (buffer_limit(cn)) {
    refuse(cn, 413);
    return;
  }
  process(cn);
}

static void on_connection(uv_stream_t *ls, int status) {
  tw_httpd *h = ls->data;
  if (status < 0 || h->closing) return;
  conn *cn = calloc(1, sizeof *cn);
  if (!cn) return;
  cn->h = h;
  cn->reply.cn = cn;
  uv_tcp_init(h->c->loop, &cn->tcp);
  uv_timer_init(h->c->loop, &cn->timer);
  cn->tcp.data = cn->timer.data = cn;
  cn->handles = 2;
  h->live++;
  conn_push(&h->conns, cn);
  h->nconns++;
  h->st.open_conns = h->nconns;
  h->st.connections++;
  if (uv_accept(ls, (uv_stream_t *)&cn->tcp) != 0) {
    conn_close(cn);
    return;
  }
  uv_tcp_nodelay(&cn->tcp, 1);
  cn->last = uv_now(h->c->loop);
  if (h->nconns > h->o.max_conns) {
    refuse(cn, 503); /* plaintext even on TLS: no handshake is spent on it */
    return;
  }
  if (h->ssl_ctx) {
    cn->ssl = SSL_new(h->ssl_ctx);
    cn->rbio = BIO_new(BIO_s_mem());
    cn->wbio = BIO_new(BIO_s_mem());
    if (!cn->ssl || !cn->rbio || !cn->wbio) {
      if (!cn->ssl) {
        BIO_free(cn->rbio);
        BIO_free(cn->wbio);
      }
      if (cn->ssl && cn->rbio && cn->wbio) SSL_set_bio(cn->ssl, cn->rbio, cn->wbio);
      conn_close(cn);
      return;
    }
    SSL_set_bio(cn->ssl, cn->rbio, cn->wbio);
    SSL_set_accept_state(cn->ssl);
    cn->req_start = cn->last; /* the handshake counts as the request's start */
  }
  cn->reading = true;
  uv_read_start((uv_stream_t *)&cn->tcp, on_alloc, on_read);
  arm_timer(cn);
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg) {
  (void)ssl;
  (void)arg;
  /* HTTP/1.1 only, whatever else the client offers */
  for (unsigned i = 0; i < inlen;) {
    unsigned l = in[i];
    if (i + 1 + l > inlen) break;
    if (l == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
      *out = in + i + 1;
      *outlen = 8;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + l;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

static void on_listener_closed(uv_handle_t *hd) {
  tw_httpd *h = hd->data;
  h->freed_listener = true;
  maybe_free_server(h);
}

tw_httpd *tw_httpd_open(tw_client *c, const tw_httpd_opts *o, tw_error *err) {
  tw_httpd_opts d = TW_HTTPD_OPTS_INIT;
  if (!o) o = &d;
  if (!c || c->freeing) {
    tw_err_set(err, "closed", 0, "the client is closed");
    return NULL;
  }
  if (o->port < 0 || o->port > 65535 || o->max_conns < 1 || o->max_headers < 1 || o->max_header_bytes < 256 ||
      !(o->request_timeout_s > 0) || !(o->idle_timeout_s > 0) || (!o->tls_cert) != (!o->tls_key)) {
    tw_err_set(err, "invalid_argument", 0,
               "httpd: port 0..65535, max_conns/max_headers >= 1, max_header_bytes >= 256, timeouts > 0, "
               "and tls needs both cert and key");
    return NULL;
  }
  tw_httpd *h = calloc(1, sizeof *h);
  if (!h) {
    tw_err_set(err, "no_memory", 0, "out of memory");
    return NULL;
  }
  h->c = c;
  h->o = *o;
  h->o.host = NULL;
  h->o.tls_cert = h->o.tls_key = NULL;
  h->lim.max_body = o->max_body;
  h->lim.max_header_bytes = o->max_header_bytes;
  h->lim.max_headers = o->max_headers;
  if (o->tls_cert) {
    h->ssl_ctx = SSL_CTX_new(TLS_server_method());
    if (!h->ssl_ctx || SSL_CTX_use_certificate_chain_file(h->ssl_ctx, o->tls_cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(h->ssl_ctx, o->tls_key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(h->ssl_ctx) != 1) {
      unsigned long e = ERR_get_error();
      char buf[256];
      ERR_error_string_n(e, buf, sizeof buf);
      ERR_clear_error();
      tw_err_set(err, "tls", 0, "cannot load the TLS certificate/key (%s, %s): %s", o->tls_cert, o->tls_key, buf);
      if (h->ssl_ctx) SSL_CTX_free(h->ssl_ctx);
      free(h);
      return NULL;
    }
    SSL_CTX_set_min_proto_version(h->ssl_ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(h->ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(h->ssl_ctx, alpn_select, NULL);
  }
  const char *host = o->host ? o->host : "127.0.0.1";
  struct sockaddr_storage ss;
  int rc = strchr(host, ':') ? uv_ip6_addr(host, o->port, (struct sockaddr_in6 *)&ss)
                             : uv_ip4_addr(host, o->port, (struct sockaddr_in *)&ss);
  if (rc != 0) {
    tw_err_set(err, "invalid_argument", 0, "httpd: host must be an IPv4 or IPv6 address, got '%s'", host);
    if (h->ssl_ctx) SSL_CTX_free(h->ssl_ctx);
    free(h);
    return NULL;
  }
  uv_tcp_init(c->loop, &h->listener);
  h->listener.data = h;
  rc = uv_tcp_bind(&h->listener, (struct sockaddr *)&ss, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&h->listener, 511, on_connection);
  if (rc != 0) {
    tw_err_set(err, "listen_failed", 0, "cannot listen on %s:%d: %s", host, o->port, uv_strerror(rc));
    h->closing = true;
    uv_close((uv_handle_t *)&h->listener, on_listener_closed);
    return NULL;
  }
  struct sockaddr_storage bound;
  int blen = sizeof bound;
  uv_tcp_getsockname(&h->listener, (struct sockaddr *)&bound, &blen);
  h->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                               : ((struct sockaddr_in *)&bound)->sin_port);
  h->listening = true;
  h->next = c->httpds;
  c->httpds = h;
  return h;
}

int tw_httpd_port(const tw_httpd *h) { return h ? h->port : 0; }
int tw_httpd_tls(const tw_httpd *h) { return h && h->ssl_ctx; }

int tw_httpd_route(tw_httpd *h, const char *path, tw_httpd_route_fn fn, void *user, tw_error *err) {
  if (!h || h->closing || !path || path[0] != '/' || !fn || strpbrk(path, "? \r\n")) {
    tw_err_set(err, "invalid_argument", 0, "a route needs an open server, a path starting with '/' "
                                           "(no query, no spaces) and a handler");
    return TW_EINVAL;
  }
  size_t n = strlen(path);
  for (int i = 0; i < h->nroutes; i++)
    if (h->routes[i].len == n && memcmp(h->routes[i].path, path, n) == 0) {
      h->routes[i].fn = fn;
      h->routes[i].user = user;
      h->routes[i].drop = NULL;
      return 0;
    }
  if (h->nroutes == h->cap_routes) {
    int ncap = h->cap_routes ? h->cap_routes * 2 : 8;
    route *p = realloc(h->routes, (size_t)ncap * sizeof *p);
    if (!p) {
      tw_err_set(err, "no_memory", 0, "out of memory");
      return TW_ENOMEM;
    }
    h->routes = p;
    h->cap_routes = ncap;
  }
  char *copy = tw_strdup(path);
  if (!copy) {
    tw_err_set(err, "no_memory", 0, "out of memory");
    return TW_ENOMEM;
  }
  h->routes[h->nroutes++] = (route){copy, n, fn, user, NULL};
  return 0;
}

int tw_httpd_unroute(tw_httpd *h, const char *path) {
  if (!h || !path) return TW_EINVAL;
  size_t n = strlen(path);
  for (int i = 0; i < h->nroutes; i++)
    if (h->routes[i].len == n && memcmp(h->routes[i].path, path, n) == 0) {
      free(h->routes[i].path);
      h->routes[i] = h->routes[--h->nroutes];
      return 0;
    }
  return TW_EINVAL;
}

void tw_httpd_get_stats(const tw_httpd *h, tw_httpd_stats *out) {
  if (h) {
    *out = h->st;
    out->lingering = h->nlinger;
  } else {
    memset(out, 0, sizeof *out);
  }
}

tw_client *tw_httpd_client(const tw_httpd *h) { return h->c; }

void tw_httpd_route_on_drop(tw_httpd *h, const char *path, void (*drop)(void *user)) {
  size_t n = strlen(path);
  for (int i = 0; i < h->nroutes; i++)
    if (h->routes[i].len == n && memcmp(h->routes[i].path, path, n) == 0) h->routes[i].drop = drop;
}

void tw_httpd_close(tw_httpd *h) {
  if (!h || h->closing) return;
  h->closing = true;
  unlink_server(h);
  for (int i = 0; i < h->nroutes; i++) {
    if (h->routes[i].drop) h->routes[i].drop(h->routes[i].user);
    free(h->routes[i].path);
  }
  h->nroutes = 0;
  while (h->conns) conn_close(h->conns);
  while (h->lingering) finish_close(h->lingering); /* the server goes: its lingering closes end */
  uv_close((uv_handle_t *)&h->listener, on_listener_closed);
}

void tw_httpds_close_all(tw_client *c) {
  while (c->httpds) {
    c->httpds->abort = true;
    tw_httpd_close(c->httpds);
  }
}
