/* conduit.c - the conduit pool: find or create the conduit, run its shards, keep Twitch
 * pointing each shard at the transport this process wants, and change the shard set while
 * events flow.
 *
 * A shard's connection: idle -> connecting -> welcomed -> assigning -> enabled. A socket
 * that ends sends the shard back to idle; it reconnects after a backoff with jitter (the
 * first retry waits backoff_min) unless it is held or being released.
 *
 * Assignment is a per-shard state machine over three transports:
 *   want      what Twitch should point the shard at (our socket's session, a webhook, or
 *             another shard's transport),
 *   inflight  what the one Update Conduit Shards request in flight for this shard says,
 *   assigned  what Twitch last confirmed.
 * At most one request is in flight per shard; when want changes meanwhile, the new value
 * waits and is sent when the reply comes. A reply only ever acts on the transport it was
 * about: an answer for a session the shard no longer wants never touches its socket.
 * Shards needing a request wait in the conduit's batch (up to patch_batch a request).
 *
 * Verification reads Get Conduit Shards after bring-up, after reassignments and every
 * verify_interval_s (jittered), and compares Twitch's view of each settled shard with
 * `assigned`; a difference is TW_EV_SHARD_LOST, then (by default) a reassignment.
 *
 * session_reconnect and handover open a second socket (`next`) and keep the first one
 * delivering until the shard is assigned to the new one; only then is the old one closed,
 * with a close handshake, so nothing is lost (de-duplication drops what came on both). */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#define TW_STABLE_MS 60000 /* enabled this long, a shard's next outage backs off from backoff_min again */

#include "internal.h"

typedef struct tw_transport {
  tw_transport_kind kind; /* NONE, WEBSOCKET or WEBHOOK */
  char *session_id;       /* websocket */
  char *callback, *secret;/* webhook */
} tw_transport;

enum { OP_ADD = 1, OP_RESIZE, OP_RELEASE, OP_POINT, OP_HANDOVER, OP_VERIFY, OP_WEBHOOK };

typedef struct tw_op {
  int kind;
  tw_conduit *cd;
  tw_shard *shard;       /* release, point, handover */
  tw_op_fn cb;
  void *user;
  tw_shard **shards;     /* add: the new shards */
  size_t n;
  bool prev_held;        /* point: whether the shard was held before */
  bool started;          /* add: shards connecting; verify: the running verification counts */
  bool in_helix;         /* a Helix request points at it: freed by the reply */
  bool done;             /* reported; waits for its Helix reply in cd->done_ops */
  tw_transport target;   /* point: the transport the shard is to take */
  struct tw_op *next;    /* the conduit's ops */
} tw_op;

struct tw_shard {
  tw_conduit *cd;
  char id[16];
  long idn;              /* the id as a number, for ordering */
  const char *state;
  char status[48];
  tw_session *cur;       /* this shard's socket */
  tw_session *next;      /* session_reconnect or handover target, until assigned */
  tw_session *old;       /* the previous socket, closing */
  tw_transport want, inflight, assigned;
  uint64_t assigned_seq; /* cd->seq when `assigned` was last set */
  bool queued;           /* waiting in the conduit's batch */
  bool held, releasing, pointed, outage, ever_enabled, reconnect_now, handing_over;
  bool next_is_reconnect;/* next came from session_reconnect (not a handover) */
  bool lingering;        /* handover: `old` stays open until traffic comes on `cur` */
  bool lost_pending;     /* set by verification, cleared by hold/release in a handler */
  bool enabled_when_lost;/* its socket ended while enabled, a replacement was on the way */
  bool webhook;          /* a webhook shard: no socket of its own */
  bool challenged;       /* the wanted webhook's challenge was answered here */
  unsigned attempt;
  uint64_t enabled_at;   /* loop ms the shard last became enabled: the backoff resets after a stable spell */
  uv_timer_t timer;
  tw_shard_stats stats;
  tw_op *op;             /* the operation changing this shard, if any */
  void *user;
};

typedef struct patch_ctx {
  tw_conduit *cd;
  int n;
  tw_shard **shards;
  tw_transport *sent;
  struct patch_ctx *next, *prev; /* the conduit's open PATCHes (freed with it on teardown) */
} patch_ctx;

struct tw_conduit {
  tw_client *c;
  char *id;
  int shard_count, offset, total_wanted, initial;
  tw_shard **shards;     /* in id order */
  int nshards, cap;
  const char *state;
  bool ready_emitted, closing, free_scheduled, started;
  int pending;           /* Helix calls in flight that point at this conduit */
  uv_timer_t batch_timer;
  uint64_t batch_since;
  uv_timer_t verify_timer;
  bool verifying, verify_again;
  uint64_t seq;          /* bumped by every confirmed assignment */
  uint64_t verify_seq;   /* seq when the running verification started */
  int lost_policy;
  patch_ctx *patches;
  tw_op *ops;
  tw_op *done_ops;       /* reported operations whose Helix reply is still due */
  bool silent;           /* never handed to the caller: freed without events */
  void *user;
  struct tw_conduit *next;
};

static void shard_connect(tw_shard *s);
static void schedule_batch(tw_conduit *cd);
static void maybe_free(tw_conduit *cd);

/* A Helix reply for the conduit arrived: false when the conduit is closing (and perhaps
 * freed now), so the reply must be dropped. */
static bool reply_for_live(tw_conduit *cd) {
  cd->pending--;
  if (!cd->closing) return true;
  maybe_free(cd);
  return false;
}
static void want_changed(tw_shard *s);
static void verify_arm(tw_conduit *cd, uint64_t ms);
static void on_shard_timer(uv_timer_t *t);
static void add_check(tw_conduit *cd);
static void shard_assigned(tw_shard *s);
static void check_ready(tw_conduit *cd);
static void conduit_error(tw_conduit *cd, tw_shard *s, const tw_error *e);

/* ---- transports ---- */
static void tr_clear(tw_transport *t) {
  free(t->session_id);
  free(t->callback);
  if (t->secret) memset(t->secret, 0, strlen(t->secret));
  free(t->secret);
  memset(t, 0, sizeof *t);
}

static void tr_set_ws(tw_transport *t, const char *sid) {
  tr_clear(t);
  t->session_id = tw_strdup(sid);
  if (t->session_id) t->kind = TW_TRANSPORT_WEBSOCKET;
}

static void tr_copy(tw_transport *d, const tw_transport *s) {
  if (d == s) return;
  tr_clear(d);
  d->session_id = tw_strdup(s->session_id);
  d->callback = tw_strdup(s->callback);
  d->secret = tw_strdup(s->secret);
  bool ok = (!s->session_id || d->session_id) && (!s->callback || d->callback) && (!s->secret || d->secret);
  if (ok) d->kind = s->kind;
  else tr_clear(d);
}

static bool streq0(const char *a, const char *b) { return a && b ? strcmp(a, b) == 0 : a == b; }

static bool tr_eq(const tw_transport *a, const tw_transport *b) {
  if (a->kind != b->kind) return false;
  if (a->kind == TW_TRANSPORT_WEBSOCKET) return streq0(a->session_id, b->session_id);
  if (a->kind == TW_TRANSPORT_WEBHOOK) return streq0(a->callback, b->callback) && streq0(a->secret, b->secret);
  return true;
}

static bool tr_is_session(const tw_transport *t, const tw_session *ss) {
  const char *sid = tw_ws_session_id(ss);
  return t->kind == TW_TRANSPORT_WEBSOCKET && sid && strcmp(t->session_id, sid) == 0;
}

static void tr_json(cJSON *o, const tw_transport *t) {
  cJSON *j = cJSON_AddObjectToObject(o, "transport");
  if (t->kind == TW_TRANSPORT_WEBHOOK) {
    cJSON_AddStringToObject(j, "method", "webhook");
    cJSON_AddStringToObject(j, "callback", t->callback);
    cJSON_AddStringToObject(j, "secret", t->secret);
  } else {
    cJSON_AddStringToObject(j, "method", "websocket");
    cJSON_AddStringToObject(j, "session_id", t->session_id ? t->session_id : "");
  }
}

/* ---- accessors ---- */
const char *tw_conduit_id(const tw_conduit *cd) { return cd->id; }
int tw_conduit_shard_count(const tw_conduit *cd) { return cd->shard_count; }
const char *tw_conduit_state(const tw_conduit *cd) { return cd->state; }
size_t tw_conduit_nshards(const tw_conduit *cd) { return (size_t)cd->nshards; }
tw_shard *tw_conduit_shard(const tw_conduit *cd, size_t i) {
  return i < (size_t)cd->nshards ? cd->shards[i] : NULL;
}

static long parse_id(const char *id) {
  if (!id || !*id) return -1;
  char *end;
  long v = strtol(id, &end, 10);
  return *end || v < 0 ? -1 : v;
}

/* shards are kept in id order: a binary search */
static int shard_pos(const tw_conduit *cd, long idn, bool *found) {
  int lo = 0, hi = cd->nshards;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2;
    if (cd->shards[mid]->idn < idn) lo = mid + 1;
    else hi = mid;
  }
  *found = lo < cd->nshards && cd->shards[lo]->idn == idn;
  return lo;
}

