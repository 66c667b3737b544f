/* The core's state machine, reentrancy, teardown and Helix logic under the emulator.
 *
 * Each scenario starts from an emulator reset, runs its own client and is bounded in
 * time (every wait has a deadline). "Regression" marks scenarios of bugs already fixed.
 * TW_REVIEW_ONLY=<name> runs one scenario, TW_REVIEW_QUICK=1 skips the two slow ones
 * (about 90 s together), TW_REVIEW_DEBUG=1 logs the events. */
#include <stdint.h>

#include "support.h"

#if defined(__SANITIZE_ADDRESS__)
#define HAVE_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_LSAN 1
#endif
#endif
#ifdef HAVE_LSAN
#include <sanitizer/lsan_interface.h>
#endif

static mock M;
static __attribute__((unused)) int leak_reported; /* LeakSanitizer keeps reporting a leak once found */

/* ---- the event handler's record ------------------------------------------------------ */
typedef struct rec {
  tw_client *c;
  int ready, enabled, disabled, reconnects, errors, tokens, notifications, revocations;
  int dup_notifications; /* the same message id handed to the handler twice */
  idset ids;
  char last_error[64];
  char last_error_msg[256];
  /* freed objects: events naming them afterwards are protocol violations */
  tw_conduit *freed_cd;
  int freed_cd_count;
  int events_after_free; /* events naming freed_cd after its TW_EV_FREED */
  char after_free_types[128];
  /* hooks */
  tw_conduit *close_on_enabled;   /* tw_conduit_close from TW_EV_SHARD_ENABLED */
  tw_conduit *close_on_note;      /* ... from the Nth TW_EV_NOTIFICATION */
  int close_at_note;
  int stop_on_ready;              /* tw_client_stop from TW_EV_READY */
  int revoke_on_token;            /* control: revoke all tokens at the first TW_EV_TOKEN */
  int secret_leaks;               /* an error message holding the secret or the token */
  char leak_msg[256];
  tw_shard *watch_shard;
  int watch_enabled, watch_disabled;
  int big_len;                    /* length of event.big of the last notification */
} rec;


static int debug_events;

static void on_event(void *user, const tw_event *ev) {
  rec *r = user;
  if (debug_events && ev->type != TW_EV_NOTIFICATION)
    fprintf(stderr, "#   [%.3f] %s shard=%s status=%s error=%s %s\n", now_s(), ev_name(ev->type),
            ev->shard ? tw_shard_id(ev->shard) : "-", ev->status ? ev->status : "-",
            ev->error ? ev->error->code : "-", ev->error ? ev->error->message : "");
  if (r->freed_cd && r->freed_cd_count > 0 && ev->conduit == r->freed_cd && ev->type != TW_EV_FREED) {
    r->events_after_free++;
    size_t l = strlen(r->after_free_types);
    snprintf(r->after_free_types + l, sizeof r->after_free_types - l, "%s%s", l ? "," : "", ev_name(ev->type));
  }
  switch (ev->type) {
  case TW_EV_READY:
    r->ready++;
    if (r->stop_on_ready) tw_client_stop(r->c);
    break;
  case TW_EV_SHARD_ENABLED:
    r->enabled++;
    if (ev->shard && ev->shard == r->watch_shard) r->watch_enabled++;
    if (r->close_on_enabled && ev->conduit == r->close_on_enabled) {
      tw_conduit *cd = r->close_on_enabled;
      r->close_on_enabled = NULL;
      tw_conduit_close(cd);
    }
    break;
  case TW_EV_SHARD_DISABLED:
    r->disabled++;
    if (ev->shard && ev->shard == r->watch_shard) r->watch_disabled++;
    break;
  case TW_EV_RECONNECT: r->reconnects++; break;
  case TW_EV_TOKEN:
    r->tokens++;
    if (r->revoke_on_token) {
      r->revoke_on_token = 0;
      cJSON_Delete(mock_call(&M, "POST", "/tokens/revoke", "{\"all\":true}"));
    }
    break;
  case TW_EV_ERROR: {
    r->errors++;
    snprintf(r->last_error, sizeof r->last_error, "%s", ev->error ? ev->error->code : "");
    snprintf(r->last_error_msg, sizeof r->last_error_msg, "%s", ev->error ? ev->error->message : "");
    const char *tok = tw_client_token(r->c);
    if (ev->error && ((M.client_secret[0] && strstr(ev->error->message, M.client_secret)) ||
                      (tok && *tok && strstr(ev->error->message, tok)))) {
      r->secret_leaks++;
      snprintf(r->leak_msg, sizeof r->leak_msg, "%s", ev->error->message);
    }
    break;
  }
  case TW_EV_NOTIFICATION: {
    r->notifications++;
    if (ev->msg->id && !idset_add(&r->ids, ev->msg->id)) r->dup_notifications++;
    size_t bl = 0;
    if (ev->msg->doc && ev->msg->event != TW_JNONE && tw_json_str(ev->msg->doc, tw_json_get(ev->msg->doc, ev->msg->event, "big", 3), &bl))
      r->big_len = (int)bl;
    if (r->close_on_note && r->notifications >= r->close_at_note && ev->conduit == r->close_on_note) {
      tw_conduit *cd = r->close_on_note;
      r->close_on_note = NULL;
      tw_conduit_close(cd);
    }
    break;
  }
  case TW_EV_REVOCATION: r->revocations++; break;
  case TW_EV_FREED:
    if (ev->conduit && !ev->shard) {
      if (r->freed_cd == ev->conduit) r->freed_cd_count++;
    }
    break;
  default: break;
  }
}

/* ---- helpers ----------------------------------------------------------------------- */

static void reset_emulator(void) {
  cJSON_Delete(mock_call(&M, "POST", "/reset", NULL));
  cJSON_Delete(mock_call(&M, "POST", "/faults", "{\"latency_ms\":0}"));
  cJSON_Delete(mock_call(&M, "POST", "/config", "{\"rate_limit\":800,\"token_ttl_s\":5011271}"));
}

