/* twconduit.h - the C API of the twconduit core.
 *
 * The core runs Twitch EventSub conduits: OAuth app tokens, Helix over libcurl multi,
 * EventSub websocket shards over libwebsockets, all on one libuv loop per client.
 * It knows nothing of Lua; the Lua binding (csrc/binding) and C hosts use this header.
 *
 * Conventions
 * - Every function returning int returns 0 (TW_OK) or a negative TW_E* code and, when
 *   given a tw_error, fills it with a stable code string, a status and a message.
 * - Ownership is written next to each function. "Borrowed" pointers stay valid until the
 *   callback that received them returns (or, for objects, until TW_EV_FREED).
 * - Objects closed from inside a callback are freed after that callback returns; the core
 *   never calls back into a freed object.
 * - Nothing here keeps global mutable state: two clients share nothing.
 */
#ifndef TWCONDUIT_H
#define TWCONDUIT_H

#include <stddef.h>
#include <stdint.h>

#include "tw_json.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifndef TW_API
#define TW_API __attribute__((visibility("default")))
#endif

#define TWCONDUIT_VERSION "0.1.0"

enum {
  TW_OK = 0,
  TW_EINVAL = -1,  /* bad argument */
  TW_ENOMEM = -2,  /* allocation failed */
  TW_EBUSY = -3,   /* step/run called while already running */
  TW_ECLOSED = -4, /* object or client closed */
  TW_EIO = -5      /* the outside world failed (see tw_error) */
};

/* An error: `code` is a stable snake_case string (see README "Error codes"), `status`
 * the HTTP status or websocket close code (0 when none). Messages never hold secrets. */
typedef struct tw_error {
  char code[32];
  int status;
  char message[256];
} tw_error;

typedef struct tw_client tw_client;
typedef struct tw_conduit tw_conduit;
typedef struct tw_shard tw_shard;
typedef struct tw_wsession tw_wsession; /* plain websocket mode (below) */

/* ------------------------------------------------------------------------------------ */
/* Client                                                                               */

/* Options. Start from TW_CLIENT_OPTS_INIT (or tw_client_opts_init), which holds every
 * default, then set what differs: a field is taken as it is, so 0 means 0 where 0 is a
 * value (http_retries, keepalive_slack_s, max_age_s, the intervals) and is refused where
 * it is not (timeouts, sizes, counts). */
typedef struct tw_client_opts {
  const char *client_id;     /* required */
  const char *client_secret; /* for client-credentials app tokens; may be NULL */
  const char *access_token;  /* a given app token; may be NULL when a secret is given */
  const char *api_base;      /* NULL: "https://api.twitch.tv/helix" */
  const char *auth_base;     /* NULL: "https://id.twitch.tv/oauth2" */
  const char *eventsub_ws;   /* NULL: "wss://eventsub.wss.twitch.tv/ws" */
  void *uv_loop;             /* a host's uv_loop_t to run on; NULL: the client owns one */
  int keepalive_s;           /* keepalive_timeout_seconds asked for (10..600); 0: server default */
  double keepalive_slack_s;  /* extra silence tolerated past the keepalive (>= 0) */
  double dedupe_window_s;    /* how long message ids are remembered (> 0) */
  size_t dedupe_max;         /* most ids remembered at once (>= 1) */
  double max_age_s;          /* notifications older than this are reported, not delivered
                                (replay guard); < 0 disables */
  double backoff_min_s;      /* shard reconnect backoff floor (> 0) */
  double backoff_max_s;      /* and cap (>= backoff_min_s) */
  double http_timeout_s;     /* per HTTP attempt (> 0) */
  int http_retries;          /* retries of 5xx / network failures (>= 0) */
  int http_max_inflight;     /* concurrent Helix requests (>= 1) */
  int patch_batch;           /* shards per Update Conduit Shards call (1..100) */
  double validate_interval_s;/* token validation period (>= 0; 0: only at start) */
  double verify_interval_s;  /* period of the check of the conduit's shards on Twitch (>= 0; 0: never) */
  size_t max_message_bytes;  /* largest websocket message accepted (>= 1024) */
  int tls_handshakes;        /* wss: TLS handshakes in flight at once, at most (>= 0; 0: no limit) */
  double welcome_timeout_s;  /* a new socket's wait for its session_welcome (0 < x <= 600) */
  double reconnect_welcome_timeout_s; /* the same for a session_reconnect target (0 < x <= 600;
                                         Twitch allows 30 s: the old socket delivers meanwhile) */
} tw_client_opts;

/* Every default, in one place. */
#define TW_CLIENT_OPTS_INIT                                                                  \
  {                                                                                          \
    .keepalive_s = 0, .keepalive_slack_s = 5, .dedupe_window_s = 600, .dedupe_max = 1000000, \
    .max_age_s = 600, .backoff_min_s = 0.25, .backoff_max_s = 30, .http_timeout_s = 15,      \
    .http_retries = 4, .http_max_inflight = 16, .patch_batch = 100,                          \
    .validate_interval_s = 3600, .verify_interval_s = 300, .max_message_bytes = 1u << 20,    \
    .tls_handshakes = 32, .welcome_timeout_s = 15, .reconnect_welcome_timeout_s = 30         \
  }
/* Fills *o with TW_CLIENT_OPTS_INIT. */
TW_API void tw_client_opts_init(tw_client_opts *o);

/* The options in effect (secrets and tokens left NULL; strings borrowed from c). */
TW_API void tw_client_get_options(const tw_client *c, tw_client_opts *out);

