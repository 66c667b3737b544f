/* conduit.c - the conduit pool: find or create the conduit, run its websocket shards,
 * assign them in batched PATCHes, and keep them assigned.
 *
 * Shard life: idle -> connecting -> welcomed -> assigning -> enabled. A shard whose
 * socket ends goes back to idle and reconnects after a backoff with jitter (the first
 * retry waits backoff_min). session_reconnect opens a second socket to the given URL
 * and keeps the first one delivering until the new welcome; only then is the old one
 * closed, so nothing is lost (and de-duplication drops anything seen on both). */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "internal.h"

struct tw_shard {
  tw_conduit *cd;
  char id[16];
  const char *state;
  char status[48];
  tw_session *cur;  /* the session Twitch should deliver to */
  tw_session *next; /* session_reconnect target, until welcomed */
  tw_session *old;  /* the previous session, draining until it closes */
  char *assigned;   /* the session id the last successful PATCH set */
  bool in_batch, reassign_after_reconnect, reconnect_now;
  bool ever_enabled;
  unsigned attempt;
  uv_timer_t timer;
  tw_shard_stats stats;
  void *user;
};

struct tw_conduit {
  tw_client *c;
  char *id;
  int shard_count, offset, nshards, total_wanted;
  tw_shard **shards;
  const char *state;
  bool ready_emitted, closing, free_scheduled;
  int pending; /* Helix calls in flight that point at this conduit */
  uv_timer_t batch_timer;
  uint64_t batch_since;
  struct patch_ctx *patches;
  bool silent; /* never handed to the caller: freed without events */
  void *user;
  struct tw_conduit *next;
};

static void shard_connect(tw_shard *s);
static void schedule_batch(tw_conduit *cd);
static void maybe_free(tw_conduit *cd);

tw_client *tw_shard_client(const tw_shard *s) { return s->cd->c; }

/* ---- accessors ---- */
const char *tw_conduit_id(const tw_conduit *cd) { return cd->id; }
int tw_conduit_shard_count(const tw_conduit *cd) { return cd->shard_count; }
const char *tw_conduit_state(const tw_conduit *cd) { return cd->state; }
size_t tw_conduit_nshards(const tw_conduit *cd) { return (size_t)cd->nshards; }
tw_shard *tw_conduit_shard(const tw_conduit *cd, size_t i) {
  return i < (size_t)cd->nshards ? cd->shards[i] : NULL;
}
tw_shard *tw_conduit_find_shard(const tw_conduit *cd, const char *id) {
  for (int i = 0; i < cd->nshards; i++)
    if (strcmp(cd->shards[i]->id, id) == 0) return cd->shards[i];
  return NULL;
}
void tw_conduit_set_user(tw_conduit *cd, void *u) { cd->user = u; }
void *tw_conduit_user(const tw_conduit *cd) { return cd->user; }
const char *tw_shard_id(const tw_shard *s) { return s->id; }
const char *tw_shard_state(const tw_shard *s) { return s->state; }
const char *tw_shard_status(const tw_shard *s) { return s->status; }
const char *tw_shard_session_id(const tw_shard *s) { return s->cur ? tw_ws_session_id(s->cur) : NULL; }
tw_conduit *tw_shard_conduit(const tw_shard *s) { return s->cd; }
void tw_shard_set_user(tw_shard *s, void *u) { s->user = u; }
void *tw_shard_user(const tw_shard *s) { return s->user; }
void tw_shard_get_stats(const tw_shard *s, tw_shard_stats *out) { *out = s->stats; }

static void emit_shard(tw_shard *s, tw_event_type type, const char *status, const tw_error *err) {
  tw_event ev = {.type = type,
                 .conduit = s->cd,
                 .shard = s,
                 .metadata = TW_JNONE,
                 .subscription = TW_JNONE,
                 .event = TW_JNONE,
                 .status = status,
                 .error = err};
  tw_emit(s->cd->c, &ev);
}

static void conduit_error(tw_conduit *cd, tw_shard *s, const tw_error *e) { tw_emit_error(cd->c, cd, s, e); }

/* ---- delivery ---- */
void tw_shard_deliver(tw_shard *s, tw_event *ev) {
  ev->conduit = s->cd;
  ev->shard = s;
  uint64_t before = s->cd->c->stats.notifications;
  tw_client_deliver(s->cd->c, ev, &s->stats.duplicates);
  s->stats.notifications += s->cd->c->stats.notifications - before;
}