static tw_client *new_client(rec *r, double backoff_min, int keepalive_s, double slack) {
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = M.client_id;
  o.client_secret = M.client_secret;
  o.api_base = M.api_base;
  o.auth_base = M.auth_base;
  o.eventsub_ws = M.eventsub_ws;
  o.keepalive_s = keepalive_s;
  if (backoff_min > 0) { /* 0: the defaults */
    o.backoff_min_s = backoff_min;
    o.backoff_max_s = backoff_min * 4;
  }
  if (slack > 0) o.keepalive_slack_s = slack;
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

static void end_client(tw_client *c, rec *r) {
  tw_client_free(c);
  idset_free(&r->ids);
}

/* steps the client for about ms milliseconds */
static void run_for(tw_client *c, int ms) {
  double end = now_s() + ms / 1000.0;
  while (now_s() < end) tw_client_step(c, 20);
}

typedef struct call {
  int done, status;
  char code[32];
  char msg[256];
} call;

static void on_call(void *user, const tw_response *r) {
  call *k = user;
  k->done++;
  k->status = r->status;
  snprintf(k->code, sizeof k->code, "%s", r->error ? r->error->code : "");
  snprintf(k->msg, sizeof k->msg, "%s", r->error ? r->error->message : "");
}

static int call_done(void *a) { return ((call *)a)->done > 0; }

static int helix_sync(tw_client *c, const char *method, const char *path, const char *body, double timeout,
                      call *k) {
  tw_error err;
  memset(k, 0, sizeof *k);
  if (tw_helix(c, method, path, body, body ? strlen(body) : 0, on_call, k, &err) != 0) return -1;
  if (!wait_until(c, call_done, k, timeout)) return -2;
  return k->status;
}

static int subscribe(tw_client *c, tw_conduit *cd, const char *channel) {
  char body[512];
  snprintf(body, sizeof body,
           "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"%s\"},"
           "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
           channel, tw_conduit_id(cd));
  call k;
  return helix_sync(c, "POST", "/eventsub/subscriptions", body, 10, &k);
}

static int is_ready(void *a) { return ((rec *)a)->ready > 0; }
static int want_notes;
static int notes_at_least(void *a) { return ((rec *)a)->notifications >= want_notes; }

static tw_conduit *open_ready(tw_client *c, rec *r, int shards) {
  tw_error err;
  tw_conduit_opts co = {.shards = shards};
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  if (!cd) return NULL;
  if (!wait_until(c, is_ready, r, 15)) return NULL;
  return cd;
}

static int route_calls(const char *route) {
  cJSON *st = mock_call(&M, "GET", "/state", NULL);
  cJSON *calls = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(st, "helix_calls"), "by_route");
  int n = json_int(calls, route);
  cJSON_Delete(st);
  return n < 0 ? 0 : n;
}

static int shard_is(tw_shard *s, const char *state) { return strcmp(tw_shard_state(s), state) == 0; }

/* ====================================================================================== */
/* Regression: session_reconnect whose old socket ends before the new welcome, and whose
 * new socket then fails, leaves the shard with no socket and nothing scheduled.          */
typedef struct stuck_arg {
  tw_shard *s;
  char old[128];
} stuck_arg;
static int back_on_new_session(void *a) {
  stuck_arg *x = a;
  const char *sid = tw_shard_session_id(x->s);
  return shard_is(x->s, "enabled") && sid && strcmp(sid, x->old) != 0;
}
static uint64_t connects_target;
static tw_client *connects_client;
static int connects_reached(void *a) {
  (void)a;
  tw_client_stats cs;
  tw_client_get_stats(connects_client, &cs);
  return cs.ws_connects >= connects_target;
}

static void scenario_reconnect_old_dies_first(void) {
  reset_emulator();
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  tw_conduit *cd = open_ready(c, &r, 2);
  ok(cd != NULL, "reconnect/old dies first: conduit of 2 shards ready");
  if (!cd) { end_client(c, &r); return; }
  stuck_arg x = {.s = tw_conduit_shard(cd, 0)};
  snprintf(x.old, sizeof x.old, "%s", tw_shard_session_id(x.s));
  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  connects_target = cs.ws_connects + 1;
  connects_client = c;
  char path[256];
  snprintf(path, sizeof path, "/sessions/%s/reconnect", x.old);
  cJSON_Delete(mock_call(&M, "POST", path, "{}"));
  /* the old socket dies right after session_reconnect, before the client could reach
   * reconnect_url; the emulator then refuses the abandoned reconnect_url with 4007 */
  snprintf(path, sizeof path, "/sessions/%s/close", x.old);
  cJSON_Delete(mock_call(&M, "POST", path, "{\"code\":4000}"));
  wait_until(c, connects_reached, NULL, 3);
  ok(connects_reached(NULL), "reconnect/old dies first: the client opened a socket to reconnect_url");
  int back = wait_until(c, back_on_new_session, &x, 8);
  ok(back, "reconnect/old dies first: the shard reconnects afresh and is enabled again "
           "(regression: state '%s', session %s, after %d s)",
     tw_shard_state(x.s), tw_shard_session_id(x.s) ? tw_shard_session_id(x.s) : "none", 8);
  /* and the other shard is untouched */
  ok(shard_is(tw_conduit_shard(cd, 1), "enabled"), "reconnect/old dies first: the other shard stays enabled");
  end_client(c, &r);
}

/* ====================================================================================== */
/* Regression: a handler closing its conduit from TW_EV_SHARD_ENABLED still gets
 * TW_EV_READY for it, after TW_EV_FREED.                                                */
static void scenario_close_from_shard_enabled(void) {
  reset_emulator();
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  tw_error err;
  tw_conduit_opts co = {.shards = 1};
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  r.close_on_enabled = cd;
  r.freed_cd = cd;
  double end = now_s() + 10;
  while (r.freed_cd_count == 0 && now_s() < end) tw_client_step(c, 20);
  run_for(c, 500);
  ok(r.freed_cd_count == 1, "close from shard_enabled: the conduit is freed once (%d)", r.freed_cd_count);
  ok(r.events_after_free == 0,
     "close from shard_enabled: no event names the conduit after TW_EV_FREED (regression: got %d: %s)",
     r.events_after_free, r.after_free_types);
  ok(r.ready == 0, "close from shard_enabled: a closed conduit never reports ready (regression: %d)", r.ready);
  end_client(c, &r);
}