/* Returns a new client, or NULL with err filled. Free with tw_client_free. */
TW_API tw_client *tw_client_new(const tw_client_opts *opts, tw_error *err);
/* Closes every connection and frees the client; callbacks of pending requests are not
 * called. Returns TW_OK, or TW_EBUSY (and does nothing) when called while the client's
 * loop runs (inside step/run) or from inside any of its callbacks: there, call
 * tw_client_stop and free the client after step/run (or the call that produced the
 * event) has returned. */
TW_API int tw_client_free(tw_client *c);

/* Runs the loop until tw_client_stop. Returns TW_EBUSY when already running. */
TW_API int tw_client_run(tw_client *c);
/* Runs one loop iteration, waiting at most timeout_ms (0: never blocks; -1: until
 * something happens). Returns TW_EBUSY when called from inside the loop. */
TW_API int tw_client_step(tw_client *c, int timeout_ms);
/* Makes tw_client_run return after the current iteration. Safe from callbacks. */
TW_API void tw_client_stop(tw_client *c);
/* Embedding: an fd that is readable when the client has work, and the milliseconds until
 * its next timer (-1: none). Wait on both, then call tw_client_step(c, 0). */
TW_API int tw_client_pollfd(tw_client *c);
TW_API int tw_client_timeout_ms(tw_client *c);
/* The uv_loop_t* the client runs on (borrowed). */
TW_API void *tw_client_loop(tw_client *c);

/* Counters of the whole client (cheap to read). */
typedef struct tw_client_stats {
  uint64_t notifications;   /* delivered to the event handler */
  uint64_t duplicates;      /* dropped as already seen */
  uint64_t stale;           /* older than max_age_s: reported, not delivered */
  uint64_t bad_messages;    /* malformed frames / JSON / unknown types */
  uint64_t helix_requests;  /* HTTP attempts to Helix */
  uint64_t helix_retries;
  uint64_t helix_rate_waits;/* times a request waited for the rate-limit bucket */
  uint64_t token_fetches;
  uint64_t token_validations; /* /validate requests sent */
  uint64_t ws_connects;
  int ratelimit_remaining;  /* last seen, -1 before any */
  uint64_t tls_takeovers;   /* wss connections whose TLS 1.3 records the core runs after the handshake */
  uint64_t tls_handshakes_max; /* the most TLS handshakes in flight at once so far */
} tw_client_stats;
TW_API void tw_client_get_stats(const tw_client *c, tw_client_stats *out);

/* ------------------------------------------------------------------------------------ */
/* Events: every event the client produces passes through one handler.                  */

typedef enum tw_event_type {
  TW_EV_NOTIFICATION = 1, /* msg set; conduit/shard set when it came on one */
  TW_EV_REVOCATION,       /* msg set; status = the subscription's status */
  TW_EV_READY,            /* conduit: every shard of this process enabled for the first time */
  TW_EV_SHARD_ENABLED,    /* shard assigned to its (new) transport: after every (re)assignment */
  TW_EV_SHARD_DISABLED,   /* shard lost its transport: once per outage (the failed reconnect
                             attempts that follow are counted in tw_shard_stats, not emitted);
                             status = websocket_* reason, error set; tw_shard_state is already
                             the new state */
  TW_EV_RECONNECT,        /* session_reconnect completed on a new socket; shard set */
  TW_EV_ERROR,            /* error set; conduit/shard set when it concerns them */
  TW_EV_TOKEN,            /* a new app token is in use */
  TW_EV_FREED,            /* conduit or shard is being freed: drop every pointer to it */
  TW_EV_CONDUIT_STARTED,  /* conduit: its id and shard count are known; shards connecting */
  TW_EV_SHARD_RELEASED,   /* shard released: its socket is closed; TW_EV_FREED follows */
  TW_EV_SHARD_LOST,       /* verification: Twitch points the shard elsewhere than this process
                             believes. status = Twitch's status, twitch = Twitch's transport,
                             error set. Unless a handler holds or releases the shard, or the
                             conduit's lost policy is TW_LOST_REPORT, the shard is reassigned
                             after the handlers return. */
  TW_EV_QUEUED,           /* a queue (tw_queue.h) delivers an entry: queue, entry, partition
                             and msg set (transport TW_TRANSPORT_QUEUE; tw_queue_done when its
                             handlers finished); or, msg NULL, reports a queue error */
  TW_EV_WS_CONNECTED = 64,/* wsession: welcomed on a NEW session (the first, or after a close
                             that was not a session_reconnect): Twitch holds no subscription
                             for it, the owner creates them (again) */
  TW_EV_WS_RECONNECTED,   /* wsession: session_reconnect done, the same session on a new
                             socket; its subscriptions are kept */
  TW_EV_WS_DISCONNECTED,  /* wsession: its socket closed (once per outage); status, error set;
                             it reconnects with backoff */
  TW_EV_WS_TOKEN          /* wsession: the user token was refreshed (tw_wsession_token) */
} tw_event_type;

/* How a message reached this process. */
typedef enum tw_transport_kind {
  TW_TRANSPORT_NONE = 0,
  TW_TRANSPORT_WEBSOCKET = 1,
  TW_TRANSPORT_WEBHOOK = 2,
  TW_TRANSPORT_QUEUE = 3
} tw_transport_kind;

/* A notification or revocation, whatever its transport: the envelope's fields, decoded
 * once (tw_envelope_* below). Strings are NUL-terminated; when `doc` is set they may point
 * into it, so a holder keeps them by holding a reference on doc (tw_json_ref) — or copies
 * them. subscription/event are nodes of doc. */
