/* internal.h - layouts and module interfaces private to the core. */
#ifndef TW_INTERNAL_H
#define TW_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <curl/curl.h>
#include <libwebsockets.h>
#include <uv.h>

#include "twconduit.h"

/* ---- small utilities (util.c) ---- */
void tw_err_set(tw_error *e, const char *code, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void tw_err_clear(tw_error *e);
char *tw_strdup(const char *s);            /* NULL-safe; NULL on NULL */
char *tw_strndup(const char *s, size_t n);
/* Exponential backoff with full jitter: a delay in [min, min(max, min*2^attempt)]. */
uint64_t tw_backoff_ms(uint64_t *rng, double min_s, double max_s, unsigned attempt);
uint64_t tw_rand(uint64_t *rng);
/* Maps an HTTP status to a stable error code. */
const char *tw_http_code(int status);
/* websocket close code -> shard status ("websocket_*") */
const char *tw_close_status(int code);

/* A growable byte buffer. */
typedef struct tw_buf {
  char *p;
  size_t len, cap;
} tw_buf;
int tw_buf_append(tw_buf *b, const void *p, size_t n);
int tw_buf_reserve(tw_buf *b, size_t n); /* room for n bytes (and the NUL) in all */
void tw_buf_free(tw_buf *b);

/* ---- message-id de-duplication (dedupe.c) ---- */
typedef struct tw_dedupe tw_dedupe;
tw_dedupe *tw_dedupe_new(size_t max, uint64_t window_ms);
void tw_dedupe_free(tw_dedupe *d);
/* true when id was already seen within the window (and remembers it otherwise) */
bool tw_dedupe_seen(tw_dedupe *d, const char *id, size_t len, uint64_t now_ms);
void tw_dedupe_forget(tw_dedupe *d, const char *id, size_t len);
/* A hint, before the message is parsed: finds "message_id":"..." near the start of the
 * raw JSON and prefetches the table slots the coming tw_dedupe_seen will touch (its
 * probe and the eviction of the oldest id), so their cache misses overlap the parse. */
void tw_dedupe_prefetch(const tw_dedupe *d, const char *json, size_t len);

/* ---- HTTP over curl multi on the loop (http.c) ---- */
typedef struct tw_http tw_http;
typedef struct tw_http_req tw_http_req;
typedef struct tw_http_result {
  int status;          /* 0 when no response */
  CURLcode curl;       /* transport result */
  const char *body;
  size_t body_len;
  int rl_limit, rl_remaining; /* -1 when absent */
  int64_t rl_reset;           /* epoch seconds, -1 when absent */
  const char *curl_error;
  bool too_large;             /* the body passed the request's cap (status 0, no body) */
} tw_http_result;
typedef void (*tw_http_fn)(void *user, const tw_http_result *r);

tw_http *tw_http_new(uv_loop_t *loop);
void tw_http_free(tw_http *h); /* cancels requests without calling back */
/* headers: NULL-terminated array of "Name: value". Returns a request handle (owned by
 * http until completion) or NULL. */
tw_http_req *tw_http_start(tw_http *h, const char *method, const char *url, const char *const *headers,
                           const char *body, size_t body_len, long timeout_ms, tw_http_fn cb, void *user);
/* The largest response body the request accepts (default 64 MB); past it the transfer
 * fails with too_large set. */
void tw_http_set_max_body(tw_http_req *r, size_t max);
/* One response header line (as curl hands it, CRLF included): a status line resets the
 * rate-limit fields, Ratelimit-Limit / -Remaining / -Reset set them. */
void tw_http_header_line(const char *p, size_t len, int *limit, int *remaining, int64_t *reset);

/* ---- Helix + OAuth (helix.c) ---- */
typedef struct tw_helix_state tw_helix_state;
tw_helix_state *tw_helix_new(tw_client *c);
void tw_helix_free(tw_helix_state *hx);
void tw_helix_state_closing(tw_helix_state *hx);
/* The "message" of a Twitch error body, or fallback, into out. */
void tw_helix_error_message(const char *body, size_t len, char *out, size_t outlen, const char *fallback);
/* tw_helix, queued ahead of other requests (shard assignment must beat the 10 s window) */
int tw_helix_urgent(tw_client *c, const char *method, const char *path, const char *body, size_t body_len,
                    tw_response_fn cb, void *user, tw_error *err); /* stop sending; cancelled replies are ignored */

/* ---- websocket sessions (ws.c) ----
 * A session is one EventSub websocket. It knows nothing of shards: it reports to its
 * owner through tw_session_ops (a shard today, the plain websocket mode later). Reports
 * come from the loop, never from inside the call that caused them; `closed` is the last
 * one. A session without an owner delivers its messages to the client alone. */
typedef struct tw_session tw_session;
typedef struct tw_session_ops {
  void (*welcome)(void *owner, tw_session *ss, const char *session_id);
  void (*reconnect)(void *owner, tw_session *ss, const char *url); /* session_reconnect */
  void (*message)(void *owner, tw_session *ss, tw_msg *m);         /* notification, revocation */
  void (*keepalive)(void *owner, tw_session *ss);
  void (*error)(void *owner, tw_session *ss, const tw_error *e);   /* bad messages, protocol */
  void (*closed)(void *owner, tw_session *ss, int close_code, const char *why);
} tw_session_ops;
int tw_ws_init(tw_client *c, tw_error *err);
void tw_ws_destroy_begin(tw_client *c);
void tw_ws_destroy_end(tw_client *c);
/* Opens a session at url (NULL: the client's eventsub_ws + keepalive). `bytes` (may be
 * NULL) counts the payload bytes of the messages received. NULL when the URL is unusable. */
tw_session *tw_ws_open(tw_client *c, const char *url, const tw_session_ops *ops, void *owner, uint64_t *bytes);
/* ss (just opened; may be NULL) is a session_reconnect target: its welcome may take
 * reconnect_welcome_timeout_s (Twitch's 30 s) instead of welcome_timeout_s, the old
 * socket delivering meanwhile. */
void tw_ws_reconnect_target(tw_session *ss);
/* Closes with a close handshake (async): frames that arrive until the server's close
 * frame are still reported; then the owner gets `closed`. */
void tw_ws_close(tw_session *ss, int code);
/* Changes who gets the reports (NULL ops: nobody; messages go to the client alone). */
void tw_ws_set_owner(tw_session *ss, const tw_session_ops *ops, void *owner, uint64_t *bytes);
const char *tw_ws_session_id(const tw_session *ss);
bool tw_ws_welcomed(const tw_session *ss);
/* Close frames to every session, then (tw_ws_wait_closed) run the loop until they are gone
 * or max_ms passed. */
void tw_ws_close_all(tw_client *c, int code);
size_t tw_ws_live(const tw_client *c);
/* A session with no socket, reading what tw_ws_feed hands it as if it came from the
 * server (after the upgrade answer, or from its first byte when handshake is true, with
 * RFC 6455's example key). Freed by tw_ws_detached_free, then a turn of the loop. */
tw_session *tw_ws_detached(tw_client *c, const tw_session_ops *ops, void *owner, bool handshake);
void tw_ws_feed(tw_session *ss, const void *p, size_t n);
void tw_ws_detached_free(tw_session *ss);

/* tw_helix with a token of the caller's (a user token) instead of the app token: no app
 * token refresh on 401, the app's rate-limit bucket is not updated from its answers. */
int tw_helix_with_token(tw_client *c, const char *token, const char *method, const char *path, const char *body,
                        size_t body_len, tw_response_fn cb, void *user, tw_error *err);

/* ---- plain websocket sessions (wsession.c) ---- */
void tw_wsessions_close_all(tw_client *c); /* no more reconnects; close frames */
void tw_wsessions_free_all(tw_client *c);

/* ---- conduit pool (conduit.c) ---- */
void tw_conduits_free_all(tw_client *c);
/* Notifies every conduit that the client is closing (sockets get close frames). */
void tw_conduits_close_all(tw_client *c);

/* ---- queue transport (queue.c) ---- */
struct tw_queue;
/* Publishes m (after de-duplication and the replay guard); true: not for local handlers.
 * stored (may be NULL) is called once: when Redis (or the spool) holds m, or with the
 * error that kept it from being stored (then also reported). */
bool tw_queue_gateway_publish(struct tw_queue *q, const tw_msg *m, void (*stored)(void *user, const tw_error *err),
                              void *user);
void tw_queues_free_all(tw_client *c);
/* ---- HTTP server and webhooks (httpd.c, webhook.c, conduit.c) ---- */
void tw_httpds_close_all(tw_client *c);
tw_client *tw_httpd_client(const tw_httpd *h);
/* drop(user) is called when the server closes with the route still there */
void tw_httpd_route_on_drop(tw_httpd *h, const char *path, void (*drop)(void *user));
/* A challenge of the conduit-shard form was answered for conduit_id / shard_id. */
void tw_conduit_webhook_challenged(tw_client *c, const char *conduit_id, const char *shard_id);
/* Delivers a webhook message for (cd, shard_id) when that conduit and shard still run
 * here (counted on the shard), else for the client alone. */
bool tw_conduit_webhook_deliver(tw_client *c, tw_conduit *cd, const char *shard_id, const tw_msg *m);

/* ---- metrics (metrics.c): counters only metrics read, kept off the hot path ---- */
enum { TW_MX_ENDPOINTS = 7, TW_MX_STATUSES = 11, TW_DISPATCH_BUCKETS = 24, TW_DISPATCH_SAMPLE = 16 };
typedef struct tw_metrics_counters {
  uint64_t helix[TW_MX_ENDPOINTS][TW_MX_STATUSES]; /* responses by endpoint and status class */
  uint64_t dispatch[TW_DISPATCH_BUCKETS];           /* handler time, 1 notification in 16 */
  double dispatch_sum_s;
} tw_metrics_counters;
/* One Helix or OAuth answer (status 0: none came). */
void tw_metrics_note_helix(tw_client *c, const char *path, int status);
/* Handler time of one sampled notification, nanoseconds. */
void tw_metrics_note_dispatch(tw_client *c, uint64_t ns);
/* A socket of a shard closed with code. */
void tw_metrics_note_close(tw_shard_stats *st, int code);
/* The client's conduits handed to the caller, one after another (prev NULL: the first). */
tw_conduit *tw_client_conduit_next(tw_client *c, tw_conduit *prev);
/* counts one stale notification on the shard (conduit.c) */
void tw_shard_note_stale(tw_shard *s);

/* ---- the client (client.c) ---- */
struct tw_client {
  uv_loop_t own_loop;
  uv_loop_t *loop;
  bool owns_loop;
  bool running, stop_requested, freeing;
  int depth; /* nesting of calls out to the event handler */

  /* options (copied) */
  char *client_id, *client_secret, *given_token;
  char *api_base, *auth_base, *eventsub_ws;
  int keepalive_s;
  double keepalive_slack_s, max_age_s, backoff_min_s, backoff_max_s, http_timeout_s;
  double wall_base;    /* wall clock minus loop time, for the replay guard */
  uint64_t wall_at_ms; /* loop time wall_base was taken at (0: never) */
  double validate_interval_s, verify_interval_s, dedupe_window_s;
  int http_retries, http_max_inflight, patch_batch;
  size_t max_message_bytes, dedupe_max;
  double welcome_timeout_s, reconnect_welcome_timeout_s; /* ws.c: the welcome deadlines */

  tw_event_fn on_event;
  void *on_event_user;

  tw_http *http;
  tw_helix_state *hx;
  tw_dedupe *dedupe;
  tw_json_pool *doc_pool; /* EventSub messages' memory, recycled (ws.c) */
  struct lws_context *lws;
  struct tw_session *sessions; /* every live session (ws.c) */
  size_t nsessions;
  void *ssl_ctx; /* SSL_CTX for wss, made on first use */
  unsigned char *tls_buf; /* wss: plaintext of one read, shared by the client's sessions (ws.c) */
  bool tls_buf_busy;      /* tls_buf is being parsed (a nested loop run reads elsewhere) */
  int tls_handshakes;     /* wss: TLS handshakes in flight at most (0: no limit) */
  int tls_handshaking;    /* in flight now (ws.c) */
  struct tw_session *tls_wait, *tls_wait_tail; /* connected, waiting for a handshake slot */

  struct tw_conduit *conduits; /* list */
  struct tw_wsession *wsessions; /* plain websocket sessions (wsession.c) */
  struct tw_httpd *httpds;     /* HTTP servers (httpd.c) */
  struct tw_timer *timers;     /* list of live timers */
  struct tw_queue *queues;     /* list (queue.c) */
  struct tw_queue *gateway;    /* the queue delivered messages are published to; NULL: none */
  uint64_t rng;
  tw_client_stats stats;
  tw_metrics_counters mx;
};

/* Emits an event to the host's handler: the one place every event passes. */
void tw_emit(tw_client *c, const tw_event *ev);
/* Delivers a notification or revocation from any transport: de-duplication, the replay
 * guard, counters, then tw_emit. Every message goes through here. Returns true when it
 * was delivered (not a duplicate, not stale). m->done, when set, is called once: by the
 * gateway queue's publish, or here (duplicate, stale, no gateway: before the handlers). */
bool tw_client_deliver(tw_client *c, const tw_msg *m, tw_conduit *cd, tw_shard *s, uint64_t *dup_counter);
/* counts one notification's lag (seconds) in the shard's lag_buckets (conduit.c) */
void tw_shard_note_lag(tw_shard *s, double lag_s);
/* Emits TW_EV_ERROR. */
void tw_emit_error(tw_client *c, tw_conduit *cd, tw_shard *s, const tw_error *e);
/* Wall-clock seconds (for Ratelimit-Reset and timestamps). */
double tw_wall_now(void);
/* Parses an RFC3339 timestamp into epoch seconds; returns false if malformed. */
bool tw_parse_rfc3339(const char *s, double *out);

#endif