tw_shard *tw_conduit_find_shard(const tw_conduit *cd, const char *id) {
  bool found;
  long idn = parse_id(id);
  if (idn < 0) return NULL;
  int i = shard_pos(cd, idn, &found);
  return found ? cd->shards[i] : NULL;
}
void tw_conduit_set_user(tw_conduit *cd, void *u) { cd->user = u; }
void *tw_conduit_user(const tw_conduit *cd) { return cd->user; }
const char *tw_shard_id(const tw_shard *s) { return s->id; }
const char *tw_shard_state(const tw_shard *s) { return s->state; }
const char *tw_shard_status(const tw_shard *s) { return s->status; }
const char *tw_shard_session_id(const tw_shard *s) {
  if (s->want.kind == TW_TRANSPORT_WEBSOCKET) return s->want.session_id;
  return s->cur ? tw_ws_session_id(s->cur) : NULL;
}
tw_conduit *tw_shard_conduit(const tw_shard *s) { return s->cd; }
void tw_shard_set_user(tw_shard *s, void *u) { s->user = u; }
void *tw_shard_user(const tw_shard *s) { return s->user; }
void tw_shard_get_stats(const tw_shard *s, tw_shard_stats *out) {
  *out = s->stats;
  out->backoff_attempt = s->attempt;
}
void tw_shard_note_lag(tw_shard *s, double lag_s) {
  double ms = lag_s * 1000.0;
  unsigned k = 0;
  if (ms >= 1.0) {
    uint64_t v = ms < 1e12 ? (uint64_t)ms : (uint64_t)1e12;
    k = 64u - (unsigned)__builtin_clzll(v); /* [2^(k-1), 2^k) ms */
    if (k >= TW_LAG_BUCKETS) k = TW_LAG_BUCKETS - 1;
  }
  s->stats.lag_buckets[k]++;
  s->stats.lag_sum_s += lag_s;
}
void tw_shard_note_stale(tw_shard *s) { s->stats.stale++; }
tw_conduit *tw_client_conduit_next(tw_client *c, tw_conduit *prev) {
  tw_conduit *cd = prev ? prev->next : c->conduits;
  while (cd && cd->silent) cd = cd->next;
  return cd;
}
int tw_shard_held(const tw_shard *s) { return s->held; }
void tw_conduit_set_lost_policy(tw_conduit *cd, int policy) { cd->lost_policy = policy; }

void tw_shard_transport(const tw_shard *s, tw_transport_info *out, int *assigned) {
  memset(out, 0, sizeof *out);
  if (s->want.kind == TW_TRANSPORT_WEBSOCKET) out->method = "websocket";
  else if (s->want.kind == TW_TRANSPORT_WEBHOOK) out->method = "webhook";
  out->session_id = s->want.session_id;
  out->callback = s->want.callback;
  out->status = s->status;
  if (assigned) *assigned = s->want.kind != TW_TRANSPORT_NONE && s->inflight.kind == TW_TRANSPORT_NONE &&
                            tr_eq(&s->want, &s->assigned);
}

static void emit_shard(tw_shard *s, tw_event_type type, const char *status, const tw_error *err) {
  tw_event ev = {.type = type, .conduit = s->cd, .shard = s, .status = status, .error = err};
  tw_emit(s->cd->c, &ev);
}

static void conduit_error(tw_conduit *cd, tw_shard *s, const tw_error *e) { tw_emit_error(cd->c, cd, s, e); }

/* ---- operations ---- */
static tw_op *op_new(tw_conduit *cd, int kind, tw_shard *s, tw_op_fn cb, void *user) {
  tw_op *op = calloc(1, sizeof *op);
  if (!op) return NULL;
  op->kind = kind;
  op->cd = cd;
  op->shard = s;
  op->cb = cb;
  op->user = user;
  op->next = cd->ops;
  cd->ops = op;
  if (s) s->op = op;
  return op;
}

static void op_free(tw_op *op) {
  tr_clear(&op->target);
  free(op->shards);
  free(op);
}

static void op_unlink_free(tw_op *op) {
  for (tw_op **pp = &op->cd->ops; *pp; pp = &(*pp)->next)
    if (*pp == op) {
      *pp = op->next;
      break;
    }
  op_free(op);
}

static void op_free_done(tw_op *op) {
  for (tw_op **pp = &op->cd->done_ops; *pp; pp = &(*pp)->next)
    if (*pp == op) {
      *pp = op->next;
      break;
    }
  op_free(op);
}

/* Reports the operation's end (once) and frees it, or parks it until its Helix reply. */
static void op_finish(tw_op *op, const tw_error *err) {
  tw_conduit *cd = op->cd;
  if (op->shard && op->shard->op == op) op->shard->op = NULL;
  for (tw_op **pp = &cd->ops; *pp; pp = &(*pp)->next)
    if (*pp == op) {
      *pp = op->next;
      break;
    }
  op->next = NULL;
  tw_op_fn cb = op->cb;
  void *user = op->user;
  tw_op_result r = {.error = err,
                    .conduit = cd,
                    .shard = op->shard,
                    .shards = err ? NULL : op->shards,
                    .nshards = err ? 0 : op->n};
  if (op->in_helix) {
    op->done = true;
    op->next = cd->done_ops;
    cd->done_ops = op;
  }
  if (cb && !cd->c->freeing) {
    cd->c->depth++;
    cb(user, &r);
    cd->c->depth--;
  } else if (err && !cb && !cd->closing) {
    conduit_error(cd, r.shard, err); /* nobody waits on it: never silent */
  }
  if (!op->in_helix) op_free(op);
}

static void finish_all_ops(tw_conduit *cd, const char *why) {
  tw_error e;
  tw_err_set(&e, "closed", 0, "%s", why);
  while (cd->ops) op_finish(cd->ops, &e);
}

/* ---- delivery and session reports ---- */
/* a handover's previous socket: closed with the handshake once the new one carries traffic
 * or after one keepalive interval */
static void end_linger(tw_shard *s) {
  s->lingering = false;
  if (s->old) tw_ws_close(s->old, 1000);
}

static void on_message(void *owner, tw_session *ss, tw_msg *m) {
  tw_shard *s = owner;
  if (s->lingering && ss == s->cur) end_linger(s); /* the new socket carries the traffic */
  s->stats.last_message_ms = uv_now(s->cd->c->loop);
  if (tw_client_deliver(s->cd->c, m, s->cd, s, &s->stats.duplicates) && m->message_type[0] == 'n')
    s->stats.notifications++;
}

static void on_keepalive(void *owner, tw_session *ss) {
  tw_shard *s = owner;
  (void)ss;
  s->stats.keepalives++;
  s->stats.last_message_ms = uv_now(s->cd->c->loop);
}

static void on_session_error(void *owner, tw_session *ss, const tw_error *e) {
  tw_shard *s = owner;
  (void)ss;
  conduit_error(s->cd, s, e);
}

static void on_welcome(void *owner, tw_session *ss, const char *sid);
static void on_reconnect_request(void *owner, tw_session *ss, const char *url);
static void on_closed(void *owner, tw_session *ss, int code, const char *why);

static const tw_session_ops shard_ops = {
    .welcome = on_welcome,
    .reconnect = on_reconnect_request,
    .message = on_message,
    .keepalive = on_keepalive,
    .error = on_session_error,
    .closed = on_closed,
};

static tw_session *open_session(tw_shard *s, const char *url) {
  s->stats.connects++;
  return tw_ws_open(s->cd->c, url, &shard_ops, s, &s->stats.bytes);
}

/* the current socket is replaced by `next`; the old one is closed with a handshake */
static void swap_to_next(tw_shard *s) {
  if (s->old) { /* a third socket: the oldest just goes */
    tw_ws_close(s->old, 1000);
    tw_ws_set_owner(s->old, NULL, NULL, NULL);
  }
  s->lingering = false;
  s->old = s->cur;
  s->cur = s->next;
  s->next = NULL;
  if (s->old) tw_ws_close(s->old, 1000);
}

/* a handover's swap: the previous socket lingers (see end_linger) */
static void swap_lingering(tw_shard *s) {
  if (s->old) {
    tw_ws_close(s->old, 1000);
    tw_ws_set_owner(s->old, NULL, NULL, NULL);
  }
  s->old = s->cur;
  s->cur = s->next;
  s->next = NULL;
  if (!s->old) return;
  int ka = s->cd->c->keepalive_s > 0 ? s->cd->c->keepalive_s : 10;
  s->lingering = true;
  uv_timer_start(&s->timer, on_shard_timer, (uint64_t)ka * 1000, 0);
}

static void on_welcome(void *owner, tw_session *ss, const char *sid) {
  tw_shard *s = owner;
  if (s->releasing) return;
  if (ss == s->next) {
    if (s->next_is_reconnect && ((s->cur && tr_is_session(&s->want, s->cur)) || !s->cur) &&
        (tr_is_session(&s->want, ss) || tr_is_session(&s->assigned, ss))) {
      /* session_reconnect to the same session: its assignment carries over */
      swap_to_next(s);
      s->enabled_when_lost = false;
      if (strcmp(s->state, "enabled") != 0 && s->inflight.kind == TW_TRANSPORT_NONE && tr_eq(&s->want, &s->assigned))
        s->state = "enabled"; /* the old socket had ended first: back on the same session */
      s->stats.reconnects++;
      emit_shard(s, TW_EV_RECONNECT, NULL, NULL);
      return;
    }
    /* a new session (handover, or a reconnect that changed the id): point the shard at it;
     * the current socket keeps delivering until the reply */
    tr_set_ws(&s->want, sid);
    want_changed(s);
    return;
  }
  if (ss != s->cur) return;
  if (s->op && s->op->kind == OP_POINT) return; /* it is to take another transport: its own waits */
  s->state = "welcomed";
  tr_set_ws(&s->want, sid);
  want_changed(s);
}

static void on_reconnect_request(void *owner, tw_session *ss, const char *url) {
  tw_shard *s = owner;
  if (ss != s->cur || s->next || s->releasing) return;
  s->next = open_session(s, url);
  s->next_is_reconnect = true;
  tw_ws_reconnect_target(s->next);
  if (!s->next) {
    tw_error e;
    tw_err_set(&e, "websocket_url", 0,
               "session_reconnect gave a URL that cannot be used; the current socket goes on until the server closes it");
    conduit_error(s->cd, s, &e);
  }
}