typedef struct tw_msg {
  tw_transport_kind transport;
  const char *message_type;      /* "notification" | "revocation" */
  const char *id;                /* message id; NULL when none */
  size_t id_len;
  const char *type;              /* subscription type */
  const char *version;           /* subscription version; NULL when absent */
  const char *timestamp;         /* RFC 3339 message timestamp; NULL when absent */
  tw_json *doc;                  /* the parsed document holding subscription and event */
  tw_jnode subscription;         /* the subscription object */
  tw_jnode event;                /* event, or the events array of batched types; TW_JNONE
                                    for a revocation */
  tw_jnode metadata;             /* websocket: the metadata object; TW_JNONE otherwise */
  const char *status;            /* the subscription's status, NULL when absent */
  int strings_in_doc;            /* 1: id, type, version, timestamp, status point into doc
                                    (a reference on doc keeps them); 0: copy them to keep */
  tw_wsession *wsession;         /* the plain websocket session it came on; NULL otherwise */
  tw_transport_kind origin;      /* queue: the transport the gateway received it on */
  /* Optional completion (NULL: none), for a transport that answers its sender only once
   * the message is safe (the webhook receiver). Delivery calls it once: with err NULL
   * when the message was stored by the gateway queue, handed to the handlers (no
   * gateway), or needs no delivery (a duplicate, a stale message); with the error that
   * kept the gateway from storing it (the sender should retry: the id is forgotten, so
   * the retry is not taken for a duplicate). Handlers ignore it. */
  void (*done)(void *user, const tw_error *err);
  void *done_user;
} tw_msg;

/* Decodes a websocket message's envelope ({metadata, payload}) into m, when it is a
 * notification or revocation (returns 1), another message type (returns 0, *kind set
 * to its metadata.message_type), or malformed (returns -1 with err filled). */
TW_API int tw_envelope_decode_ws(tw_json *doc, tw_msg *m, const char **kind, tw_error *err);
/* Decodes a body that holds {subscription, event|events} (a websocket payload, a webhook
 * request body, a queued entry) into m's subscription/event/type/version/status; the
 * caller sets id, timestamp, message_type and transport. Returns 0 or -1 with err. */
TW_API int tw_envelope_decode_body(tw_json *doc, tw_jnode body, tw_msg *m, tw_error *err);

/* A transport as Twitch shows it (verification): borrowed strings, NULL when absent. */
typedef struct tw_transport_info {
  const char *method;            /* "websocket" | "webhook" */
  const char *session_id;
  const char *callback;
  const char *status;            /* the shard's status on Twitch */
} tw_transport_info;

typedef struct tw_event {
  tw_event_type type;
  tw_conduit *conduit;     /* borrowed; may be NULL */
  tw_shard *shard;         /* borrowed; may be NULL */
  const tw_msg *msg;       /* notifications and revocations (borrowed: tw_json_ref(msg->doc)
                              to keep it); NULL otherwise */
  const char *status;      /* see above; borrowed */
  const tw_error *error;   /* borrowed; NULL when none */
  const tw_transport_info *twitch; /* TW_EV_SHARD_LOST: what Twitch shows */
  struct tw_queue *queue;  /* TW_EV_QUEUED */
  const char *entry;       /* TW_EV_QUEUED: the stream entry id */
  int partition;
  tw_wsession *wsession;   /* plain websocket mode: the session object; NULL otherwise */
} tw_event;

typedef void (*tw_event_fn)(void *user, const tw_event *ev);
/* Sets the one event handler (NULL: events are dropped after counting). */
TW_API void tw_client_on_event(tw_client *c, tw_event_fn fn, void *user);

/* ------------------------------------------------------------------------------------ */
/* Helix                                                                                */

typedef struct tw_response {
  int status;              /* HTTP status; 0 when no response came */
  tw_json *body;           /* parsed JSON body, or NULL (empty / not JSON); borrowed */
  const char *raw;         /* raw body, borrowed; raw_len bytes */
  size_t raw_len;
  const tw_error *error;   /* NULL on 2xx */
} tw_response;

typedef void (*tw_response_fn)(void *user, const tw_response *r);

/* Queues a Helix request with the client's token, Client-Id, rate limiting, 401
 * refresh and retries. `path` starts with "/" and may carry a query string; `body` (JSON,
 * copied) may be NULL. `cb` is called exactly once, from the loop, unless the client is
 * freed first. Returns 0, or a TW_E* code with err filled (cb not called). */
TW_API int tw_helix(tw_client *c, const char *method, const char *path, const char *body,
                    size_t body_len, tw_response_fn cb, void *user, tw_error *err);

/* The app token in use (borrowed; NULL before the first one). */
TW_API const char *tw_client_token(const tw_client *c);

/* Priorities: TW_PRIO_BOT (what tw_helix uses) is served before TW_PRIO_BACKGROUND
 * (bulk work such as subscription reconciliation), which also leaves a reserve of the
 * bucket and one request slot to bot calls. */
enum { TW_PRIO_BOT = 0, TW_PRIO_BACKGROUND = 1 };
TW_API int tw_helix_prio(tw_client *c, int prio, const char *method, const char *path, const char *body,
                         size_t body_len, tw_response_fn cb, void *user, tw_error *err);

/* The client's one Helix rate-limit bucket, mirrored from the Ratelimit-* headers and
 * refilled at limit per minute between answers. */