/* ====================================================================================== */
/* Regression: tw_client_free while a shard PATCH is queued or in flight leaked the PATCH
 * context (visible under ASan/LeakSanitizer and valgrind --leak-check=full).             */
static int any_assigning(void *a) {
  tw_conduit *cd = a;
  for (size_t i = 0; i < tw_conduit_nshards(cd); i++)
    if (shard_is(tw_conduit_shard(cd, i), "assigning")) return 1;
  return 0;
}

static void scenario_free_with_patch_in_flight(void) {
  reset_emulator();
  cJSON_Delete(mock_call(&M, "POST", "/faults", "{\"latency_ms\":400}"));
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  tw_error err;
  tw_conduit_opts co = {.shards = 2};
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  int assigning = wait_until(c, any_assigning, cd, 10);
  ok(assigning, "free with PATCH in flight: a shard is being assigned");
  end_client(c, &r);
  cJSON_Delete(mock_call(&M, "POST", "/faults", "{\"latency_ms\":0}"));
#ifdef HAVE_LSAN
  int leaks = __lsan_do_recoverable_leak_check();
  leak_reported = leaks != 0;
  ok(leaks == 0, "free with PATCH in flight: nothing leaks (regression: LeakSanitizer found leaks)");
#else
  ok(1, "free with PATCH in flight: freed (a leak would show under valgrind or the ASan build)");
#endif
}

/* ====================================================================================== */
/* Regression: a token whose expires_in is 60 s or less is replaced before every send,
 * forever: no Helix request is ever sent and the token endpoint is hammered.             */
static void scenario_short_lived_token(void) {
  reset_emulator();
  cJSON_Delete(mock_call(&M, "POST", "/config", "{\"token_ttl_s\":30}"));
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  call k;
  int st = helix_sync(c, "GET", "/eventsub/conduits", NULL, 5, &k);
  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  ok(st == 200, "short-lived token: a Helix call with a 30 s token completes (regression: %d, %llu token fetches)",
     st, (unsigned long long)cs.token_fetches);
  ok(cs.token_fetches <= 3, "short-lived token: the token endpoint is not hammered (regression: %llu fetches in 5 s)",
     (unsigned long long)cs.token_fetches);
  end_client(c, &r);
  cJSON_Delete(mock_call(&M, "POST", "/config", "{\"token_ttl_s\":5011271}"));
}

/* ====================================================================================== */
/* A handler closing its conduit in the middle of a stream of notifications.             */
static void scenario_close_from_notification(void) {
  reset_emulator();
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  tw_conduit *cd = open_ready(c, &r, 2);
  ok(cd != NULL, "close from a notification: conduit ready");
  if (!cd) { end_client(c, &r); return; }
  int subs = 0;
  for (int ch = 1; ch <= 5; ch++) {
    char chs[16];
    snprintf(chs, sizeof chs, "%d", 500 + ch);
    subs += subscribe(c, cd, chs) == 202;
  }
  ok(subs == 5, "close from a notification: 5 subscriptions");
  r.close_on_note = cd;
  r.close_at_note = 50;
  r.freed_cd = cd;
  cJSON_Delete(mock_call(&M, "POST", "/trigger",
                         "{\"type\":\"stream.online\",\"channels\":[\"501\",\"502\",\"503\",\"504\",\"505\"],"
                         "\"count\":40}"));
  double end = now_s() + 10;
  while (r.freed_cd_count == 0 && now_s() < end) tw_client_step(c, 20);
  run_for(c, 500);
  ok(r.freed_cd_count == 1, "close from a notification: the conduit is freed once (%d)", r.freed_cd_count);
  ok(r.events_after_free == 0, "close from a notification: no event names it after TW_EV_FREED (%d: %s)",
     r.events_after_free, r.after_free_types);
  ok(r.dup_notifications == 0, "close from a notification: nothing delivered twice");
  /* the client goes on: a new conduit works */
  r.ready = 0;
  r.freed_cd = NULL;
  tw_conduit *cd2 = open_ready(c, &r, 1);
  ok(cd2 != NULL, "close from a notification: a new conduit opens afterwards");
  end_client(c, &r);
}

/* ====================================================================================== */
/* Closing while Helix calls of the conduit are in flight (create, then PATCH).           */
static void scenario_close_with_calls_in_flight(void) {
  reset_emulator();
  cJSON_Delete(mock_call(&M, "POST", "/faults", "{\"latency_ms\":300}"));
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  tw_error err;
  tw_conduit_opts co = {.shards = 2};
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  r.freed_cd = cd;
  tw_client_step(c, 50);
  tw_conduit_close(cd);
  tw_conduit_close(cd); /* idempotent */
  double end = now_s() + 5;
  while (r.freed_cd_count == 0 && now_s() < end) tw_client_step(c, 20);
  run_for(c, 800);
  ok(r.freed_cd_count == 1 && r.events_after_free == 0,
     "close during Create Conduits: freed once when the reply comes, no event after (%d, %d: %s)",
     r.freed_cd_count, r.events_after_free, r.after_free_types);

  /* the same during the shard PATCH */
  tw_conduit *cd2 = tw_conduit_open(c, &co, &err);
  int assigning = wait_until(c, any_assigning, cd2, 10);
  r.freed_cd = cd2;
  r.freed_cd_count = 0;
  r.events_after_free = 0;
  r.after_free_types[0] = 0;
  int enabled_before = r.enabled;
  tw_conduit_close(cd2);
  end = now_s() + 5;
  while (r.freed_cd_count == 0 && now_s() < end) tw_client_step(c, 20);
  run_for(c, 800);
  ok(assigning && r.freed_cd_count == 1 && r.events_after_free == 0 && r.enabled == enabled_before,
     "close during the shard PATCH: freed once, no shard_enabled, no event after (%d, %d: %s)", r.freed_cd_count,
     r.events_after_free, r.after_free_types);
  cJSON_Delete(mock_call(&M, "POST", "/faults", "{\"latency_ms\":0}"));
  end_client(c, &r);
}

/* ====================================================================================== */
/* tw_client_stop from inside the handler ends tw_client_run.                             */
static void on_guard(void *u) { tw_client_stop(u); }