static void shard_connect(tw_shard *s) {
  if (s->webhook) { /* nothing to connect: Twitch calls it */
    want_changed(s);
    return;
  }
  s->state = "connecting";
  s->cur = open_session(s, NULL);
  if (!s->cur) {
    tw_error e;
    tw_err_set(&e, "websocket_url", 0, "cannot connect to the EventSub websocket URL");
    conduit_error(s->cd, s, &e);
    if (s->cd->closing || s->releasing) return;
    s->state = "idle";
    uv_timer_start(&s->timer, on_shard_timer,
                   tw_backoff_ms(&s->cd->c->rng, s->cd->c->backoff_min_s, s->cd->c->backoff_max_s, s->attempt++), 0);
  }
}

static void schedule_reconnect(tw_shard *s) {
  tw_client *c = s->cd->c;
  s->state = "idle";
  uint64_t d = s->reconnect_now ? 0 : tw_backoff_ms(&c->rng, c->backoff_min_s, c->backoff_max_s, s->attempt++);
  s->reconnect_now = false;
  uv_timer_start(&s->timer, on_shard_timer, d, 0);
}

int tw_shard_reconnect(tw_shard *s) {
  if (!s || s->cd->closing || s->releasing) return TW_ECLOSED;
  if (s->cur) {
    s->reconnect_now = true;
    tw_ws_close(s->cur, 1000); /* its end reconnects the shard */
  } else if (!s->pointed) {
    uv_timer_stop(&s->timer);
    shard_connect(s);
  }
  return 0;
}

/* ---- the shard set ---- */
static tw_shard *shard_new(tw_conduit *cd, long idn) {
  bool found;
  int pos = shard_pos(cd, idn, &found);
  if (found) return NULL;
  if (cd->nshards == cd->cap) {
    int ncap = cd->cap ? cd->cap * 2 : 8;
    tw_shard **p = realloc(cd->shards, (size_t)ncap * sizeof *p);
    if (!p) return NULL;
    cd->shards = p;
    cd->cap = ncap;
  }
  tw_shard *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->cd = cd;
  s->idn = idn;
  snprintf(s->id, sizeof s->id, "%d", (int)idn); /* ids are 0..20000 */
  s->state = "idle";
  snprintf(s->status, sizeof s->status, "unknown");
  uv_timer_init(cd->c->loop, &s->timer);
  s->timer.data = s;
  memmove(cd->shards + pos + 1, cd->shards + pos, (size_t)(cd->nshards - pos) * sizeof *cd->shards);
  cd->shards[pos] = s;
  cd->nshards++;
  return s;
}

static void shard_free_cb(uv_handle_t *h) {
  tw_shard *s = h->data;
  tr_clear(&s->want);
  tr_clear(&s->inflight);
  tr_clear(&s->assigned);
  free(s);
}

/* Takes s out of the conduit and frees it (after TW_EV_FREED). */
static void shard_remove(tw_shard *s) {
  tw_conduit *cd = s->cd;
  bool found;
  int pos = shard_pos(cd, s->idn, &found);
  if (found && cd->shards[pos] == s) {
    memmove(cd->shards + pos, cd->shards + pos + 1, (size_t)(cd->nshards - pos - 1) * sizeof *cd->shards);
    cd->nshards--;
  }
  tw_session *ss[3] = {s->cur, s->next, s->old};
  for (int k = 0; k < 3; k++)
    if (ss[k]) { /* nothing reports to a freed shard */
      tw_ws_close(ss[k], 1000);
      tw_ws_set_owner(ss[k], NULL, NULL, NULL);
    }
  s->cur = s->next = s->old = NULL;
  if (s->op && !cd->free_scheduled) {
    tw_error e;
    tw_err_set(&e, "closed", 0, "shard %s was removed", s->id);
    op_finish(s->op, &e);
  }
  for (tw_op *op = cd->ops; op; op = op->next) {
    if (op->kind == OP_ADD)
      for (size_t i = 0; i < op->n; i++)
        if (op->shards[i] == s) {
          memmove(op->shards + i, op->shards + i + 1, (op->n - i - 1) * sizeof *op->shards);
          op->n--;
          break;
        }
    if (op->shard == s) op->shard = NULL;
  }
  for (patch_ctx *p = cd->patches; p; p = p->next)
    for (int i = 0; i < p->n; i++)
      if (p->shards[i] == s) p->shards[i] = NULL;
  if (!cd->silent) {
    tw_event ev = {.type = TW_EV_FREED, .conduit = cd, .shard = s};
    tw_emit(cd->c, &ev);
  }
  uv_timer_stop(&s->timer);
  uv_close((uv_handle_t *)&s->timer, shard_free_cb);
}

/* A releasing shard is done once its sockets are gone and no PATCH is in flight for it. */
static void try_finish_release(tw_shard *s) {
  if (!s->releasing || s->cur || s->next || s->old || s->inflight.kind != TW_TRANSPORT_NONE) return;
  tw_conduit *cd = s->cd;
  s->releasing = false;
  s->state = "closed";
  tw_op *op = s->op;
  if (op && op->kind == OP_RELEASE) op_finish(op, NULL);
  if (cd->free_scheduled) return; /* freed with the conduit */
  emit_shard(s, TW_EV_SHARD_RELEASED, s->status, NULL);
  if (cd->free_scheduled) return;
  shard_remove(s);
  add_check(cd);
  check_ready(cd);
}

static void on_shard_timer(uv_timer_t *t) {
  tw_shard *s = t->data;
  if (s->cd->closing) return;
  if (s->lingering) end_linger(s);
  if (s->releasing) {
    try_finish_release(s);
    return;
  }
  if (!s->cur && !s->next && !s->held && !s->pointed && s->cd->started) {
    shard_connect(s);
    return;
  }
  if (s->op && s->op->kind == OP_POINT && s->inflight.kind == TW_TRANSPORT_NONE &&
      tr_eq(&s->op->target, &s->assigned)) {
    shard_assigned(s); /* pointed where Twitch already had it */
    return;
  }
  want_changed(s); /* a retry after a failed assignment */
}

static const char *close_error_code(int code) {
  switch (code) {
  case 4001: return "inbound_traffic";
  case 4003: return "connection_unused";
  case 4004: return "reconnect_expired";
  case 4007: return "invalid_reconnect";
  default: return "websocket_closed";
  }
}

static void on_closed(void *owner, tw_session *ss, int code, const char *why) {
  tw_shard *s = owner;
  tw_conduit *cd = s->cd;
  s->stats.last_close_code = code;
  tw_metrics_note_close(&s->stats, code);
  if (ss == s->old) {
    s->old = NULL;
    s->lingering = false;
    try_finish_release(s);
    return;
  }
  if (ss == s->next) {
    s->next = NULL;
    if (s->releasing) {
      try_finish_release(s);
      return;
    }
    bool was_target = tr_is_session(&s->want, ss);
    if (s->cur) { /* the new socket failed: the current one goes on */
      tw_error e;
      tw_err_set(&e, s->next_is_reconnect ? "reconnect_failed" : "handover_failed", code,
                 "%s target closed (%d%s%s); keeping the current socket",
                 s->next_is_reconnect ? "session_reconnect" : "handover", code, why && *why ? ": " : "", why ? why : "");
      if (was_target) {
        tr_set_ws(&s->want, tw_ws_session_id(s->cur));
        want_changed(s);
      }
      if (s->op && s->op->kind == OP_HANDOVER) op_finish(s->op, &e);
      else conduit_error(cd, s, &e);
      try_finish_release(s);
      return;
    }
    /* the old socket is gone and its replacement failed too: as a close of the shard */
  } else if (ss != s->cur) {
    return;
  } else if (s->next) { /* the current socket ended first: the new one takes over */
    s->cur = NULL;
    if (strcmp(s->state, "enabled") == 0) {
      s->state = "connecting";
      s->enabled_when_lost = true;
    }
    return;
  } else {
    s->cur = NULL;
  }
  if (cd->closing) {
    s->state = "closed";
    maybe_free(cd);
    return;
  }
  if (s->releasing) {
    try_finish_release(s);
    return;
  }
  bool was_enabled = strcmp(s->state, "enabled") == 0 || s->enabled_when_lost;
  s->enabled_when_lost = false;
  /* a shard dropped soon after its assignment keeps backing off (a server that enables and
   * drops at once gets growing delays, not a reconnect every backoff_min) */
  if (was_enabled && uv_now(cd->c->loop) - s->enabled_at >= TW_STABLE_MS) s->attempt = 0;
  if (!s->pointed && tr_is_session(&s->want, ss)) tr_clear(&s->want); /* nothing to point at */
  if (s->op && s->op->kind == OP_HANDOVER) {
    tw_error he;
    tw_err_set(&he, "handover_failed", code, "the shard's socket closed during the handover");
    op_finish(s->op, &he);
    if (cd->closing) return;
  }
  const char *status = tw_close_status(code);
  snprintf(s->status, sizeof s->status, "%s", status);
  s->state = "idle";
  tw_error e;
  tw_err_set(&e, close_error_code(code), code, "shard %s socket closed (%d%s%s)", s->id, code,
             why && *why ? ": " : "", why ? why : "");
  if (was_enabled) {
    /* one shard_disabled per outage; the attempts that follow are only counted */
    s->outage = true;
    s->stats.outages++;
    emit_shard(s, TW_EV_SHARD_DISABLED, status, &e);
  } else {
    s->stats.failed_connects++;
    if (!s->outage) conduit_error(cd, s, &e);
  }
  if (cd->closing || s->releasing || !s->cd->started) return;
  if (s->held) return; /* an operation or another owner decides */
  schedule_reconnect(s);
}