typedef struct tw_ratelimit {
  int limit;              /* Ratelimit-Limit, -1 before any answer carried it */
  double remaining;       /* points the client may spend now (its estimate), -1 unknown */
  int64_t reset;          /* Ratelimit-Reset last seen (epoch s), -1 unknown */
  double hold_until;      /* after a bucket 429: wall seconds until which nothing is sent, else 0 */
  int waiting[2];         /* queued requests by priority (bot, background) */
  int inflight[2];        /* requests on the wire by priority */
  uint64_t sent[2];       /* HTTP attempts by priority */
  uint64_t final_429;     /* 429s not retried (limits, cost ceiling) */
} tw_ratelimit;
TW_API void tw_client_ratelimit(const tw_client *c, tw_ratelimit *out);

/* ------------------------------------------------------------------------------------ */
/* Conduits and websocket shards                                                         */

typedef struct tw_conduit_opts {
  const char *id; /* reuse this conduit; NULL creates one */
  int shards;     /* websocket shards run by this process (>= 0) */
  int offset;     /* first shard id this process runs; default 0 */
  int total;      /* the conduit's shard count; 0: offset+shards, or the existing count
                     when that is already large enough */
} tw_conduit_opts;

/* Opens a conduit: creates or finds it, resizes it when needed, connects `shards`
 * websocket sessions and assigns them in as few PATCH calls as possible. Progress and
 * failures arrive as events (TW_EV_SHARD_ENABLED, TW_EV_READY, TW_EV_ERROR). Returns a
 * conduit owned by the client (freed by tw_conduit_close or tw_client_free), or NULL. */
TW_API tw_conduit *tw_conduit_open(tw_client *c, const tw_conduit_opts *o, tw_error *err);
/* Closes the conduit's sockets (normal close) and frees it once they are gone. Does not
 * delete the conduit on Twitch. Safe from callbacks; idempotent. */
TW_API void tw_conduit_close(tw_conduit *cd);
TW_API const char *tw_conduit_id(const tw_conduit *cd);       /* NULL until known */
TW_API int tw_conduit_shard_count(const tw_conduit *cd);      /* Twitch's count; 0 until known */
TW_API const char *tw_conduit_state(const tw_conduit *cd);    /* "starting" "ready" "failed" "closed" */
TW_API size_t tw_conduit_nshards(const tw_conduit *cd);       /* shards run here */
TW_API tw_shard *tw_conduit_shard(const tw_conduit *cd, size_t i); /* borrowed; NULL if out of range */
TW_API tw_shard *tw_conduit_find_shard(const tw_conduit *cd, const char *shard_id);
TW_API void tw_conduit_set_user(tw_conduit *cd, void *user);
TW_API void *tw_conduit_user(const tw_conduit *cd);

/* Shard state, as seen here:
 *   "idle" (waiting for backoff, or held without a socket), "connecting", "welcomed"
 *   (awaiting assignment), "assigning", "enabled", "releasing", "closed". */
TW_API const char *tw_shard_id(const tw_shard *s);
TW_API const char *tw_shard_state(const tw_shard *s);
TW_API const char *tw_shard_status(const tw_shard *s);     /* last Twitch-side status */
TW_API const char *tw_shard_session_id(const tw_shard *s); /* NULL when none */
TW_API tw_conduit *tw_shard_conduit(const tw_shard *s);
TW_API void tw_shard_set_user(tw_shard *s, void *user);
TW_API void *tw_shard_user(const tw_shard *s);

enum { TW_LAG_BUCKETS = 24, TW_CLOSE_KINDS = 12 };
/* The index of a websocket close code in tw_shard_stats.closes; tw_close_code_of(i) is the
 * code an index stands for (0: any other code). */
TW_API int tw_close_code_index(int code);
TW_API int tw_close_code_of(int index);
typedef struct tw_shard_stats {
  uint64_t notifications; /* delivered from this shard */
  uint64_t duplicates;
  uint64_t keepalives;
  uint64_t connects;      /* sockets opened */
  uint64_t reconnects;    /* session_reconnect handled */
  uint64_t assignments;   /* successful PATCHes of this shard */
  uint64_t assign_errors; /* per-shard errors and failed PATCHes for this shard */
  uint64_t bytes;         /* websocket payload bytes received */
  uint64_t outages;       /* times the shard was disabled (TW_EV_SHARD_DISABLED) */
  uint64_t failed_connects; /* sockets that ended before being assigned */
  uint64_t lost;          /* verifications that found Twitch pointing elsewhere */
  int last_close_code;    /* 0 when none */
  uint64_t backoff_attempt; /* the reconnect backoff's step: attempts since the shard last stayed
                             * enabled for a minute (0: the next retry waits backoff_min) */
  /* lag (receive time - message timestamp) of the notifications delivered, in fixed
   * buckets: lag_buckets[0] counts lags under 1 ms, lag_buckets[k] those in
   * [2^(k-1), 2^k) ms, the last one everything longer. Counted where the replay guard
   * reads the timestamp; for health reports and exporters. */
  uint64_t lag_buckets[TW_LAG_BUCKETS];
  double lag_sum_s;       /* sum of the lags counted in lag_buckets, seconds */
  uint64_t stale;         /* notifications the replay guard refused */
  /* socket closes by code, index tw_close_code_index(code): 1000, 1001, 1006, 4000..4007,
   * anything else */
  uint64_t closes[TW_CLOSE_KINDS];
  uint64_t enabled_at_ms; /* loop ms of the last (re)assignment (tw_client_now_ms); 0: never */
  uint64_t last_message_ms; /* loop ms of the last message or keepalive; 0: none */
} tw_shard_stats;
TW_API void tw_shard_get_stats(const tw_shard *s, tw_shard_stats *out);

