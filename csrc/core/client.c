/* client.c - the client: options, the loop, embedding, timers, and the one place every
 * event passes (tw_emit / tw_client_deliver). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

void tw_client_opts_init(tw_client_opts *o) { *o = (tw_client_opts)TW_CLIENT_OPTS_INIT; }

/* The first numeric option out of range, as a message; NULL when all are in range. NaN
 * fails every comparison, so it is refused too. */
static const char *check_numbers(const tw_client_opts *o) {
  if (o->keepalive_s != 0 && (o->keepalive_s < 10 || o->keepalive_s > 600))
    return "keepalive must be between 10 and 600 seconds (0: the server's default)";
  if (!(o->keepalive_slack_s >= 0)) return "keepalive_slack must be >= 0";
  if (!(o->dedupe_window_s > 0)) return "dedupe_window must be > 0";
  if (o->dedupe_max < 1) return "dedupe_max must be >= 1";
  if (o->max_age_s != o->max_age_s) return "max_age must be a number";
  if (!(o->backoff_min_s > 0)) return "backoff_min must be > 0";
  if (!(o->backoff_max_s >= o->backoff_min_s)) return "backoff_max must be >= backoff_min";
  if (!(o->http_timeout_s > 0)) return "http_timeout must be > 0";
  if (o->http_retries < 0) return "http_retries must be >= 0";
  if (o->http_max_inflight < 1) return "http_max_inflight must be >= 1";
  if (o->patch_batch < 1 || o->patch_batch > 100) return "patch_batch must be between 1 and 100";
  if (!(o->validate_interval_s >= 0)) return "validate_interval must be >= 0";
  if (!(o->verify_interval_s >= 0)) return "verify_interval must be >= 0";
  if (o->max_message_bytes < 1024) return "max_message_bytes must be >= 1024";
  if (o->tls_handshakes < 0) return "tls_handshakes must be >= 0";
  if (!(o->welcome_timeout_s > 0 && o->welcome_timeout_s <= 600)) return "welcome_timeout must be > 0 and <= 600";
  if (!(o->reconnect_welcome_timeout_s > 0 && o->reconnect_welcome_timeout_s <= 600))
    return "reconnect_welcome_timeout must be > 0 and <= 600";
  return NULL;
}

static int check_base(const char *name, const char *v, const char *const *schemes, tw_error *err) {
  for (size_t i = 0; schemes[i]; i++)
    if (strncmp(v, schemes[i], strlen(schemes[i])) == 0) return 0;
  tw_err_set(err, "invalid_argument", 0, "%s must start with %s%s%s", name, schemes[0], schemes[1] ? " or " : "",
             schemes[1] ? schemes[1] : "");
  return -1;
}

static char *dup_base(const char *v) { /* without a trailing slash */
  size_t n = strlen(v);
  while (n > 0 && v[n - 1] == '/') n--;
  return tw_strndup(v, n);
}

