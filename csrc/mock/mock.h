/* twconduit-mock: a local emulator of Twitch EventSub conduits, Helix and OAuth.
 * All state lives in one struct (struct mock) reachable through the global
 * pointer M; the program is single threaded except for the webhook worker,
 * which only touches its own queues under a mutex. */
#ifndef TWCONDUIT_MOCK_H
#define TWCONDUIT_MOCK_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <libwebsockets.h>
#include <cjson/cJSON.h>

#define ID_LEN 40

/* ---------- growable byte buffer ---------- */
typedef struct {
    char *p;
    size_t len, cap;
} buf_t;
void buf_reserve(buf_t *b, size_t extra);
void buf_add(buf_t *b, const void *d, size_t n);
void buf_adds(buf_t *b, const char *s);
void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_free(buf_t *b);

/* ---------- configuration ---------- */
typedef struct {
    int keepalive_default, keepalive_min, keepalive_max;
    double assign_window_s, reconnect_grace_s, ping_interval_s;
    double token_ttl_s;
    int rate_limit;
    int max_conduits, max_shards, shard_page_size, sub_page_size;
    char routing_key[64];
    size_t max_frame_bytes;
    int strict_webhook_urls;
    int webhook_max_attempts;     /* attempts per message (first + retries) */
    double webhook_retry_base_s;  /* backoff: base * 2^(attempt-1) */
    double webhook_timeout_s;
    int webhook_failures_limit;   /* consecutive failed messages before disabling */
    int sub_max_cost;
} config_t;

/* ---------- ledger ---------- */
enum { L_PENDING = 0, L_DELIVERED = 1, L_DROPPED = 2 };
typedef struct {
    int shard;
    char session_id[ID_LEN];
    const char *result;
} attempt_t;
#define MAX_ATTEMPTS 12
typedef struct {
    uint64_t seq;
    char msg_id[ID_LEN];
    char *type;
    char sub_id[ID_LEN];
    char conduit_id[ID_LEN];
    char *channel;
    int status;
    int shard;
    char session_id[ID_LEN];
    const char *reason;
    int kind; /* 0 notification, 1 revocation */
    int nattempts;
    attempt_t att[MAX_ATTEMPTS];
} lent_t;

/* ---------- conduits ---------- */
enum { T_NONE = 0, T_WS = 1, T_WEBHOOK = 2 };
typedef struct {
    char status[48];
    int method;
    char session_id[ID_LEN];
    char *callback;
    char *secret;
    char connected_at[40];
    char disconnected_at[40];
    int wh_failures; /* consecutive failed messages */
    int wh_verified;
} shard_t;

typedef struct conduit {
    struct conduit *next;
    char id[ID_LEN];
    char client_id[128];
    int shard_count;
    shard_t *shards;
    double all_disabled_since; /* emulator clock, 0 = some shard enabled */
} conduit_t;

/* ---------- subscriptions ---------- */
typedef struct sub {
    struct sub *next;
    char id[ID_LEN];
    char client_id[128];
    char *type, *version;
    cJSON *condition;
    int method; /* T_WS (plain websocket), T_WEBHOOK, 3 = conduit */
    char conduit_id[ID_LEN];
    char session_id[ID_LEN];
    char *callback, *secret;
    char status[48];
    char created_at[40];
    char connected_at[40];
    char disconnected_at[40];
    int cost;
    int wh_failures;
    uint64_t order;
    char user_id[32]; /* websocket transport: the user whose token made it */
    uint32_t cond_hash; /* of the condition, independent of key order (duplicate check) */
} sub_t;
#define M_CONDUIT 3

/* ---------- websocket sessions and connections ---------- */
typedef struct outmsg {
    struct outmsg *next;
    uint64_t seq;   /* ledger seq, 0 = not a ledgered message */
    int is_close;   /* pseudo message: close with code after preceding frames */
    size_t len;
    char data[];
} outmsg_t;

struct blast;
typedef struct bgen {
    struct bgen *next;
    struct blast *b;
    int *routes;
    int nroutes, cur;
    uint64_t remaining;
} bgen_t;

