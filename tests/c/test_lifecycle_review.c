/* The shard lifecycle under adversarial orders of events: operations racing the
 * shard's own sockets, held and rejected Update Conduit Shards requests, failures of
 * the conduit's growth, and the client freed with requests in flight.
 *
 * Each scenario runs in a child process with its own emulator and client, so that a
 * sanitizer abort in one is reported as that scenario's failure and the others still
 * run. Each one was a defect of the lifecycle rewrite, fixed since.
 * TW_LCR_ONLY=<name> runs one scenario; TW_LCR_DEBUG=1 logs the events. */
#include <stdint.h>

#include "support.h"

static mock M;
static int debug_events;

/* ---- events ------------------------------------------------------------------------ */
typedef struct rec {
  tw_client *c;
  int ready, enabled, disabled, reconnects, errors, released, freed_shards;
  tw_shard *watch;
  int watch_disabled, watch_enabled;
  int ops_done, ops_failed;
  char op_error[64];
  char op_session[128]; /* the watched shard's session id when the operation completed */
  const void *freed[64];
  int nfreed;
  int events_on_freed;
  int lost;
  tw_conduit *cd;                /* the conduit under test */
  int cd_freed, events_after_cd_free;
  tw_event_type close_on;        /* a handler closes cd on this event (0: never) */
  tw_event_type release_on;      /* a handler releases the event's shard on this event */
  int close_in_op;               /* the operation callback closes cd */
} rec;


static void on_event(void *user, const tw_event *ev) {
  rec *r = user;
  if (debug_events && ev->type != TW_EV_NOTIFICATION)
    fprintf(stderr, "#     [%.3f] %s shard=%s state=%s status=%s error=%s %s\n", now_s(), ev_name(ev->type),
            ev->shard ? tw_shard_id(ev->shard) : "-", ev->shard ? tw_shard_state(ev->shard) : "-",
            ev->status ? ev->status : "-", ev->error ? ev->error->code : "-", ev->error ? ev->error->message : "");
  for (int i = 0; i < r->nfreed; i++)
    if (ev->shard && ev->shard == r->freed[i]) r->events_on_freed++;
  if (r->cd && ev->conduit == r->cd && r->cd_freed) r->events_after_cd_free++;
  if (r->cd && ev->conduit == r->cd && ev->type == TW_EV_FREED && !ev->shard) r->cd_freed++;
  if (r->close_on && ev->type == r->close_on && r->cd && ev->conduit == r->cd && !r->cd_freed) {
    r->close_on = 0;
    tw_conduit_close(r->cd);
  }
  if (r->release_on && ev->type == r->release_on && ev->shard) {
    r->release_on = 0;
    tw_error e;
    if (tw_shard_release(ev->shard, NULL, NULL, &e) != 0) fprintf(stderr, "#     release refused: %s\n", e.code);
  }
  switch (ev->type) {
  case TW_EV_SHARD_LOST: r->lost++; break;
  case TW_EV_READY: r->ready++; break;
  case TW_EV_SHARD_ENABLED:
    r->enabled++;
    if (ev->shard == r->watch) r->watch_enabled++;
    break;
  case TW_EV_SHARD_DISABLED:
    r->disabled++;
    if (ev->shard == r->watch) r->watch_disabled++;
    break;
  case TW_EV_RECONNECT: r->reconnects++; break;
  case TW_EV_ERROR: r->errors++; break;
  case TW_EV_SHARD_RELEASED: r->released++; break;
  case TW_EV_FREED:
    if (ev->shard) {
      r->freed_shards++;
      if (r->nfreed < 64) r->freed[r->nfreed++] = ev->shard;
    }
    break;
  default: break;
  }
}

static void on_op(void *user, const tw_op_result *res) {
  rec *r = user;
  if (res->error) {
    r->ops_failed++;
    snprintf(r->op_error, sizeof r->op_error, "%s", res->error->code);
    if (debug_events) fprintf(stderr, "#     op failed: %s %s\n", res->error->code, res->error->message);
  } else {
    r->ops_done++;
  }
  const char *sid = r->watch ? tw_shard_session_id(r->watch) : NULL;
  snprintf(r->op_session, sizeof r->op_session, "%s", sid ? sid : "");
  if (r->close_in_op && r->cd) {
    r->close_in_op = 0;
    tw_conduit_close(r->cd);
  }
}

