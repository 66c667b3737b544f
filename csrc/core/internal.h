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
} tw_http_result;
typedef void (*tw_http_fn)(void *user, const tw_http_result *r);

tw_http *tw_http_new(uv_loop_t *loop);
void tw_http_free(tw_http *h); /* cancels requests without calling back */
/* headers: NULL-terminated array of "Name: value". Returns a request handle (owned by
 * http until completion) or NULL. */
tw_http_req *tw_http_start(tw_http *h, const char *method, const char *url, const char *const *headers,
                           const char *body, size_t body_len, long timeout_ms, tw_http_fn cb, void *user);

/* ---- Helix + OAuth (helix.c) ---- */
typedef struct tw_helix_state tw_helix_state;
tw_helix_state *tw_helix_new(tw_client *c);
void tw_helix_free(tw_helix_state *hx);
void tw_helix_state_closing(tw_helix_state *hx);
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

/* ---- conduit pool (conduit.c) ---- */
void tw_conduits_free_all(tw_client *c);
/* Notifies every conduit that the client is closing (sockets get close frames). */
void tw_conduits_close_all(tw_client *c);

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

  struct tw_conduit *conduits; /* list */
  struct tw_timer *timers;     /* list of live timers */
  uint64_t rng;
  tw_client_stats stats;
};

/* Emits an event to the host's handler: the one place every event passes. */
void tw_emit(tw_client *c, const tw_event *ev);
/* Delivers a notification or revocation from any transport: de-duplication, the replay
 * guard, counters, then tw_emit. Every message goes through here. Returns true when it
 * was delivered (not a duplicate, not stale). */
bool tw_client_deliver(tw_client *c, const tw_msg *m, tw_conduit *cd, tw_shard *s, uint64_t *dup_counter);
/* Emits TW_EV_ERROR. */
void tw_emit_error(tw_client *c, tw_conduit *cd, tw_shard *s, const tw_error *e);
/* Wall-clock seconds (for Ratelimit-Reset and timestamps). */
double tw_wall_now(void);
/* Parses an RFC3339 timestamp into epoch seconds; returns false if malformed. */
bool tw_parse_rfc3339(const char *s, double *out);

#endif