/* a websocket timer (wtimer.c): a deadline in a heap served by one lws_sul */
typedef struct wtimer {
    int64_t due_us;              /* mono_us() deadline */
    size_t idx;                  /* heap position + 1, 0 = not scheduled */
    void (*cb)(struct wtimer *t);
} wtimer_t;

struct session;
typedef struct conn {
    struct lws *wsi;
    struct session *sess;
    int welcomed;
    int retired;        /* replaced by a newer connection after reconnect */
    int closing;        /* close requested */
    int close_code;
    char close_reason[64];
    int close_frame_sent;
    const char *end_status; /* shard status to apply when this conn ends */
    int awaiting_pong, ping_due;
    int keepalive;
    int64_t last_tx_us;
    outmsg_t *qhead, *qtail;
    size_t qlen;
    uint64_t *inflight;
    size_t ninflight, capinflight;
    uint64_t blast_inflight;
    struct blast *blast_inflight_b[8];
    bgen_t *gens;
    wtimer_t t_ka, t_ping, t_grace, t_assign;
    int rc_pending;      /* reconnect_id given but unresolved (4007 check) */
    int tls;             /* came in on the wss:// listener */
    int64_t paused_until_us; /* pause fault: nothing is written before this (mono us) */
    wtimer_t t_pause;
    wtimer_t t_welcome;  /* a reconnect target's held welcome (reconnect welcome_delay_s) */
    int bad_reconnect;
    int got_malformed;
    /* how the connection ended (recorded on its session, see session_t) */
    int peer_closed;     /* the client sent a close frame first */
    int peer_code;       /* its code (1005 when it carried none) */
    int acked;           /* the client answered our close frame with its own */
    int dropped;         /* torn down with RST, no close frame */
    int ended;           /* done with for its session (ws.c conn_end) */
    int ended_session;   /* it was the session's connection when it ended */
} conn_t;

typedef struct session {
    struct session *next;
    struct session *hnext; /* bucket chain of the id index (M->sess_hash) */
    char id[ID_LEN];
    conn_t *cur;         /* connection receiving new messages */
    conn_t *old;         /* previous connection during reconnect */
    int connected;
    int assigned;        /* ever assigned to a shard or owns a ws subscription */
    int keepalive;
    char connected_at[40];
    char disconnected_at[40];
    char reconnect_id[ID_LEN];
    int reconnecting;
    wtimer_t t_rc; /* grace for the new connection to appear */
    conn_t *pending;           /* the reconnect target, connected, its welcome held */
    double rc_welcome_delay_s; /* how long the next reconnect target's welcome is held */
    /* set when the session ends: who closed it, the close code (0 = none: a drop or a
     * connection lost without a close frame), whether close frames went both ways */
    int closed_by; /* 0 still connected, CLOSED_BY_CLIENT, CLOSED_BY_SERVER */
    int close_code;
    int clean;
} session_t;
enum { CLOSED_BY_CLIENT = 1, CLOSED_BY_SERVER = 2 };

/* ---------- blasts and streams ---------- */
typedef struct {
    char *tmpl;      /* full JSON with placeholders */
    size_t len;
    size_t id_off, ts_off;
    struct conn *target;
} broute_t;

typedef struct blast {
    struct blast *next;
    char id[ID_LEN];
    uint64_t total, sent, dropped;
    int64_t start_us, end_us;
    broute_t *routes;
    int nroutes;
    int refs;        /* generators alive */
    int done;
} blast_t;

typedef struct stream {
    struct stream *next;
    char id[ID_LEN];
    char *type, *version;
    cJSON *channels;
    cJSON *event;
    double rate;
    uint64_t total, emitted;
    int64_t start_us;
    lws_sorted_usec_list_t sul;
    int active;
} stream_t;

/* ---------- tokens and rate limit ---------- */
struct user;
typedef struct token {
    struct token *next;
    char tok[48];
    char client_id[128];
    double expires_at; /* emulator clock */
    int revoked;
    /* user tokens (users.c); app tokens have user NULL */
    struct user *user;
    cJSON *scopes;     /* array of strings */
    char refresh[56];  /* its refresh token, "" once used */
    char code[40];     /* the authorization code of its grant, "" once exchanged */
} token_t;