/* ---- helpers ------------------------------------------------------------------------ */
static void ctl(const char *method, const char *path, const char *body) {
  cJSON_Delete(mock_call(&M, method, path, body));
}

static tw_client *new_client(rec *r, double backoff_min, double backoff_max) {
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = M.client_id;
  o.client_secret = M.client_secret;
  o.api_base = M.api_base;
  o.auth_base = M.auth_base;
  o.eventsub_ws = M.eventsub_ws;
  o.backoff_min_s = backoff_min;
  o.backoff_max_s = backoff_max;
  tw_client *c = tw_client_new(&o, &err);
  if (!c) {
    fprintf(stderr, "# tw_client_new: %s %s\n", err.code, err.message);
    return NULL;
  }
  memset(r, 0, sizeof *r);
  r->c = c;
  tw_client_on_event(c, on_event, r);
  return c;
}

static int is_ready(void *a) { return ((rec *)a)->ready > 0; }
static int op_over(void *a) { return ((rec *)a)->ops_done + ((rec *)a)->ops_failed > 0; }
static int watch_disabled(void *a) { return ((rec *)a)->watch_disabled > 0; }
static int watch_enabled_state(void *a) { return strcmp(tw_shard_state(((rec *)a)->watch), "enabled") == 0; }
static int watch_connecting(void *a) { return strcmp(tw_shard_state(((rec *)a)->watch), "connecting") == 0; }
static int watch_released(void *a) { return ((rec *)a)->released > 0; }
static int watch_assigning(void *a) { return strcmp(tw_shard_state(((rec *)a)->watch), "assigning") == 0; }

static tw_conduit *open_ready(tw_client *c, rec *r, int shards) {
  tw_error err;
  tw_conduit_opts co = {.shards = shards};
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  if (!cd || !wait_until(c, is_ready, r, 15)) return NULL;
  return cd;
}

static void run_for(tw_client *c, double s) {
  double end = now_s() + s;
  while (now_s() < end) tw_client_step(c, 20);
}

static int held_requests(void) {
  cJSON *o = mock_call(&M, "GET", "/shard_patches", NULL);
  int n = 0;
  cJSON *rq;
  cJSON_ArrayForEach(rq, cJSON_GetObjectItemCaseSensitive(o, "requests")) {
    cJSON *st = cJSON_GetObjectItemCaseSensitive(rq, "state");
    if (cJSON_IsString(st) && strcmp(st->valuestring, "held") == 0) n++;
  }
  cJSON_Delete(o);
  return n;
}
static int some_held(void *a) {
  (void)a;
  static double last;
  if (now_s() - last < 0.05) return 0;
  last = now_s();
  return held_requests() > 0;
}

static int connected_sessions(void) {
  cJSON *o = mock_call(&M, "GET", "/sessions", NULL);
  int n = 0;
  cJSON *s;
  cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(o, "sessions")) n += cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "connected"));
  cJSON_Delete(o);
  return n;
}

/* 1 connected, 0 closed, -1 unknown to the emulator */
static int session_connected(const char *sid) {
  cJSON *o = mock_call(&M, "GET", "/sessions", NULL);
  int r = -1;
  cJSON *s;
  cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(o, "sessions")) {
    cJSON *id = cJSON_GetObjectItemCaseSensitive(s, "id");
    if (cJSON_IsString(id) && strcmp(id->valuestring, sid) == 0)
      r = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "connected"));
  }
  cJSON_Delete(o);
  return r;
}

static void close_session(const char *sid, int code) {
  char path[256], body[64];
  snprintf(path, sizeof path, "/sessions/%s/close", sid);
  snprintf(body, sizeof body, "{\"code\":%d}", code);
  ctl("POST", path, body);
}

/* ====================================================================================== */
/* add_shards: the new shards exist at once (state "idle") while the conduit
 * grows on Twitch, so the C API may act on them: tw_shard_reconnect opens a socket for
 * one. When Update Conduits then fails, on_add_resized frees the new shards with
 * shard_remove while that socket still reports to the freed shard (welcome, closed):
 * a use after free (ASan and valgrind: ws.c handle_message `*ss->bytes += n`, then
 * on_welcome; the -O2 build crashes), and the socket is left open (an orphan session). */
