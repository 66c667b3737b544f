/* helix.c - Helix requests with the app token, rate limiting and retries; OAuth.
 *
 * Every request goes through one queue. A request is sent when a token is ready, fewer
 * than http_max_inflight are in flight and the rate-limit bucket (as last reported by
 * Ratelimit-Remaining / Ratelimit-Reset) has room; otherwise it waits for a timer.
 * Retries: a bucket 429 waits for the reset; 5xx and network failures back off
 * exponentially with jitter; a 401 gets a new token once and is retried once. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct hreq {
  tw_client *c;
  char *method, *path, *body;
  size_t body_len;
  tw_response_fn cb;
  void *user;
  unsigned fails;       /* 5xx / network failures so far */
  unsigned waits_429;   /* bucket 429s so far */
  bool retried_401;
  uint64_t token_gen;   /* token generation the last attempt used */
  uint64_t not_before;  /* loop ms */
  uint64_t sent_seq;    /* order of the last attempt */
  struct hreq *next;
} hreq;

enum { TOK_NONE, TOK_FETCHING, TOK_OK, TOK_VALIDATING };

struct tw_helix_state {
  tw_client *c;
  char *token;
  uint64_t token_gen;
  double token_expires; /* wall seconds, 0 unknown */
  double token_margin;  /* renew this long before expiry: a tenth of the lifetime, at most 60 s */
  int tstate;
  unsigned token_fails;
  unsigned validate_401s; /* validations refused in a row */
  tw_error token_err;
  bool token_failed;    /* last fetch failed for good: requests fail at once until retried */
  hreq *head, *tail;    /* queued */
  int inflight;
  uint64_t send_seq, seq_at_429; /* replies to requests sent before the last 429 carry stale headers */
  int rl_remaining;     /* -1 unknown */
  double rl_reset;      /* wall seconds */
  uv_timer_t pump_timer;
  uv_timer_t validate_timer;
  uv_timer_t token_retry_timer;
  bool closing;
  int open_handles; /* timers still to close before hx can be freed */
};

static void pump(tw_helix_state *hx);
static void fetch_token(tw_helix_state *hx);
static void validate(tw_helix_state *hx);

static uint64_t now_ms(tw_client *c) { return uv_now(c->loop); }

static void hreq_free(hreq *r) {
  free(r->method);
  free(r->path);
  free(r->body);
  free(r);
}

static void finish(hreq *r, int status, tw_json *body, const char *raw, size_t raw_len, const tw_error *err) {
  tw_response resp = {.status = status, .body = body, .raw = raw, .raw_len = raw_len, .error = err};
  if (r->cb) r->cb(r->user, &resp);
  hreq_free(r);
}

static void enqueue(tw_helix_state *hx, hreq *r, bool front) {
  r->next = NULL;
  if (!hx->head) hx->head = hx->tail = r;
  else if (front) {
    r->next = hx->head;
    hx->head = r;
  } else {
    hx->tail->next = r;
    hx->tail = r;
  }
}

static void fail_all_queued(tw_helix_state *hx, const tw_error *err) {
  hreq *r = hx->head;
  hx->head = hx->tail = NULL;
  while (r) {
    hreq *n = r->next;
    finish(r, err->status, NULL, NULL, 0, err);
    r = n;
  }
}

/* ---- OAuth ---- */

static void url_encode(tw_buf *b, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
        ch == '_' || ch == '.' || ch == '~')
      tw_buf_append(b, s, 1);
    else {
      char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};
      tw_buf_append(b, e, 3);
    }
  }
}

/* message of a Twitch error body, or a fallback */
static void body_message(const char *body, size_t len, char *out, size_t outlen, const char *fallback) {
  snprintf(out, outlen, "%s", fallback);
  if (!body || !len) return;
  tw_json *d = tw_json_parse(body, len, NULL, 0);
  if (!d) return;
  size_t n;
  const char *m = tw_json_str(d, tw_json_get(d, 0, "message", 7), &n);
  if (m && n) snprintf(out, outlen, "%.*s", (int)n, m);
  tw_json_unref(d);
}

static void set_token(tw_helix_state *hx, const char *tok, size_t len, double expires_in) {
  free(hx->token);
  hx->token = tw_strndup(tok, len);
  hx->token_gen++;
  hx->token_expires = expires_in > 0 ? tw_wall_now() + expires_in : 0;
  hx->token_margin = expires_in > 0 ? (expires_in / 10 < 60 ? expires_in / 10 : 60) : 0;
  hx->tstate = TOK_OK;
  hx->token_fails = 0;
  hx->token_failed = false;
}

