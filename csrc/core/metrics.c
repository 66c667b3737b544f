/* metrics.c - the Prometheus text exposition (format 0.0.4) of a client's counters.
 *
 * Rendering only reads: every counter it shows is kept anyway (tw_client_stats,
 * tw_shard_stats, the lag histogram counted where the replay guard reads the timestamp).
 * The few counted for metrics alone sit off the message's way: Helix answers by endpoint
 * and status (once per HTTP answer), socket closes by code (once per close), and the
 * handler-time histogram, which times one notification in TW_DISPATCH_SAMPLE.
 *
 * Names are twconduit_*, in base units (seconds, bytes); counters end in _total; labels
 * are conduit, shard, transport, plus code / status / endpoint / reason from small fixed
 * sets. Each family's HELP and TYPE come once, its samples together. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- what is counted for metrics ---- */

static const char *const ENDPOINTS[TW_MX_ENDPOINTS] = {
    "/oauth2/token", "/oauth2/validate", "/eventsub/conduits", "/eventsub/conduits/shards",
    "/eventsub/subscriptions", "/users", "other"};
static const char *const STATUSES[TW_MX_STATUSES] = {"none", "2xx", "400", "401", "403", "404",
                                                     "409", "429", "4xx", "5xx", "other"};
static const int CLOSE_CODES[TW_CLOSE_KINDS] = {1000, 1001, 1006, 4000, 4001, 4002, 4003, 4004, 4005, 4006, 4007, 0};

static int endpoint_index(const char *path) {
  size_t n = strcspn(path, "?");
  for (int i = 0; i < TW_MX_ENDPOINTS - 1; i++)
    if (strlen(ENDPOINTS[i]) == n && memcmp(ENDPOINTS[i], path, n) == 0) return i;
  return TW_MX_ENDPOINTS - 1;
}

static int status_index(int st) {
  if (st <= 0) return 0;
  if (st >= 200 && st < 300) return 1;
  switch (st) {
  case 400: return 2;
  case 401: return 3;
  case 403: return 4;
  case 404: return 5;
  case 409: return 6;
  case 429: return 7;
  default: break;
  }
  if (st >= 400 && st < 500) return 8;
  if (st >= 500 && st < 600) return 9;
  return 10;
}

void tw_metrics_note_helix(tw_client *c, const char *path, int status) {
  c->mx.helix[endpoint_index(path ? path : "")][status_index(status)]++;
}

void tw_metrics_note_dispatch(tw_client *c, uint64_t ns) {
  uint64_t us = ns / 1000;
  unsigned k = us ? 64u - (unsigned)__builtin_clzll(us) : 0; /* [2^(k-1), 2^k) us */
  if (k >= TW_DISPATCH_BUCKETS) k = TW_DISPATCH_BUCKETS - 1;
  c->mx.dispatch[k]++;
  c->mx.dispatch_sum_s += (double)ns / 1e9;
}

int tw_close_code_index(int code) {
  for (int i = 0; i < TW_CLOSE_KINDS - 1; i++)
    if (CLOSE_CODES[i] == code) return i;
  return TW_CLOSE_KINDS - 1;
}

int tw_close_code_of(int index) { return index >= 0 && index < TW_CLOSE_KINDS ? CLOSE_CODES[index] : 0; }

void tw_metrics_note_close(tw_shard_stats *st, int code) { st->closes[tw_close_code_index(code)]++; }

/* ---- the writer ---- */

typedef struct wr {
  tw_buf b;
  int failed;
} wr;

static void put(wr *w, const char *s, size_t n) {
  if (!w->failed && tw_buf_append(&w->b, s, n) != 0) w->failed = 1;
}
static void puts_(wr *w, const char *s) { put(w, s, strlen(s)); }

