/* wsession.c - plain websocket mode: one EventSub websocket session with a user token.
 *
 * A bot that needs no conduit opens one session and creates websocket-transport
 * subscriptions on it with a user access token. This object owns the user token
 * (validation at start and every validate_interval_s, refresh with a refresh token and
 * the client secret) and the session's sockets (ws.c reports to it through
 * tw_session_ops, as it does to a conduit's shard): reconnect with backoff after a close,
 * session_reconnect onto a second socket (the old one delivers until the new welcome).
 * It does not keep the subscriptions: the owner (the Lua layer) makes them again on
 * TW_EV_WS_CONNECTED, since a new session starts with none on Twitch, and keeps them on
 * TW_EV_WS_RECONNECTED. Messages go through tw_client_deliver with msg->wsession set.
 *
 * Lifetime: tw_wsession_close closes the sockets; the object is freed (TW_EV_FREED with
 * ev->wsession) from a timer once no socket, HTTP request or Helix request of it is left.
 * tw_client_free frees what remains after every request was cancelled. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define WS_MAX_PER_USER 3 /* Twitch: websocket connections per user (with enabled subscriptions) */

enum { WS_VALIDATING, WS_CONNECTING, WS_CONNECTED, WS_IDLE, WS_FAILED, WS_CLOSING };
static const char *const STATE_NAMES[] = {"validating", "connecting", "connected", "idle", "failed", "closing"};

typedef struct wreq wreq;
typedef struct hop hop;

struct tw_wsession {
  tw_client *c;
  struct tw_wsession *next, *prev; /* the client's list */
  void *user;
  char *token, *refresh;
  char *login, *user_id, **scopes;
  size_t nscopes;
  double expires_at;   /* wall seconds; 0 unknown */
  int state;
  tw_session *ss;      /* the current socket */
  tw_session *next_ss; /* a session_reconnect target, until its welcome */
  tw_session *old_ss;  /* a socket being closed after a session_reconnect: it still delivers */
  char *session_id;
  bool validated, outage, closing, freed, refreshing, fail_refresh;
  bool fresh_token;    /* refreshed and not validated since: a 401 now is not refreshed again */
  unsigned attempt;    /* reconnect (or initial validation) attempts in a row */
  int pending;         /* HTTP and Helix requests in flight */
  hop *hv, *hr;        /* the validation and the refresh in flight */
  wreq *reqs;          /* Helix requests in flight or waiting for a refresh */
  uv_timer_t backoff;  /* reconnect / retry, then the deferred free */
  uv_timer_t vtimer;   /* next validation or refresh */
  int open_handles;
  tw_error fail_err;
  tw_wsession_stats st;
};

struct hop { /* an HTTP request of ours: its callback runs even after the client freed us */
  tw_wsession *ws;
};

struct wreq {
  tw_wsession *ws;
  char *method, *path, *body;
  size_t body_len;
  tw_response_fn cb;
  void *user;
  bool retried, parked;
  wreq *next, *prev;
};

static void ws_connect(tw_wsession *ws);
static const tw_session_ops OPS;
static void validate(tw_wsession *ws);
static void refresh(tw_wsession *ws);
static void maybe_free(tw_wsession *ws);

static void emit(tw_wsession *ws, tw_event_type t, const char *status, const tw_error *e) {
  tw_event ev = {.type = t, .status = status, .error = e, .wsession = ws};
  tw_emit(ws->c, &ev);
}

static void emit_error(tw_wsession *ws, const tw_error *e) { emit(ws, TW_EV_ERROR, NULL, e); }

static bool can_refresh(const tw_wsession *ws) { return ws->refresh && ws->c->client_secret && !ws->fail_refresh; }

static void set_str(char **dst, const char *s, size_t n) {
  char *v = s ? tw_strndup(s, n) : NULL;
  if (*dst) memset(*dst, 0, strlen(*dst));
  free(*dst);
  *dst = v;
}

static void fail(tw_wsession *ws, const tw_error *e) {
  ws->fail_err = *e;
  if (!ws->closing) ws->state = WS_FAILED;
  emit_error(ws, e);
}