/* ---- assignment ---- */
static void want_changed(tw_shard *s) {
  tw_conduit *cd = s->cd;
  if (cd->closing || s->releasing || s->inflight.kind != TW_TRANSPORT_NONE || s->want.kind == TW_TRANSPORT_NONE)
    return;
  if (tr_eq(&s->want, &s->assigned)) return;
  if (!s->queued) {
    s->queued = true;
    schedule_batch(cd);
  }
}

static void patch_ctx_free(patch_ctx *p) {
  if (p->prev) p->prev->next = p->next;
  else if (p->cd->patches == p) p->cd->patches = p->next;
  if (p->next) p->next->prev = p->prev;
  for (int i = 0; i < p->n; i++) tr_clear(&p->sent[i]);
  free(p->sent);
  free(p->shards);
  free(p);
}


static void check_ready(tw_conduit *cd) {
  if (cd->ready_emitted || cd->closing || !cd->started) return;
  for (int i = 0; i < cd->nshards; i++)
    if (!cd->shards[i]->ever_enabled) return;
  cd->ready_emitted = true;
  cd->state = "ready";
  tw_event ev = {.type = TW_EV_READY, .conduit = cd};
  tw_emit(cd->c, &ev);
  verify_arm(cd, 1000); /* after bring-up */
}

/* Twitch confirmed the transport the shard wants. */
static void shard_assigned(tw_shard *s) {
  tw_conduit *cd = s->cd;
  if (s->want.kind == TW_TRANSPORT_WEBHOOK && !s->challenged) {
    /* Twitch took it; enabled once the challenge was answered */
    if (strcmp(s->state, "enabled") != 0) s->state = "assigning";
    snprintf(s->status, sizeof s->status, "webhook_callback_verification_pending");
    return;
  }
  if (strcmp(s->state, "enabled") != 0) s->enabled_at = uv_now(cd->c->loop);
  bool reconnected = false, swapped = false;
  if (s->next && tr_is_session(&s->want, s->next)) {
    reconnected = s->next_is_reconnect;
    if (reconnected) swap_to_next(s);
    else swap_lingering(s);
    swapped = true;
  }
  tw_op *op = s->op;
  if (op && op->kind == OP_POINT && !tr_eq(&s->assigned, &op->target)) op = NULL; /* not yet there */
  if (op && op->kind == OP_HANDOVER && !swapped) op = NULL;
  if (op && op->kind == OP_WEBHOOK && !tr_eq(&s->assigned, &op->target)) op = NULL;
  s->enabled_when_lost = false;
  if (op && op->kind == OP_POINT) {
    s->pointed = true;
    if (s->cur) {
      if (s->old) tw_ws_set_owner(s->old, NULL, NULL, NULL);
      s->old = s->cur;
      s->cur = NULL;
      tw_ws_close(s->old, 1000);
    }
  }
  s->state = "enabled";
  snprintf(s->status, sizeof s->status, "enabled");
  s->outage = false;
  s->ever_enabled = true;
  if (reconnected) {
    s->stats.reconnects++;
    emit_shard(s, TW_EV_RECONNECT, NULL, NULL);
    if (cd->closing) return;
  }
  s->stats.enabled_at_ms = uv_now(cd->c->loop);
  emit_shard(s, TW_EV_SHARD_ENABLED, NULL, NULL);
  if (cd->closing) return;
  if (op && op == s->op) op_finish(op, NULL);
  if (cd->closing) return;
  add_check(cd);
  if (cd->ready_emitted) verify_arm(cd, 2000); /* after a reassignment */
}

/* A webhook transport refused by Twitch: the operation waiting for it fails (an added
 * shard goes away again). True when handled. */
static bool webhook_refused(tw_shard *s, const tw_error *err) {
  tw_conduit *cd = s->cd;
  if (s->want.kind != TW_TRANSPORT_WEBHOOK) return false;
  if (s->op && s->op->kind == OP_POINT) return false;
  if (s->op && s->op->kind == OP_WEBHOOK) {
    op_finish(s->op, err); /* want stays: the caller may try again */
    return true;
  }
  for (tw_op *op = cd->ops; op; op = op->next)
    if (op->kind == OP_ADD)
      for (size_t i = 0; i < op->n; i++)
        if (op->shards[i] == s) {
          tw_shard **list = op->shards;
          size_t n = op->n;
          op->shards = NULL;
          op->n = 0;
          op_finish(op, err);
          for (size_t k = 0; k < n && !cd->free_scheduled; k++)
            if (!list[k]->ever_enabled) shard_remove(list[k]);
          free(list);
          return true;
        }
  return true; /* nobody waits: the error was reported, want stays for a later retry */
}

/* The wanted transport was refused (a per-shard error, or the request failed). */
static void assign_refused(tw_shard *s, bool request_failed, const tw_error *err) {
  tw_conduit *cd = s->cd;
  tw_op *op = s->op;
  if (!request_failed && webhook_refused(s, err)) return;
  if (op && op->kind == OP_POINT) {
    /* back to the shard's own socket */
    if (s->cur && tw_ws_session_id(s->cur)) tr_set_ws(&s->want, tw_ws_session_id(s->cur));
    else tr_clear(&s->want);
    s->held = op->prev_held;
    op_finish(op, err);
    if (cd->closing || s->releasing || s->op) return;
    if (!s->cur && !s->next && !s->held && !s->pointed) {
      s->state = "idle";
      schedule_reconnect(s);
    } else {
      want_changed(s);
    }
    return;
  }
  if (op && op->kind == OP_HANDOVER && s->next && tr_is_session(&s->want, s->next)) {
    tw_session *n = s->next;
    s->next = NULL;
    tw_ws_close(n, 1000);
    tw_ws_set_owner(n, NULL, NULL, NULL);
    if (s->cur && tw_ws_session_id(s->cur)) tr_set_ws(&s->want, tw_ws_session_id(s->cur));
    op_finish(op, err);
    if (!cd->closing) want_changed(s);
    return;
  }
  if (request_failed) { /* Helix failed after its retries: try again after a backoff */
    uv_timer_start(&s->timer, on_shard_timer,
                   tw_backoff_ms(&cd->c->rng, cd->c->backoff_min_s, cd->c->backoff_max_s, s->attempt++), 0);
    return;
  }
  /* our session was refused: a fresh session, then a fresh try */
  tw_session *ss = s->next && tr_is_session(&s->want, s->next) ? s->next : s->cur;
  if (ss && tr_is_session(&s->want, ss)) tw_ws_close(ss, 1000);
}

static void on_patch(void *user, const tw_response *r) {
  patch_ctx *p = user;
  tw_conduit *cd = p->cd;
  cd->pending--;
  if (cd->closing) {
    for (int i = 0; i < p->n; i++)
      if (p->shards[i]) tr_clear(&p->shards[i]->inflight);
    patch_ctx_free(p);
    maybe_free(cd);
    return;
  }
  tw_json *d = r->error ? NULL : r->body;
  /* each shard's outcome: 1 applied, 2 refused (errors[]), 0 not mentioned */
  char *res = calloc((size_t)p->n + 1, 1);
  tw_jnode *eno = calloc((size_t)p->n + 1, sizeof *eno);
  if (!res || !eno) {
    free(res);
    free(eno);
    res = NULL;
  }
  static const char *const lists[2] = {"errors", "data"};
  for (int li = 0; li < 2 && d && res; li++) {
    tw_jnode arr = tw_json_get(d, 0, lists[li], strlen(lists[li]));
    for (tw_jnode e = tw_json_first(d, arr); arr != TW_JNONE && e != TW_JNONE; e = tw_json_next(d, e)) {
      const char *id = tw_json_str(d, tw_json_get(d, e, "id", 2), NULL);
      for (int i = 0; id && i < p->n; i++)
        if (p->shards[i] && !res[i] && strcmp(p->shards[i]->id, id) == 0) {
          res[i] = li == 0 ? 2 : 1;
          eno[i] = e;
          break;
        }
    }
  }
  if (r->error) conduit_error(cd, NULL, r->error);
  for (int i = 0; i < p->n; i++) {
    tw_shard *s = p->shards[i];
    if (!s) continue;
    tr_clear(&s->inflight);
    if (cd->closing || s->releasing) {
      if (s->releasing) uv_timer_start(&s->timer, on_shard_timer, 0, 0);
      continue;
    }
    const tw_transport *sent = &p->sent[i];
    bool current = tr_eq(sent, &s->want);
    int outcome = res ? res[i] : 0;
    if (outcome == 1) {
      tr_copy(&s->assigned, sent);
      s->assigned_seq = ++cd->seq;
      s->stats.assignments++;
      if (current) shard_assigned(s);
      else want_changed(s); /* a newer want waited for this reply */
      continue;
    }
    s->stats.assign_errors++;
    if (r->error) {
      if (current) assign_refused(s, true, r->error);
      else want_changed(s);
      continue;
    }
    const char *msg = outcome == 2 ? tw_json_str(d, tw_json_get(d, eno[i], "message", 7), NULL) : NULL;
    const char *code = outcome == 2 ? tw_json_str(d, tw_json_get(d, eno[i], "code", 4), NULL) : NULL;
    tw_error err;
    tw_err_set(&err, "shard_assign_failed", r->status, "shard %s: %s%s%s%s", s->id,
               msg ? msg : (outcome == 2 ? "rejected" : "not in the answer"), code ? " / " : "", code ? code : "",
               current ? "" : " (for a transport the shard no longer uses: ignored)");
    conduit_error(cd, s, &err);
    if (cd->closing) continue;
    if (current) assign_refused(s, false, &err);
    else want_changed(s);
  }
  free(res);
  free(eno);
  patch_ctx_free(p);
  check_ready(cd);
}