static void scenario_stop_from_handler(void) {
  reset_emulator();
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  r.stop_on_ready = 1;
  tw_error err;
  tw_conduit_opts co = {.shards = 2};
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  tw_timer *guard = tw_timer_start(c, 15000, 0, on_guard, c);
  double t0 = now_s();
  int rc = tw_client_run(c);
  double took = now_s() - t0;
  tw_timer_cancel(guard);
  ok(rc == 0 && r.ready == 1 && took < 14, "tw_client_stop from the ready handler ends tw_client_run (%.1f s)", took);
  ok(tw_client_step(c, 0) == 0, "the client can be stepped after run returned");
  (void)cd;
  end_client(c, &r);
}

/* ====================================================================================== */
/* tw_shard_reconnect on an enabled shard: a new session, assigned, events flow.          */
static void scenario_shard_reconnect(void) {
  reset_emulator();
  rec r;
  tw_client *c = new_client(&r, 0, 0, 0); /* default backoff */
  tw_conduit *cd = open_ready(c, &r, 2);
  ok(cd != NULL, "tw_shard_reconnect: conduit ready");
  if (!cd) { end_client(c, &r); return; }
  ok(subscribe(c, cd, "700") == 202, "tw_shard_reconnect: subscribed");
  stuck_arg x = {.s = tw_conduit_shard(cd, 0)};
  snprintf(x.old, sizeof x.old, "%s", tw_shard_session_id(x.s));
  r.watch_shard = x.s;
  double t0 = now_s();
  ok(tw_shard_reconnect(x.s) == 0, "tw_shard_reconnect returns 0");
  int back = wait_until(c, back_on_new_session, &x, 5);
  double took = now_s() - t0;
  ok(back && r.watch_enabled == 1, "tw_shard_reconnect: a new session is assigned (%.2f s)", took);
  ok(shard_is(tw_conduit_shard(cd, 1), "enabled"), "tw_shard_reconnect: the other shard is untouched");
  /* a second reconnect right away, twice in a row: one new session, still one shard */
  snprintf(x.old, sizeof x.old, "%s", tw_shard_session_id(x.s));
  tw_shard_reconnect(x.s);
  tw_shard_reconnect(x.s);
  back = wait_until(c, back_on_new_session, &x, 5);
  run_for(c, 300);
  ok(back && shard_is(x.s, "enabled"), "tw_shard_reconnect twice in a row: enabled on a new session");
  int n0 = r.notifications;
  cJSON_Delete(mock_call(&M, "POST", "/trigger", "{\"type\":\"stream.online\",\"channels\":[\"700\"],\"count\":20}"));
  want_notes = n0 + 20;
  ok(wait_until(c, notes_at_least, &r, 5) && r.dup_notifications == 0, "tw_shard_reconnect: events flow after it");
  cJSON *sess = mock_call(&M, "GET", "/sessions", NULL);
  int connected = 0;
  cJSON *it;
  cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(sess, "sessions")) connected +=
      cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "connected"));
  cJSON_Delete(sess);
  ok(connected == 2, "tw_shard_reconnect: the emulator sees 2 connected sockets, no leftovers (%d)", connected);
  end_client(c, &r);
}

/* ====================================================================================== */
/* tw_conduit_open with an existing id: a larger total grows it; a smaller need does not. */
static void scenario_open_existing(void) {
  reset_emulator();
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  tw_conduit *cd = open_ready(c, &r, 2);
  ok(cd != NULL && tw_conduit_shard_count(cd) == 2, "open existing: a conduit of 2 shards");
  if (!cd) { end_client(c, &r); return; }
  char id[128];
  snprintf(id, sizeof id, "%s", tw_conduit_id(cd));
  tw_conduit_close(cd);
  run_for(c, 200);
  int resizes0 = route_calls("PATCH /eventsub/conduits");
  tw_error err;
  r.ready = 0;
  tw_conduit_opts co = {.id = id, .shards = 2, .offset = 2, .total = 6};
  tw_conduit *cd2 = tw_conduit_open(c, &co, &err);
  int ready = wait_until(c, is_ready, &r, 10);
  ok(ready && tw_conduit_shard_count(cd2) == 6 && strcmp(tw_conduit_id(cd2), id) == 0,
     "open existing with total 6: resized to %d, same id", tw_conduit_shard_count(cd2));
  ok(tw_conduit_find_shard(cd2, "2") && tw_conduit_find_shard(cd2, "3") && !tw_conduit_find_shard(cd2, "0"),
     "open existing: runs shards 2 and 3 only");
  ok(route_calls("PATCH /eventsub/conduits") == resizes0 + 1, "open existing: one Update Conduits call");
  cJSON *st = mock_call(&M, "GET", "/state", NULL);
  int count = -1;
  cJSON *it;
  cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(st, "conduits")) if (strcmp(
      cJSON_GetObjectItemCaseSensitive(it, "id")->valuestring, id) == 0) count = json_int(it, "shard_count");
  cJSON_Delete(st);
  ok(count == 6, "open existing: the emulator has 6 shards (%d)", count);
  /* a second process-like conduit on the same id needing fewer shards: no resize */
  r.ready = 0;
  tw_conduit_opts co3 = {.id = id, .shards = 2, .offset = 0};
  tw_conduit *cd3 = tw_conduit_open(c, &co3, &err);
  ready = wait_until(c, is_ready, &r, 10);
  ok(ready && tw_conduit_shard_count(cd3) == 6 && route_calls("PATCH /eventsub/conduits") == resizes0 + 1,
     "open existing with a smaller need: no resize, still 6");
  /* an unknown id fails cleanly */
  r.errors = 0;
  tw_conduit_opts co4 = {.id = "00000000-0000-0000-0000-000000000000", .shards = 1};
  tw_conduit *cd4 = tw_conduit_open(c, &co4, &err);
  double end = now_s() + 5;
  while (cd4 && strcmp(tw_conduit_state(cd4), "failed") != 0 && now_s() < end) tw_client_step(c, 20);
  ok(cd4 && strcmp(tw_conduit_state(cd4), "failed") == 0 && strcmp(r.last_error, "not_found") == 0,
     "open with an unknown id: failed / %s", r.last_error);
  end_client(c, &r);
}