tw_client *tw_client_new(const tw_client_opts *o, tw_error *err) {
  static const char *const http[] = {"https://", "http://", NULL};
  static const char *const ws[] = {"wss://", "ws://", NULL};
  tw_err_clear(err);
  if (!o) {
    tw_err_set(err, "invalid_argument", 0, "options are required");
    return NULL;
  }
  /* no client_id or no secret/token is allowed: such a client (a queue worker) fails its
   * Helix calls with no_credentials instead */
  const char *api = o->api_base ? o->api_base : "https://api.twitch.tv/helix";
  const char *auth = o->auth_base ? o->auth_base : "https://id.twitch.tv/oauth2";
  const char *wsu = o->eventsub_ws ? o->eventsub_ws : "wss://eventsub.wss.twitch.tv/ws";
  if (check_base("api_base", api, http, err) || check_base("auth_base", auth, http, err) ||
      check_base("eventsub_ws", wsu, ws, err))
    return NULL;
  const char *bad = check_numbers(o);
  if (bad) {
    tw_err_set(err, "invalid_argument", 0, "%s (start from TW_CLIENT_OPTS_INIT or tw_client_opts_init)", bad);
    return NULL;
  }
  tw_client *c = calloc(1, sizeof *c);
  if (!c) {
    tw_err_set(err, "no_memory", 0, "out of memory");
    return NULL;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT); /* refcounted by curl; never cleaned up here */
  c->client_id = tw_strdup(o->client_id ? o->client_id : "");
  c->client_secret = o->client_secret && *o->client_secret ? tw_strdup(o->client_secret) : NULL;
  c->given_token = o->access_token && *o->access_token ? tw_strdup(o->access_token) : NULL;
  c->api_base = dup_base(api);
  c->auth_base = dup_base(auth);
  c->eventsub_ws = tw_strdup(wsu);
  c->keepalive_s = o->keepalive_s;
  c->keepalive_slack_s = o->keepalive_slack_s;
  c->max_age_s = o->max_age_s;
  c->backoff_min_s = o->backoff_min_s;
  c->backoff_max_s = o->backoff_max_s;
  c->http_timeout_s = o->http_timeout_s;
  c->http_retries = o->http_retries;
  c->http_max_inflight = o->http_max_inflight;
  c->patch_batch = o->patch_batch;
  c->validate_interval_s = o->validate_interval_s;
  c->verify_interval_s = o->verify_interval_s;
  c->max_message_bytes = o->max_message_bytes;
  c->tls_handshakes = o->tls_handshakes;
  c->welcome_timeout_s = o->welcome_timeout_s;
  c->reconnect_welcome_timeout_s = o->reconnect_welcome_timeout_s;
  c->dedupe_window_s = o->dedupe_window_s;
  c->dedupe_max = o->dedupe_max;
  c->stats.ratelimit_remaining = -1;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  c->rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)c;
  if (!c->client_id || !c->api_base || !c->auth_base || !c->eventsub_ws) goto nomem;

  if (o->uv_loop) {
    c->loop = o->uv_loop;
  } else {
    if (uv_loop_init(&c->own_loop) != 0) goto nomem;
    c->loop = &c->own_loop;
    c->owns_loop = true;
  }
  uv_update_time(c->loop);
  c->dedupe = tw_dedupe_new(o->dedupe_max, (uint64_t)(o->dedupe_window_s * 1000));
  c->http = tw_http_new(c->loop);
  c->doc_pool = tw_json_pool_new(4u << 20, 64u << 10); /* at most 4 MB waiting */
  if (!c->dedupe || !c->http || !c->doc_pool) goto nomem;
  c->hx = tw_helix_new(c);
  if (!c->hx) goto nomem;
  if (tw_ws_init(c, err) != 0) {
    tw_client_free(c);
    return NULL;
  }
  return c;
nomem:
  tw_err_set(err, "no_memory", 0, "could not set up the client");
  tw_client_free(c);
  return NULL;
}

struct tw_timer {
  uv_timer_t h;
  tw_client *c;
  tw_timer_fn cb;
  void *user;
  bool repeat, firing, cancelled;
  struct tw_timer *next, *prev;
};

static void timer_unlink(tw_timer *t) {
  if (t->prev) t->prev->next = t->next;
  else t->c->timers = t->next;
  if (t->next) t->next->prev = t->prev;
  t->next = t->prev = NULL;
}

static void timer_free_cb(uv_handle_t *h) { free(h->data); }

void tw_timer_cancel(tw_timer *t) {
  if (!t || t->cancelled) return;
  t->cancelled = true;
  timer_unlink(t);
  uv_timer_stop(&t->h);
  uv_close((uv_handle_t *)&t->h, timer_free_cb);
}

static void on_timer(uv_timer_t *h) {
  tw_timer *t = h->data;
  t->firing = true;
  t->cb(t->user);
  t->firing = false;
  if (!t->repeat && !t->cancelled) tw_timer_cancel(t);
}

tw_timer *tw_timer_start(tw_client *c, uint64_t ms, uint64_t repeat_ms, tw_timer_fn cb, void *user) {
  if (!c || !cb || c->freeing) return NULL;
  tw_timer *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->c = c;
  t->cb = cb;
  t->user = user;
  t->repeat = repeat_ms > 0;
  uv_timer_init(c->loop, &t->h);
  t->h.data = t;
  t->next = c->timers;
  if (c->timers) c->timers->prev = t;
  c->timers = t;
  uv_timer_start(&t->h, on_timer, ms, repeat_ms);
  return t;
}