static int batch_size(const tw_client *c) { return c->patch_batch < 1 ? 1 : c->patch_batch > 1000 ? 1000 : c->patch_batch; }

static void flush_batch(tw_conduit *cd) {
  tw_client *c = cd->c;
  const int batch = batch_size(c);
  patch_ctx *p = calloc(1, sizeof *p);
  cJSON *root = cJSON_CreateObject();
  if (p) {
    p->shards = calloc((size_t)batch, sizeof *p->shards);
    p->sent = calloc((size_t)batch, sizeof *p->sent);
  }
  if (!p || !root || !p->shards || !p->sent) {
    if (p) {
      free(p->shards);
      free(p->sent);
      free(p);
    }
    cJSON_Delete(root);
    tw_error e;
    tw_err_set(&e, "no_memory", 0, "out of memory building Update Conduit Shards");
    conduit_error(cd, NULL, &e);
    return;
  }
  p->cd = cd;
  cJSON_AddStringToObject(root, "conduit_id", cd->id);
  cJSON *arr = cJSON_AddArrayToObject(root, "shards");
  for (int i = 0; i < cd->nshards && p->n < batch; i++) {
    tw_shard *s = cd->shards[i];
    if (!s->queued) continue;
    if (s->idn >= cd->shard_count) continue; /* beyond Twitch's count: waits for a growth */
    s->queued = false;
    if (s->releasing || s->inflight.kind != TW_TRANSPORT_NONE || s->want.kind == TW_TRANSPORT_NONE ||
        tr_eq(&s->want, &s->assigned))
      continue;
    tr_copy(&s->inflight, &s->want);
    tr_copy(&p->sent[p->n], &s->want);
    if (s->inflight.kind == TW_TRANSPORT_NONE || p->sent[p->n].kind == TW_TRANSPORT_NONE) {
      tr_clear(&s->inflight);
      tr_clear(&p->sent[p->n]);
      continue;
    }
    if (strcmp(s->state, "enabled") != 0) s->state = "assigning";
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", s->id);
    tr_json(o, &s->want);
    cJSON_AddItemToArray(arr, o);
    p->shards[p->n++] = s;
  }
  if (p->n == 0) {
    patch_ctx_free(p);
    cJSON_Delete(root);
    return;
  }
  char *body = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  p->next = cd->patches;
  if (cd->patches) cd->patches->prev = p;
  cd->patches = p;
  tw_error err;
  if (!body || tw_helix_urgent(c, "PATCH", "/eventsub/conduits/shards", body, strlen(body), on_patch, p, &err) != 0) {
    if (!body) tw_err_set(&err, "no_memory", 0, "out of memory building Update Conduit Shards");
    conduit_error(cd, NULL, &err);
    for (int i = 0; i < p->n; i++) {
      tr_clear(&p->shards[i]->inflight);
      uv_timer_start(&p->shards[i]->timer, on_shard_timer, 1000, 0); /* try again */
    }
    patch_ctx_free(p);
  } else {
    cd->pending++;
  }
  free(body);
}

static void on_batch_timer(uv_timer_t *t) {
  tw_conduit *cd = t->data;
  if (cd->closing || !cd->id) return;
  int waiting = 0, connecting = 0;
  for (int i = 0; i < cd->nshards; i++) {
    waiting += cd->shards[i]->queued;
    connecting += strcmp(cd->shards[i]->state, "connecting") == 0;
  }
  uint64_t now = uv_now(cd->c->loop);
  /* full batches go at once; a partial batch waits (up to 1 s) for shards still
   * connecting, so a bring-up takes as few PATCHes as possible */
  bool flushed = false;
  while (waiting >= batch_size(cd->c)) {
    flush_batch(cd);
    waiting -= batch_size(cd->c);
    flushed = true;
  }
  if (waiting > 0) {
    if (flushed) cd->batch_since = now; /* what is left waits from now, not from the first of the batch sent */
    if (connecting == 0 || now - cd->batch_since >= 1000) {
      flush_batch(cd);
    } else {
      uv_timer_start(&cd->batch_timer, on_batch_timer, 20, 0);
      return;
    }
  }
  cd->batch_since = 0;
}

static void schedule_batch(tw_conduit *cd) {
  if (!cd->batch_since) cd->batch_since = uv_now(cd->c->loop);
  if (!uv_is_active((uv_handle_t *)&cd->batch_timer)) uv_timer_start(&cd->batch_timer, on_batch_timer, 0, 0);
}

/* ---- verification: Get Conduit Shards against what this process believes ---- */
static void verify_start(tw_conduit *cd);
static void verify_page(tw_conduit *cd, const char *cursor);

static void on_verify_timer(uv_timer_t *t) { verify_start(t->data); }

/* Arms the verification timer to fire in ms, unless it fires sooner already. */
static void verify_arm(tw_conduit *cd, uint64_t ms) {
  if (cd->closing || cd->c->freeing) return;
  if (uv_is_active((uv_handle_t *)&cd->verify_timer) && uv_timer_get_due_in(&cd->verify_timer) <= ms) return;
  uv_timer_start(&cd->verify_timer, on_verify_timer, ms, 0);
}

static void verify_periodic(tw_conduit *cd) {
  double iv = cd->c->verify_interval_s;
  if (iv <= 0) return;
  /* jittered by +-10% so processes sharing a conduit spread their reads */
  double j = 0.9 + 0.2 * (double)(tw_rand(&cd->c->rng) % 1000) / 1000.0;
  verify_arm(cd, (uint64_t)(iv * j * 1000));
}

static bool settled(const tw_conduit *cd, const tw_shard *s) {
  return !s->releasing && !s->queued && s->inflight.kind == TW_TRANSPORT_NONE && s->want.kind != TW_TRANSPORT_NONE &&
         tr_eq(&s->want, &s->assigned) && s->assigned_seq <= cd->verify_seq && strcmp(s->state, "enabled") == 0;
}

static void shard_lost(tw_shard *s, const tw_transport_info *tw) {
  tw_conduit *cd = s->cd;
  s->stats.lost++;
  tw_error e;
  const char *theirs = tw->session_id && *tw->session_id ? tw->session_id : tw->callback;
  tw_err_set(&e, "shard_lost", 0, "shard %s: Twitch shows %s %s (status %s); this process has %s", s->id,
             tw->method ? tw->method : "no transport", theirs ? theirs : "-", tw->status ? tw->status : "not listed",
             s->want.session_id ? s->want.session_id : (s->want.callback ? s->want.callback : "-"));
  tw_event ev = {.type = TW_EV_SHARD_LOST, .conduit = cd, .shard = s, .status = tw->status, .error = &e, .twitch = tw};
  tw_emit(cd->c, &ev);
  /* the reaction is a hook: a handler may have held or released the shard (a shard is
   * never freed inside a handler: releases and closes finish from the loop) */
  if (cd->closing || s->releasing || s->held || cd->lost_policy == TW_LOST_REPORT) return;
  tr_clear(&s->assigned); /* Twitch does not have it: send it again */
  s->state = "assigning";
  want_changed(s);
}

static void verify_end(tw_conduit *cd, const tw_error *err) {
  cd->verifying = false;
  for (tw_op *op = cd->ops, *nx; op; op = nx) {
    nx = op->next;
    if (op->kind == OP_VERIFY && op->started) {
      op_finish(op, err);
      nx = cd->ops; /* the list may have changed: start over (finished ops are gone) */
      if (cd->closing) return;
    }
  }
  if (cd->closing) return;
  if (cd->verify_again) {
    cd->verify_again = false;
    verify_start(cd);
    return;
  }
  verify_periodic(cd);
}

static void on_verify_page(void *user, const tw_response *r) {
  tw_conduit *cd = user;
  if (!reply_for_live(cd)) return;
  if (r->error) {
    tw_error e = *r->error;
    conduit_error(cd, NULL, &e);
    if (!cd->closing) verify_end(cd, &e);
    return;
  }
  tw_json *d = r->body;
  tw_jnode data = d ? tw_json_get(d, 0, "data", 4) : TW_JNONE;
  if (!d || data == TW_JNONE || tw_json_type(d, data) != TW_JSON_ARR) {
    tw_error e;
    tw_err_set(&e, "bad_response", r->status, "Get Conduit Shards answered without a data array");
    conduit_error(cd, NULL, &e);
    if (!cd->closing) verify_end(cd, &e);
    return;
  }
  size_t listed = 0;
  for (tw_jnode e = tw_json_first(d, data); e != TW_JNONE && !cd->closing; e = tw_json_next(d, e)) {
    listed++;
    tw_shard *s = tw_conduit_find_shard(cd, tw_json_str(d, tw_json_get(d, e, "id", 2), NULL));
    if (!s) continue; /* another process's shard */
    tw_jnode t = tw_json_get(d, e, "transport", 9);
    tw_transport_info tw = {.method = tw_json_str(d, tw_json_get(d, t, "method", 6), NULL),
                            .session_id = tw_json_str(d, tw_json_get(d, t, "session_id", 10), NULL),
                            .callback = tw_json_str(d, tw_json_get(d, t, "callback", 8), NULL),
                            .status = tw_json_str(d, tw_json_get(d, e, "status", 6), NULL)};
    if (!settled(cd, s)) continue;
    bool same;
    if (s->assigned.kind == TW_TRANSPORT_WEBHOOK)
      same = streq0(tw.method, "webhook") && streq0(tw.callback, s->assigned.callback) &&
             (streq0(tw.status, "enabled") || streq0(tw.status, "webhook_callback_verification_pending"));
    else
      same = streq0(tw.method, "websocket") && streq0(tw.session_id, s->assigned.session_id) &&
             streq0(tw.status, "enabled");
    if (same) continue;
    shard_lost(s, &tw);
  }
  if (cd->closing) return;
  const char *cursor = tw_json_str(d, tw_json_getp(d, 0, "pagination.cursor"), NULL);
  if (cursor && *cursor && listed > 0) {
    verify_page(cd, cursor);
    return;
  }
  verify_end(cd, NULL);
}

