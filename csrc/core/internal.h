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

/* ---- websocket sessions (ws.c) ---- */
typedef struct tw_session tw_session;
int tw_ws_init(tw_client *c, tw_error *err);
void tw_ws_destroy_begin(tw_client *c);
void tw_ws_destroy_end(tw_client *c);
/* Opens a session for shard s at url (NULL: the client's eventsub_ws + keepalive). */
tw_session *tw_ws_open(tw_shard *s, const char *url, bool is_reconnect);
/* Closes a session with a normal close frame (async); the session reports
 * tw_shard_session_gone when its socket is gone. */
void tw_ws_close(tw_session *ss, int code);
void tw_ws_detach(tw_session *ss); /* forget the shard: no more callbacks into it */
const char *tw_ws_session_id(const tw_session *ss);

/* ---- conduit pool (conduit.c), called by ws.c ---- */
void tw_shard_on_welcome(tw_shard *s, tw_session *ss, const char *session_id);
void tw_shard_on_reconnect_request(tw_shard *s, tw_session *ss, const char *url);
void tw_shard_on_closed(tw_shard *s, tw_session *ss, int close_code, const char *why);
void tw_shard_count_keepalive(tw_shard *s);
tw_client *tw_shard_client(const tw_shard *s);
void tw_shard_deliver(tw_shard *s, tw_event *ev);
void tw_conduits_free_all(tw_client *c);

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
  bool lws_ok;
  void *ssl_ctx; /* SSL_CTX for wss, made on first use */

  struct tw_conduit *conduits; /* list */
  struct tw_timer *timers;     /* list of live timers */
  uint64_t rng;
  tw_client_stats stats;
};

/* Emits an event to the host's handler: the one place every event passes. */
void tw_emit(tw_client *c, const tw_event *ev);
/* Delivers a notification or revocation: de-duplication, the replay guard, counters,
 * then tw_emit. Every message from any transport goes through here. */
void tw_client_deliver(tw_client *c, tw_event *ev, uint64_t *dup_counter);
/* Emits TW_EV_ERROR. */
void tw_emit_error(tw_client *c, tw_conduit *cd, tw_shard *s, const tw_error *e);
/* Wall-clock seconds (for Ratelimit-Reset and timestamps). */
double tw_wall_now(void);
/* Parses an RFC3339 timestamp into epoch seconds; returns false if malformed. */
bool tw_parse_rfc3339(const char *s, double *out);

#endif