/* ---- sockets ---- */

static const char *close_code_name(int code) {
  switch (code) {
  case 4001: return "inbound_traffic";
  case 4003: return "connection_unused";
  case 4004: return "reconnect_expired";
  case 4007: return "invalid_reconnect";
  default: return "websocket_closed";
  }
}

static void on_backoff(uv_timer_t *t) {
  tw_wsession *ws = t->data;
  if (ws->closing) return;
  if (!ws->validated) validate(ws); /* the first validation failed for a transient reason */
  else ws_connect(ws);
}

static void retry_later(tw_wsession *ws) {
  tw_client *c = ws->c;
  uint64_t ms = tw_backoff_ms(&c->rng, c->backoff_min_s, c->backoff_max_s, ws->attempt++);
  uv_timer_start(&ws->backoff, on_backoff, ms, 0);
}

static void on_welcome(void *owner, tw_session *ss, const char *id) {
  tw_wsession *ws = owner;
  if (ws->closing) return;
  if (ss == ws->next_ss) { /* the session_reconnect target is up: retire the old socket */
    if (ws->ss) {
      if (ws->old_ss) tw_ws_set_owner(ws->old_ss, NULL, NULL, NULL);
      ws->old_ss = ws->ss;
      tw_ws_close(ws->old_ss, 1000);
    }
    ws->ss = ss;
    ws->next_ss = NULL;
    ws->state = WS_CONNECTED;
    ws->attempt = 0;
    ws->outage = false;
    if (ws->session_id && strcmp(ws->session_id, id) == 0) {
      ws->st.reconnects++;
      emit(ws, TW_EV_WS_RECONNECTED, NULL, NULL);
      return;
    }
    /* another session id: a new session, as after any other reconnect */
  } else if (ss != ws->ss) {
    return;
  }
  ws->state = WS_CONNECTED;
  ws->attempt = 0;
  ws->outage = false;
  set_str(&ws->session_id, id, strlen(id));
  ws->st.sessions++;
  emit(ws, TW_EV_WS_CONNECTED, NULL, NULL);
}

static void on_reconnect(void *owner, tw_session *ss, const char *url) {
  tw_wsession *ws = owner;
  if (ws->closing || ss != ws->ss) return;
  if (ws->next_ss) { /* a second session_reconnect before the first target's welcome */
    tw_ws_set_owner(ws->next_ss, NULL, NULL, NULL);
    tw_ws_close(ws->next_ss, 1000);
    ws->next_ss = NULL;
  }
  ws->st.connects++;
  ws->next_ss = tw_ws_open(ws->c, url, &OPS, ws, &ws->st.bytes);
  tw_ws_reconnect_target(ws->next_ss);
  if (!ws->next_ss) {
    tw_error e;
    tw_err_set(&e, "reconnect_failed", 0, "the session_reconnect URL cannot be connected to; the current socket goes on");
    emit_error(ws, &e);
  }
}

static void on_message(void *owner, tw_session *ss, tw_msg *m) {
  tw_wsession *ws = owner;
  (void)ss;
  m->wsession = ws;
  if (tw_client_deliver(ws->c, m, NULL, NULL, &ws->st.duplicates) && m->message_type && m->message_type[0] == 'n')
    ws->st.notifications++;
}

static void on_keepalive(void *owner, tw_session *ss) {
  (void)ss;
  ((tw_wsession *)owner)->st.keepalives++;
}

static void on_session_error(void *owner, tw_session *ss, const tw_error *e) {
  (void)ss;
  emit_error(owner, e);
}