/* ====================================================================================== */
/* 1,000 events across 50 channels: each exactly once, the same set as the ledger.       */
static void scenario_thousand_exactly_once(void) {
  reset_emulator();
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  tw_conduit *cd = open_ready(c, &r, 4);
  ok(cd != NULL, "1000 events: conduit of 4 shards ready");
  if (!cd) { end_client(c, &r); return; }
  char chans[2048] = "";
  int subs = 0;
  for (int ch = 1; ch <= 50; ch++) {
    char chs[16];
    snprintf(chs, sizeof chs, "%d", 2000 + ch);
    subs += subscribe(c, cd, chs) == 202;
    size_t l = strlen(chans);
    snprintf(chans + l, sizeof chans - l, "%s\"%s\"", ch > 1 ? "," : "", chs);
  }
  ok(subs == 50, "1000 events: 50 subscriptions (%d)", subs);
  char body[4096];
  snprintf(body, sizeof body, "{\"type\":\"stream.online\",\"channels\":[%s],\"count\":20}", chans);
  cJSON *t = mock_call(&M, "POST", "/trigger", body);
  int produced = json_int(t, "produced");
  idset expected = {0};
  cJSON *it;
  cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(t, "message_ids")) idset_add(&expected, it->valuestring);
  cJSON_Delete(t);
  ok(produced == 1000 && expected.n == 1000, "1000 events: produced %d with %zu distinct ids", produced, expected.n);
  want_notes = 1000;
  int all = wait_until(c, notes_at_least, &r, 15);
  run_for(c, 300);
  int missing = 0;
  for (size_t i = 0; i < expected.cap; i++)
    if (expected.v[i] && !idset_has(&r.ids, expected.v[i])) missing++;
  ok(all && r.notifications == 1000 && r.dup_notifications == 0 && missing == 0,
     "1000 events: each handled exactly once (%d handled, %d twice, %d missing)", r.notifications,
     r.dup_notifications, missing);
  cJSON *led = mock_call(&M, "GET", "/ledger", NULL);
  int delivered = json_int(led, "delivered"), dropped = json_int(led, "dropped");
  int ledger_mismatch = 0;
  cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(led, "entries")) {
    const char *st = cJSON_GetObjectItemCaseSensitive(it, "status")->valuestring;
    const char *mid = cJSON_GetObjectItemCaseSensitive(it, "message_id")->valuestring;
    if (strcmp(st, "delivered") == 0 && !idset_has(&r.ids, mid)) ledger_mismatch++;
  }
  cJSON_Delete(led);
  ok(delivered == 1000 && dropped == 0 && ledger_mismatch == 0,
     "1000 events: the ledger agrees (%d delivered, %d dropped, %d not handled)", delivered, dropped,
     ledger_mismatch);
  uint64_t per_shard = 0;
  for (size_t i = 0; i < tw_conduit_nshards(cd); i++) {
    tw_shard_stats ss;
    tw_shard_get_stats(tw_conduit_shard(cd, i), &ss);
    per_shard += ss.notifications;
  }
  ok(per_shard == 1000, "1000 events: the shard counters add up (%llu)", (unsigned long long)per_shard);
  idset_free(&expected);
  end_client(c, &r);
}

/* ====================================================================================== */
/* A shard killed under a steady stream: every event routed to the other shards arrives,
 * the killed shard comes back, nothing is handled twice.                                 */
static void scenario_kill_under_stream(void) {
  reset_emulator();
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  tw_conduit *cd = open_ready(c, &r, 4);
  ok(cd != NULL, "kill under stream: conduit of 4 shards ready");
  if (!cd) { end_client(c, &r); return; }
  char chans[1024] = "";
  for (int ch = 1; ch <= 20; ch++) {
    char chs[16];
    snprintf(chs, sizeof chs, "%d", 3000 + ch);
    subscribe(c, cd, chs);
    size_t l = strlen(chans);
    snprintf(chans + l, sizeof chans - l, "%s\"%s\"", ch > 1 ? "," : "", chs);
  }
  char body[2048];
  snprintf(body, sizeof body, "{\"type\":\"stream.online\",\"channels\":[%s],\"rate\":600,\"count\":1500}", chans);
  cJSON *s = mock_call(&M, "POST", "/stream", body);
  char sid[64];
  copy_field(s, "stream_id", sid, sizeof sid);
  cJSON_Delete(s);
  want_notes = 300;
  wait_until(c, notes_at_least, &r, 5);
  tw_shard *victim = tw_conduit_shard(cd, 1);
  char killed[128], path[300];
  snprintf(killed, sizeof killed, "%s", tw_shard_session_id(victim));
  r.watch_shard = victim;
  snprintf(path, sizeof path, "/sessions/%s/drop", killed);
  cJSON_Delete(mock_call(&M, "POST", path, "{}"));
  /* until the stream is done */
  snprintf(path, sizeof path, "/stream/%s", sid);
  double end = now_s() + 15;
  int done = 0;
  while (!done && now_s() < end) {
    run_for(c, 200);
    cJSON *g = mock_call(&M, "GET", path, NULL);
    done = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(g, "done"));
    cJSON_Delete(g);
  }
  run_for(c, 500);
  ok(done, "kill under stream: the stream finished");
  cJSON *led = mock_call(&M, "GET", "/ledger", NULL);
  int delivered_other = 0, missing_other = 0, delivered_killed = 0, missing_killed = 0, dropped = 0;
  cJSON *it;
  cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(led, "entries")) {
    const char *st = cJSON_GetObjectItemCaseSensitive(it, "status")->valuestring;
    const char *mid = cJSON_GetObjectItemCaseSensitive(it, "message_id")->valuestring;
    cJSON *sj = cJSON_GetObjectItemCaseSensitive(it, "session_id");
    const char *ses = cJSON_IsString(sj) ? sj->valuestring : "";
    if (strcmp(st, "delivered") != 0) {
      dropped++;
      continue;
    }
    if (strcmp(ses, killed) == 0) {
      delivered_killed++;
      missing_killed += !idset_has(&r.ids, mid);
    } else {
      delivered_other++;
      missing_other += !idset_has(&r.ids, mid);
    }
  }
  cJSON_Delete(led);
  fprintf(stderr, "# kill under stream: %d to other sessions, %d to the killed one (%d of them lost), %d dropped\n",
          delivered_other, delivered_killed, missing_killed, dropped);
  ok(delivered_other > 0 && missing_other == 0,
     "kill under stream: every event delivered to the other shards was handled (%d of %d missing)", missing_other,
     delivered_other);
  ok(r.dup_notifications == 0, "kill under stream: nothing handled twice");
  ok(r.watch_disabled >= 1 && shard_is(victim, "enabled") && strcmp(tw_shard_session_id(victim), killed) != 0,
     "kill under stream: the killed shard was disabled and is enabled again on a new session");
  end_client(c, &r);
  cJSON_Delete(mock_call(&M, "POST", "/stream/stop", "{}"));
}