/* Drops the shard's socket and connects again at once (as after a network error). */
TW_API int tw_shard_reconnect(tw_shard *s);

/* The transport Twitch should deliver this shard's events to, as this process wants it:
 * method "websocket" with a session id, or "webhook" with a callback. Fields are borrowed
 * and NULL when none. `assigned` is true when Twitch confirmed exactly that. */
TW_API void tw_shard_transport(const tw_shard *s, tw_transport_info *out, int *assigned);
TW_API int tw_shard_held(const tw_shard *s);

/* ---- the changing shard set: asynchronous operations ----
 * Each starts at once and reports once through its completion callback (NULL: none),
 * called from the loop, never from inside the starting call. A failed start returns a
 * TW_E* code with err filled and does not call back. Operations are refused (TW_EINVAL,
 * code "busy") on a shard that another operation is changing. Closing the conduit
 * completes every pending operation with the error "closed". */
typedef struct tw_op_result {
  const tw_error *error;   /* NULL on success */
  tw_conduit *conduit;     /* borrowed */
  tw_shard *shard;         /* the shard the operation was about (release, point, handover) */
  tw_shard *const *shards; /* add: the new shards, in id order (borrowed) */
  size_t nshards;
} tw_op_result;
typedef void (*tw_op_fn)(void *user, const tw_op_result *r);

/* Adds n websocket shards with the next free ids, growing the conduit on Twitch first when
 * its shard_count is too small; completes once every new shard is enabled. The new shards
 * exist (state "idle") when the call returns: *first (may be NULL) gets the index of the
 * first of them in tw_conduit_shard order. */
TW_API int tw_conduit_add_shards(tw_conduit *cd, int n, tw_op_fn cb, void *user, size_t *first, tw_error *err);
/* Sets the conduit's shard_count on Twitch (Update Conduits). Shards run here are not
 * touched: shrinking below a shard run here leaves that shard without a slot on Twitch. */
TW_API int tw_conduit_resize(tw_conduit *cd, int shard_count, tw_op_fn cb, void *user, tw_error *err);
/* Closes the shard's socket with a close handshake (reading until the server's close
 * frame, so frames already written are delivered) and never reconnects it; completes when
 * the socket is gone, then TW_EV_SHARD_RELEASED and TW_EV_FREED are emitted. Twitch keeps
 * the shard pointing at the closed session (websocket_disconnected). */
TW_API int tw_shard_release(tw_shard *s, tw_op_fn cb, void *user, tw_error *err);
/* Points shard s at the transport of shard target (of the same conduit) with one PATCH,
 * then closes s's own socket with a close handshake; s then has no socket of its own and
 * is held (it follows nothing target does later). Completes when the PATCH is answered. */
TW_API int tw_shard_point_at(tw_shard *s, tw_shard *target, tw_op_fn cb, void *user, tw_error *err);
/* Make-before-break: opens a new socket, assigns the shard to its session, then closes the
 * old socket with a close handshake. The old socket delivers until then. Completes once
 * the new socket is assigned (error: the old socket goes on). */
TW_API int tw_shard_handover(tw_shard *s, tw_op_fn cb, void *user, tw_error *err);
/* Held shards keep their socket but are not reconnected nor reassigned on their own (a
 * close leaves them "idle", a lost verification is only reported): an operation or
 * another owner decides. Unholding resumes the usual care. Immediate: returns 0. */
TW_API int tw_shard_hold(tw_shard *s, int held);
/* Gives the shard another id (free here): after Twitch was told the shard `id` takes this
 * shard's transport (remove a shard from the middle: the last shard's socket then serves
 * that id, and the top id goes with a shrink). Immediate; refused while the shard's
 * assignment is changing. The transport and `assigned` are kept. */
TW_API int tw_shard_renumber(tw_shard *s, const char *id, tw_error *err);

/* Verification: compares Get Conduit Shards with what this process believes, now (also
 * done after bring-up, after reassignments, and every verify_interval_s). cb (may be NULL)
 * completes when every page was read. */
TW_API int tw_conduit_verify(tw_conduit *cd, tw_op_fn cb, void *user, tw_error *err);
enum { TW_LOST_REASSIGN = 0, TW_LOST_REPORT = 1 };
/* What a lost shard gets after TW_EV_SHARD_LOST: reassigned (default) or only reported. */
TW_API void tw_conduit_set_lost_policy(tw_conduit *cd, int policy);

/* ------------------------------------------------------------------------------------ */
/* Plain websocket mode: one EventSub websocket session whose subscriptions are made with
 * a user access token (transport {method "websocket", session_id}), without a conduit.
 * The token is validated first (login, user_id, scopes), then every validate_interval_s;
 * with a refresh token and the client's client_secret it is refreshed when Twitch refuses
 * it or before it expires (TW_EV_WS_TOKEN). At most 3 sessions per user run in one client
 * (Twitch's limit: a 4th fails with "too_many_sessions"). The session reconnects with
 * backoff; a session_reconnect keeps the session (TW_EV_WS_RECONNECTED), any other
 * reconnect makes a new one (TW_EV_WS_CONNECTED: its subscriptions must be made again).
 * Notifications go through the client's de-duplication like a conduit's, with
 * ev->wsession (and msg->wsession) set. */
typedef struct tw_wsession_opts {
  const char *access_token;  /* a user access token (required) */
  const char *refresh_token; /* optional; used with the client's client_secret */
} tw_wsession_opts;