static void scenario_add_fails_with_socket(void) {
  rec r;
  tw_client *c = new_client(&r, 0.05, 0.2);
  tw_conduit *cd = open_ready(c, &r, 2);
  check(cd != NULL, "a 2-shard conduit is ready");
  if (!cd) return;
  ctl("POST", "/config", "{\"max_shards\":2}"); /* growing to 3 is refused: 400 */
  tw_error err;
  size_t first = 0;
  int rc = tw_conduit_add_shards(cd, 1, on_op, &r, &first, &err);
  check(rc == 0, "add_shards(1) started (%d)", rc);
  tw_shard *s = tw_conduit_shard(cd, first);
  check(s && tw_shard_reconnect(s) == 0, "tw_shard_reconnect on the new idle shard is accepted");
  check(wait_until(c, op_over, &r, 5) && r.ops_failed == 1, "add fails (Update Conduits refused): %s", r.op_error);
  run_for(c, 1.0); /* the socket's welcome arrives: it reports to the freed shard */
  check(r.events_on_freed == 0, "no event names the shard after its TW_EV_FREED (%d)", r.events_on_freed);
  int conn = connected_sessions();
  check(conn == 2, "no orphan socket is left for the freed shard: the emulator sees %d connected (2 expected)", conn);
  tw_client_free(c);
}

/* ====================================================================================== */
/* The last shard that never got enabled is released: check_ready runs only
 * from on_patch (and from start_shards for an empty conduit), never after a release, so
 * every remaining shard is enabled but TW_EV_READY never comes, the conduit stays
 * "starting", and verification (armed by check_ready) never starts. */
static void scenario_ready_after_release(void) {
  rec r;
  tw_client *c = new_client(&r, 0.2, 0.4);
  ctl("POST", "/faults", "{\"shard_patch\":{\"reject\":[{\"shard\":\"1\",\"count\":1000}]}}");
  tw_error err;
  tw_conduit_opts co = {.shards = 2};
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  r.watch = NULL;
  double end = now_s() + 10;
  tw_shard *s0 = NULL, *s1 = NULL;
  while (now_s() < end) {
    tw_client_step(c, 20);
    s0 = tw_conduit_find_shard(cd, "0");
    s1 = tw_conduit_find_shard(cd, "1");
    tw_shard_stats st;
    if (s0 && s1) {
      tw_shard_get_stats(s1, &st);
      if (strcmp(tw_shard_state(s0), "enabled") == 0 && st.assign_errors >= 1) break;
    }
  }
  check(s0 && strcmp(tw_shard_state(s0), "enabled") == 0, "shard 0 enabled, shard 1 refused by Twitch");
  check(r.ready == 0, "not ready while shard 1 is refused");
  check(s1 && tw_shard_release(s1, on_op, &r, &err) == 0, "shard 1 released");
  check(wait_until(c, op_over, &r, 5) && r.ops_done == 1, "the release completed");
  check(tw_conduit_nshards(cd) == 1, "one shard left, enabled");
  ctl("POST", "/faults", "{\"shard_patch\":{\"reject\":[]}}");
  int ready = wait_until(c, is_ready, &r, 4);
  check(ready, "TW_EV_READY once every remaining shard is enabled (state '%s')", tw_conduit_state(cd));
  tw_client_free(c);
}

/* ====================================================================================== */
/* point_at(s, t) with the PATCH in flight, and s's own socket closes: on_closed
 * clears s->want (it is a websocket transport: t's session) although the shard is not
 * pointed yet; the reply then is "for a transport the shard no longer uses" and neither
 * shard_assigned nor assign_refused runs. The operation never completes, s->op stays set
 * (every later operation on s, release included, is refused "busy") and s is held with
 * no socket: stuck. */