uint64_t tw_client_now_ms(tw_client *c) { return uv_now(c->loop); }

static void run_until_quiet(tw_client *c, int max_iter) {
  for (int i = 0; i < max_iter && uv_loop_alive(c->loop); i++) uv_run(c->loop, UV_RUN_NOWAIT);
}

static void on_guard(uv_timer_t *t) { (void)t; }

/* Runs the owned loop until nothing is left on it, blocking in between (lws may close
 * TLS connections over a few iterations), for at most max_ms. */
static void drain_loop(tw_client *c, uint64_t max_ms) {
  uv_timer_t guard;
  uv_timer_init(c->loop, &guard);
  uv_timer_start(&guard, on_guard, max_ms, 0);
  uv_unref((uv_handle_t *)&guard); /* the guard alone does not keep the loop alive */
  uint64_t end = uv_now(c->loop) + max_ms;
  while (uv_loop_alive(c->loop) && uv_now(c->loop) < end) uv_run(c->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&guard, NULL);
  uv_run(c->loop, UV_RUN_NOWAIT);
}

/* Runs the loop until every session is gone, for at most max_ms. */
static void drain_sessions(tw_client *c, uint64_t max_ms) {
  uv_timer_t guard;
  uv_timer_init(c->loop, &guard);
  uv_timer_start(&guard, on_guard, max_ms, 0);
  uint64_t end = uv_now(c->loop) + max_ms;
  while (tw_ws_live(c) && uv_now(c->loop) < end) uv_run(c->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&guard, NULL);
  uv_run(c->loop, UV_RUN_NOWAIT);
}

int tw_client_free(tw_client *c) {
  if (!c) return TW_OK;
  if (c->running || c->depth > 0) return TW_EBUSY;
  /* close frames first, and a bounded moment for them to be written and answered, so
   * Twitch sees 1000 rather than a dropped connection */
  if (c->lws && !c->freeing) {
    /* what the header promises: no callback of a pending request or timer from here */
    while (c->timers) tw_timer_cancel(c->timers);
    if (c->hx) tw_helix_state_closing(c->hx);
    tw_conduits_close_all(c);
    tw_wsessions_close_all(c);
    tw_ws_close_all(c, 1000);
    if (tw_ws_live(c)) drain_sessions(c, 1000);
  }
  tw_httpds_close_all(c);
  c->freeing = true;
  c->on_event = NULL;
  tw_queues_free_all(c);
  tw_conduits_free_all(c);
  while (c->timers) tw_timer_cancel(c->timers);
  if (c->hx) tw_helix_state_closing(c->hx);
  if (c->http) tw_http_free(c->http);
  if (c->hx) tw_helix_free(c->hx);
  tw_wsessions_free_all(c); /* after the HTTP requests were cancelled (their callbacks ran) */
  if (c->lws) {
    tw_ws_destroy_begin(c);
    if (c->owns_loop) drain_loop(c, 2000);
    else
      for (int i = 0; i < 8; i++) uv_run(c->loop, UV_RUN_NOWAIT);
    tw_ws_destroy_end(c);
  }
  if (c->owns_loop) {
    run_until_quiet(c, 1000);
    uv_loop_close(c->loop);
  } else {
    uv_run(c->loop, UV_RUN_NOWAIT); /* let our close callbacks run on the host's loop */
  }
  tw_dedupe_free(c->dedupe);
  tw_json_pool_free(c->doc_pool);
  if (c->client_secret) memset(c->client_secret, 0, strlen(c->client_secret));
  if (c->given_token) memset(c->given_token, 0, strlen(c->given_token));
  free(c->client_id);
  free(c->client_secret);
  free(c->given_token);
  free(c->api_base);
  free(c->auth_base);
  free(c->eventsub_ws);
  free(c);
  return TW_OK;
}

int tw_client_run(tw_client *c) {
  if (c->running) return TW_EBUSY;
  c->running = true;
  c->stop_requested = false;
  while (!c->stop_requested) {
    if (uv_run(c->loop, UV_RUN_ONCE) == 0 && !c->stop_requested) {
      /* nothing left that could produce an event */
      break;
    }
  }
  c->running = false;
  return 0;
}

static void on_step_timeout(uv_timer_t *t) { (void)t; }