static void on_closed(void *owner, tw_session *ss, int code, const char *why) {
  tw_wsession *ws = owner;
  if (ss == ws->old_ss) { /* retired after a session_reconnect: its close is ours */
    ws->old_ss = NULL;
    maybe_free(ws);
    return;
  }
  if (code) ws->st.last_close_code = code;
  if (ss == ws->next_ss) {
    ws->next_ss = NULL;
    if (ws->ss && !ws->closing) {
      tw_error e;
      tw_err_set(&e, "reconnect_failed", code, "the session_reconnect target closed before its welcome (%s); the current socket goes on",
                 why && *why ? why : "no reason");
      emit_error(ws, &e);
      return;
    }
  } else if (ss == ws->ss) {
    ws->ss = NULL;
    if (ws->next_ss && !ws->closing) return; /* the reconnect target takes over at its welcome */
  } else {
    return;
  }
  if (ws->closing) {
    maybe_free(ws);
    return;
  }
  bool was_up = ws->state == WS_CONNECTED;
  ws->state = WS_IDLE;
  if (!was_up) ws->st.failed_connects++;
  if (!ws->outage) {
    ws->outage = true;
    ws->st.outages++;
    tw_error e;
    const char *ecode = code >= 4000 ? close_code_name(code) : was_up ? "websocket_closed" : "websocket_url";
    tw_err_set(&e, ecode, code, "the websocket session closed (%s); it reconnects", why && *why ? why : "no reason");
    emit(ws, TW_EV_WS_DISCONNECTED, tw_close_status(code), &e);
    if (ws->closing) {
      maybe_free(ws);
      return;
    }
  }
  retry_later(ws);
}

static void ws_connect(tw_wsession *ws) {
  if (ws->closing || ws->ss || ws->state == WS_FAILED) return;
  ws->state = WS_CONNECTING;
  ws->st.connects++;
  ws->ss = tw_ws_open(ws->c, NULL, &OPS, ws, &ws->st.bytes);
  if (!ws->ss) {
    tw_error e;
    tw_err_set(&e, "websocket_url", 0, "the EventSub websocket URL cannot be connected to");
    fail(ws, &e);
  }
}

/* ---- the user token ---- */

static unsigned live_sessions_of(const tw_wsession *ws) {
  unsigned n = 0;
  for (const tw_wsession *o = ws->c->wsessions; o; o = o->next)
    if (o != ws && o->validated && !o->closing && o->state != WS_FAILED && o->user_id && ws->user_id &&
        strcmp(o->user_id, ws->user_id) == 0)
      n++;
  return n;
}

static void on_vtimer(uv_timer_t *t) {
  tw_wsession *ws = t->data;
  if (ws->closing) return;
  if (can_refresh(ws) && ws->expires_at > 0 && tw_wall_now() >= ws->expires_at - 60) refresh(ws);
  else validate(ws);
}

/* the next validation: every validate_interval_s, and a refresh a minute before expiry */
static void schedule_vtimer(tw_wsession *ws) {
  tw_client *c = ws->c;
  double in = c->validate_interval_s > 0 ? c->validate_interval_s : -1;
  if (can_refresh(ws) && ws->expires_at > 0) {
    double r = ws->expires_at - 60 - tw_wall_now();
    if (r < 1) r = 1;
    if (in < 0 || r < in) in = r;
  }
  if (in < 0) return;
  uv_timer_start(&ws->vtimer, on_vtimer, (uint64_t)(in * 1000), 0);
  uv_unref((uv_handle_t *)&ws->vtimer); /* does not keep the loop alive alone */
}

static hop *hop_new(tw_wsession *ws) {
  hop *h = calloc(1, sizeof *h);
  if (h) {
    h->ws = ws;
    ws->pending++;
  }
  return h;
}

/* the hop's owner, or NULL when the request was cancelled or the owner is gone */
static tw_wsession *hop_end(hop *h, int status) {
  tw_wsession *ws = h->ws;
  free(h);
  if (!ws) return NULL;
  ws->pending--;
  if (status < 0) return NULL;
  return ws;
}

/* OAuth answers are a few hundred bytes: capped as the app token's are (helix.c) */
#define WS_CAP_OAUTH ((size_t)64 << 10)