static void scenario_point_own_socket_closes(void) {
  rec r;
  tw_client *c = new_client(&r, 0.05, 0.2);
  tw_conduit *cd = open_ready(c, &r, 2);
  check(cd != NULL, "a 2-shard conduit is ready");
  if (!cd) return;
  tw_shard *s0 = tw_conduit_find_shard(cd, "0"), *s1 = tw_conduit_find_shard(cd, "1");
  char own1[128], t0[128];
  snprintf(own1, sizeof own1, "%s", tw_shard_session_id(s1));
  snprintf(t0, sizeof t0, "%s", tw_shard_session_id(s0));
  r.watch = s1;
  ctl("POST", "/faults", "{\"shard_patch\":{\"hold\":1}}");
  tw_error err;
  check(tw_shard_point_at(s1, s0, on_op, &r, &err) == 0, "point_at(1 -> 0) started");
  check(wait_until(c, some_held, NULL, 5), "its PATCH is held by Twitch");
  close_session(own1, 4000);
  check(wait_until(c, watch_disabled, &r, 5), "shard 1's own socket closed meanwhile");
  ctl("POST", "/shard_patches/release", "{}");
  int over = wait_until(c, op_over, &r, 5);
  check(over, "point_at completes", r.ops_done, r.ops_failed);
  char on1[128];
  mock_shard_session(&M, tw_conduit_id(cd), "1", on1, sizeof on1);
  check(strcmp(on1, t0) == 0, "Twitch points shard 1 at shard 0's session");
  int rc = tw_shard_release(s1, NULL, NULL, &err);
  check(rc == 0, "shard 1 can be released afterwards (rc %d, %s)", rc, rc ? err.code : "");
  tw_client_free(c);
}

/* ====================================================================================== */
/* point_at on a shard that has no socket (waiting for its reconnect backoff):
 * it is held for the operation, so the backoff timer connects nothing; Twitch refuses the
 * PATCH; assign_refused restores `held` (false) and clears want (no socket), but arms no
 * timer: the shard is neither held nor connecting, and nothing ever reconnects it. */
static void scenario_point_refused_idle(void) {
  rec r;
  tw_client *c = new_client(&r, 1.0, 1.0);
  tw_conduit *cd = open_ready(c, &r, 2);
  check(cd != NULL, "a 2-shard conduit is ready");
  if (!cd) return;
  tw_shard *s0 = tw_conduit_find_shard(cd, "0"), *s1 = tw_conduit_find_shard(cd, "1");
  char own1[128];
  snprintf(own1, sizeof own1, "%s", tw_shard_session_id(s1));
  r.watch = s1;
  close_session(own1, 4000);
  check(wait_until(c, watch_disabled, &r, 5) && strcmp(tw_shard_state(s1), "idle") == 0,
        "shard 1's socket closed by the server: idle, reconnecting after its backoff");
  ctl("POST", "/faults", "{\"shard_patch\":{\"hold\":1}}");
  tw_error err;
  check(tw_shard_point_at(s1, s0, on_op, &r, &err) == 0, "point_at(1 -> 0) started");
  check(wait_until(c, some_held, NULL, 5), "its PATCH is held by Twitch");
  run_for(c, 1.6); /* the backoff timer fires while the shard is held for the operation */
  char body[256];
  snprintf(body, sizeof body, "{\"shard_patch\":{\"hold\":0,\"reject\":[{\"shard\":\"1\",\"count\":1}]}}");
  ctl("POST", "/faults", body);
  ctl("POST", "/shard_patches/release", "{}");
  check(wait_until(c, op_over, &r, 5) && r.ops_failed == 1, "point_at fails (refused by Twitch): %s", r.op_error);
  check(!tw_shard_held(s1), "shard 1 is not held any more");
  int back = wait_until(c, watch_enabled_state, &r, 6);
  check(back, "shard 1 reconnects and is enabled again", tw_shard_state(s1));
  tw_client_free(c);
}

/* ====================================================================================== */
/* point_at on a shard whose socket is connecting: its welcome (on_welcome,
 * ss == s->cur) overwrites s->want with its own session, so the request sent points the
 * shard at its own session; shard_assigned then treats that as the point operation
 * (pointed, the own socket closed) and reports success. Twitch is left pointing the shard
 * at a session this process just closed: its events go nowhere. */