/* ====================================================================================== */
/* Session reconnect of every shard, repeatedly, under a fast stream: the ledger and the
 * handler agree exactly.                                                                  */
static void scenario_reconnect_storm(void) {
  reset_emulator();
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  tw_conduit *cd = open_ready(c, &r, 3);
  ok(cd != NULL, "reconnect storm: conduit of 3 shards ready");
  if (!cd) { end_client(c, &r); return; }
  char chans[512] = "";
  for (int ch = 1; ch <= 9; ch++) {
    char chs[16];
    snprintf(chs, sizeof chs, "%d", 4000 + ch);
    subscribe(c, cd, chs);
    size_t l = strlen(chans);
    snprintf(chans + l, sizeof chans - l, "%s\"%s\"", ch > 1 ? "," : "", chs);
  }
  char body[1024];
  snprintf(body, sizeof body, "{\"type\":\"stream.online\",\"channels\":[%s],\"rate\":1500,\"count\":3000}", chans);
  cJSON *s = mock_call(&M, "POST", "/stream", body);
  char sid[64];
  copy_field(s, "stream_id", sid, sizeof sid);
  cJSON_Delete(s);
  int rounds = 0;
  for (int round = 0; round < 3; round++) {
    run_for(c, 300);
    for (size_t i = 0; i < tw_conduit_nshards(cd); i++) {
      const char *ses = tw_shard_session_id(tw_conduit_shard(cd, i));
      if (!ses) continue;
      char path[256];
      snprintf(path, sizeof path, "/sessions/%s/reconnect", ses);
      cJSON_Delete(mock_call(&M, "POST", path, "{}"));
    }
    rounds++;
  }
  char path[128];
  snprintf(path, sizeof path, "/stream/%s", sid);
  double end = now_s() + 15;
  int done = 0;
  while (!done && now_s() < end) {
    run_for(c, 200);
    cJSON *g = mock_call(&M, "GET", path, NULL);
    done = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(g, "done"));
    cJSON_Delete(g);
  }
  run_for(c, 800);
  cJSON *led = mock_call(&M, "GET", "/ledger", NULL);
  int delivered = json_int(led, "delivered"), dropped = json_int(led, "dropped"), missing = 0;
  cJSON *it;
  cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(led, "entries")) {
    const char *st = cJSON_GetObjectItemCaseSensitive(it, "status")->valuestring;
    const char *mid = cJSON_GetObjectItemCaseSensitive(it, "message_id")->valuestring;
    if (strcmp(st, "delivered") == 0 && !idset_has(&r.ids, mid)) missing++;
  }
  cJSON_Delete(led);
  ok(done && delivered == 3000 && dropped == 0,
     "reconnect storm: the emulator delivered all 3000 (%d delivered, %d dropped)", delivered, dropped);
  ok(missing == 0 && r.notifications == delivered && r.dup_notifications == 0,
     "reconnect storm: handled exactly what the ledger delivered (%d handled, %d missing, %d twice)",
     r.notifications, missing, r.dup_notifications);
  ok(r.reconnects == 3 * rounds && r.disabled == 0,
     "reconnect storm: %d session_reconnects completed (%d), no shard disabled (%d)", 3 * rounds, r.reconnects,
     r.disabled);
  int all_enabled = 1;
  for (size_t i = 0; i < tw_conduit_nshards(cd); i++) all_enabled &= shard_is(tw_conduit_shard(cd, i), "enabled");
  ok(all_enabled, "reconnect storm: every shard enabled at the end");
  end_client(c, &r);
  cJSON_Delete(mock_call(&M, "POST", "/stream/stop", "{}"));
}

/* ====================================================================================== */
/* session_reconnect while the shard's first PATCH is still in flight.                    */
static void scenario_reconnect_during_assignment(void) {
  reset_emulator();
  cJSON_Delete(mock_call(&M, "POST", "/faults", "{\"latency_ms\":400}"));
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  tw_error err;
  tw_conduit_opts co = {.shards = 1};
  int patches0 = route_calls("PATCH /eventsub/conduits/shards");
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  int assigning = wait_until(c, any_assigning, cd, 10);
  tw_shard *s = tw_conduit_shard(cd, 0);
  r.watch_shard = s;
  char path[256];
  snprintf(path, sizeof path, "/sessions/%s/reconnect", tw_shard_session_id(s));
  cJSON_Delete(mock_call(&M, "POST", path, "{}"));
  int ready = wait_until(c, is_ready, &r, 10);
  run_for(c, 1500);
  cJSON_Delete(mock_call(&M, "POST", "/faults", "{\"latency_ms\":0}"));
  tw_shard_stats ss;
  tw_shard_get_stats(s, &ss);
  ok(assigning && ready && shard_is(s, "enabled"), "reconnect during assignment: the shard ends enabled (%s)",
     tw_shard_state(s));
  ok(r.watch_enabled == 1 && r.reconnects == 1,
     "reconnect during assignment: one shard_enabled (regression: %d) and one reconnect event (%d)", r.watch_enabled,
     r.reconnects);
  cJSON *sess = mock_call(&M, "GET", "/sessions", NULL);
  int connected = 0;
  cJSON *it;
  cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(sess, "sessions")) connected +=
      cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "connected"));
  cJSON_Delete(sess);
  ok(connected == 1, "reconnect during assignment: the old socket was closed (%d connected)", connected);
  int patches = route_calls("PATCH /eventsub/conduits/shards") - patches0;
  ok(patches == 1,
     "reconnect during assignment: the welcome with the same session id needs no second PATCH (regression: %d)",
     patches);
  end_client(c, &r);
}