static void on_token_retry(uv_timer_t *t) { fetch_token(t->data); }

static void on_token(void *user, const tw_http_result *r) {
  tw_helix_state *hx = user;
  tw_client *c = hx->c;
  if (hx->closing || r->status < 0) return;
  tw_metrics_note_helix(c, "/oauth2/token", r->status);
  tw_error err;
  tw_err_clear(&err);
  if (r->status == 200) {
    tw_json *d = tw_json_parse(r->body, r->body_len, NULL, 0);
    size_t n = 0;
    const char *tok = d ? tw_json_str(d, tw_json_get(d, 0, "access_token", 12), &n) : NULL;
    if (tok && n) {
      tw_jnode ei = tw_json_get(d, 0, "expires_in", 10);
      double exp = ei != TW_JNONE ? tw_json_num(d, ei) : 0;
      set_token(hx, tok, n, exp);
      tw_json_unref(d);
      validate(hx); /* each new token once (requests do not wait for it), then every validate_interval */
      tw_event ev = {.type = TW_EV_TOKEN};
      tw_emit(c, &ev);
      pump(hx);
      return;
    }
    if (d) tw_json_unref(d);
    tw_err_set(&err, "auth_failed", 200, "token response has no access_token");
  } else if (r->status == 0 || r->status >= 500 || r->status == 429) {
    /* transient: retry with backoff a few times before failing the queue */
    if (hx->token_fails < (unsigned)c->http_retries) {
      uint64_t d = tw_backoff_ms(&c->rng, 0.25, 8, hx->token_fails++);
      hx->tstate = TOK_FETCHING;
      uv_timer_start(&hx->token_retry_timer, on_token_retry, d, 0);
      return;
    }
    char m[160];
    body_message(r->body, r->body_len, m, sizeof m, r->status ? "server error" : r->curl_error);
    tw_err_set(&err, r->status ? "auth_failed" : "network", r->status, "app token request failed: %s", m);
  } else {
    char m[160];
    body_message(r->body, r->body_len, m, sizeof m, "rejected");
    tw_err_set(&err, "auth_failed", r->status, "app token request failed (%d): %s", r->status, m);
  }
  hx->tstate = TOK_NONE;
  hx->token_failed = true;
  hx->token_fails = 0;
  hx->token_err = err;
  tw_emit_error(c, NULL, NULL, &err);
  fail_all_queued(hx, &err);
}

static void fetch_token(tw_helix_state *hx) {
  tw_client *c = hx->c;
  if (!c->client_secret) {
    tw_error err;
    tw_err_set(&err, "auth_failed", 401, "the access token is invalid and no client_secret was given to get a new one");
    hx->tstate = TOK_NONE;
    hx->token_failed = true;
    hx->token_err = err;
    tw_emit_error(c, NULL, NULL, &err);
    fail_all_queued(hx, &err);
    return;
  }
  hx->tstate = TOK_FETCHING;
  tw_buf body = {0};
  tw_buf_append(&body, "client_id=", 10);
  url_encode(&body, c->client_id);
  tw_buf_append(&body, "&client_secret=", 15);
  url_encode(&body, c->client_secret);
  tw_buf_append(&body, "&grant_type=client_credentials", 30);
  char url[1024];
  snprintf(url, sizeof url, "%s/token", c->auth_base);
  const char *hdrs[] = {"Content-Type: application/x-www-form-urlencoded", "Accept: application/json", NULL};
  c->stats.token_fetches++;
  if (!tw_http_start(c->http, "POST", url, hdrs, body.p, body.len, (long)(c->http_timeout_s * 1000), on_token, hx)) {
    tw_error err;
    tw_err_set(&err, "network", 0, "could not start the token request");
    hx->tstate = TOK_NONE;
    fail_all_queued(hx, &err);
  }
  memset(body.p, 0, body.len); /* the secret does not linger in freed memory */
  tw_buf_free(&body);
}

/* Validation: a given token at start (requests wait for the answer), every token fetched
 * with the client secret as soon as it arrives, and the token in use every
 * validate_interval_s (0: never again). */