static void scenario_point_while_connecting(void) {
  rec r;
  tw_client *c = new_client(&r, 0.05, 0.2);
  tw_conduit *cd = open_ready(c, &r, 2);
  check(cd != NULL, "a 2-shard conduit is ready");
  if (!cd) return;
  tw_shard *s0 = tw_conduit_find_shard(cd, "0"), *s1 = tw_conduit_find_shard(cd, "1");
  r.watch = s1;
  int caught = 0;
  for (int attempt = 0; attempt < 10 && !caught; attempt++) {
    tw_shard_reconnect(s1);
    double end = now_s() + 3;
    while (now_s() < end && !watch_connecting(&r)) tw_client_step(c, 1);
    caught = watch_connecting(&r);
    if (!caught) wait_until(c, watch_enabled_state, &r, 3);
  }
  check(caught, "shard 1 caught connecting after tw_shard_reconnect");
  tw_error err;
  check(tw_shard_point_at(s1, s0, on_op, &r, &err) == 0, "point_at(1 -> 0) started while shard 1 is connecting");
  int over = wait_until(c, op_over, &r, 6);
  check(over && r.ops_done == 1, "point_at completes successfully (done %d failed %d)", r.ops_done, r.ops_failed);
  run_for(c, 0.5);
  char on1[128], t0[128];
  snprintf(t0, sizeof t0, "%s", tw_shard_session_id(s0) ? tw_shard_session_id(s0) : "");
  mock_shard_session(&M, tw_conduit_id(cd), "1", on1, sizeof on1);
  check(strcmp(on1, t0) == 0,
        "Twitch points shard 1 at shard 0's session %s", t0, on1);
  check(session_connected(on1) == 1, "the session Twitch points shard 1 at is connected", on1,
        session_connected(on1) == 0 ? "closed" : "unknown");
  tw_client_free(c);
}

/* ====================================================================================== */
/* handover while an assignment of the current socket is in flight: its reply
 * reaches shard_assigned, which finishes any OP_HANDOVER of the shard, so the handover
 * reports success while the shard is still on its old socket (the new one is not even
 * welcomed yet); the real switch happens later, unreported. */
static void scenario_handover_premature(void) {
  rec r;
  tw_client *c = new_client(&r, 0.05, 0.2);
  tw_conduit *cd = open_ready(c, &r, 2);
  check(cd != NULL, "a 2-shard conduit is ready");
  if (!cd) return;
  tw_shard *s1 = tw_conduit_find_shard(cd, "1");
  r.watch = s1;
  ctl("POST", "/faults", "{\"shard_patch\":{\"hold\":1}}");
  tw_shard_reconnect(s1);
  check(wait_until(c, watch_assigning, &r, 5) && wait_until(c, some_held, NULL, 5),
        "shard 1 on a fresh socket, its assignment held by Twitch");
  char before[128];
  snprintf(before, sizeof before, "%s", tw_shard_session_id(s1) ? tw_shard_session_id(s1) : "");
  tw_error err;
  int rc = tw_shard_handover(s1, on_op, &r, &err);
  check(rc == 0, "handover started (%d %s)", rc, rc ? err.code : "");
  ctl("POST", "/shard_patches/release", "{}"); /* answered before the new socket's welcome */
  check(wait_until(c, op_over, &r, 5) && r.ops_done == 1, "handover reports success");
  check(strcmp(r.op_session, before) != 0,
        "when it reports success the shard is on a new session", r.op_session);
  run_for(c, 1.0);
  char on1[128];
  mock_shard_session(&M, tw_conduit_id(cd), "1", on1, sizeof on1);
  const char *now1 = tw_shard_session_id(s1);
  check(now1 && strcmp(on1, now1) == 0 && strcmp(now1, before) != 0, "and in the end Twitch has the new session");
  tw_client_free(c);
}

/* ====================================================================================== */
/* session_reconnect, then the old socket ends before the new one is welcomed,
 * then the new one fails (the emulator refuses an abandoned reconnect_url with 4007):
 * on_closed for the old socket sets the state to "connecting" and returns, so the close
 * of the new one finds no "enabled" state: no TW_EV_SHARD_DISABLED for this outage at
 * all (stats.outages stays 0), only TW_EV_ERROR. */