static void verify_page(tw_conduit *cd, const char *cursor) {
  char path[1024];
  int n = snprintf(path, sizeof path, "/eventsub/conduits/shards?conduit_id=%s&first=100", cd->id);
  if (cursor) {
    /* cursors are opaque: percent-encode anything beyond the unreserved set */
    for (const unsigned char *q = (const unsigned char *)cursor; *q && n < (int)sizeof path - 8; q++) {
      if (q == (const unsigned char *)cursor) n += snprintf(path + n, sizeof path - (size_t)n, "&after=");
      bool plain = (*q >= 'A' && *q <= 'Z') || (*q >= 'a' && *q <= 'z') || (*q >= '0' && *q <= '9') || *q == '-' ||
                   *q == '_' || *q == '.' || *q == '~';
      n += plain ? snprintf(path + n, sizeof path - (size_t)n, "%c", *q)
                 : snprintf(path + n, sizeof path - (size_t)n, "%%%02X", *q);
    }
  }
  tw_error err;
  if (tw_helix(cd->c, "GET", path, NULL, 0, on_verify_page, cd, &err) != 0) {
    conduit_error(cd, NULL, &err);
    if (!cd->closing) verify_end(cd, &err);
    return;
  }
  cd->pending++;
}

static void verify_start(tw_conduit *cd) {
  if (cd->closing || !cd->id || !cd->started) return;
  if (cd->verifying) {
    cd->verify_again = true;
    return;
  }
  uv_timer_stop(&cd->verify_timer);
  cd->verifying = true;
  cd->verify_seq = cd->seq;
  for (tw_op *op = cd->ops; op; op = op->next)
    if (op->kind == OP_VERIFY) op->started = true;
  verify_page(cd, NULL);
}

int tw_conduit_verify(tw_conduit *cd, tw_op_fn cb, void *user, tw_error *err) {
  if (!cd || cd->closing) {
    tw_err_set(err, "closed", 0, "the conduit is closed");
    return TW_ECLOSED;
  }
  if (!cd->started) {
    tw_err_set(err, "busy", 0, "the conduit is still opening");
    return TW_EINVAL;
  }
  if (cb && !op_new(cd, OP_VERIFY, NULL, cb, user)) {
    tw_err_set(err, "no_memory", 0, "out of memory");
    return TW_ENOMEM;
  }
  if (cd->verifying) cd->verify_again = true; /* the running one started before this call */
  else verify_arm(cd, 0);
  return 0;
}

/* ---- operations on the shard set ---- */
static int op_refuse(tw_error *err, int rc, const char *code, const char *msg) {
  tw_err_set(err, code, 0, "%s", msg);
  return rc;
}

static int check_shard_op(tw_shard *s, tw_error *err) {
  if (!s || s->cd->closing) return op_refuse(err, TW_ECLOSED, "closed", "the shard's conduit is closed");
  if (s->releasing) return op_refuse(err, TW_ECLOSED, "closed", "the shard is being released");
  if (s->op) return op_refuse(err, TW_EINVAL, "busy", "another operation is changing this shard");
  return 0;
}

/* add: completes once every new shard has been enabled */
static void add_check(tw_conduit *cd) {
  for (tw_op *op = cd->ops; op; op = op->next) {
    if (op->kind != OP_ADD || !op->started) continue;
    bool all = true;
    for (size_t i = 0; i < op->n && all; i++) all = op->shards[i]->ever_enabled;
    if (all) {
      op_finish(op, NULL);
      if (!cd->closing) add_check(cd); /* the list changed: look again */
      return;
    }
  }
}

static void add_connect(tw_op *op) {
  op->started = true;
  for (size_t i = 0; i < op->n && !op->cd->closing; i++)
    if (!op->shards[i]->cur && !op->shards[i]->releasing) shard_connect(op->shards[i]);
}

static void on_add_resized(void *user, const tw_response *r) {
  tw_op *op = user;
  tw_conduit *cd = op->cd;
  cd->pending--;
  op->in_helix = false;
  if (op->done) { /* finished while the request was in flight (the conduit closed) */
    op_free_done(op);
    maybe_free(cd);
    return;
  }
  if (cd->closing) {
    maybe_free(cd);
    return;
  }
  tw_jnode first = r->body ? tw_json_at(r->body, tw_json_get(r->body, 0, "data", 4), 0) : TW_JNONE;
  tw_jnode sc = r->body && first != TW_JNONE ? tw_json_get(r->body, first, "shard_count", 11) : TW_JNONE;
  tw_error e;
  if (r->error) e = *r->error;
  else if (sc == TW_JNONE) tw_err_set(&e, "bad_response", r->status, "Update Conduits answered without data[0].shard_count");
  if (r->error || sc == TW_JNONE) {
    /* the new shards cannot be used: they go, and the operation fails */
    tw_shard **list = op->shards;
    size_t n = op->n;
    op->shards = NULL;
    op->n = 0;
    op_finish(op, &e);
    for (size_t i = 0; i < n && !cd->free_scheduled; i++) shard_remove(list[i]);
    free(list);
    if (!cd->free_scheduled) check_ready(cd);
    return;
  }
  cd->shard_count = (int)tw_json_num(r->body, sc);
  if (op->kind == OP_RESIZE) {
    op_finish(op, NULL);
  } else { /* the new shards connected meanwhile: their assignments can go now */
    if (!op->started) add_connect(op);
    schedule_batch(cd);
  }
}

/* Update Conduits for an operation; the op stays allocated until the reply. */
static int resize_request(tw_op *op, int count, tw_error *err) {
  tw_conduit *cd = op->cd;
  char body[160];
  snprintf(body, sizeof body, "{\"id\":\"%s\",\"shard_count\":%d}", cd->id, count);
  if (tw_helix(cd->c, "PATCH", "/eventsub/conduits", body, strlen(body), on_add_resized, op, err) != 0) return -1;
  op->in_helix = true;
  cd->pending++;
  return 0;
}

/* one change of the conduit's size at a time: two Update Conduits applied out of order
 * could shrink it */
static bool sizing(const tw_conduit *cd) {
  for (const tw_op *op = cd->ops; op; op = op->next)
    if ((op->kind == OP_ADD && (!op->started || op->in_helix)) || op->kind == OP_RESIZE) return true;
  return false;
}

int tw_conduit_add_shards(tw_conduit *cd, int n, tw_op_fn cb, void *user, size_t *first, tw_error *err) {
  if (!cd || cd->closing) return op_refuse(err, TW_ECLOSED, "closed", "the conduit is closed");
  if (!cd->started) return op_refuse(err, TW_EINVAL, "busy", "the conduit is still opening");
  if (sizing(cd)) return op_refuse(err, TW_EINVAL, "busy", "the conduit is being resized");
  long top = cd->nshards ? cd->shards[cd->nshards - 1]->idn : cd->offset - 1;
  if (n < 1 || top + 1 + n > 20000)
    return op_refuse(err, TW_EINVAL, "invalid_argument", "a conduit has at most 20000 shards; n must be >= 1");
  tw_op *op = op_new(cd, OP_ADD, NULL, cb, user);
  if (op) op->shards = calloc((size_t)n, sizeof *op->shards);
  if (!op || !op->shards) {
    if (op) op_unlink_free(op);
    return op_refuse(err, TW_ENOMEM, "no_memory", "out of memory");
  }
  for (int i = 0; i < n; i++) {
    tw_shard *s = shard_new(cd, top + 1 + i);
    if (!s) {
      for (size_t k = 0; k < op->n; k++) shard_remove(op->shards[k]);
      op_unlink_free(op);
      return op_refuse(err, TW_ENOMEM, "no_memory", "out of memory");
    }
    op->shards[op->n++] = s;
  }
  if (first) *first = (size_t)(cd->nshards - n);
  int need = (int)(top + 1 + n);
  if (cd->shard_count < need) {
    if (resize_request(op, need, err) != 0) {
      for (size_t k = 0; k < op->n; k++) shard_remove(op->shards[k]);
      op_unlink_free(op);
      return TW_EIO;
    }
  }
  /* the sockets connect while the conduit grows (their PATCH waits for the growth), so
   * the new shards are without a transport on Twitch for one round trip only */
  add_connect(op);
  return 0;
}

int tw_conduit_resize(tw_conduit *cd, int count, tw_op_fn cb, void *user, tw_error *err) {
  if (!cd || cd->closing) return op_refuse(err, TW_ECLOSED, "closed", "the conduit is closed");
  if (!cd->id) return op_refuse(err, TW_EINVAL, "busy", "the conduit is still opening");
  if (count < 1 || count > 20000) return op_refuse(err, TW_EINVAL, "invalid_argument", "shard_count must be 1..20000");
  if (sizing(cd)) return op_refuse(err, TW_EINVAL, "busy", "the conduit is being resized");
  tw_op *op = op_new(cd, OP_RESIZE, NULL, cb, user);
  if (!op) return op_refuse(err, TW_ENOMEM, "no_memory", "out of memory");
  if (resize_request(op, count, err) != 0) {
    op_unlink_free(op);
    return TW_EIO;
  }
  return 0;
}