void tw_shard_count_keepalive(tw_shard *s) { s->stats.keepalives++; }

/* ---- shard connection ---- */
static void on_shard_timer(uv_timer_t *t) {
  tw_shard *s = t->data;
  if (s->cd->closing) return;
  if (!s->cur) shard_connect(s);
}

static void shard_connect(tw_shard *s) {
  s->state = "connecting";
  s->stats.connects++;
  s->cur = tw_ws_open(s, NULL, false);
  if (!s->cur) {
    tw_error e;
    tw_err_set(&e, "websocket_url", 0, "cannot connect to the EventSub websocket URL");
    conduit_error(s->cd, s, &e);
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
  if (!s || s->cd->closing) return TW_ECLOSED;
  if (s->cur) {
    s->reconnect_now = true;
    tw_ws_close(s->cur, 1000); /* its end reconnects the shard */
  }
  else {
    uv_timer_stop(&s->timer);
    shard_connect(s);
  }
  return 0;
}

void tw_shard_on_welcome(tw_shard *s, tw_session *ss, const char *session_id) {
  tw_conduit *cd = s->cd;
  if (ss == s->next) {
    /* session_reconnect: the new socket is up; the old one stops being used */
    s->old = s->cur;
    s->cur = ss;
    s->next = NULL;
    s->stats.reconnects++;
    const char *prev = s->old ? tw_ws_session_id(s->old) : NULL;
    bool same = (s->assigned && strcmp(s->assigned, session_id) == 0) || (prev && strcmp(prev, session_id) == 0);
    if (same) {
      /* the same session on a new socket: its assignment (done or in flight) carries over */
      if (s->old) tw_ws_close(s->old, 1000);
      emit_shard(s, TW_EV_RECONNECT, NULL, NULL);
    } else {
      /* a new session id: point the shard at it first, close the old one after */
      s->reassign_after_reconnect = true;
      s->state = "welcomed";
      s->in_batch = true;
      schedule_batch(cd);
    }
    return;
  }
  if (ss != s->cur) return;
  s->state = "welcomed";
  s->in_batch = true;
  schedule_batch(cd);
}

void tw_shard_on_reconnect_request(tw_shard *s, tw_session *ss, const char *url) {
  if (ss != s->cur || s->next) return;
  s->next = tw_ws_open(s, url, true);
  if (!s->next) {
    tw_error e;
    tw_err_set(&e, "websocket_url", 0,
               "session_reconnect gave a URL that cannot be used; the current socket goes on until the server closes it");
    conduit_error(s->cd, s, &e);
  }
}

void tw_shard_on_closed(tw_shard *s, tw_session *ss, int code, const char *why) {
  tw_conduit *cd = s->cd;
  s->stats.last_close_code = code;
  if (ss == s->old) {
    s->old = NULL;
    return;
  }
  if (ss == s->next && !s->cur) { /* old socket gone and its replacement failed too */
    s->next = NULL;
    ss = NULL;
  } else if (ss == s->next) { /* the reconnect target failed: the current socket goes on */
    s->next = NULL;
    tw_error e;
    tw_err_set(&e, "reconnect_failed", code, "session_reconnect target closed (%d%s%s); keeping the current socket",
               code, why && *why ? ": " : "", why ? why : "");
    conduit_error(cd, s, &e);
    return;
  }
  if (ss != NULL && ss != s->cur) return;
  if (s->next) { /* the old socket ended before the new welcome: the new one takes over */
    s->cur = NULL;
    s->state = "connecting";
    return;
  }
  s->cur = NULL;
  s->in_batch = false;
  if (cd->closing) {
    s->state = "closed";
    maybe_free(cd);
    return;
  }
  const char *status = tw_close_status(code);
  snprintf(s->status, sizeof s->status, "%s", status);
  tw_error e;
  const char *ecode = "websocket_closed";
  if (code == 4001) ecode = "inbound_traffic";
  else if (code == 4003) ecode = "connection_unused";
  else if (code == 4004) ecode = "reconnect_expired";
  else if (code == 4007) ecode = "invalid_reconnect";
  tw_err_set(&e, ecode, code, "shard %s socket closed (%d%s%s)", s->id, code, why && *why ? ": " : "",
             why ? why : "");
  bool was_enabled = strcmp(s->state, "enabled") == 0;
  free(s->assigned);
  s->assigned = NULL;
  if (was_enabled || s->ever_enabled) emit_shard(s, TW_EV_SHARD_DISABLED, status, &e);
  else conduit_error(cd, s, &e);
  schedule_reconnect(s);
}

/* ---- assignment: batched PATCH /eventsub/conduits/shards ---- */
typedef struct patch_ctx {
  tw_conduit *cd;
  int n;
  tw_shard **shards;
  char **sessions;
  struct patch_ctx *next, *prev; /* the conduit's open PATCHes (freed with it on teardown) */
} patch_ctx;

static void patch_ctx_free(patch_ctx *p) {
  if (p->prev) p->prev->next = p->next;
  else if (p->cd->patches == p) p->cd->patches = p->next;
  if (p->next) p->next->prev = p->prev;
  for (int i = 0; i < p->n; i++) free(p->sessions[i]);
  free(p->sessions);
  free(p->shards);
  free(p);
}

static void check_ready(tw_conduit *cd) {
  if (cd->ready_emitted || cd->closing) return;
  for (int i = 0; i < cd->nshards; i++)
    if (!cd->shards[i]->ever_enabled) return;
  cd->ready_emitted = true;
  cd->state = "ready";
  tw_event ev = {.type = TW_EV_READY, .conduit = cd, .metadata = TW_JNONE, .subscription = TW_JNONE, .event = TW_JNONE};
  tw_emit(cd->c, &ev);
}

static void shard_enabled(tw_shard *s, const char *session) {
  free(s->assigned);
  s->assigned = tw_strdup(session);
  s->state = "enabled";
  snprintf(s->status, sizeof s->status, "enabled");
  s->attempt = 0;
  s->ever_enabled = true;
  s->stats.assignments++;
  if (s->reassign_after_reconnect) {
    s->reassign_after_reconnect = false;
    if (s->old) tw_ws_close(s->old, 1000);
    emit_shard(s, TW_EV_RECONNECT, NULL, NULL);
    if (s->cd->closing) return;
  }
  emit_shard(s, TW_EV_SHARD_ENABLED, NULL, NULL);
}

static void on_patch(void *user, const tw_response *r) {
  patch_ctx *p = user;
  tw_conduit *cd = p->cd;
  cd->pending--;
  if (cd->closing) {
    patch_ctx_free(p);
    maybe_free(cd);
    return;
  }
  if (r->error) {
    conduit_error(cd, NULL, r->error);
    /* the sockets are alive: try the assignment again after a backoff, unless the
     * session changed meanwhile (then its own welcome queued it) */
    for (int i = 0; i < p->n; i++) {
      tw_shard *s = p->shards[i];
      const char *sid = tw_shard_session_id(s);
      if (s->cur && sid && strcmp(sid, p->sessions[i]) == 0) tw_ws_close(s->cur, 1000);
    }
    patch_ctx_free(p);
    return;
  }
  tw_json *d = r->body;
  /* per-shard errors first */
  tw_jnode errs = d ? tw_json_get(d, 0, "errors", 6) : TW_JNONE;
  for (tw_jnode e = tw_json_first(d, errs); d && errs != TW_JNONE && e != TW_JNONE; e = tw_json_next(d, e)) {
    if (cd->closing) break; /* a handler closed it */
    const char *id = tw_json_str(d, tw_json_get(d, e, "id", 2), NULL);
    const char *msg = tw_json_str(d, tw_json_get(d, e, "message", 7), NULL);
    const char *code = tw_json_str(d, tw_json_get(d, e, "code", 4), NULL);
    tw_shard *s = id ? tw_conduit_find_shard(cd, id) : NULL;
    tw_error err;
    tw_err_set(&err, "shard_assign_failed", r->status, "shard %s: %s%s%s", id ? id : "?", msg ? msg : "rejected",
               code ? " / " : "", code ? code : "");
    conduit_error(cd, s, &err);
    if (s && s->cur) tw_ws_close(s->cur, 1000); /* a fresh session, then a fresh try */
  }
  tw_jnode data = d ? tw_json_get(d, 0, "data", 4) : TW_JNONE;
  for (tw_jnode e = tw_json_first(d, data); d && data != TW_JNONE && e != TW_JNONE; e = tw_json_next(d, e)) {
    if (cd->closing) break;
    const char *id = tw_json_str(d, tw_json_get(d, e, "id", 2), NULL);
    tw_shard *s = id ? tw_conduit_find_shard(cd, id) : NULL;
    if (!s) continue;
    const char *sess = tw_json_str(d, tw_json_getp(d, e, "transport.session_id"), NULL);
    for (int i = 0; i < p->n && !cd->closing; i++) {
      if (p->shards[i] != s) continue;
      const char *sid = tw_shard_session_id(s);
      if (!sess) sess = p->sessions[i];
      if (sid && strcmp(sid, p->sessions[i]) == 0) shard_enabled(s, p->sessions[i]);
    }
  }
  patch_ctx_free(p);
  check_ready(cd);
}

static void flush_batch(tw_conduit *cd) {
  tw_client *c = cd->c;
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "conduit_id", cd->id);
  cJSON *arr = cJSON_AddArrayToObject(root, "shards");
  patch_ctx *p = calloc(1, sizeof *p);
  p->cd = cd;
  p->shards = calloc((size_t)c->patch_batch, sizeof *p->shards);
  p->sessions = calloc((size_t)c->patch_batch, sizeof *p->sessions);
  for (int i = 0; i < cd->nshards && p->n < c->patch_batch; i++) {
    tw_shard *s = cd->shards[i];
    if (!s->in_batch) continue;
    s->in_batch = false;
    const char *sid = tw_shard_session_id(s);
    if (!sid) continue;
    s->state = "assigning";
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", s->id);
    cJSON *t = cJSON_AddObjectToObject(o, "transport");
    cJSON_AddStringToObject(t, "method", "websocket");
    cJSON_AddStringToObject(t, "session_id", sid);
    cJSON_AddItemToArray(arr, o);
    p->shards[p->n] = s;
    p->sessions[p->n] = tw_strdup(sid);
    p->n++;
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
  if (tw_helix_urgent(c, "PATCH", "/eventsub/conduits/shards", body, strlen(body), on_patch, p, &err) != 0) {
    conduit_error(cd, NULL, &err);
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
    waiting += cd->shards[i]->in_batch;
    connecting += strcmp(cd->shards[i]->state, "connecting") == 0;
  }
  uint64_t now = uv_now(cd->c->loop);
  /* full batches go at once; a partial batch waits (up to 1 s) for shards still
   * connecting, so a bring-up takes as few PATCHes as possible */
  while (waiting >= cd->c->patch_batch) {
    flush_batch(cd);
    waiting -= cd->c->patch_batch;
  }
  if (waiting > 0) {
    if (connecting == 0 || now - cd->batch_since >= 1000) {
      flush_batch(cd);
      waiting = 0;
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

/* ---- opening: find/create/resize, then connect ---- */
static void start_shards(tw_conduit *cd) {
  tw_event ev = {.type = TW_EV_CONDUIT_STARTED, .conduit = cd, .metadata = TW_JNONE, .subscription = TW_JNONE,
                 .event = TW_JNONE};
  tw_emit(cd->c, &ev);
  if (cd->closing) return; /* a handler closed it */
  for (int i = 0; i < cd->nshards; i++) shard_connect(cd->shards[i]);
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
  cd->pending--;
  if (cd->closing) {
    maybe_free(cd);
    return;
  }
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
  int need = cd->total_wanted ? cd->total_wanted : cd->offset + cd->nshards;
  bool resize = cd->total_wanted ? cd->shard_count != cd->total_wanted : cd->shard_count < need;
  if (!resize) { start_shards(cd); return; }
  char body[160];
  snprintf(body, sizeof body, "{\"id\":\"%s\",\"shard_count\":%d}", cd->id, need);
  tw_error err;
  if (tw_helix(cd->c, "PATCH", "/eventsub/conduits", body, strlen(body), on_conduit, cd, &err) != 0)
    { fail_open(cd, &err); return; }
  cd->pending++;
}

static void on_listed(void *user, const tw_response *r) {
  tw_conduit *cd = user;
  cd->pending--;
  if (cd->closing) { maybe_free(cd); return; }
  if (r->error) { fail_open(cd, r->error); return; }
  tw_json *d = r->body;
  tw_jnode data = d ? tw_json_get(d, 0, "data", 4) : TW_JNONE;
  for (tw_jnode e = tw_json_first(d, data); d && data != TW_JNONE && e != TW_JNONE; e = tw_json_next(d, e)) {
    if (tw_json_streq(d, tw_json_get(d, e, "id", 2), cd->id)) {
      take_conduit(cd, r, e);
      { resize_or_start(cd); return; }
    }
  }
  tw_error err;
  tw_err_set(&err, "not_found", 404, "conduit %s does not exist for this client id", cd->id);
  fail_open(cd, &err);
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
  if (!cd) goto nomem;
  cd->c = c;
  cd->offset = o->offset;
  cd->nshards = o->shards;
  cd->total_wanted = o->total;
  cd->state = "starting";
  cd->id = o->id ? tw_strdup(o->id) : NULL;
  cd->shards = calloc((size_t)(o->shards ? o->shards : 1), sizeof *cd->shards);
  if (!cd->shards) goto nomem;
  uv_timer_init(c->loop, &cd->batch_timer);
  cd->batch_timer.data = cd;
  for (int i = 0; i < o->shards; i++) {
    tw_shard *s = calloc(1, sizeof *s);
    if (!s) {
      cd->nshards = i;
      cd->closing = true;
      tw_conduit_close(cd);
      tw_err_set(err, "no_memory", 0, "out of memory");
      return NULL;
    }
    s->cd = cd;
    snprintf(s->id, sizeof s->id, "%d", o->offset + i);
    s->state = "idle";
    snprintf(s->status, sizeof s->status, "unknown");
    uv_timer_init(c->loop, &s->timer);
    s->timer.data = s;
    cd->shards[i] = s;
  }
  cd->next = c->conduits;
  c->conduits = cd;
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
nomem:
  if (cd) {
    free(cd->id);
    free(cd->shards);
    free(cd);
  }
  tw_err_set(err, "no_memory", 0, "out of memory");
  return NULL;
}

/* ---- closing and freeing ---- */
static void shard_free_cb(uv_handle_t *h) {
  tw_shard *s = h->data;
  free(s->assigned);
  free(s);
}

static void conduit_free_cb(uv_handle_t *h) {
  tw_conduit *cd = h->data;
  free(cd->shards);
  free(cd->id);
  free(cd);
}

static void do_free(tw_conduit *cd) {
  tw_client *c = cd->c;
  while (cd->patches) patch_ctx_free(cd->patches);
  for (tw_conduit **pp = &c->conduits; *pp; pp = &(*pp)->next)
    if (*pp == cd) {
      *pp = cd->next;
      break;
    }
  for (int i = 0; i < cd->nshards; i++) {
    tw_shard *s = cd->shards[i];
    tw_event ev = {.type = TW_EV_FREED, .conduit = cd, .shard = s, .metadata = TW_JNONE, .subscription = TW_JNONE,
                   .event = TW_JNONE};
    if (!cd->silent) tw_emit(c, &ev);
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, shard_free_cb);
  }
  tw_event ev = {.type = TW_EV_FREED, .conduit = cd, .metadata = TW_JNONE, .subscription = TW_JNONE,
                 .event = TW_JNONE};
  if (!cd->silent) tw_emit(c, &ev);
  uv_timer_stop(&cd->batch_timer);
  uv_close((uv_handle_t *)&cd->batch_timer, conduit_free_cb);
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
    for (int i = 0; i < cd->nshards; i++) {
      tw_shard *s = cd->shards[i];
      uv_timer_stop(&s->timer);
      tw_session *ss[3] = {s->cur, s->next, s->old};
      for (int k = 0; k < 3; k++)
        if (ss[k]) {
          tw_ws_close(ss[k], 1000);
          tw_ws_detach(ss[k]);
        }
      s->cur = s->next = s->old = NULL;
      s->state = "closed";
      s->in_batch = false;
    }
  }
  maybe_free(cd);
}

void tw_conduits_free_all(tw_client *c) {
  while (c->conduits) {
    tw_conduit *cd = c->conduits;
    cd->pending = 0; /* their replies are cancelled with the client */
    cd->closing = false;
    cd->free_scheduled = false;
    tw_conduit_close(cd);
    if (c->conduits == cd) do_free(cd); /* not freed through maybe_free: force */
  }
}
