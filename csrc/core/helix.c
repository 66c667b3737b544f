/* helix.c - Helix requests with the app token, rate limiting and retries; OAuth.
 *
 * Every request goes through one queue per priority (bot calls, then background work).
 * A request is sent when a token is ready, fewer than http_max_inflight are in flight
 * (background: one slot is left to bot calls) and the rate-limit bucket has room;
 * otherwise it waits for a timer. The bucket is mirrored from the newest answer's
 * Ratelimit-Remaining (minus what is still in flight) and refilled at Ratelimit-Limit
 * points a minute in between, so a long run spends the refill as it comes instead of
 * draining the bucket into 429s; background requests leave limit/50 points to bot calls.
 * Retries: a bucket 429 waits for the reset; 5xx and network failures back off
 * exponentially with jitter; a 401 gets a new token once and is retried once. A 429
 * without a rate-limit header or naming a limit (cost ceiling, subscriptions with that
 * type and condition) is final. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct hreq {
  tw_client *c;
  char *method, *path, *body;
  size_t body_len;
  char *token;          /* the caller's token (tw_helix_with_token); NULL: the app token */
  tw_response_fn cb;
  void *user;
  unsigned fails;       /* 5xx / network failures so far */
  unsigned waits_429;   /* bucket 429s so far */
  bool retried_401;
  uint64_t token_gen;   /* token generation the last attempt used */
  uint64_t not_before;  /* loop ms */
  uint64_t sent_seq;    /* order of the last attempt */
  int prio;             /* TW_PRIO_BOT / TW_PRIO_BACKGROUND */
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
  hreq *head, *tail;    /* queued bot requests */
  hreq *bg_head, *bg_tail; /* queued background requests */
  int inflight, inflight_bg;
  uint64_t send_seq, seq_at_429; /* replies to requests sent before the last 429 carry stale headers */
  uint64_t hdr_seq;     /* the attempt whose answer the bucket mirrors */
  int rl_remaining;     /* -1 unknown; only used while the limit is unknown */
  int rl_limit;         /* -1 unknown */
  double rl_level;      /* points left by our estimate (may go below 0), valid when rl_limit > 0 */
  uint64_t rl_level_ms; /* loop ms of rl_level */
  double rl_reset;      /* wall seconds */
  double rl_hold_until; /* after a bucket 429: wall seconds */
  uint64_t sent_by_prio[2], final_429;
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

/* Response body caps: OAuth and the conduit endpoints answer a few KB (a page of shards
 * is ~20 KB); anything else up to 16 MB. */
#define CAP_OAUTH ((size_t)64 << 10)
static size_t body_cap(const char *path) {
  return strncmp(path, "/eventsub/conduits", 18) == 0 ? (size_t)1 << 20 : (size_t)16 << 20;
}

static void hreq_free(hreq *r) {
  if (r->token) memset(r->token, 0, strlen(r->token));
  free(r->token);
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
  hreq **head = r->prio ? &hx->bg_head : &hx->head, **tail = r->prio ? &hx->bg_tail : &hx->tail;
  r->next = NULL;
  if (!*head) *head = *tail = r;
  else if (front) {
    r->next = *head;
    *head = r;
  } else {
    (*tail)->next = r;
    *tail = r;
  }
}