static void on_validate(void *user, const tw_http_result *r) {
  tw_helix_state *hx = user;
  if (hx->closing || r->status < 0) return;
  tw_metrics_note_helix(hx->c, "/oauth2/validate", r->status);
  if (hx->tstate == TOK_VALIDATING) hx->tstate = TOK_OK;
  if (r->status == 401) {
    if (hx->tstate == TOK_OK) {
      free(hx->token);
      hx->token = NULL;
      hx->tstate = TOK_NONE;
      if (++hx->validate_401s > 1) { /* a fresh token refused too: stop asking */
        tw_error err;
        tw_err_set(&err, "auth_failed", 401, "token validation refused a freshly issued token");
        hx->token_failed = true;
        hx->token_err = err;
        hx->validate_401s = 0;
        tw_emit_error(hx->c, NULL, NULL, &err);
        fail_all_queued(hx, &err);
      } else {
        fetch_token(hx);
      }
    }
    return;
  }
  if (r->status == 200) {
    hx->validate_401s = 0;
    tw_json *d = tw_json_parse(r->body, r->body_len, NULL, 0);
    if (d) {
      tw_jnode ei = tw_json_get(d, 0, "expires_in", 10);
      if (ei != TW_JNONE && tw_json_num(d, ei) > 0) hx->token_expires = tw_wall_now() + tw_json_num(d, ei);
      size_t n;
      const char *cid = tw_json_str(d, tw_json_get(d, 0, "client_id", 9), &n);
      if (cid && strcmp(cid, hx->c->client_id) != 0) {
        tw_error err;
        tw_err_set(&err, "auth_failed", 401, "the access token belongs to another client id");
        tw_emit_error(hx->c, NULL, NULL, &err);
      }
      tw_json_unref(d);
    }
  } else if (r->status != 0) {
    tw_error err;
    tw_err_set(&err, "auth_failed", r->status, "token validation answered %d", r->status);
    tw_emit_error(hx->c, NULL, NULL, &err);
  }
  pump(hx);
}

static void validate(tw_helix_state *hx) {
  tw_client *c = hx->c;
  if (!hx->token) return;
  char url[1024], auth[600];
  snprintf(url, sizeof url, "%s/validate", c->auth_base);
  snprintf(auth, sizeof auth, "Authorization: OAuth %s", hx->token);
  const char *hdrs[] = {auth, NULL};
  c->stats.token_validations++;
  if (!tw_http_start(c->http, "GET", url, hdrs, NULL, 0, (long)(c->http_timeout_s * 1000), on_validate, hx)) {
    tw_error err;
    tw_err_set(&err, "network", 0, "could not start the token validation");
    if (hx->tstate == TOK_VALIDATING) hx->tstate = TOK_OK;
    tw_emit_error(c, NULL, NULL, &err);
  }
  memset(auth, 0, sizeof auth);
}

static void on_validate_timer(uv_timer_t *t) { validate(t->data); }

/* ---- the queue ---- */

static void on_pump_timer(uv_timer_t *t) { pump(t->data); }

static void on_response(void *user, const tw_http_result *r);

static void send_req(tw_helix_state *hx, hreq *r) {
  tw_client *c = hx->c;
  char url[4096], auth[600], cid[300];
  snprintf(url, sizeof url, "%s%s", c->api_base, r->path);
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", hx->token);
  snprintf(cid, sizeof cid, "Client-Id: %s", c->client_id);
  const char *hdrs[] = {auth, cid, r->body ? "Content-Type: application/json" : "Accept: application/json", NULL};
  r->token_gen = hx->token_gen;
  r->sent_seq = ++hx->send_seq;
  hx->inflight++;
  c->stats.helix_requests++;
  if (hx->rl_remaining > 0) hx->rl_remaining--; /* optimistic until the answer says */
  if (!tw_http_start(c->http, r->method, url, hdrs, r->body, r->body_len, (long)(c->http_timeout_s * 1000),
                     on_response, r)) {
    hx->inflight--;
    tw_error err;
    tw_err_set(&err, "network", 0, "could not start the request");
    finish(r, 0, NULL, NULL, 0, &err);
  }
  memset(auth, 0, sizeof auth);
}