/* A user who authorised an app (POST /_mock/users): one per (user_id, client_id). */
typedef struct user {
    struct user *next;
    char id[32];
    char login[64];
    char client_id[128];
    cJSON *scopes; /* of the latest authorisation */
    double bucket; /* Helix rate-limit bucket of user tokens (client + user) */
    int64_t bucket_us;
} user_t;

/* ---------- subscription types (types.c) ---------- */
#define TY_MAX_COND 4
enum { TY_CLIENT = 1, /* condition client_id must be the token's client */
       TY_NO_WS = 2 /* not available over the websocket transport */ };
typedef struct {
    const char *type, *version;
    const char *cond[TY_MAX_COND];     /* required fields; "a|b": exactly one of them */
    const char *optional[TY_MAX_COND]; /* accepted, not required */
    const char *scopes;   /* "a|b": any one of them authorises; NULL: none needed */
    const char *auth_key; /* condition field of the user who must authorise (scopes) */
    const char *route_key; /* condition field naming the channel */
    int flags;
    void (*gen)(cJSON *ev, const char *channel, uint64_t n);
} evtype_t;

typedef struct client {
    char id[128];
    char secret[128];
    double bucket;
    int64_t bucket_us;
} client_t;

/* ---------- faults ---------- */
typedef struct hfault {
    struct hfault *next;
    int status;
    int count;
    char *path;
    char *message;  /* the error body's message, NULL: the default for the status */
    int no_headers; /* answer without Ratelimit-* headers */
} hfault_t;

/* ---------- helix call counters ---------- */
typedef struct route_ctr {
    struct route_ctr *next;
    char *name;
    uint64_t n;
} route_ctr_t;

/* ---------- webhook delivery ---------- */
typedef struct whjob {
    struct whjob *next;
    uint64_t seq;      /* ledger seq (0 for challenges) */
    int kind;          /* 0 notification, 1 revocation, 2 challenge */
    char url[1024];
    char *body;
    char msg_id[ID_LEN];
    char ts[40];
    char sig[80];
    char mtype[40];
    char sub_type[128];
    char sub_version[16];
    int retry;
    char challenge[64];
    /* target identity */
    char conduit_id[ID_LEN];
    int shard;
    char sub_id[ID_LEN];
    /* result */
    long http_status;
    char *resp;
    size_t resp_len;
    int curl_ok;
    double timeout_s;
    lws_sorted_usec_list_t sul;
    struct whjob *wnext; /* waiting list (retry backoff) */
    struct whjob *anext; /* worker's active list */
    void *hdrs;
    void *easy;
} whjob_t;

/* ---------- http request state ---------- */
typedef struct hreq {
    char method[8];
    char path[512];
    char *query;
    buf_t body;
    size_t content_length;
    int too_big;
    /* response */
    int status;
    buf_t resp;
    char extra_headers[512];
    int ready;
    int written;
    lws_sorted_usec_list_t sul;
    struct lws *wsi;
    char client_id_hdr[128];
    char auth_hdr[256];
    int deferred;        /* answered later (held or delayed Update Conduit Shards) */
    struct spatch *held; /* the deferred request's record, NULL otherwise */
    int processed;     /* handed to handle_request: a request is handled once */
    int chunked;       /* Transfer-Encoding: chunked, de-chunked by the emulator */
    int ck_state;      /* de-chunker: 0 size line, 1 data, 2 CRLF after data, 3 trailer */
    size_t ck_left;    /* bytes left in the current chunk */
    size_t body_left;  /* raw mode: Content-Length bytes still to read */
    int close_after;   /* raw mode: close the connection once the response is written */
} hreq_t;

/* ---------- Update Conduit Shards faults (control.c) ---------- */
/* An Update Conduit Shards request received but not yet applied (held or delayed).
 * It owns a copy of its body; req is NULL once the client's connection is gone
 * (the request is still applied, its answer goes nowhere). */