static void scenario_reconnect_outage_disabled(void) {
  rec r;
  tw_client *c = new_client(&r, 0.05, 0.2);
  tw_conduit *cd = open_ready(c, &r, 2);
  check(cd != NULL, "a 2-shard conduit is ready");
  if (!cd) return;
  tw_shard *s = tw_conduit_find_shard(cd, "0");
  r.watch = s;
  char old[128], path[256];
  snprintf(old, sizeof old, "%s", tw_shard_session_id(s));
  snprintf(path, sizeof path, "/sessions/%s/reconnect", old);
  ctl("POST", path, "{}");
  close_session(old, 4000);
  double end = now_s() + 8;
  while (now_s() < end) {
    tw_client_step(c, 20);
    const char *sid = tw_shard_session_id(s);
    if (strcmp(tw_shard_state(s), "enabled") == 0 && sid && strcmp(sid, old) != 0) break;
  }
  const char *sid = tw_shard_session_id(s);
  check(strcmp(tw_shard_state(s), "enabled") == 0 && sid && strcmp(sid, old) != 0,
        "the shard is enabled again on a new session");
  tw_shard_stats st;
  tw_shard_get_stats(s, &st);
  check(r.watch_disabled == 1 && st.outages == 1,
        "one shard_disabled for the outage", r.watch_disabled,
        (unsigned long long)st.outages);
  tw_client_free(c);
}

/* ====================================================================================== */
/* tw_client_free says "Callbacks of pending requests are not called", but it
 * now runs the loop (drain_sessions, up to 1 s) before cancelling Helix requests: a reply
 * that arrives meanwhile is handed to its callback from inside tw_client_free, whose
 * user data the caller may already have released. */
typedef struct cbflag {
  int called;
} cbflag;
static void on_resp(void *user, const tw_response *res) {
  (void)res;
  ((cbflag *)user)->called++;
}
static void scenario_free_calls_back(void) {
  int calls = 0;
  for (int round = 0; round < 5; round++) {
    ctl("POST", "/reset", NULL);
    rec r;
    tw_client *c = new_client(&r, 0.05, 0.2);
    tw_conduit *cd = open_ready(c, &r, 2);
    if (!cd) {
      check(0, "a 2-shard conduit is ready");
      tw_client_free(c);
      return;
    }
    cbflag f = {0};
    tw_error err;
    for (int i = 0; i < 4; i++) tw_helix(c, "GET", "/eventsub/conduits", NULL, 0, on_resp, &f, &err);
    tw_client_free(c);
    calls += f.called;
  }
  check(calls == 0, "no Helix callback is called from inside tw_client_free", calls);
}


/* ====================================================================================== */
/* Checked, correct: the conduit closed from inside each operation's completion callback
 * (add, release, point_at, handover, verify, resize) is freed once, nothing names it
 * afterwards, and nothing is touched after free (ASan). */
static int cd_gone(void *a) { return ((rec *)a)->cd_freed > 0; }
static void scenario_close_from_op_callbacks(void) {
  static const char *const kinds[] = {"add", "release", "point_at", "handover", "verify", "resize"};
  for (int k = 0; k < 6; k++) {
    ctl("POST", "/reset", NULL); /* at most 5 conduits per client */
    rec r;
    tw_client *c = new_client(&r, 0.05, 0.2);
    tw_conduit *cd = open_ready(c, &r, 2);
    if (!cd) {
      check(0, "%s: a 2-shard conduit is ready", kinds[k]);
      tw_client_free(c);
      continue;
    }
    r.cd = cd;
    r.close_in_op = 1;
    tw_shard *s0 = tw_conduit_find_shard(cd, "0"), *s1 = tw_conduit_find_shard(cd, "1");
    tw_error err;
    int rc = -99;
    switch (k) {
    case 0: rc = tw_conduit_add_shards(cd, 1, on_op, &r, NULL, &err); break;
    case 1: rc = tw_shard_release(s1, on_op, &r, &err); break;
    case 2: rc = tw_shard_point_at(s1, s0, on_op, &r, &err); break;
    case 3: rc = tw_shard_handover(s0, on_op, &r, &err); break;
    case 4: rc = tw_conduit_verify(cd, on_op, &r, &err); break;
    case 5: rc = tw_conduit_resize(cd, 3, on_op, &r, &err); break;
    }
    check(rc == 0, "%s: started", kinds[k]);
    int over = wait_until(c, op_over, &r, 8);
    check(over && r.ops_done == 1, "%s: completed (%d done, %d failed)", kinds[k], r.ops_done, r.ops_failed);
    check(wait_until(c, cd_gone, &r, 5) && r.cd_freed == 1, "%s: closed from its callback, the conduit is freed once",
          kinds[k]);
    run_for(c, 0.5);
    check(r.events_after_cd_free == 0, "%s: no event names the conduit after TW_EV_FREED (%d)", kinds[k],
          r.events_after_cd_free);
    tw_client_free(c);
  }
}