int tw_shard_release(tw_shard *s, tw_op_fn cb, void *user, tw_error *err) {
  int rc = check_shard_op(s, err);
  if (rc) return rc;
  if (!op_new(s->cd, OP_RELEASE, s, cb, user)) return op_refuse(err, TW_ENOMEM, "no_memory", "out of memory");
  s->releasing = true;
  s->queued = false;
  s->state = "releasing";
  uv_timer_stop(&s->timer);
  tw_session *ss[3] = {s->cur, s->next, s->old};
  for (int k = 0; k < 3; k++)
    if (ss[k]) tw_ws_close(ss[k], 1000); /* with the handshake: frames already written arrive */
  if (!s->cur && !s->next && !s->old) uv_timer_start(&s->timer, on_shard_timer, 0, 0);
  return 0;
}

int tw_shard_point_at(tw_shard *s, tw_shard *target, tw_op_fn cb, void *user, tw_error *err) {
  int rc = check_shard_op(s, err);
  if (rc) return rc;
  if (!target || target == s || target->cd != s->cd || target->releasing)
    return op_refuse(err, TW_EINVAL, "invalid_argument", "the target must be another live shard of the same conduit");
  if (target->want.kind == TW_TRANSPORT_NONE)
    return op_refuse(err, TW_EINVAL, "busy", "the target shard has no transport yet");
  tw_op *op = op_new(s->cd, OP_POINT, s, cb, user);
  if (!op) return op_refuse(err, TW_ENOMEM, "no_memory", "out of memory");
  op->prev_held = s->held;
  tr_copy(&op->target, &target->want);
  if (op->target.kind == TW_TRANSPORT_NONE) {
    op_unlink_free(op);
    s->op = NULL;
    return op_refuse(err, TW_ENOMEM, "no_memory", "out of memory");
  }
  s->held = true; /* its own socket is no longer cared for */
  tr_copy(&s->want, &op->target);
  s->challenged = false;
  want_changed(s);
  if (tr_eq(&s->want, &s->assigned) && s->inflight.kind == TW_TRANSPORT_NONE)
    uv_timer_start(&s->timer, on_shard_timer, 0, 0); /* already there: completes from the loop */
  return 0;
}

int tw_shard_handover(tw_shard *s, tw_op_fn cb, void *user, tw_error *err) {
  int rc = check_shard_op(s, err);
  if (rc) return rc;
  if (!s->cur || !tw_ws_welcomed(s->cur) || s->next || s->pointed)
    return op_refuse(err, TW_EINVAL, "busy", "the shard has no settled socket of its own to hand over");
  tw_op *op = op_new(s->cd, OP_HANDOVER, s, cb, user);
  if (!op) return op_refuse(err, TW_ENOMEM, "no_memory", "out of memory");
  s->next = open_session(s, NULL);
  s->next_is_reconnect = false;
  if (!s->next) {
    op_unlink_free(op);
    s->op = NULL;
    return op_refuse(err, TW_EINVAL, "websocket_url", "cannot connect to the EventSub websocket URL");
  }
  return 0;
}

int tw_shard_renumber(tw_shard *s, const char *id, tw_error *err) {
  int rc = check_shard_op(s, err);
  if (rc) return rc;
  tw_conduit *cd = s->cd;
  long idn = parse_id(id);
  if (idn < 0 || idn >= 20000) return op_refuse(err, TW_EINVAL, "invalid_argument", "a shard id is 0..19999");
  bool found;
  shard_pos(cd, idn, &found);
  if (found) return op_refuse(err, TW_EINVAL, "busy", "a shard with that id runs here");
  if (s->inflight.kind != TW_TRANSPORT_NONE || s->queued || s->next)
    return op_refuse(err, TW_EINVAL, "busy", "the shard's assignment is changing");
  int pos = shard_pos(cd, s->idn, &found);
  memmove(cd->shards + pos, cd->shards + pos + 1, (size_t)(cd->nshards - pos - 1) * sizeof *cd->shards);
  cd->nshards--;
  s->idn = idn;
  snprintf(s->id, sizeof s->id, "%d", (int)idn);
  pos = shard_pos(cd, idn, &found);
  memmove(cd->shards + pos + 1, cd->shards + pos, (size_t)(cd->nshards - pos) * sizeof *cd->shards);
  cd->shards[pos] = s;
  cd->nshards++;
  return 0;
}

int tw_shard_hold(tw_shard *s, int held) {
  if (!s || s->cd->closing || s->releasing) return TW_ECLOSED;
  bool was = s->held;
  s->held = held != 0;
  if (was && !s->held) {
    s->pointed = false;
    if (!s->cur && !s->next) uv_timer_start(&s->timer, on_shard_timer, 0, 0);
    else want_changed(s);
  }
  return 0;
}

/* ---- opening: find/create/resize, then connect ---- */
static void start_shards(tw_conduit *cd) {
  cd->started = true;
  tw_event ev = {.type = TW_EV_CONDUIT_STARTED, .conduit = cd};
  tw_emit(cd->c, &ev);
  if (cd->closing) return; /* a handler closed it */
  for (int i = 0; i < cd->nshards && !cd->closing; i++)
    if (!cd->shards[i]->cur && !cd->shards[i]->releasing) shard_connect(cd->shards[i]);
  if (cd->nshards == 0) check_ready(cd);
}

static void fail_open(tw_conduit *cd, const tw_error *e) {
  cd->state = "failed";
  conduit_error(cd, NULL, e);
}

static bool take_conduit(tw_conduit *cd, const tw_response *r, tw_jnode obj) {
  tw_json *d = r->body;
  size_t n;
  const char *id = tw_json_str(d, tw_json_get(d, obj, "id", 2), &n);
  tw_jnode sc = tw_json_get(d, obj, "shard_count", 11);
  if (!id || sc == TW_JNONE) return false;
  if (!cd->id) cd->id = tw_strndup(id, n);
  cd->shard_count = (int)tw_json_num(d, sc);
  return true;
}

/* the answer of Create Conduits or Update Conduits: the conduit, then its shards */
static void on_conduit(void *user, const tw_response *r) {
  tw_conduit *cd = user;
  if (!reply_for_live(cd)) return;
  if (r->error) {
    fail_open(cd, r->error);
    return;
  }
  tw_jnode first = r->body ? tw_json_at(r->body, tw_json_get(r->body, 0, "data", 4), 0) : TW_JNONE;
  if (first == TW_JNONE || !take_conduit(cd, r, first)) {
    tw_error e;
    tw_err_set(&e, "bad_response", r->status, "Helix answered without the conduit (no data[0].id / shard_count)");
    fail_open(cd, &e);
    return;
  }
  start_shards(cd);
}

static void resize_or_start(tw_conduit *cd) {
  int need = cd->total_wanted ? cd->total_wanted : cd->offset + cd->initial;
  bool resize = cd->total_wanted ? cd->shard_count != cd->total_wanted : cd->shard_count < need;
  if (!resize) {
    start_shards(cd);
    return;
  }
  char body[160];
  snprintf(body, sizeof body, "{\"id\":\"%s\",\"shard_count\":%d}", cd->id, need);
  tw_error err;
  if (tw_helix(cd->c, "PATCH", "/eventsub/conduits", body, strlen(body), on_conduit, cd, &err) != 0) {
    fail_open(cd, &err);
    return;
  }
  cd->pending++;
}

static void on_listed(void *user, const tw_response *r) {
  tw_conduit *cd = user;
  if (!reply_for_live(cd)) return;
  if (r->error) {
    fail_open(cd, r->error);
    return;
  }
  tw_json *d = r->body;
  tw_jnode data = d ? tw_json_get(d, 0, "data", 4) : TW_JNONE;
  for (tw_jnode e = tw_json_first(d, data); d && data != TW_JNONE && e != TW_JNONE; e = tw_json_next(d, e)) {
    if (tw_json_streq(d, tw_json_get(d, e, "id", 2), cd->id)) {
      take_conduit(cd, r, e);
      resize_or_start(cd);
      return;
    }
  }
  tw_error err;
  tw_err_set(&err, "not_found", 404, "conduit %s does not exist for this client id", cd->id);
  fail_open(cd, &err);
}

static void conduit_free_cb(uv_handle_t *h) {
  tw_conduit *cd = h->data;
  free(cd->shards);
  free(cd->id);
  free(cd);
}

static void verify_timer_closed(uv_handle_t *h) {
  tw_conduit *cd = h->data;
  uv_close((uv_handle_t *)&cd->batch_timer, conduit_free_cb);
}

tw_conduit *tw_conduit_open(tw_client *c, const tw_conduit_opts *o, tw_error *err) {
  if (!c || !o || o->shards < 0 || o->offset < 0 || o->total < 0 || o->shards > 20000 || o->total > 20000 ||
      o->offset + o->shards > 20000) {
    tw_err_set(err, "invalid_argument", 0, "shards, offset and total must be within 0..20000");
    return NULL;
  }
  if (o->total && o->offset + o->shards > o->total) {
    tw_err_set(err, "invalid_argument", 0, "offset + shards (%d) exceeds total (%d)", o->offset + o->shards, o->total);
    return NULL;
  }
  if (!o->id && o->shards == 0 && o->total == 0) {
    tw_err_set(err, "invalid_argument", 0, "a new conduit needs shards or total > 0");
    return NULL;
  }
  if (c->freeing) {
    tw_err_set(err, "closed", 0, "the client is closed");
    return NULL;
  }
  tw_conduit *cd = calloc(1, sizeof *cd);
  if (!cd) {
    tw_err_set(err, "no_memory", 0, "out of memory");
    return NULL;
  }
  cd->c = c;
  cd->offset = o->offset;
  cd->initial = o->shards;
  cd->total_wanted = o->total;
  cd->state = "starting";
  cd->id = o->id ? tw_strdup(o->id) : NULL;
  uv_timer_init(c->loop, &cd->batch_timer);
  cd->batch_timer.data = cd;
  uv_timer_init(c->loop, &cd->verify_timer);
  cd->verify_timer.data = cd;
  cd->next = c->conduits;
  c->conduits = cd;
  for (int i = 0; i < o->shards; i++)
    if (!shard_new(cd, o->offset + i)) {
      cd->silent = true;
      tw_conduit_close(cd);
      tw_err_set(err, "no_memory", 0, "out of memory");
      return NULL;
    }
  int rc;
  if (cd->id) {
    rc = tw_helix(c, "GET", "/eventsub/conduits", NULL, 0, on_listed, cd, err);
  } else {
    char body[64];
    snprintf(body, sizeof body, "{\"shard_count\":%d}", o->total ? o->total : o->offset + o->shards);
    rc = tw_helix(c, "POST", "/eventsub/conduits", body, strlen(body), on_conduit, cd, err);
  }
  if (rc != 0) {
    cd->silent = true;
    tw_conduit_close(cd);
    return NULL;
  }
  cd->pending++;
  return cd;
}