static void on_validate(void *user, const tw_http_result *r) {
  hop *h = user;
  tw_wsession *ws = h->ws;
  if (ws) ws->hv = NULL;
  ws = hop_end(h, r->status);
  if (!ws) return;
  if (ws->closing) {
    maybe_free(ws);
    return;
  }
  tw_error e;
  if (r->too_large) { /* no retry: the same answer would come again */
    tw_err_set(&e, "response_too_large", 0, "user token validation failed: response too large (over %zu bytes)",
               WS_CAP_OAUTH);
    if (!ws->validated) fail(ws, &e);
    else emit_error(ws, &e);
    return;
  }
  if (r->status == 401) {
    if (can_refresh(ws) && !ws->fresh_token) {
      refresh(ws);
      return;
    }
    tw_err_set(&e, "auth_failed", 401, "the user access token is invalid (revoked or expired)%s",
               ws->refresh ? " and could not be refreshed" : "; give a refresh_token (and the client_secret) to refresh it");
    if (!ws->validated) fail(ws, &e);
    else emit_error(ws, &e);
    return;
  }
  if (r->status != 200) {
    if (!ws->validated) {
      if (ws->attempt < (unsigned)ws->c->http_retries + 1) {
        retry_later(ws);
        return;
      }
      tw_err_set(&e, r->status ? "auth_failed" : "network", r->status, "the user token could not be validated: %s",
                 r->status ? "unexpected answer" : r->curl_error);
      fail(ws, &e);
    } else {
      tw_err_set(&e, r->status ? "auth_failed" : "network", r->status, "user token validation failed: %s",
                 r->status ? "unexpected answer" : r->curl_error);
      emit_error(ws, &e);
      schedule_vtimer(ws);
    }
    return;
  }
  tw_json *d = tw_json_parse(r->body, r->body_len, NULL, 0);
  size_t n = 0, ln = 0;
  const char *cid = d ? tw_json_str(d, tw_json_get(d, 0, "client_id", 9), NULL) : NULL;
  const char *uid = d ? tw_json_str(d, tw_json_get(d, 0, "user_id", 7), &n) : NULL;
  const char *login = d ? tw_json_str(d, tw_json_get(d, 0, "login", 5), &ln) : NULL;
  if (!d || !uid || !n) {
    tw_err_set(&e, "auth_failed", 200, "%s", d ? "the access token is not a user access token (no user_id)"
                                               : "the token validation answer is not JSON");
  } else if (cid && strcmp(cid, ws->c->client_id) != 0) {
    tw_err_set(&e, "auth_failed", 401, "the user access token belongs to another client id");
  } else {
    e.code[0] = 0;
    set_str(&ws->user_id, uid, n);
    set_str(&ws->login, login, login ? ln : 0);
    for (size_t i = 0; i < ws->nscopes; i++) free(ws->scopes[i]);
    free(ws->scopes);
    ws->scopes = NULL;
    ws->nscopes = 0;
    tw_jnode sc = tw_json_get(d, 0, "scopes", 6);
    size_t k = sc != TW_JNONE && tw_json_type(d, sc) == TW_JSON_ARR ? tw_json_len(d, sc) : 0;
    if (k) ws->scopes = calloc(k, sizeof *ws->scopes);
    for (size_t i = 0; ws->scopes && i < k; i++) {
      const char *s = tw_json_str(d, tw_json_at(d, sc, i), &n);
      if (s && (ws->scopes[ws->nscopes] = tw_strndup(s, n))) ws->nscopes++;
    }
    tw_jnode ei = tw_json_get(d, 0, "expires_in", 10);
    double exp = ei != TW_JNONE ? tw_json_num(d, ei) : 0;
    ws->expires_at = exp > 0 ? tw_wall_now() + exp : 0;
  }
  if (d) tw_json_unref(d);
  ws->fresh_token = false;
  if (e.code[0]) {
    if (!ws->validated) fail(ws, &e);
    else emit_error(ws, &e);
    return;
  }
  schedule_vtimer(ws);
  if (!ws->validated) {
    ws->validated = true;
    ws->attempt = 0;
    if (live_sessions_of(ws) >= WS_MAX_PER_USER) {
      tw_err_set(&e, "too_many_sessions", 0,
                 "user %s already has %d websocket sessions in this client (Twitch allows %d per user)", ws->user_id,
                 WS_MAX_PER_USER, WS_MAX_PER_USER);
      fail(ws, &e);
      return;
    }
    ws_connect(ws);
  }
}