int tw_client_step(tw_client *c, int timeout_ms) {
  if (c->running) return TW_EBUSY;
  c->running = true;
  if (timeout_ms == 0) {
    uv_run(c->loop, UV_RUN_NOWAIT);
  } else if (timeout_ms < 0) {
    uv_run(c->loop, UV_RUN_ONCE);
  } else {
    uv_timer_t t;
    uv_timer_init(c->loop, &t);
    uv_timer_start(&t, on_step_timeout, (uint64_t)timeout_ms, 0);
    uv_run(c->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(c->loop, UV_RUN_NOWAIT); /* lets the close complete (t lives on this stack) */
  }
  c->running = false;
  return 0;
}

void tw_client_stop(tw_client *c) {
  c->stop_requested = true;
  uv_stop(c->loop);
}

int tw_client_pollfd(tw_client *c) { return uv_backend_fd(c->loop); }

int tw_client_timeout_ms(tw_client *c) {
  if (!uv_loop_alive(c->loop)) return -1; /* libuv says 0 here: a host would spin */
  return uv_backend_timeout(c->loop);
}

void *tw_client_loop(tw_client *c) { return c->loop; }

void tw_client_get_options(const tw_client *c, tw_client_opts *o) {
  tw_client_opts_init(o);
  o->client_id = c->client_id[0] ? c->client_id : NULL; /* none given: NULL, as given */
  o->api_base = c->api_base;
  o->auth_base = c->auth_base;
  o->eventsub_ws = c->eventsub_ws;
  o->uv_loop = c->owns_loop ? NULL : c->loop;
  o->keepalive_s = c->keepalive_s;
  o->keepalive_slack_s = c->keepalive_slack_s;
  o->dedupe_window_s = c->dedupe_window_s;
  o->dedupe_max = c->dedupe_max;
  o->max_age_s = c->max_age_s;
  o->backoff_min_s = c->backoff_min_s;
  o->backoff_max_s = c->backoff_max_s;
  o->http_timeout_s = c->http_timeout_s;
  o->http_retries = c->http_retries;
  o->http_max_inflight = c->http_max_inflight;
  o->patch_batch = c->patch_batch;
  o->validate_interval_s = c->validate_interval_s;
  o->verify_interval_s = c->verify_interval_s;
  o->max_message_bytes = c->max_message_bytes;
  o->tls_handshakes = c->tls_handshakes;
  o->welcome_timeout_s = c->welcome_timeout_s;
  o->reconnect_welcome_timeout_s = c->reconnect_welcome_timeout_s;
}

void tw_client_get_stats(const tw_client *c, tw_client_stats *out) { *out = c->stats; }

void tw_client_on_event(tw_client *c, tw_event_fn fn, void *user) {
  c->on_event = fn;
  c->on_event_user = user;
}

void tw_emit(tw_client *c, const tw_event *ev) {
  if (!c->on_event || c->freeing) return;
  c->depth++;
  c->on_event(c->on_event_user, ev);
  c->depth--;
}

void tw_emit_error(tw_client *c, tw_conduit *cd, tw_shard *s, const tw_error *e) {
  tw_event ev = {.type = TW_EV_ERROR, .conduit = cd, .shard = s, .error = e};
  tw_emit(c, &ev);
}

void tw_set_lws_log_level(int level) {
  int l = LLL_ERR;
  if (level >= 1) l |= LLL_WARN;
  if (level >= 2) l |= LLL_NOTICE;
  lws_set_log_level(l, NULL);
}

/* The wall clock for the replay guard, from the loop's cached time: clock_gettime at most
 * once a second instead of once a message. */
static double guard_wall_now(tw_client *c) {
  uint64_t now = uv_now(c->loop);
  if (c->wall_at_ms == 0 || now - c->wall_at_ms >= 1000) {
    c->wall_base = tw_wall_now() - (double)now / 1000.0;
    c->wall_at_ms = now ? now : 1;
  }
  return c->wall_base + (double)now / 1000.0;
}

/* A message's completion (m->done) held until the gateway's queue stored the message:
 * when it never will (the sender retries), the message id is forgotten so that the retry
 * is taken. */
typedef struct held_done {
  tw_client *c;
  void (*done)(void *user, const tw_error *err);
  void *user;
  size_t id_len;
  char id[];
} held_done;

static void held_done_stored(void *user, const tw_error *err) {
  held_done *h = user;
  if (err && h->c->dedupe) tw_dedupe_forget(h->c->dedupe, h->id, h->id_len);
  h->done(h->user, err);
  free(h);
}

/* The gateway's publish, its completion (if any) held for the id: true when the
 * message is not for local handlers. */
static bool publish(tw_client *c, const tw_msg *m) {
  held_done *h = m->done ? malloc(sizeof *h + m->id_len) : NULL;
  if (h) {
    h->c = c;
    h->done = m->done;
    h->user = m->done_user;
    h->id_len = m->id_len;
    if (m->id_len) memcpy(h->id, m->id, m->id_len);
    return tw_queue_gateway_publish(c->gateway, m, held_done_stored, h);
  }
  if (m->done) { /* no memory to hold it: not stored, the sender retries (the id forgotten) */
    tw_error e;
    tw_err_set(&e, "no_memory", 0, "out of memory: message not queued");
    if (c->dedupe) tw_dedupe_forget(c->dedupe, m->id, m->id_len);
    m->done(m->done_user, &e);
    return true;
  }
  return tw_queue_gateway_publish(c->gateway, m, NULL, NULL);
}

/* The delivery, compiled twice: without a completion (websocket messages: the hot
 * path, as if there were none) and with one (completes: m->done is set). */
static inline __attribute__((always_inline)) bool deliver(tw_client *c, const tw_msg *m, tw_conduit *cd, tw_shard *s,
                                                          uint64_t *dup_counter, bool completes) {
  if (m->id_len && tw_dedupe_seen(c->dedupe, m->id, m->id_len, uv_now(c->loop))) {
    c->stats.duplicates++;
    if (dup_counter) (*dup_counter)++;
    if (completes) m->done(m->done_user, NULL); /* delivered before: nothing to retry */
    return false;
  }
  double t, age = 0;
  bool timed = (c->max_age_s >= 0 || s) && m->timestamp && tw_parse_rfc3339(m->timestamp, &t);
  if (timed) age = guard_wall_now(c) - t;
  if (timed && c->max_age_s >= 0 && age > c->max_age_s) {
    c->stats.stale++;
    if (s) tw_shard_note_stale(s);
    if (completes) m->done(m->done_user, NULL); /* a retry would be as old */
    tw_error e;
    tw_err_set(&e, "stale_message", 0, "message %s is older than %.0f s (timestamp %s): not delivered",
               m->id ? m->id : "?", c->max_age_s, m->timestamp);
    tw_emit_error(c, cd, s, &e);
    return false;
  }
  bool notif = m->message_type && m->message_type[0] == 'n';
  if (notif) c->stats.notifications++;
  if (timed && s && notif) tw_shard_note_lag(s, age);
  if (c->gateway && !m->wsession) { /* a gateway publishes its conduits' messages; a plain
                                      * websocket session's are its own handlers' */
    if (publish(c, m)) return true;
  } else if (completes) {
    m->done(m->done_user, NULL); /* answered first: delivered whatever the handlers do */
  }
  tw_event ev = {.type = notif ? TW_EV_NOTIFICATION : TW_EV_REVOCATION,
                 .conduit = cd,
                 .shard = s,
                 .msg = m,
                 .status = m->status,
                 .wsession = m->wsession};
  if (notif && (c->stats.notifications & (TW_DISPATCH_SAMPLE - 1)) == 0) { /* metrics: time one in 16 */
    uint64_t t0 = uv_hrtime();
    tw_emit(c, &ev);
    tw_metrics_note_dispatch(c, uv_hrtime() - t0);
  } else {
    tw_emit(c, &ev);
  }
  return true;
}

static __attribute__((noinline)) bool deliver_completing(tw_client *c, const tw_msg *m, tw_conduit *cd, tw_shard *s,
                                                         uint64_t *dup_counter) {
  return deliver(c, m, cd, s, dup_counter, true);
}

bool tw_client_deliver(tw_client *c, const tw_msg *m, tw_conduit *cd, tw_shard *s, uint64_t *dup_counter) {
  if (m->done) return deliver_completing(c, m, cd, s, dup_counter);
  return deliver(c, m, cd, s, dup_counter, false);
}