static void pump(tw_helix_state *hx) {
  tw_client *c = hx->c;
  if (hx->closing) return;
  if (!hx->head) return;
  if (hx->tstate == TOK_NONE && !hx->token_failed) fetch_token(hx);
  if (hx->tstate != TOK_OK) return; /* on_token / on_validate pump again */
  if (hx->token_expires > 0 && tw_wall_now() >= hx->token_expires - hx->token_margin && c->client_secret) {
    fetch_token(hx); /* expired by its own clock: get a fresh one before sending */
    return;
  }
  uint64_t now = now_ms(c);
  uint64_t next_wake = UINT64_MAX;
  hreq *prev = NULL, *r = hx->head;
  while (r && hx->inflight < c->http_max_inflight) {
    if (r->not_before > now) {
      if (r->not_before < next_wake) next_wake = r->not_before;
      prev = r;
      r = r->next;
      continue;
    }
    double wall = tw_wall_now();
    if (hx->rl_remaining == 0 && wall < hx->rl_reset) {
      uint64_t w = (uint64_t)((hx->rl_reset - wall) * 1000) + 50;
      if (now + w < next_wake) next_wake = now + w;
      c->stats.helix_rate_waits++;
      break;
    }
    if (hx->rl_remaining == 0) hx->rl_remaining = -1; /* the bucket has refilled */
    hreq *n = r->next;
    if (prev) prev->next = n;
    else hx->head = n;
    if (hx->tail == r) hx->tail = prev;
    send_req(hx, r);
    r = n;
  }
  if (next_wake != UINT64_MAX) uv_timer_start(&hx->pump_timer, on_pump_timer, next_wake - now, 0);
}

static void on_response(void *user, const tw_http_result *res) {
  hreq *r = user;
  if (res->status < 0) { /* cancelled by the client's teardown */
    hreq_free(r);
    return;
  }
  tw_client *c = r->c;
  tw_helix_state *hx = c->hx;
  hx->inflight--;
  bool fresh = r->sent_seq > hx->seq_at_429; /* sent after the last 429 was seen */
  if (fresh && res->rl_remaining >= 0) hx->rl_remaining = res->rl_remaining;
  if (fresh && res->rl_reset >= 0 && (double)res->rl_reset > hx->rl_reset) hx->rl_reset = (double)res->rl_reset;
  c->stats.ratelimit_remaining = hx->rl_remaining;
  int st = res->status;
  tw_metrics_note_helix(c, r->path, st);
  tw_error err;
  tw_err_clear(&err);

  if (st == 401 && !r->retried_401 && c->client_secret) {
    r->retried_401 = true;
    c->stats.helix_retries++;
    if (r->token_gen == hx->token_gen && hx->tstate == TOK_OK) {
      free(hx->token);
      hx->token = NULL;
      hx->tstate = TOK_NONE;
    }
    enqueue(hx, r, true);
    pump(hx);
    return;
  }
  if (st == 429) {
    bool bucket = res->rl_remaining <= 0; /* 0 or absent: the bucket; otherwise a limit */
    if (bucket && r->waits_429 < 10) {
      r->waits_429++;
      c->stats.helix_retries++;
      hx->rl_remaining = 0;
      hx->seq_at_429 = hx->send_seq;
      if (res->rl_reset >= 0) hx->rl_reset = (double)res->rl_reset;
      double wall = tw_wall_now();
      if (hx->rl_reset <= wall) hx->rl_reset = wall + 1;
      r->not_before = 0;
      enqueue(hx, r, true);
      pump(hx);
      return;
    }
  }
  if ((st == 0 || st >= 500) && r->fails < (unsigned)c->http_retries) {
    r->not_before = now_ms(c) + tw_backoff_ms(&c->rng, 0.25, 8, r->fails);
    r->fails++;
    c->stats.helix_retries++;
    enqueue(hx, r, true);
    pump(hx);
    return;
  }

  tw_json *body = NULL;
  if (res->body_len) body = tw_json_parse(res->body, res->body_len, NULL, 0);
  if (st >= 200 && st < 300) {
    if (res->body_len && !body) {
      tw_err_set(&err, "bad_response", st, "%s %s: the response is not valid JSON", r->method, r->path);
      finish(r, st, NULL, res->body, res->body_len, &err);
    } else {
      finish(r, st, body, res->body, res->body_len, NULL);
    }
  } else {
    char m[200];
    if (st == 0) {
      tw_err_set(&err, strstr(res->curl_error, "imed out") ? "timeout" : "network", 0, "%s %s: %s", r->method,
                 r->path, res->curl_error);
    } else {
      body_message(res->body, res->body_len, m, sizeof m, "request failed");
      const char *code = tw_http_code(st);
      if (st == 429 && res->rl_remaining > 0) code = "limit_exceeded";
      if (st == 401 && !c->client_secret) code = "unauthorized";
      tw_err_set(&err, code, st, "%s %s: %s", r->method, r->path, m);
    }
    finish(r, st, body, res->body, res->body_len, &err);
  }
  if (body) tw_json_unref(body);
  pump(hx);
}