/* ====================================================================================== */
/* Tokens revoked while a conduit is starting: at the first token, then mid-assignment.  */
static void scenario_revoke_while_starting(void) {
  reset_emulator();
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  r.revoke_on_token = 1;
  tw_error err;
  tw_conduit_opts co = {.shards = 3};
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  int ready = wait_until(c, is_ready, &r, 15);
  ok(ready && r.tokens >= 2, "revoked at the first token: the conduit still starts (%d tokens)", r.tokens);
  /* a second conduit, revoked while its shards are being assigned */
  cJSON_Delete(mock_call(&M, "POST", "/faults", "{\"latency_ms\":200}"));
  r.ready = 0;
  int tokens = r.tokens;
  tw_conduit *cd2 = tw_conduit_open(c, &co, &err);
  int welcomed = 0;
  double end = now_s() + 10;
  while (!welcomed && now_s() < end) {
    tw_client_step(c, 5);
    for (size_t i = 0; i < tw_conduit_nshards(cd2); i++)
      if (shard_is(tw_conduit_shard(cd2, i), "connecting")) welcomed = 1;
  }
  cJSON_Delete(mock_call(&M, "POST", "/tokens/revoke", "{\"all\":true}"));
  ready = wait_until(c, is_ready, &r, 15);
  cJSON_Delete(mock_call(&M, "POST", "/faults", "{\"latency_ms\":0}"));
  ok(welcomed && ready && r.tokens > tokens, "revoked while the shards connect: the second conduit still gets ready (%d, %d new tokens)",
     ready, r.tokens - tokens);
  ok(r.secret_leaks == 0, "revocations: no error message holds the secret or the token");
  (void)cd;
  end_client(c, &r);
}

/* ====================================================================================== */
/* Secrets never appear in errors: a wrong secret, a bad token.                           */
static void scenario_secrets(void) {
  reset_emulator();
  rec r;
  tw_error err;
  static const char wrong[] = "wrong-secret-8c1f0b6e";
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = M.client_id;
  o.client_secret = wrong;
  o.api_base = M.api_base;
  o.auth_base = M.auth_base;
  o.eventsub_ws = M.eventsub_ws;
  tw_client *c = tw_client_new(&o, &err);
  memset(&r, 0, sizeof r);
  r.c = c;
  tw_client_on_event(c, on_event, &r);
  call k;
  int st = helix_sync(c, "GET", "/eventsub/conduits", NULL, 10, &k);
  ok(st != 200 && strcmp(k.code, "auth_failed") == 0 && !strstr(k.msg, wrong) && !strstr(r.last_error_msg, wrong),
     "a wrong client secret: %s (%s), the secret not in it", k.code, k.msg);
  end_client(c, &r);

  static const char badtok[] = "notarealtoken0123456789abcdef";
  tw_client_opts o2 = TW_CLIENT_OPTS_INIT;
  o2.client_id = M.client_id;
  o2.access_token = badtok;
  o2.api_base = M.api_base;
  o2.auth_base = M.auth_base;
  o2.eventsub_ws = M.eventsub_ws;
  c = tw_client_new(&o2, &err);
  memset(&r, 0, sizeof r);
  r.c = c;
  tw_client_on_event(c, on_event, &r);
  st = helix_sync(c, "GET", "/eventsub/conduits", NULL, 10, &k);
  ok(st == 401 && !strstr(k.msg, badtok) && !strstr(r.last_error_msg, badtok),
     "an invalid given token: %d %s (%s), the token not in it", st, k.code, k.msg);
  end_client(c, &r);
}

/* ====================================================================================== */
/* A message larger than one websocket read arrives whole.                                */
static void scenario_large_message(void) {
  reset_emulator();
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  tw_conduit *cd = open_ready(c, &r, 1);
  ok(cd != NULL && subscribe(c, cd, "800") == 202, "large message: conduit and subscription");
  if (!cd) { end_client(c, &r); return; }
  size_t n = 200000;
  char *body = malloc(n + 200);
  int len = snprintf(body, 200, "{\"type\":\"stream.online\",\"channels\":[\"800\"],\"count\":3,\"event\":{\"big\":\"");
  memset(body + len, 'x', n);
  snprintf(body + len + n, 100, "\"}}");
  int bad0 = 0;
  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  bad0 = (int)cs.bad_messages;
  cJSON_Delete(mock_call(&M, "POST", "/trigger", body));
  free(body);
  want_notes = 3;
  int got = wait_until(c, notes_at_least, &r, 10);
  tw_client_get_stats(c, &cs);
  ok(got && r.big_len == (int)n && (int)cs.bad_messages == bad0,
     "large message: 3 notifications of ~200 KB arrive whole (big = %d chars, %d bad)", r.big_len,
     (int)cs.bad_messages - bad0);
  end_client(c, &r);
}

/* ====================================================================================== */
/* The keepalive watchdog fires when the server goes silent (the emulator is stopped).    */
static int watch_disabled(void *a) { return ((rec *)a)->watch_disabled > 0; }
static int watch_enabled_twice(void *a) { return ((rec *)a)->watch_enabled >= 2; }

static void scenario_keepalive_watchdog(void) {
  reset_emulator();
  rec r;
  tw_client *c = new_client(&r, 0.05, 10, 0.5);
  tw_conduit *cd = open_ready(c, &r, 1);
  ok(cd != NULL, "keepalive watchdog: conduit ready with keepalive 10 s");
  if (!cd) { end_client(c, &r); return; }
  r.watch_shard = tw_conduit_shard(cd, 0);
  r.watch_enabled = 1;
  kill(M.pid, SIGSTOP);
  double t0 = now_s();
  int fired = wait_until(c, watch_disabled, &r, 25);
  double took = now_s() - t0;
  kill(M.pid, SIGCONT);
  ok(fired && took < 20, "keepalive watchdog: a silent server disables the shard (after %.1f s)", took);
  ok(wait_until(c, watch_enabled_twice, &r, 20), "keepalive watchdog: the shard is enabled again afterwards");
  end_client(c, &r);
}