static void validate(tw_wsession *ws) {
  tw_client *c = ws->c;
  if (ws->hv || ws->closing) return;
  char url[1024], auth[600];
  snprintf(url, sizeof url, "%s/validate", c->auth_base);
  snprintf(auth, sizeof auth, "Authorization: OAuth %s", ws->token);
  const char *hdrs[] = {auth, NULL};
  hop *h = hop_new(ws);
  ws->st.token_validations++;
  tw_http_req *hq = h ? tw_http_start(c->http, "GET", url, hdrs, NULL, 0, (long)(c->http_timeout_s * 1000), on_validate, h)
                     : NULL;
  tw_http_set_max_body(hq, WS_CAP_OAUTH);
  if (!hq) {
    if (h) {
      h->ws = NULL;
      ws->pending--;
      free(h);
    }
    tw_error e;
    tw_err_set(&e, "network", 0, "could not start the user token validation");
    if (!ws->validated) fail(ws, &e);
    else emit_error(ws, &e);
  } else {
    ws->hv = h;
  }
  memset(auth, 0, sizeof auth);
}

static void send_wreq(wreq *q);
static void complete_wreq(wreq *q, const tw_response *resp);

/* the requests that waited for a refresh: sent again, or failed with e */
static void release_parked(tw_wsession *ws, const tw_error *e) {
  wreq *q = ws->reqs;
  while (q) {
    wreq *n = q->next;
    if (q->parked) {
      q->parked = false;
      if (e) {
        tw_response resp = {.status = e->status, .error = e};
        complete_wreq(q, &resp);
      } else {
        send_wreq(q);
      }
    }
    q = n;
  }
}

static void on_refresh(void *user, const tw_http_result *r) {
  hop *h = user;
  tw_wsession *ws = h->ws;
  if (ws) ws->hr = NULL;
  ws = hop_end(h, r->status);
  if (!ws) return;
  ws->refreshing = false;
  tw_error e;
  tw_json *d = r->status == 200 ? tw_json_parse(r->body, r->body_len, NULL, 0) : NULL;
  size_t n = 0, rn = 0;
  const char *tok = d ? tw_json_str(d, tw_json_get(d, 0, "access_token", 12), &n) : NULL;
  const char *rt = d ? tw_json_str(d, tw_json_get(d, 0, "refresh_token", 13), &rn) : NULL;
  if (tok && n) {
    set_str(&ws->token, tok, n);
    if (rt && rn) set_str(&ws->refresh, rt, rn); /* refresh tokens rotate: the old one is spent */
    tw_jnode ei = tw_json_get(d, 0, "expires_in", 10);
    double exp = ei != TW_JNONE ? tw_json_num(d, ei) : 0;
    ws->expires_at = exp > 0 ? tw_wall_now() + exp : 0;
    tw_json_unref(d);
    ws->st.token_refreshes++;
    ws->fresh_token = true;
    if (!ws->closing) emit(ws, TW_EV_WS_TOKEN, NULL, NULL);
    release_parked(ws, NULL);
    validate(ws); /* login, user id and scopes of the new token; the first validation goes on from here */
    maybe_free(ws);
    return;
  }
  if (d) tw_json_unref(d);
  ws->fail_refresh = r->status >= 400 && r->status < 500; /* a spent or refused refresh token: not again */
  if (r->too_large)
    tw_err_set(&e, "response_too_large", 0, "the user token refresh failed: response too large (over %zu bytes)",
               WS_CAP_OAUTH);
  else if (r->status == 0) tw_err_set(&e, "network", 0, "the user token refresh failed: %s", r->curl_error);
  else tw_err_set(&e, "auth_failed", r->status, "the user token could not be refreshed (%d)", r->status);
  tw_error e401;
  tw_err_set(&e401, "unauthorized", 401, "the user access token is invalid and could not be refreshed");
  release_parked(ws, &e401);
  if (!ws->validated) fail(ws, &e);
  else emit_error(ws, &e);
  maybe_free(ws);
}