/* Checked, correct: the conduit closed from TW_EV_SHARD_RELEASED and from TW_EV_SHARD_LOST
 * handlers; a shard released from its TW_EV_SHARD_LOST handler is not reassigned. */
static void repoint_from_outside(tw_conduit *cd, const char *shard, const char *sid) {
  char path[256], body[256];
  snprintf(path, sizeof path, "/conduits/%s/shards/%s", tw_conduit_id(cd), shard);
  snprintf(body, sizeof body, "{\"session_id\":\"%s\"}", sid);
  ctl("POST", path, body);
}
static void scenario_close_from_handlers(void) {
  for (int k = 0; k < 3; k++) {
    ctl("POST", "/reset", NULL);
    rec r;
    tw_client *c = new_client(&r, 0.05, 0.2);
    tw_conduit *cd = open_ready(c, &r, 2);
    if (!cd) {
      check(0, "a 2-shard conduit is ready");
      tw_client_free(c);
      continue;
    }
    r.cd = cd;
    tw_shard *s0 = tw_conduit_find_shard(cd, "0"), *s1 = tw_conduit_find_shard(cd, "1");
    tw_error err;
    char t0[128];
    snprintf(t0, sizeof t0, "%s", tw_shard_session_id(s0));
    if (k == 0) {
      r.close_on = TW_EV_SHARD_RELEASED;
      check(tw_shard_release(s1, on_op, &r, &err) == 0, "released: release started");
      check(wait_until(c, cd_gone, &r, 5) && r.cd_freed == 1, "released: closed from the handler, freed once");
    } else {
      if (k == 1) r.close_on = TW_EV_SHARD_LOST;
      else r.release_on = TW_EV_SHARD_LOST;
      repoint_from_outside(cd, "1", t0);
      check(tw_conduit_verify(cd, on_op, &r, &err) == 0, "lost: verification asked for");
      check(wait_until(c, op_over, &r, 5), "lost: verification completed (%s)", r.ops_failed ? r.op_error : "ok");
      check(r.lost == 1, "lost: shard 1 reported lost once (%d)", r.lost);
      if (k == 1) {
        check(wait_until(c, cd_gone, &r, 5) && r.cd_freed == 1, "lost: closed from the handler, freed once");
      } else {
        check(wait_until(c, watch_released, &r, 5), "lost: released from the handler");
        char on1[128];
        mock_shard_session(&M, tw_conduit_id(cd), "1", on1, sizeof on1);
        check(strcmp(on1, t0) == 0, "lost: a shard released from the handler is not reassigned (Twitch: %s)", on1);
      }
    }
    run_for(c, 0.5);
    check(r.events_after_cd_free == 0, "no event names the conduit after TW_EV_FREED (%d)", r.events_after_cd_free);
    tw_client_free(c);
  }
}

/* Checked, correct: a verification while a shard's assignment is held by Twitch does not
 * report it lost; once answered the shard is enabled on its new session. */
static void scenario_verify_mid_assignment(void) {
  rec r;
  tw_client *c = new_client(&r, 0.05, 0.2);
  tw_conduit *cd = open_ready(c, &r, 2);
  check(cd != NULL, "a 2-shard conduit is ready");
  if (!cd) return;
  tw_shard *s1 = tw_conduit_find_shard(cd, "1");
  r.watch = s1;
  ctl("POST", "/faults", "{\"shard_patch\":{\"hold\":1}}");
  tw_shard_reconnect(s1);
  check(wait_until(c, watch_assigning, &r, 5) && wait_until(c, some_held, NULL, 5),
        "shard 1 on a fresh socket, its assignment held");
  tw_error err;
  check(tw_conduit_verify(cd, on_op, &r, &err) == 0, "verification asked for");
  check(wait_until(c, op_over, &r, 5) && r.ops_done == 1, "verification completed");
  check(r.lost == 0, "the shard being assigned is not reported lost (%d)", r.lost);
  ctl("POST", "/shard_patches/release", "{}");
  check(wait_until(c, watch_enabled_state, &r, 5), "then enabled");
  char on1[128];
  mock_shard_session(&M, tw_conduit_id(cd), "1", on1, sizeof on1);
  check(strcmp(on1, tw_shard_session_id(s1)) == 0, "on its new session on Twitch too");
  tw_client_free(c);
}