/* ---- closing and freeing ---- */
static void do_free(tw_conduit *cd) {
  tw_client *c = cd->c;
  while (cd->patches) patch_ctx_free(cd->patches);
  while (cd->ops) op_unlink_free(cd->ops);
  while (cd->done_ops) op_free_done(cd->done_ops);
  for (tw_conduit **pp = &c->conduits; *pp; pp = &(*pp)->next)
    if (*pp == cd) {
      *pp = cd->next;
      break;
    }
  while (cd->nshards > 0) shard_remove(cd->shards[cd->nshards - 1]);
  tw_event ev = {.type = TW_EV_FREED, .conduit = cd};
  if (!cd->silent) tw_emit(c, &ev);
  uv_timer_stop(&cd->batch_timer);
  uv_timer_stop(&cd->verify_timer);
  uv_close((uv_handle_t *)&cd->verify_timer, verify_timer_closed);
}

static void on_free_timer(uv_timer_t *t) { maybe_free(t->data); }

static void maybe_free(tw_conduit *cd) {
  if (!cd->closing || cd->free_scheduled || cd->pending > 0) return;
  if (cd->c->depth > 0 && !cd->c->freeing) {
    /* closed from inside a handler: freed once the handler has returned */
    uv_timer_start(&cd->batch_timer, on_free_timer, 0, 0);
    return;
  }
  cd->free_scheduled = true;
  do_free(cd);
}

void tw_conduit_close(tw_conduit *cd) {
  if (!cd || (cd->closing && cd->free_scheduled)) return;
  bool first = !cd->closing;
  cd->closing = true;
  if (first) {
    cd->state = "closed";
    uv_timer_stop(&cd->verify_timer);
    for (int i = 0; i < cd->nshards; i++) {
      tw_shard *s = cd->shards[i];
      uv_timer_stop(&s->timer);
      tw_session *ss[3] = {s->cur, s->next, s->old};
      for (int k = 0; k < 3; k++)
        if (ss[k]) {
          tw_ws_close(ss[k], 1000); /* with the handshake; what still arrives goes to the client */
          tw_ws_set_owner(ss[k], NULL, NULL, NULL);
        }
      s->cur = s->next = s->old = NULL;
      s->state = "closed";
      s->queued = false;
    }
    finish_all_ops(cd, "the conduit was closed");
  }
  maybe_free(cd);
}

void tw_conduits_close_all(tw_client *c) {
  for (tw_conduit *cd = c->conduits; cd; cd = cd->next)
    if (!cd->closing) tw_conduit_close(cd);
}

void tw_conduits_free_all(tw_client *c) {
  while (c->conduits) {
    tw_conduit *cd = c->conduits;
    cd->pending = 0; /* their replies are cancelled with the client */
    cd->closing = false;
    cd->free_scheduled = false;
    tw_conduit_close(cd);
    if (c->conduits == cd) {
      cd->free_scheduled = true;
      do_free(cd); /* not freed through maybe_free: force */
    }
  }
}

/* ---- webhook shards ---- */
static int webhook_args(const char *callback, const char *secret, tw_error *err) {
  if (!callback || (strncmp(callback, "https://", 8) != 0 && strncmp(callback, "http://", 7) != 0))
    return op_refuse(err, TW_EINVAL, "invalid_argument", "a webhook callback must be an http(s):// URL");
  if (strlen(callback) > 2048) return op_refuse(err, TW_EINVAL, "invalid_argument", "the callback URL is too long");
  if (!tw_webhook_secret_ok(secret))
    return op_refuse(err, TW_EINVAL, "invalid_argument", "the webhook secret must be 10 to 100 ASCII characters");
  return 0;
}

static bool tr_set_webhook(tw_transport *t, const char *callback, const char *secret) {
  tr_clear(t);
  t->callback = tw_strdup(callback);
  t->secret = tw_strdup(secret);
  if (!t->callback || !t->secret) {
    tr_clear(t);
    return false;
  }
  t->kind = TW_TRANSPORT_WEBHOOK;
  return true;
}

int tw_conduit_add_webhook_shard(tw_conduit *cd, int id, const char *callback, const char *secret, tw_op_fn cb,
                                 void *user, tw_shard **out, tw_error *err) {
  if (!cd || cd->closing) return op_refuse(err, TW_ECLOSED, "closed", "the conduit is closed");
  int rc = webhook_args(callback, secret, err);
  if (rc) return rc;
  if (!cd->started) return op_refuse(err, TW_EINVAL, "busy", "the conduit is still opening");
  long top = cd->nshards ? cd->shards[cd->nshards - 1]->idn : cd->offset - 1;
  /* no id: the slot the conduit gains by growing by one */
  long idn = id >= 0 ? id : top + 1 > cd->shard_count ? top + 1 : cd->shard_count;
  if (idn >= 20000) return op_refuse(err, TW_EINVAL, "invalid_argument", "a conduit has at most 20000 shards");
  bool found;
  shard_pos(cd, idn, &found);
  if (found) return op_refuse(err, TW_EINVAL, "busy", "that shard id already runs here");
  if (idn + 1 > cd->shard_count && sizing(cd)) return op_refuse(err, TW_EINVAL, "busy", "the conduit is being resized");
  tw_op *op = op_new(cd, OP_ADD, NULL, cb, user);
  if (op) op->shards = calloc(1, sizeof *op->shards);
  tw_shard *s = op && op->shards ? shard_new(cd, idn) : NULL;
  if (!s || !tr_set_webhook(&s->want, callback, secret)) {
    if (s) shard_remove(s);
    if (op) op_unlink_free(op);
    return op_refuse(err, TW_ENOMEM, "no_memory", "out of memory");
  }
  s->webhook = true;
  snprintf(s->status, sizeof s->status, "webhook_callback_verification_pending");
  op->shards[op->n++] = s;
  if (out) *out = s;
  if (cd->shard_count < idn + 1) {
    if (resize_request(op, (int)idn + 1, err) != 0) {
      shard_remove(s);
      op_unlink_free(op);
      return TW_EIO;
    }
  } else {
    add_connect(op);
  }
  return 0;
}

int tw_shard_set_webhook(tw_shard *s, const char *callback, const char *secret, tw_op_fn cb, void *user,
                         tw_error *err) {
  int rc = check_shard_op(s, err);
  if (rc) return rc;
  if ((rc = webhook_args(callback, secret, err))) return rc;
  if (s->cur || s->next)
    return op_refuse(err, TW_EINVAL, "busy", "the shard has a websocket of its own: release it and add a webhook shard");
  tw_op *op = op_new(s->cd, OP_WEBHOOK, s, cb, user);
  if (!op) return op_refuse(err, TW_ENOMEM, "no_memory", "out of memory");
  if (!tr_set_webhook(&op->target, callback, secret) || !tr_set_webhook(&s->want, callback, secret)) {
    op_unlink_free(op);
    s->op = NULL;
    return op_refuse(err, TW_ENOMEM, "no_memory", "out of memory");
  }
  s->webhook = true;
  s->held = false;
  s->pointed = false;
  s->challenged = false;
  tr_clear(&s->assigned); /* always sent again (a regrown slot, a rotation) */
  s->queued = false;
  want_changed(s);
  return 0;
}

void tw_conduit_webhook_challenged(tw_client *c, const char *conduit_id, const char *shard_id) {
  for (tw_conduit *cd = c->conduits; cd; cd = cd->next) {
    if (cd->closing || !cd->id || strcmp(cd->id, conduit_id) != 0) continue;
    tw_shard *s = tw_conduit_find_shard(cd, shard_id);
    if (!s || s->releasing || s->want.kind != TW_TRANSPORT_WEBHOOK) continue;
    s->challenged = true;
    if (s->inflight.kind == TW_TRANSPORT_NONE && tr_eq(&s->want, &s->assigned)) shard_assigned(s);
  }
}

bool tw_conduit_webhook_deliver(tw_client *c, tw_conduit *cd, const char *shard_id, const tw_msg *m) {
  tw_conduit *live = NULL;
  for (tw_conduit *x = c->conduits; x && cd; x = x->next)
    if (x == cd && !x->closing) live = x;
  tw_shard *s = live && shard_id && *shard_id ? tw_conduit_find_shard(live, shard_id) : NULL;
  if (!s) return tw_client_deliver(c, m, live, NULL, NULL);
  bool ok = tw_client_deliver(c, m, live, s, &s->stats.duplicates);
  if (ok && m->message_type[0] == 'n') s->stats.notifications++;
  return ok;
}