/* Opens the session (validation, then the socket). Owned by the client (freed by
 * tw_wsession_close or tw_client_free; TW_EV_FREED with ev->wsession comes first). */
TW_API tw_wsession *tw_wsession_open(tw_client *c, const tw_wsession_opts *o, tw_error *err);
/* Closes the socket with a close handshake; the object is freed once it is gone and its
 * requests have been answered. Safe from callbacks; idempotent. */
TW_API void tw_wsession_close(tw_wsession *ws);
/* "validating", "connecting", "connected", "idle" (backoff), "failed" (token refused, or
 * too many sessions: no socket), "closing" */
TW_API const char *tw_wsession_state(const tw_wsession *ws);
TW_API const char *tw_wsession_session_id(const tw_wsession *ws); /* the last welcomed; NULL before */
TW_API const char *tw_wsession_user_id(const tw_wsession *ws);    /* NULL until validated */
TW_API const char *tw_wsession_login(const tw_wsession *ws);
TW_API size_t tw_wsession_nscopes(const tw_wsession *ws);
TW_API const char *tw_wsession_scope(const tw_wsession *ws, size_t i);
TW_API const char *tw_wsession_token(const tw_wsession *ws);         /* borrowed */
TW_API const char *tw_wsession_refresh_token(const tw_wsession *ws); /* NULL when none */
/* The last error that failed the session (state "failed"); NULL otherwise. */
TW_API const tw_error *tw_wsession_error(const tw_wsession *ws);
TW_API void tw_wsession_set_user(tw_wsession *ws, void *user);
TW_API void *tw_wsession_user(const tw_wsession *ws);

typedef struct tw_wsession_stats {
  uint64_t notifications, duplicates, keepalives;
  uint64_t connects;        /* sockets opened */
  uint64_t sessions;        /* new sessions welcomed (TW_EV_WS_CONNECTED) */
  uint64_t reconnects;      /* session_reconnect handled */
  uint64_t outages;         /* TW_EV_WS_DISCONNECTED */
  uint64_t failed_connects; /* sockets that ended before a welcome */
  uint64_t bytes;
  uint64_t token_validations, token_refreshes;
  int last_close_code;
} tw_wsession_stats;
TW_API void tw_wsession_get_stats(const tw_wsession *ws, tw_wsession_stats *out);

/* A Helix request with the session's user token (the client's queue, Client-Id, retries).
 * A 401 refreshes the token once when that is possible and sends the request again. The
 * answers of Create EventSub Subscription about the websocket limits get their own codes:
 * "too_many_sessions" (429, websocket transports), "too_many_subscriptions" (429, per
 * transport), "session_not_connected" (400, the session is gone). */
TW_API int tw_wsession_helix(tw_wsession *ws, const char *method, const char *path, const char *body,
                             size_t body_len, tw_response_fn cb, void *user, tw_error *err);

/* ------------------------------------------------------------------------------------ */
/* Timers on the client's loop (for bindings and hosts: sleeps, policies, deadlines)     */

typedef struct tw_timer tw_timer;
typedef void (*tw_timer_fn)(void *user);
/* Calls cb after `ms`, then every `repeat_ms` when > 0. Returns a timer owned by the
 * client until tw_timer_cancel (one-shot timers free themselves after firing, so cancel
 * them only before they fire). NULL on failure. */
TW_API tw_timer *tw_timer_start(tw_client *c, uint64_t ms, uint64_t repeat_ms, tw_timer_fn cb,
                                void *user);
/* Stops and frees the timer; cb is not called again. Safe from inside cb. */
TW_API void tw_timer_cancel(tw_timer *t);
/* Milliseconds of the loop's clock (monotonic). */
TW_API uint64_t tw_client_now_ms(tw_client *c);

/* ------------------------------------------------------------------------------------ */
/* HTTP server on the client's loop (httpd.c): the webhook receiver's listener, and the   */
/* place for other routes (metrics, status) on the same port                              */

typedef struct tw_httpd tw_httpd;
typedef struct tw_httpd_reply tw_httpd_reply;

typedef struct tw_httpd_opts {
  const char *host;          /* address to bind; NULL: "127.0.0.1" */
  int port;                  /* 0: a free port (tw_httpd_port tells which) */
  const char *tls_cert;      /* PEM files: both set -> HTTPS (HTTP/1.1 only); NULL: plain */
  const char *tls_key;
  size_t max_body;           /* bytes; larger Content-Length -> 413 (default 1 MB) */
  size_t max_header_bytes;   /* request line + headers; more -> 431 (default 16 KB) */
  int max_headers;           /* header lines; more -> 431 (default 64) */
  int max_conns;             /* open connections; the next one gets 503 (default 256) */
  double request_timeout_s;  /* a started request must be whole within this -> 408 (10) */
  double idle_timeout_s;     /* keep-alive connection without a request is closed (75) */
} tw_httpd_opts;
#define TW_HTTPD_OPTS_INIT {NULL, 0, NULL, NULL, 1u << 20, 16384, 64, 256, 10.0, 75.0}

/* A request as parsed: every pointer points into the connection's buffer and is valid
 * until the reply is sent (strings are NOT NUL-terminated: use the lengths). */