/* ====================================================================================== */
/* Releasing a shard while a session_reconnect target is connecting:
 * on_closed for `next` (closed by the release) takes the "the new socket failed, keeping
 * the current one" path and emits TW_EV_ERROR reconnect_failed, although the socket was
 * closed on purpose and nothing is kept. */
static int error_code_seen;
static char want_error_code[32];
static void on_event_err(void *user, const tw_event *ev) {
  if (ev->type == TW_EV_ERROR && strcmp(ev->error->code, want_error_code) == 0) error_code_seen++;
  on_event(user, ev);
}
static uint64_t connects_target;
static int connects_reached(void *a) {
  tw_client_stats cs;
  tw_client_get_stats(((rec *)a)->c, &cs);
  return cs.ws_connects >= connects_target;
}
static void scenario_release_during_reconnect(void) {
  rec r;
  tw_client *c = new_client(&r, 0.05, 0.2);
  tw_client_on_event(c, on_event_err, &r);
  snprintf(want_error_code, sizeof want_error_code, "reconnect_failed");
  tw_conduit *cd = open_ready(c, &r, 2);
  check(cd != NULL, "a 2-shard conduit is ready");
  if (!cd) return;
  tw_shard *s1 = tw_conduit_find_shard(cd, "1");
  r.watch = s1;
  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  connects_target = cs.ws_connects + 1;
  char path[256];
  snprintf(path, sizeof path, "/sessions/%s/reconnect", tw_shard_session_id(s1));
  ctl("POST", path, "{}");
  check(wait_until(c, connects_reached, &r, 5), "the client opened a socket to reconnect_url");
  tw_error err;
  check(tw_shard_release(s1, on_op, &r, &err) == 0, "shard 1 released while its reconnect target connects");
  check(wait_until(c, op_over, &r, 8) && r.ops_done == 1, "the release completed");
  check(error_code_seen == 0, "no reconnect_failed error for a socket the release closed",
        error_code_seen);
  tw_client_free(c);
}

/* ====================================================================================== */
static const scenario scenarios[] = {
    {"add_fails_with_socket", "add_shards fails while a new shard has a socket: no use after free",
     scenario_add_fails_with_socket},
    {"ready_after_release", "releasing the last unenabled shard makes the conduit ready",
     scenario_ready_after_release},
    {"point_own_socket_closes", "point_at completes when the shard's own socket closes mid-PATCH",
     scenario_point_own_socket_closes},
    {"point_refused_idle", "a refused point_at on a socketless shard leaves it reconnecting",
     scenario_point_refused_idle},
    {"point_while_connecting", "point_at on a connecting shard points it at the target",
     scenario_point_while_connecting},
    {"handover_premature", "handover reports success only once on the new socket",
     scenario_handover_premature},
    {"reconnect_outage_disabled", "an outage during session_reconnect emits shard_disabled once",
     scenario_reconnect_outage_disabled},
    {"free_calls_back", "tw_client_free calls no Helix callback", scenario_free_calls_back},
    {"release_during_reconnect", "a release during session_reconnect reports no reconnect failure",
     scenario_release_during_reconnect},
    {"close_from_op_callbacks", "the conduit closed from each operation's callback", scenario_close_from_op_callbacks},
    {"close_from_handlers", "the conduit closed from shard_released / shard_lost handlers, release from shard_lost",
     scenario_close_from_handlers},
    {"verify_mid_assignment", "verification does not report a shard being assigned as lost",
     scenario_verify_mid_assignment},
};

int main(void) {
  tw_set_lws_log_level(0);
  debug_events = getenv("TW_LCR_DEBUG") != NULL;
  return run_scenarios(scenarios, sizeof scenarios / sizeof scenarios[0], &M, "TW_LCR_ONLY");
}