static void fail_all_queued(tw_helix_state *hx, const tw_error *err) {
  for (int p = 0; p < 2; p++) {
    hreq *r = p ? hx->bg_head : hx->head;
    if (p) hx->bg_head = hx->bg_tail = NULL;
    else hx->head = hx->tail = NULL;
    while (r) {
      hreq *n = r->next;
      finish(r, err->status, NULL, NULL, 0, err);
      r = n;
    }
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

/* A server's message may quote what it was sent: the client secret and the tokens are
 * starred out of it before it goes into a report. */
static void star(char *s, const char *secret) {
  size_t n = secret ? strlen(secret) : 0, len = strlen(s);
  if (!n) return;
  for (char *p = strstr(s, secret); p; p = strstr(p + n, secret)) memset(p, '*', n);
  for (size_t k = n - 1 < len ? n - 1 : len; k >= 4; k--) /* cut off at the end of the message */
    if (memcmp(s + len - k, secret, k) == 0) {
      memset(s + len - k, '*', k);
      break;
    }
}
static void redact_with(const tw_client *c, char *s, const char *own) {
  const char *secrets[] = {c->client_secret, c->given_token, c->hx ? c->hx->token : NULL, own};
  for (size_t i = 0; i < 4; i++) {
    if (!secrets[i]) continue;
    star(s, secrets[i]);
    tw_buf enc = {0}; /* as a form body quotes it */
    url_encode(&enc, secrets[i]);
    if (enc.p) star(s, enc.p);
    tw_buf_free(&enc);
  }
}
static void redact(const tw_client *c, char *s) { redact_with(c, s, NULL); }

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
  if (r->too_large) {
    tw_err_set(&err, "response_too_large", 0, "app token request failed: response too large (over %zu bytes)",
               CAP_OAUTH);
  } else if (r->status == 200) {
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
    redact(c, m);
    tw_err_set(&err, r->status ? "auth_failed" : "network", r->status, "app token request failed: %s", m);
  } else {
    char m[160];
    body_message(r->body, r->body_len, m, sizeof m, "rejected");
    redact(c, m);
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
  tw_http_req *hr = tw_http_start(c->http, "POST", url, hdrs, body.p, body.len, (long)(c->http_timeout_s * 1000), on_token, hx);
  tw_http_set_max_body(hr, CAP_OAUTH);
  if (!hr) {
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
  tw_http_req *hr = tw_http_start(c->http, "GET", url, hdrs, NULL, 0, (long)(c->http_timeout_s * 1000), on_validate, hx);
  tw_http_set_max_body(hr, CAP_OAUTH);
  if (!hr) {
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
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", r->token ? r->token : hx->token);
  snprintf(cid, sizeof cid, "Client-Id: %s", c->client_id);
  const char *hdrs[] = {auth, cid, r->body ? "Content-Type: application/json" : "Accept: application/json", NULL};
  r->token_gen = hx->token_gen;
  r->sent_seq = ++hx->send_seq;
  hx->inflight++;
  if (r->prio) hx->inflight_bg++;
  hx->sent_by_prio[r->prio]++;
  c->stats.helix_requests++;
  if (hx->rl_remaining > 0) hx->rl_remaining--; /* optimistic until the answer says */
  if (hx->rl_limit > 0 && !r->token) hx->rl_level -= 1; /* a caller's own token is not the app's bucket */
  tw_http_req *hr = tw_http_start(c->http, r->method, url, hdrs, r->body, r->body_len,
                                  (long)(c->http_timeout_s * 1000), on_response, r);
  tw_http_set_max_body(hr, body_cap(r->path));
  if (!hr) {
    hx->inflight--;
    if (r->prio) hx->inflight_bg--;
    tw_error err;
    tw_err_set(&err, "network", 0, "could not start the request");
    finish(r, 0, NULL, NULL, 0, &err);
  }
  memset(auth, 0, sizeof auth);
}

/* the bucket refilled up to loop time now */
static void refill(tw_helix_state *hx, uint64_t now) {
  if (hx->rl_limit <= 0) return;
  if (now > hx->rl_level_ms) {
    hx->rl_level += (double)(now - hx->rl_level_ms) * hx->rl_limit / 60000.0;
    if (hx->rl_level > hx->rl_limit) hx->rl_level = hx->rl_limit;
  }
  hx->rl_level_ms = now;
}

/* whether a request of priority prio may be sent now; else *wake gets when to look again */
static bool bucket_room(tw_helix_state *hx, int prio, uint64_t now, uint64_t *wake) {
  tw_client *c = hx->c;
  double wall = tw_wall_now();
  if (hx->rl_hold_until > wall) {
    uint64_t w = now + (uint64_t)((hx->rl_hold_until - wall) * 1000) + 50;
    if (w < *wake) *wake = w;
    c->stats.helix_rate_waits++;
    return false;
  }
  hx->rl_hold_until = 0;
  if (hx->rl_limit <= 0) { /* no limit known: the last Remaining, and Reset */
    if (hx->rl_remaining == 0 && wall < hx->rl_reset) {
      uint64_t w = now + (uint64_t)((hx->rl_reset - wall) * 1000) + 50;
      if (w < *wake) *wake = w;
      c->stats.helix_rate_waits++;
      return false;
    }
    if (hx->rl_remaining == 0) hx->rl_remaining = -1; /* the bucket has refilled */
    return true;
  }
  refill(hx, now);
  double need = 1;
  if (prio == TW_PRIO_BACKGROUND) need += hx->rl_limit / 50;
  if (hx->rl_level >= need) return true;
  uint64_t w = now + (uint64_t)((need - hx->rl_level) * 60000.0 / hx->rl_limit) + 1;
  if (w < *wake) *wake = w;
  c->stats.helix_rate_waits++;
  return false;
}

static void pump(tw_helix_state *hx) {
  tw_client *c = hx->c;
  if (hx->closing) return;
  if (!hx->head && !hx->bg_head) return;
  if (hx->tstate == TOK_NONE && !hx->token_failed) fetch_token(hx);
  if (hx->tstate != TOK_OK) return; /* on_token / on_validate pump again */
  if (hx->token_expires > 0 && tw_wall_now() >= hx->token_expires - hx->token_margin && c->client_secret) {
    fetch_token(hx); /* expired by its own clock: get a fresh one before sending */
    return;
  }
  uint64_t now = now_ms(c);
  uint64_t next_wake = UINT64_MAX;
  int bg_max = c->http_max_inflight > 1 ? c->http_max_inflight - 1 : 1;
  for (int p = 0; p < 2; p++) {
    hreq **head = p ? &hx->bg_head : &hx->head, **tail = p ? &hx->bg_tail : &hx->tail;
    hreq *prev = NULL, *r = *head;
    bool blocked = false;
    while (r && hx->inflight < c->http_max_inflight && (!p || hx->inflight_bg < bg_max)) {
      if (r->not_before > now) {
        if (r->not_before < next_wake) next_wake = r->not_before;
        prev = r;
        r = r->next;
        continue;
      }
      /* a caller's own token is another bucket: it passes app requests held by the app's */
      if (!r->token && (blocked || !bucket_room(hx, p, now, &next_wake))) {
        blocked = true;
        if (p) break; /* background requests all use the app's */
        prev = r;
        r = r->next;
        continue;
      }
      hreq *n = r->next;
      if (prev) prev->next = n;
      else *head = n;
      if (*tail == r) *tail = prev;
      send_req(hx, r);
      r = n;
    }
    if (blocked && !p) break; /* what a bot call may not spend, background may not either */
  }
  if (next_wake != UINT64_MAX) uv_timer_start(&hx->pump_timer, on_pump_timer, next_wake - now, 0);
}

/* the bucket from an answer's headers: only the newest attempt's, minus what is still in
 * flight (those may be charged after this answer was computed) */
static void mirror(tw_helix_state *hx, const hreq *r, const tw_http_result *res) {
  bool fresh = r->sent_seq > hx->seq_at_429; /* sent after the last 429 was seen */
  if (fresh && res->rl_reset >= 0 && (double)res->rl_reset > hx->rl_reset) hx->rl_reset = (double)res->rl_reset;
  if (!fresh || res->rl_remaining < 0 || r->sent_seq <= hx->hdr_seq) return;
  hx->hdr_seq = r->sent_seq;
  hx->rl_remaining = res->rl_remaining;
  if (res->rl_limit > 0) hx->rl_limit = res->rl_limit;
  if (hx->rl_limit > 0) {
    hx->rl_level = (double)res->rl_remaining - hx->inflight;
    hx->rl_level_ms = now_ms(hx->c);
  }
}

/* a 429 that no wait can cure: the cost ceiling, too many subscriptions with that type
 * and condition, other limits (Twitch sends those without a rate-limit header) */
static bool limit_429(const tw_http_result *res) {
  if (res->rl_remaining != 0) return true; /* absent, or the bucket had room */
  char m[200];
  body_message(res->body, res->body_len, m, sizeof m, "");
  for (char *p = m; *p; p++)
    if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
  return strstr(m, "total cost") || strstr(m, "type and condition");
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
  if (r->prio) hx->inflight_bg--;
  if (!r->token) mirror(hx, r, res); /* answers to a caller's own token say nothing of the app's bucket */
  c->stats.ratelimit_remaining = hx->rl_limit > 0 ? (int)(hx->rl_level > 0 ? hx->rl_level : 0) : hx->rl_remaining;
  int st = res->status;
  tw_metrics_note_helix(c, r->path, st);
  tw_error err;
  tw_err_clear(&err);

  if (st == 401 && !r->retried_401 && c->client_secret && !r->token) {
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
  bool final_429 = st == 429 && limit_429(res);
  if (st == 429 && !final_429 && r->token && r->waits_429 < 10) {
    /* the caller's own bucket: this request waits for its reset; the app's is not touched */
    r->waits_429++;
    c->stats.helix_retries++;
    double wait_s = res->rl_reset >= 0 ? (double)res->rl_reset - tw_wall_now() : 1;
    if (wait_s < 1) wait_s = 1;
    if (wait_s > 60) wait_s = 60;
    r->not_before = now_ms(c) + (uint64_t)(wait_s * 1000);
    enqueue(hx, r, true);
    pump(hx);
    return;
  }
  if (st == 429 && !final_429 && !r->token) { /* the bucket: wait for its reset */
    if (r->waits_429 < 10) {
      r->waits_429++;
      c->stats.helix_retries++;
      hx->rl_remaining = 0;
      hx->rl_level = 0;
      hx->rl_level_ms = now_ms(c);
      hx->seq_at_429 = hx->send_seq;
      if (res->rl_reset >= 0) hx->rl_reset = (double)res->rl_reset;
      double wall = tw_wall_now();
      if (hx->rl_reset <= wall) hx->rl_reset = wall + 1;
      hx->rl_hold_until = hx->rl_reset;
      r->not_before = 0;
      enqueue(hx, r, true);
      pump(hx);
      return;
    }
  }
  if ((st == 0 || st >= 500) && !res->too_large && r->fails < (unsigned)c->http_retries) {
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
    if (res->too_large) {
      tw_err_set(&err, "response_too_large", 0, "%s %s: response too large (over %zu bytes)", r->method, r->path,
                 body_cap(r->path));
    } else if (st == 0) {
      tw_err_set(&err, strstr(res->curl_error, "imed out") ? "timeout" : "network", 0, "%s %s: %s", r->method,
                 r->path, res->curl_error);
    } else {
      body_message(res->body, res->body_len, m, sizeof m, "request failed");
      redact_with(c, m, r->token); /* a caller's own token too */
      const char *code = tw_http_code(st);
      if (final_429) {
        code = "limit_exceeded";
        hx->final_429++;
      }
      if (st == 401 && !c->client_secret) code = "unauthorized";
      tw_err_set(&err, code, st, "%s %s: %s", r->method, r->path, m);
    }
    finish(r, st, body, res->body, res->body_len, &err);
  }
  if (body) tw_json_unref(body);
  pump(hx);
}

static int helix_queue(tw_client *c, const char *method, const char *path, const char *body, size_t body_len,
                       tw_response_fn cb, void *user, tw_error *err, bool urgent, int prio, const char *token);

int tw_helix(tw_client *c, const char *method, const char *path, const char *body, size_t body_len,
             tw_response_fn cb, void *user, tw_error *err) {
  return helix_queue(c, method, path, body, body_len, cb, user, err, false, TW_PRIO_BOT, NULL);
}

int tw_helix_with_token(tw_client *c, const char *token, const char *method, const char *path, const char *body,
                        size_t body_len, tw_response_fn cb, void *user, tw_error *err) {
  if (!token || !*token) {
    tw_err_set(err, "invalid_argument", 0, "helix: a token is required");
    return TW_EINVAL;
  }
  return helix_queue(c, method, path, body, body_len, cb, user, err, false, TW_PRIO_BOT, token);
}

int tw_helix_urgent(tw_client *c, const char *method, const char *path, const char *body, size_t body_len,
                    tw_response_fn cb, void *user, tw_error *err) {
  return helix_queue(c, method, path, body, body_len, cb, user, err, true, TW_PRIO_BOT, NULL);
}

int tw_helix_prio(tw_client *c, int prio, const char *method, const char *path, const char *body,
                  size_t body_len, tw_response_fn cb, void *user, tw_error *err) {
  if (prio != TW_PRIO_BOT && prio != TW_PRIO_BACKGROUND) {
    tw_err_set(err, "invalid_argument", 0, "helix: unknown priority %d", prio);
    return TW_EINVAL;
  }
  return helix_queue(c, method, path, body, body_len, cb, user, err, false, prio, NULL);
}

static int helix_queue(tw_client *c, const char *method, const char *path, const char *body, size_t body_len,
                       tw_response_fn cb, void *user, tw_error *err, bool urgent, int prio, const char *token) {
  if (!c || !method || !path || path[0] != '/') {
    tw_err_set(err, "invalid_argument", 0, "helix: method and a path starting with '/' are required");
    return TW_EINVAL;
  }
  if (c->freeing || !c->hx || c->hx->closing) {
    tw_err_set(err, "closed", 0, "the client is closed");
    return TW_ECLOSED;
  }
  if (!c->client_id[0] || (!token && !c->client_secret && !c->given_token)) {
    tw_err_set(err, "no_credentials", 0, "helix: this client was made without %s; give %s to call Helix",
               c->client_id[0] ? "a client_secret or an access_token" : "a client_id",
               c->client_id[0] ? "one" : "it");
    return TW_EINVAL;
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
  if (token) r->token = tw_strdup(token);
  if (!r->method || !r->path || (body && !r->body) || (token && !r->token)) {
    hreq_free(r);
    goto nomem;
  }
  r->cb = cb;
  r->user = user;
  r->prio = prio;
  enqueue(hx, r, urgent);
  /* send on the next loop iteration, so a burst of calls shares token fetch and pacing */
  uv_timer_start(&hx->pump_timer, on_pump_timer, 0, 0);
  return 0;
nomem:
  tw_err_set(err, "no_memory", 0, "out of memory");
  return TW_ENOMEM;
}

const char *tw_client_token(const tw_client *c) { return c->hx ? c->hx->token : NULL; }

void tw_client_ratelimit(const tw_client *c, tw_ratelimit *out) {
  memset(out, 0, sizeof *out);
  out->limit = -1;
  out->remaining = -1;
  out->reset = -1;
  const tw_helix_state *hx = c ? c->hx : NULL;
  if (!hx) return;
  out->limit = hx->rl_limit;
  if (hx->rl_limit > 0) {
    uint64_t now = uv_now(c->loop);
    double lv = hx->rl_level;
    if (now > hx->rl_level_ms) lv += (double)(now - hx->rl_level_ms) * hx->rl_limit / 60000.0;
    out->remaining = lv > hx->rl_limit ? hx->rl_limit : lv;
  } else {
    out->remaining = hx->rl_remaining;
  }
  out->reset = hx->rl_reset > 0 ? (int64_t)hx->rl_reset : -1;
  out->hold_until = hx->rl_hold_until > tw_wall_now() ? hx->rl_hold_until : 0;
  for (int p = 0; p < 2; p++)
    for (const hreq *r = p ? hx->bg_head : hx->head; r; r = r->next) out->waiting[p]++;
  out->inflight[0] = hx->inflight - hx->inflight_bg;
  out->inflight[1] = hx->inflight_bg;
  out->sent[0] = hx->sent_by_prio[0];
  out->sent[1] = hx->sent_by_prio[1];
  out->final_429 = hx->final_429;
}

tw_helix_state *tw_helix_new(tw_client *c) {
  tw_helix_state *hx = calloc(1, sizeof *hx);
  if (!hx) return NULL;
  hx->c = c;
  hx->rl_remaining = -1;
  hx->rl_limit = -1;
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
  for (int p = 0; p < 2; p++) {
    hreq *r = p ? hx->bg_head : hx->head;
    while (r) {
      hreq *n = r->next;
      hreq_free(r);
      r = n;
    }
  }
  hx->head = hx->tail = hx->bg_head = hx->bg_tail = NULL;
  if (hx->token) memset(hx->token, 0, strlen(hx->token));
  free(hx->token);
  hx->token = NULL;
  /* the last of the three closes frees hx (libuv runs close callbacks in any order) */
  hx->open_handles = 3;
  uv_close((uv_handle_t *)&hx->pump_timer, close_cb);
  uv_close((uv_handle_t *)&hx->validate_timer, close_cb);
  uv_close((uv_handle_t *)&hx->token_retry_timer, close_cb);
}

void tw_helix_error_message(const char *body, size_t len, char *out, size_t outlen, const char *fallback) {
  body_message(body, len, out, outlen, fallback);
}