/* ====================================================================================== */
/* tw_client_free at many moments of a bring-up (run under valgrind / ASan for leaks).    */
static void scenario_free_at_any_moment(void) {
  static const int steps[] = {0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 100};
  int freed = 0;
  for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    reset_emulator();
    rec r;
    tw_client *c = new_client(&r, 0.05, 0, 0);
    tw_error err;
    tw_conduit_opts co = {.shards = 3};
    tw_conduit_open(c, &co, &err);
    call k = {0};
    tw_helix(c, "GET", "/eventsub/conduits", NULL, 0, on_call, &k, &err);
    for (int s = 0; s < steps[i]; s++) tw_client_step(c, 5);
    end_client(c, &r);
    freed += k.done <= 1;
  }
  ok(freed == (int)(sizeof steps / sizeof steps[0]), "client freed at 14 moments of a bring-up");
  /* and during a session_reconnect, and during a backoff */
  reset_emulator();
  rec r;
  tw_client *c = new_client(&r, 0.5, 0, 0);
  tw_conduit *cd = open_ready(c, &r, 2);
  if (cd) {
    char path[256];
    snprintf(path, sizeof path, "/sessions/%s/reconnect", tw_shard_session_id(tw_conduit_shard(cd, 0)));
    cJSON_Delete(mock_call(&M, "POST", path, "{}"));
    snprintf(path, sizeof path, "/sessions/%s/close", tw_shard_session_id(tw_conduit_shard(cd, 1)));
    cJSON_Delete(mock_call(&M, "POST", path, "{\"code\":4000}"));
    for (int s = 0; s < 6; s++) tw_client_step(c, 5);
  }
  end_client(c, &r);
  ok(cd != NULL, "client freed during a session_reconnect and a backoff");
#ifdef HAVE_LSAN
  if (!leak_reported) ok(__lsan_do_recoverable_leak_check() == 0, "client freed at any moment: nothing leaks");
#endif
}

/* ====================================================================================== */
/* The rate-limit bucket emptied by many calls: none of the 429s reaches a caller.        */
typedef struct many {
  call k[60];
  int n;
} many;
static int many_done(void *a) {
  many *m = a;
  for (int i = 0; i < m->n; i++)
    if (!m->k[i].done) return 0;
  return 1;
}

static void scenario_rate_limit(void) {
  reset_emulator();
  cJSON_Delete(mock_call(&M, "POST", "/config", "{\"rate_limit\":20}"));
  rec r;
  tw_client *c = new_client(&r, 0.05, 0, 0);
  static many m;
  memset(&m, 0, sizeof m);
  m.n = 36;
  tw_error err;
  int queued = 0;
  for (int i = 0; i < m.n; i++)
    queued += tw_helix(c, "GET", "/eventsub/conduits", NULL, 0, on_call, &m.k[i], &err) == 0;
  double t0 = now_s();
  int all = wait_until(c, many_done, &m, 75);
  double took = now_s() - t0;
  int ok200 = 0, got429 = 0;
  for (int i = 0; i < m.n; i++) {
    ok200 += m.k[i].status == 200;
    got429 += m.k[i].status == 429;
  }
  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  for (int i = 0; i < m.n; i++)
    if (!m.k[i].done || m.k[i].status != 200)
      fprintf(stderr, "# rate limit: call %d: done %d status %d %s %s\n", i, m.k[i].done, m.k[i].status, m.k[i].code,
              m.k[i].msg);
  fprintf(stderr, "# rate limit: %llu requests sent, %llu retries, %llu waits, remaining %d\n",
          (unsigned long long)cs.helix_requests, (unsigned long long)cs.helix_retries,
          (unsigned long long)cs.helix_rate_waits, cs.ratelimit_remaining);
  ok(queued == m.n && all, "rate limit 20/min: 36 calls all answered (%.1f s)", took);
  ok(ok200 == m.n && got429 == 0, "rate limit 20/min: all 200 (%d), no 429 reached a caller (%d)", ok200, got429);
  ok(cs.helix_rate_waits > 0, "rate limit 20/min: the client waited for the bucket (%llu waits, %llu retries)",
     (unsigned long long)cs.helix_rate_waits, (unsigned long long)cs.helix_retries);
  end_client(c, &r);
  cJSON_Delete(mock_call(&M, "POST", "/config", "{\"rate_limit\":800}"));
}

int main(int argc, char **argv) {
  tw_set_lws_log_level(0);
  if (mock_start(&M) != 0) {
    ok(0, "the emulator starts");
    return done_testing();
  }
  /* TW_REVIEW_ONLY=<name> runs one scenario (for debugging) */
  const char *only = getenv("TW_REVIEW_ONLY");
  debug_events = getenv("TW_REVIEW_DEBUG") != NULL;
  int slow = !getenv("TW_REVIEW_QUICK");
  (void)argc;
  (void)argv;
#define RUN(name, fn) \
  if (!only || strcmp(only, name) == 0) fn()
  RUN("reconnect_old_dies_first", scenario_reconnect_old_dies_first);
  RUN("close_from_shard_enabled", scenario_close_from_shard_enabled);
  RUN("free_with_patch_in_flight", scenario_free_with_patch_in_flight);
  RUN("short_lived_token", scenario_short_lived_token);
  RUN("close_from_notification", scenario_close_from_notification);
  RUN("close_with_calls_in_flight", scenario_close_with_calls_in_flight);
  RUN("stop_from_handler", scenario_stop_from_handler);
  RUN("shard_reconnect", scenario_shard_reconnect);
  RUN("open_existing", scenario_open_existing);
  RUN("thousand_exactly_once", scenario_thousand_exactly_once);
  RUN("kill_under_stream", scenario_kill_under_stream);
  RUN("reconnect_storm", scenario_reconnect_storm);
  RUN("reconnect_during_assignment", scenario_reconnect_during_assignment);
  RUN("revoke_while_starting", scenario_revoke_while_starting);
  RUN("secrets", scenario_secrets);
  RUN("large_message", scenario_large_message);
  RUN("free_at_any_moment", scenario_free_at_any_moment);
  if (slow) {
    RUN("keepalive_watchdog", scenario_keepalive_watchdog);
    RUN("rate_limit", scenario_rate_limit);
  }
  mock_stop(&M);
  return done_testing();
}