static int helix_queue(tw_client *c, const char *method, const char *path, const char *body, size_t body_len,
                       tw_response_fn cb, void *user, tw_error *err, bool urgent);

int tw_helix(tw_client *c, const char *method, const char *path, const char *body, size_t body_len,
             tw_response_fn cb, void *user, tw_error *err) {
  return helix_queue(c, method, path, body, body_len, cb, user, err, false);
}

int tw_helix_urgent(tw_client *c, const char *method, const char *path, const char *body, size_t body_len,
                    tw_response_fn cb, void *user, tw_error *err) {
  return helix_queue(c, method, path, body, body_len, cb, user, err, true);
}

static int helix_queue(tw_client *c, const char *method, const char *path, const char *body, size_t body_len,
                       tw_response_fn cb, void *user, tw_error *err, bool urgent) {
  if (!c || !method || !path || path[0] != '/') {
    tw_err_set(err, "invalid_argument", 0, "helix: method and a path starting with '/' are required");
    return TW_EINVAL;
  }
  if (c->freeing || !c->hx || c->hx->closing) {
    tw_err_set(err, "closed", 0, "the client is closed");
    return TW_ECLOSED;
  }
  tw_helix_state *hx = c->hx;
  if (hx->token_failed) { /* a failed token is tried again by the next request */
    hx->token_failed = false;
    if (!hx->token) hx->tstate = TOK_NONE;
  }
  hreq *r = calloc(1, sizeof *r);
  if (!r) goto nomem;
  r->c = c;
  r->method = tw_strdup(method);
  r->path = tw_strdup(path);
  if (body) {
    r->body = tw_strndup(body, body_len);
    r->body_len = body_len;
  }
  if (!r->method || !r->path || (body && !r->body)) {
    hreq_free(r);
    goto nomem;
  }
  r->cb = cb;
  r->user = user;
  enqueue(hx, r, urgent);
  /* send on the next loop iteration, so a burst of calls shares token fetch and pacing */
  uv_timer_start(&hx->pump_timer, on_pump_timer, 0, 0);
  return 0;
nomem:
  tw_err_set(err, "no_memory", 0, "out of memory");
  return TW_ENOMEM;
}

const char *tw_client_token(const tw_client *c) { return c->hx ? c->hx->token : NULL; }

tw_helix_state *tw_helix_new(tw_client *c) {
  tw_helix_state *hx = calloc(1, sizeof *hx);
  if (!hx) return NULL;
  hx->c = c;
  hx->rl_remaining = -1;
  uv_timer_init(c->loop, &hx->pump_timer);
  uv_timer_init(c->loop, &hx->validate_timer);
  uv_timer_init(c->loop, &hx->token_retry_timer);
  hx->pump_timer.data = hx->validate_timer.data = hx->token_retry_timer.data = hx;
  if (c->given_token) {
    set_token(hx, c->given_token, strlen(c->given_token), 0);
    hx->tstate = TOK_VALIDATING; /* requests wait for the first validation */
    validate(hx);
  }
  if (c->validate_interval_s > 0) {
    uint64_t ms = (uint64_t)(c->validate_interval_s * 1000);
    uv_timer_start(&hx->validate_timer, on_validate_timer, ms, ms);
    uv_unref((uv_handle_t *)&hx->validate_timer); /* does not keep the loop alive alone */
  }
  return hx;
}

static void close_cb(uv_handle_t *h) {
  tw_helix_state *hx = h->data;
  if (--hx->open_handles == 0) free(hx);
}

void tw_helix_state_closing(tw_helix_state *hx) { hx->closing = true; }

void tw_helix_free(tw_helix_state *hx) {
  if (!hx) return;
  hx->closing = true;
  hreq *r = hx->head;
  while (r) {
    hreq *n = r->next;
    hreq_free(r);
    r = n;
  }
  hx->head = hx->tail = NULL;
  if (hx->token) memset(hx->token, 0, strlen(hx->token));
  free(hx->token);
  hx->token = NULL;
  /* the last of the three closes frees hx (libuv runs close callbacks in any order) */
  hx->open_handles = 3;
  uv_close((uv_handle_t *)&hx->pump_timer, close_cb);
  uv_close((uv_handle_t *)&hx->validate_timer, close_cb);
  uv_close((uv_handle_t *)&hx->token_retry_timer, close_cb);
}