typedef struct spatch {
    struct spatch *next;
    uint64_t id;              /* arrival number among Update Conduit Shards requests */
    int state;                /* SP_HELD, SP_DELAYED, SP_RELEASING */
    char client_id[128];
    char conduit_id[128];
    cJSON *body;
    hreq_t *req;
    double arrived_at;        /* emulator clock */
    lws_sorted_usec_list_t sul;
} spatch_t;
enum { SP_HELD = 0, SP_DELAYED = 1, SP_RELEASING = 2 };

typedef struct sreject {
    struct sreject *next;
    char shard[64];
    char session_id[ID_LEN]; /* "" = any transport */
    char conduit_id[128];    /* "" = any conduit */
    char *message, *code;
    int count;
} sreject_t;

typedef struct pss {
    int kind; /* 0 unknown, 1 http, 2 ws */
    hreq_t *req;
    conn_t *conn;
    /* Raw mode: libwebsockets 4.1 reads a POST/PATCH/PUT without Content-Length (a
     * chunked one, too) as a 100 MB body and never de-chunks. From such a request on,
     * the emulator parses the connection's bytes itself (main.c): the request's body
     * and every request after it on the keep-alive connection. */
    int raw;
    buf_t in; /* raw mode: bytes received and not yet parsed */
} pss_t;

/* ---------- the emulator ---------- */
typedef struct mock {
    struct lws_context *ctx;
    struct lws_vhost *vh;
    int port;
    struct lws_vhost *vh_tls; /* wss:// listener (--tls-cert), NULL without */
    int tls_port;
    volatile int stop;
    config_t cfg;
    client_t clients[8];
    int nclients;
    conduit_t *conduits;
    sub_t *subs;
    uint64_t sub_order;
    session_t *sessions;
    session_t **sess_hash; /* index of sessions by id: power-of-two buckets */
    size_t sess_hash_cap, nsessions;
    token_t *tokens;
    lent_t **ledger;
    size_t nledger, capledger;
    uint64_t ledger_base;
    uint64_t blast_delivered, blast_dropped;
    uint64_t n_delivered, n_dropped;
    blast_t *blasts;
    stream_t *streams;
    hfault_t *hfaults;
    int latency_ms;
    int duplicate_next, stale_next;
    route_ctr_t *routes;
    uint64_t helix_total;
    uint64_t helix_by_status[600]; /* Helix answers by HTTP status */
    /* clock */
    double emu_base;   /* emulator epoch seconds at mono_base */
    int64_t mono_base; /* us */
    double speed;
    lws_sorted_usec_list_t sul_house;
    /* websocket timers (wtimer.c) */
    wtimer_t **wt_heap;
    size_t wt_n, wt_cap;
    lws_sorted_usec_list_t wt_sul;
    int64_t wt_armed_us, wt_served_us;
    int wt_armed, wt_serving;
    uint64_t rng[2];
    /* webhook worker */
    pthread_t wh_thread;
    pthread_mutex_t wh_mu;
    whjob_t *wh_in, *wh_out, *wh_wait;
    int wh_wake[2];
    int wh_stop;
    void *wh_multi;
    char *batch;
    size_t batch_cap;
    /* Update Conduit Shards faults (control.c) */
    spatch_t *sp_list;        /* held, delayed and releasing requests, arrival order */
    uint64_t sp_seq;          /* Update Conduit Shards requests seen */
    int sp_hold;              /* the next N are held */
    int sp_delay_ms, sp_delay_count;
    sreject_t *sp_rejects;
    user_t *users;
} mock_t;

extern mock_t *M;

/* util.c */
int64_t mono_us(void);
double emu_now(void);
double wall_now(void);
void fmt_time(double t, char out[40]);
void gen_uuid(char out[ID_LEN]);
void gen_token(char *out, size_t n);
uint64_t rnd64(void);
uint32_t fnv1a(const char *s);
void hmac_sha256_hex(const char *key, const char *a, const char *b, const char *c, size_t clen,
                     char out[80]);
const char *jstr(const cJSON *o, const char *k);
char *xstrdup(const char *s);
void *xmalloc(size_t n);
void *xcalloc(size_t a, size_t b);
/* Doubles an array when full (first: the first capacity): returns the array, *cap
 * updated; aborts when out of memory, like xcalloc. */