typedef struct tw_http_header {
  const char *name, *value;
  size_t name_len, value_len;
} tw_http_header;
#define TW_HTTP_MAX_HEADERS 128
typedef struct tw_http_request {
  const char *method, *path, *query; /* query: after '?', NULL when none */
  size_t method_len, path_len, query_len;
  int minor;                         /* HTTP/1.x */
  int keep_alive;
  tw_http_header headers[TW_HTTP_MAX_HEADERS];
  int nheaders;
  const char *body;
  size_t body_len;
  size_t head_len;                   /* bytes of request line + headers */
} tw_http_request;

/* The limits tw_http_parse applies (from tw_httpd_opts). */
typedef struct tw_http_limits {
  size_t max_body, max_header_bytes;
  int max_headers;
} tw_http_limits;

/* Parses one HTTP/1.x request from buf[0..len) — pure, no allocation (the fuzzer calls
 * it). Returns the bytes the request takes (> 0) with *rq filled, 0 when more bytes are
 * needed, or -status for a request that must be refused: -400 malformed, -413 body too
 * large, -431 headers too large or too many, -501 Transfer-Encoding, -505 not HTTP/1.x. */
TW_API long tw_http_parse(const char *buf, size_t len, const tw_http_limits *lim, tw_http_request *rq);
/* The value of header `name` (case-insensitive), or NULL; *len gets its length. */
TW_API const char *tw_http_header_get(const tw_http_request *rq, const char *name, size_t *len);

/* A route: called once per request whose path equals the route's path exactly (any
 * method; the handler checks it). The handler answers with tw_httpd_respond, at once or
 * LATER (after an asynchronous step, e.g. a queue's confirmed write): the connection
 * holds its next pipelined requests until then. `reply` stays valid until
 * tw_httpd_respond is called for it, even if the connection or the server closes first
 * (tw_httpd_reply_gone then tells so and the answer goes nowhere). */
typedef void (*tw_httpd_route_fn)(void *user, const tw_http_request *rq, tw_httpd_reply *reply);

/* Listens on the client's loop. NULL with err filled when the address cannot be bound or
 * the TLS files cannot be loaded. Freed by tw_httpd_close or with the client. */
TW_API tw_httpd *tw_httpd_open(tw_client *c, const tw_httpd_opts *o, tw_error *err);
TW_API int tw_httpd_port(const tw_httpd *h);
TW_API int tw_httpd_tls(const tw_httpd *h);
/* Adds (or replaces) the handler of an exact path ("/a/b"). Returns 0 or TW_EINVAL. */
TW_API int tw_httpd_route(tw_httpd *h, const char *path, tw_httpd_route_fn fn, void *user, tw_error *err);
/* Removes the route of path; returns 0, or TW_EINVAL when there was none. */
TW_API int tw_httpd_unroute(tw_httpd *h, const char *path);
/* Answers a request (exactly once per reply). content_type may be NULL (no body type);
 * extra_headers (may be NULL) are "Name: value\r\n" lines. */
TW_API void tw_httpd_respond(tw_httpd_reply *reply, int status, const char *content_type, const char *body,
                             size_t body_len, const char *extra_headers);
TW_API int tw_httpd_reply_gone(const tw_httpd_reply *reply);
/* Stops listening, closes the connections (after writing what was answered); replies
 * still pending then go nowhere. Safe from route handlers; idempotent per server. */
TW_API void tw_httpd_close(tw_httpd *h);

typedef struct tw_httpd_stats {
  uint64_t connections, requests, responses;
  uint64_t refused_conns;      /* 503: over max_conns */
  uint64_t bad_requests;       /* 400 / 501 / 505 */
  uint64_t too_large;          /* 413 */
  uint64_t headers_too_large;  /* 431 */
  uint64_t timeouts;           /* 408 */
  uint64_t not_found;          /* 404: no route */
  uint64_t tls_errors;
  int open_conns;
  int lingering;               /* closed connections still reading the peer's last bytes (<= max_conns) */
} tw_httpd_stats;
TW_API void tw_httpd_get_stats(const tw_httpd *h, tw_httpd_stats *out);

/* ------------------------------------------------------------------------------------ */
/* Webhook receiver (webhook.c): one route per callback path on a tw_httpd               */

/* An HMAC-SHA256 key prepared once (OpenSSL EVP_MAC), reused for every request. */
typedef struct tw_hmac_key tw_hmac_key;
TW_API tw_hmac_key *tw_hmac_key_new(const char *secret, size_t len);
TW_API void tw_hmac_key_free(tw_hmac_key *k);

/* What tw_webhook_check found in a request's headers (copied, NUL-terminated). */
typedef struct tw_webhook_check {
  int status;            /* 0: verified; else the HTTP status to answer (400, 403, 405) */
  const char *reason;    /* stable code when status != 0: "method", "missing_header",
                            "bad_signature_format", "bad_signature", "bad_timestamp", "stale",
                            "future", "header_too_long" */
  int key;               /* index of the key that matched */
  int retry;             /* Twitch-Eventsub-Message-Retry, -1 when absent */
  double timestamp_s;    /* epoch seconds of the message timestamp */
  char id[128], timestamp[48], message_type[48], sub_type[128], sub_version[16];
} tw_webhook_check;

/* Verifies a webhook request, in this order: POST; the id, timestamp, type and signature
 * headers present; the signature is "sha256=" + 64 hex digits; the HMAC-SHA256 of id ||
 * timestamp || raw body under one of keys[0..nkeys) (compared with CRYPTO_memcmp); only
 * then the timestamp (older than max_age_s or more than max_future_s ahead of now_s ->
 * 403). The message id is not looked up here (the caller records it only after this
 * check passed). Pure apart from the keys' reusable contexts: the fuzzer calls it. */