static void putf(wr *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(wr *w, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  put(w, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* a label value: backslash, double quote and newline escaped */
static void put_label_value(wr *w, const char *v) {
  for (const char *p = v ? v : ""; *p; p++) {
    if (*p == '\\') puts_(w, "\\\\");
    else if (*p == '"') puts_(w, "\\\"");
    else if (*p == '\n') puts_(w, "\\n");
    else put(w, p, 1);
  }
}

static void put_value(wr *w, double v) {
  if (isnan(v)) puts_(w, "NaN");
  else if (isinf(v)) puts_(w, v > 0 ? "+Inf" : "-Inf");
  else if (v == floor(v) && fabs(v) < 9007199254740992.0) putf(w, "%.0f", v);
  else putf(w, "%.17g", v);
}

static void family(wr *w, const char *name, const char *type, const char *help) {
  putf(w, "# HELP %s ", name);
  for (const char *p = help; *p; p++) { /* HELP escapes backslash and newline */
    if (*p == '\\') puts_(w, "\\\\");
    else if (*p == '\n') puts_(w, "\\n");
    else put(w, p, 1);
  }
  putf(w, "\n# TYPE %s %s\n", name, type);
}

/* labels: name, value pairs ending with NULL */
static void sample_l(wr *w, const char *name, const char *suffix, const char *const *labels, const char *xname,
                     const char *xvalue, double v) {
  puts_(w, name);
  if (suffix) puts_(w, suffix);
  int any = 0;
  for (size_t i = 0; labels && labels[i]; i += 2) {
    puts_(w, any ? "," : "{");
    any = 1;
    puts_(w, labels[i]);
    puts_(w, "=\"");
    put_label_value(w, labels[i + 1]);
    puts_(w, "\"");
  }
  if (xname) {
    puts_(w, any ? "," : "{");
    any = 1;
    puts_(w, xname);
    puts_(w, "=\"");
    put_label_value(w, xvalue);
    puts_(w, "\"");
  }
  if (any) puts_(w, "}");
  puts_(w, " ");
  put_value(w, v);
  puts_(w, "\n");
}

/* a histogram of n power-of-two buckets: bucket 0 below `unit`, bucket k (k >= 1) in
 * [unit 2^(k-1), unit 2^k), the last everything above */
static void histogram(wr *w, const char *name, const char *const *labels, const uint64_t *b, int n, double unit,
                      double sum) {
  uint64_t acc = 0;
  char le[48];
  for (int k = 0; k < n - 1; k++) {
    acc += b[k];
    snprintf(le, sizeof le, "%.10g", unit * ldexp(1.0, k));
    sample_l(w, name, "_bucket", labels, "le", le, (double)acc);
  }
  acc += b[n - 1];
  sample_l(w, name, "_bucket", labels, "le", "+Inf", (double)acc);
  sample_l(w, name, "_sum", labels, NULL, NULL, sum);
  sample_l(w, name, "_count", labels, NULL, NULL, (double)acc);
}

/* ---- shards ---- */

typedef struct shard_row {
  tw_shard *s;
  tw_shard_stats st;
  const char *labels[7]; /* conduit, shard, transport */
} shard_row;

static const char *const STATES[] = {"idle", "connecting", "welcomed", "assigning", "enabled", "releasing", "closed"};

typedef double (*shard_get)(const shard_row *r);
#define GETTER(fn, expr) \
  static double fn(const shard_row *r) { return (double)(expr); }
GETTER(g_notifications, r->st.notifications)
GETTER(g_duplicates, r->st.duplicates)
GETTER(g_stale, r->st.stale)
GETTER(g_bytes, r->st.bytes)
GETTER(g_keepalives, r->st.keepalives)
GETTER(g_connects, r->st.connects)
GETTER(g_failed, r->st.failed_connects)
GETTER(g_reconnects, r->st.reconnects)
GETTER(g_outages, r->st.outages)
GETTER(g_assignments, r->st.assignments)
GETTER(g_assign_errors, r->st.assign_errors)
GETTER(g_lost, r->st.lost)
GETTER(g_up, strcmp(tw_shard_state(r->s), "enabled") == 0)
GETTER(g_last_close, r->st.last_close_code)

static const struct {
  const char *name, *type, *help;
  shard_get get;
} SHARD_FAMILIES[] = {
    {"twconduit_shard_notifications_total", "counter", "Notifications delivered from the shard.", g_notifications},
    {"twconduit_shard_duplicates_total", "counter", "Messages dropped as already seen (same message id).",
     g_duplicates},
    {"twconduit_shard_stale_total", "counter", "Notifications older than max_age: reported, not delivered.", g_stale},
    {"twconduit_shard_received_bytes_total", "counter", "Websocket payload bytes received.", g_bytes},
    {"twconduit_shard_keepalives_total", "counter", "session_keepalive messages received.", g_keepalives},
    {"twconduit_shard_connects_total", "counter", "Sockets opened.", g_connects},
    {"twconduit_shard_failed_connects_total", "counter", "Sockets that ended before being assigned.", g_failed},
    {"twconduit_shard_reconnects_total", "counter", "session_reconnect messages handled.", g_reconnects},
    {"twconduit_shard_outages_total", "counter", "Times the shard lost its transport (shard_disabled).", g_outages},
    {"twconduit_shard_assignments_total", "counter", "Successful Update Conduit Shards calls for the shard.",
     g_assignments},
    {"twconduit_shard_assignment_errors_total", "counter", "Failed assignments of the shard.", g_assign_errors},
    {"twconduit_shard_lost_total", "counter", "Verifications that found Twitch pointing the shard elsewhere.",
     g_lost},
    {"twconduit_shard_up", "gauge", "1 when the shard is enabled on its transport, else 0.", g_up},
    {"twconduit_shard_last_close_code", "gauge", "Close code of the shard's last socket (0: none).", g_last_close},
};

static void render_shards(wr *w, tw_client *c, shard_row *rows, size_t n) {
  for (size_t f = 0; f < sizeof SHARD_FAMILIES / sizeof SHARD_FAMILIES[0]; f++) {
    family(w, SHARD_FAMILIES[f].name, SHARD_FAMILIES[f].type, SHARD_FAMILIES[f].help);
    for (size_t i = 0; i < n; i++) sample_l(w, SHARD_FAMILIES[f].name, NULL, rows[i].labels, NULL, NULL,
                                            SHARD_FAMILIES[f].get(&rows[i]));
  }
  family(w, "twconduit_shard_closes_total", "counter", "Socket closes by websocket close code.");
  for (size_t i = 0; i < n; i++)
    for (int k = 0; k < TW_CLOSE_KINDS; k++) {
      if (!rows[i].st.closes[k]) continue;
      char code[16];
      if (tw_close_code_of(k)) snprintf(code, sizeof code, "%d", tw_close_code_of(k));
      else snprintf(code, sizeof code, "other");
      sample_l(w, "twconduit_shard_closes_total", NULL, rows[i].labels, "code", code, (double)rows[i].st.closes[k]);
    }
  family(w, "twconduit_shard_state", "gauge", "The shard's state here: 1 for the current one.");
  for (size_t i = 0; i < n; i++) {
    const char *cur = tw_shard_state(rows[i].s);
    for (size_t k = 0; k < sizeof STATES / sizeof STATES[0]; k++)
      sample_l(w, "twconduit_shard_state", NULL, rows[i].labels, "status", STATES[k], strcmp(cur, STATES[k]) == 0);
  }
  uint64_t now = tw_client_now_ms(c);
  double wall = tw_wall_now();
  family(w, "twconduit_shard_last_message_timestamp_seconds", "gauge",
         "Unix time of the last message or keepalive on the shard (0: none yet).");
  for (size_t i = 0; i < n; i++) {
    uint64_t t = rows[i].st.last_message_ms;
    double v = t && t <= now ? wall - (double)(now - t) / 1000.0 : 0;
    sample_l(w, "twconduit_shard_last_message_timestamp_seconds", NULL, rows[i].labels, NULL, NULL, floor(v * 1000) / 1000);
  }
  family(w, "twconduit_shard_session_age_seconds", "gauge",
         "Seconds since the shard was last (re)assigned, while it is enabled; else 0.");
  for (size_t i = 0; i < n; i++) {
    uint64_t t = rows[i].st.enabled_at_ms;
    double v = t && t <= now && strcmp(tw_shard_state(rows[i].s), "enabled") == 0 ? (double)(now - t) / 1000.0 : 0;
    sample_l(w, "twconduit_shard_session_age_seconds", NULL, rows[i].labels, NULL, NULL, v);
  }
  family(w, "twconduit_shard_lag_seconds", "histogram",
         "Receive time minus message timestamp of the notifications delivered.");
  for (size_t i = 0; i < n; i++)
    histogram(w, "twconduit_shard_lag_seconds", rows[i].labels, rows[i].st.lag_buckets, TW_LAG_BUCKETS, 0.001,
              rows[i].st.lag_sum_s);
}

/* ---- the whole client ---- */

static void counter1(wr *w, const char *name, const char *help, double v) {
  family(w, name, "counter", help);
  sample_l(w, name, NULL, NULL, NULL, NULL, v);
}
static void gauge1(wr *w, const char *name, const char *help, double v) {
  family(w, name, "gauge", help);
  sample_l(w, name, NULL, NULL, NULL, NULL, v);
}

char *tw_metrics_render(tw_client *c, const tw_metric_family *extra, size_t nextra, size_t *len) {
  wr w = {{0}, 0};
  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  family(&w, "twconduit_build_info", "gauge", "Build information (always 1).");
  sample_l(&w, "twconduit_build_info", NULL, NULL, "version", TWCONDUIT_VERSION, 1);
  counter1(&w, "twconduit_notifications_total", "Notifications delivered to the event handler (every transport).",
           (double)cs.notifications);
  counter1(&w, "twconduit_duplicates_total", "Messages dropped as already seen.", (double)cs.duplicates);
  counter1(&w, "twconduit_stale_total", "Notifications older than max_age: reported, not delivered.",
           (double)cs.stale);
  counter1(&w, "twconduit_bad_messages_total", "Malformed frames, JSON or unknown message types.",
           (double)cs.bad_messages);
  counter1(&w, "twconduit_websocket_connects_total", "EventSub websocket connections opened.",
           (double)cs.ws_connects);
  counter1(&w, "twconduit_helix_attempts_total", "HTTP attempts to Helix (retries included).",
           (double)cs.helix_requests);
  counter1(&w, "twconduit_helix_retries_total", "Helix requests retried after a 5xx or network failure.",
           (double)cs.helix_retries);
  counter1(&w, "twconduit_helix_rate_waits_total", "Times a Helix request waited for the rate-limit bucket.",
           (double)cs.helix_rate_waits);
  counter1(&w, "twconduit_token_fetches_total", "App token requests.", (double)cs.token_fetches);
  counter1(&w, "twconduit_token_validations_total", "Token validation requests.", (double)cs.token_validations);
  gauge1(&w, "twconduit_helix_ratelimit_remaining", "Helix rate-limit points left, as last seen (-1: unknown).",
         (double)cs.ratelimit_remaining);
  family(&w, "twconduit_helix_requests_total", "counter", "Helix and OAuth answers by endpoint and status.");
  for (int e = 0; e < TW_MX_ENDPOINTS; e++)
    for (int s = 0; s < TW_MX_STATUSES; s++) {
      if (!c->mx.helix[e][s]) continue;
      const char *l[] = {"endpoint", ENDPOINTS[e], "status", STATUSES[s], NULL};
      sample_l(&w, "twconduit_helix_requests_total", NULL, l, NULL, NULL, (double)c->mx.helix[e][s]);
    }
  family(&w, "twconduit_dispatch_seconds", "histogram",
         "Time the event handler took for a notification (one notification in 16 is timed).");
  histogram(&w, "twconduit_dispatch_seconds", NULL, c->mx.dispatch, TW_DISPATCH_BUCKETS, 1e-6, c->mx.dispatch_sum_s);

  /* conduits and their shards */
  size_t nrows = 0, cap = 0;
  shard_row *rows = NULL;
  family(&w, "twconduit_conduit_shards", "gauge", "The conduit's shard count on Twitch (0: not known yet).");
  for (tw_conduit *cd = tw_client_conduit_next(c, NULL); cd; cd = tw_client_conduit_next(c, cd)) {
    const char *l[] = {"conduit", tw_conduit_id(cd) ? tw_conduit_id(cd) : "", NULL};
    sample_l(&w, "twconduit_conduit_shards", NULL, l, NULL, NULL, tw_conduit_shard_count(cd));
    size_t n = tw_conduit_nshards(cd);
    for (size_t i = 0; i < n; i++) {
      if (nrows == cap) {
        size_t nc = cap ? cap * 2 : 16;
        shard_row *nr = realloc(rows, nc * sizeof *nr);
        if (!nr) {
          w.failed = 1;
          break;
        }
        rows = nr;
        cap = nc;
      }
      shard_row *r = &rows[nrows++];
      r->s = tw_conduit_shard(cd, i);
      tw_shard_get_stats(r->s, &r->st);
      tw_transport_info ti;
      int assigned = 0;
      tw_shard_transport(r->s, &ti, &assigned);
      r->labels[0] = "conduit";
      r->labels[1] = l[1];
      r->labels[2] = "shard";
      r->labels[3] = tw_shard_id(r->s);
      r->labels[4] = "transport";
      r->labels[5] = ti.method ? ti.method : "none";
      r->labels[6] = NULL;
    }
  }
  family(&w, "twconduit_conduit_shards_here", "gauge", "Shards of the conduit run by this process.");
  for (tw_conduit *cd = tw_client_conduit_next(c, NULL); cd; cd = tw_client_conduit_next(c, cd)) {
    const char *l[] = {"conduit", tw_conduit_id(cd) ? tw_conduit_id(cd) : "", NULL};
    sample_l(&w, "twconduit_conduit_shards_here", NULL, l, NULL, NULL, (double)tw_conduit_nshards(cd));
  }
  if (!w.failed) render_shards(&w, c, rows, nrows);
  free(rows);

  for (size_t f = 0; f < nextra; f++) {
    const tw_metric_family *x = &extra[f];
    family(&w, x->name, x->type ? x->type : "gauge", x->help ? x->help : "");
    for (size_t i = 0; i < x->nsamples; i++)
      sample_l(&w, x->name, NULL, x->samples[i].labels, NULL, NULL, x->samples[i].value);
  }
  if (w.failed) {
    tw_buf_free(&w.b);
    return NULL;
  }
  if (!w.b.p) put(&w, "", 0);
  if (len) *len = w.b.len;
  return w.b.p;
}