static void url_encode(tw_buf *b, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
        ch == '_' || ch == '.' || ch == '~') {
      tw_buf_append(b, s, 1);
    } else {
      char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};
      tw_buf_append(b, e, 3);
    }
  }
}

static void refresh(tw_wsession *ws) {
  tw_client *c = ws->c;
  if (ws->refreshing) return;
  ws->refreshing = true;
  tw_buf body = {0};
  tw_buf_append(&body, "grant_type=refresh_token&refresh_token=", 39);
  url_encode(&body, ws->refresh);
  tw_buf_append(&body, "&client_id=", 11);
  url_encode(&body, c->client_id);
  tw_buf_append(&body, "&client_secret=", 15);
  url_encode(&body, c->client_secret);
  char url[1024];
  snprintf(url, sizeof url, "%s/token", c->auth_base);
  const char *hdrs[] = {"Content-Type: application/x-www-form-urlencoded", "Accept: application/json", NULL};
  hop *h = hop_new(ws);
  tw_http_req *hq = h && body.p ? tw_http_start(c->http, "POST", url, hdrs, body.p, body.len,
                                                (long)(c->http_timeout_s * 1000), on_refresh, h)
                                 : NULL;
  tw_http_set_max_body(hq, WS_CAP_OAUTH);
  if (!hq) {
    if (h) {
      h->ws = NULL;
      ws->pending--;
      free(h);
    }
    ws->refreshing = false;
    tw_error e, e401;
    tw_err_set(&e, "network", 0, "could not start the user token refresh");
    tw_err_set(&e401, "unauthorized", 401, "the user access token is invalid and could not be refreshed");
    release_parked(ws, &e401);
    if (!ws->validated) fail(ws, &e);
    else emit_error(ws, &e);
  } else {
    ws->hr = h;
  }
  if (body.p) memset(body.p, 0, body.len);
  tw_buf_free(&body);
}

/* ---- Helix with the user token ---- */

static void wreq_free(wreq *q) {
  free(q->method);
  free(q->path);
  free(q->body);
  free(q);
}

static void wreq_unlink(wreq *q) {
  tw_wsession *ws = q->ws;
  if (q->prev) q->prev->next = q->next;
  else ws->reqs = q->next;
  if (q->next) q->next->prev = q->prev;
  q->next = q->prev = NULL;
}

/* Twitch's answers about the websocket limits, as stable codes */
static void map_limits(tw_error *e) {
  if (e->status == 429 && strstr(e->message, "websocket transports limit"))
    snprintf(e->code, sizeof e->code, "too_many_sessions");
  else if (e->status == 429 && strstr(e->message, "subscriptions per websocket transport"))
    snprintf(e->code, sizeof e->code, "too_many_subscriptions");
  else if (e->status == 400 && strstr(e->message, "session") &&
           (strstr(e->message, "not connected") || strstr(e->message, "does not exist") ||
            strstr(e->message, "disconnected")))
    snprintf(e->code, sizeof e->code, "session_not_connected");
}

static void complete_wreq(wreq *q, const tw_response *resp) {
  tw_wsession *ws = q->ws;
  wreq_unlink(q);
  ws->pending--;
  tw_response r = *resp;
  tw_error e;
  if (resp->error) {
    e = *resp->error;
    map_limits(&e);
    r.error = &e;
  }
  if (q->cb) q->cb(q->user, &r);
  wreq_free(q);
  maybe_free(ws);
}

static void on_wresp(void *user, const tw_response *resp) {
  wreq *q = user;
  tw_wsession *ws = q->ws;
  if (resp->status == 401 && !q->retried && can_refresh(ws)) {
    q->retried = true;
    q->parked = true;
    refresh(ws);
    return;
  }
  complete_wreq(q, resp);
}