void *xgrow(void *arr, size_t n, size_t *cap, size_t first, size_t elem);
int qparam(const char *query, const char *key, char *out, size_t outlen, int nth);
int qparam_count(const char *query, const char *key);
void url_decode(char *s);

/* helix.c */
void handle_request(hreq_t *r);
/* Helix answers by status (helix.c); control-side subscription changes */
void count_helix_status(int status);
cJSON *helix_status_json(void);
int mock_sub_create(const char *client_id, const cJSON *item, char *id_out, size_t idlen, char *msg,
                    size_t msglen);
int mock_sub_delete(const char *id);
int mock_bucket_set(const char *client_id, double level);
void json_error(hreq_t *r, int status, const char *err, const char *msg);
void set_json(hreq_t *r, int status, cJSON *o);
cJSON *shard_json(conduit_t *c, int i);
cJSON *sub_json(sub_t *s);
conduit_t *find_conduit(const char *id);
sub_t *find_sub(const char *id);
void delete_conduit(conduit_t *c, const char *sub_status);
void reset_helix_state(void);
void housekeeping(void);
void apply_config(const cJSON *o, char *err, size_t errlen);
void free_tokens(void);
void free_route_counters(void);
cJSON *config_json(void);
void shards_patch_answer(hreq_t *r, const char *cid, const char *conduit_id, const cJSON *body);
const char *shard_update_check(conduit_t *c, const cJSON *item, char *sid, size_t sidlen,
                               long *idx, session_t **sess);
void shard_update_apply(conduit_t *c, long idx, const cJSON *item, session_t *sess);

/* wtimer.c */
void wt_schedule(wtimer_t *t, void (*cb)(wtimer_t *), int64_t delay_us);
void wt_cancel(wtimer_t *t);
void wt_free_all(void);

/* ws.c */
void ws_established(struct lws *wsi, pss_t *p);
int ws_writeable(conn_t *c);
void ws_closed(conn_t *c);
void ws_receive(conn_t *c, int is_pong);
void ws_pong(conn_t *c);
int ws_peer_close(conn_t *c, const unsigned char *payload, size_t len);
session_t *find_session(const char *id);
void session_close(session_t *s, int code, const char *reason);
void session_reconnect(session_t *s);
/* The session's reconnect_url, on the listener (ws:// or wss://) its socket came in on. */
void session_reconnect_url(const session_t *s, char *out, size_t n);
void session_drop(session_t *s);
void session_malformed(session_t *s);
/* Faults: the session's socket writes nothing (no frame, keepalive or ping) for ms;
 * one text frame of `bytes` bytes (not a notification, not in the ledger). */
void session_pause(session_t *s, int64_t ms);
void session_oversized(session_t *s, size_t bytes);
int session_live(session_t *s);
void shard_set_disabled(conduit_t *c, int i, const char *status);
uint64_t produce(sub_t *s, const char *channel, cJSON *event, int kind, const char *status_override,
                 char *out_msg_id);
void enqueue_conn(conn_t *c, const char *data, size_t len, uint64_t seq);
lent_t *ledger_get(uint64_t seq);
void ledger_set(uint64_t seq, int status, const char *reason);
void ledger_free_all(void);
void fire_shard_disabled(conduit_t *c, int i);
conn_t *route_conduit(conduit_t *c, const char *key, lent_t *le, int *webhook_shard);
const char *routing_value(sub_t *s, char *buf, size_t n);
cJSON *gen_event(const char *type, const char *channel, uint64_t n, const cJSON *merge);
/* the payload of that version (gen_event: the type's newest version) */
cJSON *gen_event_for(const char *type, const char *version, const char *channel, uint64_t n,
                     const cJSON *merge);
void blast_gen_free(conn_t *c);
void sessions_free_all(void);
const char *match_value(sub_t *s);