TW_API int tw_webhook_check_request(const tw_http_request *rq, tw_hmac_key *const *keys, size_t nkeys, double now_s,
                                    double max_age_s, double max_future_s, tw_webhook_check *out);

typedef struct tw_webhook tw_webhook;

typedef struct tw_webhook_opts {
  const char *path;       /* exact path on the server, e.g. "/eventsub/shard0" */
  const char *secret;     /* 10..100 ASCII characters */
  tw_conduit *conduit;    /* deliveries name this conduit and shard (NULL: none, e.g. a */
  const char *shard_id;   /* subscription's own callback) */
  double max_age_s;       /* default 600 */
  double max_future_s;    /* default 60 */
} tw_webhook_opts;

/* What a webhook route reports besides messages (from the loop). kind: "challenge"
 * (answered; id = the subscription id, or the shard id for the conduit-shard form, with
 * conduit_id set). */
typedef void (*tw_webhook_event_fn)(void *user, tw_webhook *w, const char *kind, const char *id,
                                    const char *conduit_id);
/* A sink takes verified notifications and revocations instead of the default (answer 204
 * at once, then tw_client_deliver). It must answer `reply` exactly once, now or later —
 * e.g. 204 only after a queue confirmed its write, 503 when it failed (Twitch retries).
 * m and its strings are valid during the call only (tw_json_ref(m->doc) to keep the
 * document). */
typedef void (*tw_webhook_sink_fn)(void *user, tw_webhook *w, const tw_msg *m, tw_httpd_reply *reply);

TW_API tw_webhook *tw_webhook_listen(tw_httpd *h, const tw_webhook_opts *o, tw_error *err);
TW_API void tw_webhook_on_event(tw_webhook *w, tw_webhook_event_fn fn, void *user);
TW_API void tw_webhook_set_sink(tw_webhook *w, tw_webhook_sink_fn fn, void *user);
/* New secret at once; the previous one is still accepted for grace_s seconds. */
TW_API int tw_webhook_rotate(tw_webhook *w, const char *secret, double grace_s, tw_error *err);
/* Names another conduit/shard for the deliveries (NULL: none). */
TW_API void tw_webhook_bind(tw_webhook *w, tw_conduit *cd, const char *shard_id);
/* Removes the route and frees w (requests already being answered finish). */
TW_API void tw_webhook_close(tw_webhook *w);
/* 10..100 printable ASCII characters: 1 when acceptable. */
TW_API int tw_webhook_secret_ok(const char *secret);

typedef struct tw_webhook_stats {
  uint64_t requests, notifications, revocations, challenges, duplicates;
  uint64_t rejected;           /* every request answered 4xx below */
  uint64_t bad_request;        /* 400 / 405: missing headers, not POST, bad body */
  uint64_t bad_signature;      /* 403: malformed or wrong signature */
  uint64_t stale, future;      /* 403: timestamp outside the window */
  uint64_t old_secret;         /* verified with the previous secret (grace period) */
} tw_webhook_stats;
TW_API void tw_webhook_get_stats(const tw_webhook *w, tw_webhook_stats *out);

/* Webhook shards (conduit.c). The secret is checked (10-100 ASCII) before any request.
 * Adds shard `id` (-1: the next free id; the conduit grows on Twitch when needed) pointed
 * at callback/secret; completes when Twitch accepted the PATCH and the challenge was
 * answered (tw_webhook routes do that). Until then its status reads
 * "webhook_callback_verification_pending". *out (may be NULL) gets the new shard. */
TW_API int tw_conduit_add_webhook_shard(tw_conduit *cd, int id, const char *callback, const char *secret,
                                        tw_op_fn cb, void *user, tw_shard **out, tw_error *err);
/* Points shard s at callback/secret (a new secret, a new callback, or the same again:
 * always re-PATCHed); the shard stops following another shard (point-at) and is no
 * longer held. Completes like add. */
TW_API int tw_shard_set_webhook(tw_shard *s, const char *callback, const char *secret, tw_op_fn cb, void *user,
                                tw_error *err);

/* ------------------------------------------------------------------------------------ */
/* Metrics (metrics.c): the Prometheus text format, rendered from the counters            */

/* A sample a caller adds: labels as name, value pairs ending with NULL (may be NULL). */
typedef struct tw_metric_sample {
  const char *const *labels;
  double value;
} tw_metric_sample;
/* A metric family a caller adds (after the core's own): name (twconduit_...), help,
 * type ("counter", "gauge"), and its samples. */
typedef struct tw_metric_family {
  const char *name, *help, *type;
  const tw_metric_sample *samples;
  size_t nsamples;
} tw_metric_family;
/* Renders every counter of the client in the Prometheus text exposition format 0.0.4:
 * build info, the client's totals, Helix answers by endpoint and status, the handler-time
 * histogram, each conduit and each shard run here (counters, state, lag histogram), then
 * the caller's families. Reads counters only: nothing is counted for it on the way of a
 * message. Returns a malloc'd NUL-terminated text (*len gets its length; free it), or
 * NULL when out of memory. */
TW_API char *tw_metrics_render(tw_client *c, const tw_metric_family *extra, size_t nextra, size_t *len);

/* ------------------------------------------------------------------------------------ */
/* Small utilities                                                                       */

/* Logging of libwebsockets (process-wide, so only on request). level: 0 errors only,
 * 1 errors + warnings, 2 + notices. */
TW_API void tw_set_lws_log_level(int level);

#ifdef __cplusplus
}
#endif
#endif