static void send_wreq(wreq *q) {
  tw_error e;
  if (tw_helix_with_token(q->ws->c, q->ws->token, q->method, q->path, q->body, q->body_len, on_wresp, q, &e) != 0) {
    tw_response resp = {.status = 0, .error = &e};
    complete_wreq(q, &resp); /* from a callback of the loop (a refresh's answer) */
  }
}

int tw_wsession_helix(tw_wsession *ws, const char *method, const char *path, const char *body, size_t body_len,
                      tw_response_fn cb, void *user, tw_error *err) {
  if (!ws || ws->freed) {
    tw_err_set(err, "closed", 0, "the websocket session is closed");
    return TW_ECLOSED;
  }
  if (!method || !path || path[0] != '/') {
    tw_err_set(err, "invalid_argument", 0, "helix: method and a path starting with '/' are required");
    return TW_EINVAL;
  }
  wreq *q = calloc(1, sizeof *q);
  if (!q) goto nomem;
  q->ws = ws;
  q->method = tw_strdup(method);
  q->path = tw_strdup(path);
  q->body = body ? tw_strndup(body, body_len) : NULL;
  q->body_len = body ? body_len : 0;
  q->cb = cb;
  q->user = user;
  if (!q->method || !q->path || (body && !q->body)) {
    wreq_free(q);
    goto nomem;
  }
  q->parked = ws->refreshing; /* a refresh in flight: wait for the new token */
  if (!q->parked) {
    int rc = tw_helix_with_token(ws->c, ws->token, method, path, q->body, q->body_len, on_wresp, q, err);
    if (rc != 0) {
      wreq_free(q);
      return rc;
    }
  }
  q->next = ws->reqs;
  if (ws->reqs) ws->reqs->prev = q;
  ws->reqs = q;
  ws->pending++;
  return 0;
nomem:
  tw_err_set(err, "no_memory", 0, "out of memory");
  return TW_ENOMEM;
}

/* ---- life ---- */

static const tw_session_ops OPS = {on_welcome, on_reconnect, on_message, on_keepalive, on_session_error, on_closed};

static void handle_closed(uv_handle_t *h) {
  tw_wsession *ws = h->data;
  if (--ws->open_handles > 0) return;
  set_str(&ws->token, NULL, 0);
  set_str(&ws->refresh, NULL, 0);
  free(ws->login);
  free(ws->user_id);
  for (size_t i = 0; i < ws->nscopes; i++) free(ws->scopes[i]);
  free(ws->scopes);
  free(ws->session_id);
  free(ws);
}

static void unlink_and_free(tw_wsession *ws) {
  tw_client *c = ws->c;
  ws->freed = true;
  if (ws->prev) ws->prev->next = ws->next;
  else c->wsessions = ws->next;
  if (ws->next) ws->next->prev = ws->prev;
  ws->open_handles = 2;
  uv_close((uv_handle_t *)&ws->backoff, handle_closed);
  uv_close((uv_handle_t *)&ws->vtimer, handle_closed);
}

static void on_free_timer(uv_timer_t *t) {
  tw_wsession *ws = t->data;
  if (ws->freed) return;
  if (ws->ss || ws->next_ss || ws->old_ss || ws->pending > 0) return; /* something came back meanwhile */
  tw_event ev = {.type = TW_EV_FREED, .wsession = ws};
  tw_emit(ws->c, &ev);
  unlink_and_free(ws);
}

/* once closing and nothing is left: freed from a timer (never inside the caller's call) */
static void maybe_free(tw_wsession *ws) {
  if (!ws->closing || ws->freed || ws->ss || ws->next_ss || ws->old_ss || ws->pending > 0) return;
  uv_timer_start(&ws->backoff, on_free_timer, 0, 0);
}