/* control.c */
void handle_control(hreq_t *r, const char *sub, cJSON *body);
void streams_stop_all(void);
void blasts_free_all(void);
void blast_delivered(blast_t *b, uint64_t n);
void blast_dropped(blast_t *b, uint64_t n);
int shard_patch_intercept(hreq_t *r, const char *cid, const char *conduit_id, const cJSON *body);
int shard_patch_rejected(const char *conduit_id, const char *sid, const cJSON *transport,
                         char *message, size_t mlen, char *code, size_t clen);
void shard_patch_detach(hreq_t *r);
void shard_patches_free(void);

/* types.c */
const evtype_t *types_table(size_t *n);
/* version NULL: the type's newest version */
const evtype_t *type_find(const char *type, const char *version);
int alt_has(const char *alts, const char *name);
const char *cond_alt(const cJSON *cond, const char *alts, char *field, size_t fn);
int type_check_condition(const evtype_t *t, const cJSON *cond, char *msg, size_t mn);

/* events.c: one generator per type (types.c) */
void ev_chat_message(cJSON *ev, const char *ch, uint64_t n);
void ev_follow(cJSON *ev, const char *ch, uint64_t n);
void ev_subscribe(cJSON *ev, const char *ch, uint64_t n);
void ev_sub_gift(cJSON *ev, const char *ch, uint64_t n);
void ev_sub_message(cJSON *ev, const char *ch, uint64_t n);
void ev_cheer(cJSON *ev, const char *ch, uint64_t n);
void ev_raid(cJSON *ev, const char *ch, uint64_t n);
void ev_ban(cJSON *ev, const char *ch, uint64_t n);
void ev_unban(cJSON *ev, const char *ch, uint64_t n);
void ev_moderator(cJSON *ev, const char *ch, uint64_t n);
void ev_stream_online(cJSON *ev, const char *ch, uint64_t n);
void ev_stream_offline(cJSON *ev, const char *ch, uint64_t n);
void ev_channel_update(cJSON *ev, const char *ch, uint64_t n);
void ev_redemption(cJSON *ev, const char *ch, uint64_t n);
void ev_poll_begin(cJSON *ev, const char *ch, uint64_t n);
void ev_poll_progress(cJSON *ev, const char *ch, uint64_t n);
void ev_poll_end(cJSON *ev, const char *ch, uint64_t n);
void ev_prediction_begin(cJSON *ev, const char *ch, uint64_t n);
void ev_prediction_progress(cJSON *ev, const char *ch, uint64_t n);
void ev_prediction_lock(cJSON *ev, const char *ch, uint64_t n);
void ev_prediction_end(cJSON *ev, const char *ch, uint64_t n);
void ev_hype_begin_v1(cJSON *ev, const char *ch, uint64_t n);
void ev_hype_begin(cJSON *ev, const char *ch, uint64_t n);
void ev_hype_end_v1(cJSON *ev, const char *ch, uint64_t n);
void ev_hype_end(cJSON *ev, const char *ch, uint64_t n);
void ev_shoutout_create(cJSON *ev, const char *ch, uint64_t n);
void ev_shoutout_receive(cJSON *ev, const char *ch, uint64_t n);
void ev_ad_break(cJSON *ev, const char *ch, uint64_t n);
void ev_user_update(cJSON *ev, const char *ch, uint64_t n);
void ev_shard_disabled(cJSON *ev, const char *ch, uint64_t n);
void ev_authorization(cJSON *ev, const char *ch, uint64_t n);

/* users.c */
user_t *user_find(const char *client_id, const char *user_id);
/* a new access token (and refresh token) for u with scopes (copied) */
token_t *user_token_issue(user_t *u, const cJSON *scopes);
void c_users(hreq_t *r, cJSON *body); /* POST|GET /_mock/users */
void users_free_all(void);

/* webhook.c */
void wh_start(void);
void wh_stop(void);
void wh_submit(whjob_t *j);
void wh_drain(void);
void wh_deliver_sub(sub_t *s, uint64_t seq, const char *body, int kind, const char *msg_id,
                    const char *ts);
void wh_deliver_shard(conduit_t *c, int shard, sub_t *s, uint64_t seq, const char *body,
                      int kind, const char *msg_id, const char *ts);
void wh_challenge_shard(conduit_t *c, int shard);
void wh_challenge_sub(sub_t *s);

#endif