tw_wsession *tw_wsession_open(tw_client *c, const tw_wsession_opts *o, tw_error *err) {
  tw_err_clear(err);
  if (!c || !o || !o->access_token || !*o->access_token) {
    tw_err_set(err, "invalid_argument", 0, "access_token (a user access token) is required");
    return NULL;
  }
  if (c->freeing || !c->hx) {
    tw_err_set(err, "closed", 0, "the client is closed");
    return NULL;
  }
  if (strlen(o->access_token) > 500 || (o->refresh_token && strlen(o->refresh_token) > 500)) {
    tw_err_set(err, "invalid_argument", 0, "access_token and refresh_token must be at most 500 characters");
    return NULL;
  }
  tw_wsession *ws = calloc(1, sizeof *ws);
  if (!ws) goto nomem;
  ws->c = c;
  ws->token = tw_strdup(o->access_token);
  ws->refresh = o->refresh_token && *o->refresh_token ? tw_strdup(o->refresh_token) : NULL;
  if (!ws->token || (o->refresh_token && *o->refresh_token && !ws->refresh)) {
    free(ws->token);
    free(ws->refresh);
    free(ws);
    goto nomem;
  }
  uv_timer_init(c->loop, &ws->backoff);
  uv_timer_init(c->loop, &ws->vtimer);
  ws->backoff.data = ws->vtimer.data = ws;
  ws->next = c->wsessions;
  if (c->wsessions) c->wsessions->prev = ws;
  c->wsessions = ws;
  ws->state = WS_VALIDATING;
  validate(ws);
  return ws;
nomem:
  tw_err_set(err, "no_memory", 0, "out of memory");
  return NULL;
}

void tw_wsession_close(tw_wsession *ws) {
  if (!ws || ws->closing) return;
  ws->closing = true;
  ws->state = WS_CLOSING;
  uv_timer_stop(&ws->backoff);
  uv_timer_stop(&ws->vtimer);
  if (ws->ss) tw_ws_close(ws->ss, 1000);
  if (ws->next_ss) tw_ws_close(ws->next_ss, 1000);
  if (ws->old_ss) tw_ws_close(ws->old_ss, 1000);
  maybe_free(ws);
}

void tw_wsessions_close_all(tw_client *c) {
  for (tw_wsession *ws = c->wsessions; ws; ws = ws->next) tw_wsession_close(ws);
}

void tw_wsessions_free_all(tw_client *c) {
  while (c->wsessions) {
    tw_wsession *ws = c->wsessions;
    tw_session *s[3] = {ws->ss, ws->next_ss, ws->old_ss};
    for (int i = 0; i < 3; i++)
      if (s[i]) tw_ws_set_owner(s[i], NULL, NULL, NULL);
    ws->ss = ws->next_ss = ws->old_ss = NULL;
    if (ws->hv) ws->hv->ws = NULL;
    if (ws->hr) ws->hr->ws = NULL;
    while (ws->reqs) { /* their Helix requests were dropped with the client: no callback comes */
      wreq *q = ws->reqs;
      wreq_unlink(q);
      wreq_free(q);
    }
    uv_timer_stop(&ws->backoff);
    uv_timer_stop(&ws->vtimer);
    unlink_and_free(ws);
  }
}

const char *tw_wsession_state(const tw_wsession *ws) { return STATE_NAMES[ws->state]; }
const char *tw_wsession_session_id(const tw_wsession *ws) { return ws->session_id; }
const char *tw_wsession_user_id(const tw_wsession *ws) { return ws->validated ? ws->user_id : NULL; }
const char *tw_wsession_login(const tw_wsession *ws) { return ws->validated ? ws->login : NULL; }
size_t tw_wsession_nscopes(const tw_wsession *ws) { return ws->nscopes; }
const char *tw_wsession_scope(const tw_wsession *ws, size_t i) { return i < ws->nscopes ? ws->scopes[i] : NULL; }
const char *tw_wsession_token(const tw_wsession *ws) { return ws->token; }
const char *tw_wsession_refresh_token(const tw_wsession *ws) { return ws->refresh; }
const tw_error *tw_wsession_error(const tw_wsession *ws) { return ws->state == WS_FAILED ? &ws->fail_err : NULL; }
void tw_wsession_set_user(tw_wsession *ws, void *user) { ws->user = user; }
void *tw_wsession_user(const tw_wsession *ws) { return ws->user; }
void tw_wsession_get_stats(const tw_wsession *ws, tw_wsession_stats *out) { *out = ws->st; }
