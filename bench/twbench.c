/* twbench - the C side of the benchmarks, one scenario per process so getrusage sees
 * only the client. The emulator runs in its own process (started by bench/run.lua,
 * addresses in TWB_* variables). Prints "key=value" lines.
 *
 *   twbench pipeline <shards> <notifications>   C sink: counts notifications, no Lua
 *   twbench drain <shards> <notifications>      raw-socket drain: the emulator's send ceiling
 *   twbench shards <shards> <idle_seconds>      bring-up time + Helix calls, RSS per shard,
 *                                               then CPU of the idle shards
 *   twbench recovery <shards> <rate> <seconds>  steady stream, one socket dropped: time to
 *                                               enabled again, events lost (ledger vs handled)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "bench_util.h"
#include "twconduit.h"

static bench_env E;

typedef struct bstate {
  tw_client *c;
  tw_conduit *cd;
  uint64_t notifications, target;
  int ready, enabled, disabled, errors;
  tw_shard *watch;       /* recovery: the shard whose socket is killed */
  int watch_disabled;    /* it was disabled since the kill */
  double watch_enabled_at;
  double deadline;
  char (*ids)[48]; /* recovery: message ids handled */
  size_t nids, capids;
} bstate;

static void on_event(void *user, const tw_event *ev) {
  bstate *st = user;
  switch (ev->type) {
  case TW_EV_NOTIFICATION:
    if (st->ids && st->nids < st->capids) snprintf(st->ids[st->nids++], 48, "%s", ev->msg->id);
    if (++st->notifications == st->target) tw_client_stop(st->c);
    break;
  case TW_EV_READY: st->ready++; break;
  case TW_EV_SHARD_ENABLED:
    st->enabled++;
    if (st->watch && ev->shard == st->watch && st->watch_disabled && st->watch_enabled_at == 0)
      st->watch_enabled_at = mono_s();
    break;
  case TW_EV_SHARD_DISABLED:
    st->disabled++;
    if (st->watch && ev->shard == st->watch) st->watch_disabled = 1;
    break;
  case TW_EV_ERROR:
    if (st->errors++ < 10)
      fprintf(stderr, "twbench: error %s %d %s\n", ev->error->code, ev->error->status, ev->error->message);
    break;
  default: break;
  }
}

static tw_client *new_client(bstate *st) {
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = E.client_id;
  o.client_secret = E.client_secret;
  o.api_base = E.api;
  o.auth_base = E.auth;
  o.eventsub_ws = E.ws;
  tw_client *c = tw_client_new(&o, &err);
  if (!c) {
    fprintf(stderr, "twbench: client: %s %s\n", err.code, err.message);
    exit(1);
  }
  st->c = c;
  tw_client_on_event(c, on_event, st);
  return c;
}

static int step_until(bstate *st, int (*cond)(bstate *), double seconds) {
  double end = mono_s() + seconds;
  while (!cond(st)) {
    if (mono_s() > end) return 0;
    tw_client_step(st->c, 20);
  }
  return 1;
}

static int is_ready(bstate *st) { return st->ready > 0; }
static int is_never(bstate *st) { (void)st; return 0; }

static void stop_cb(void *user) { tw_client_stop(((bstate *)user)->c); }

/* runs the loop for `seconds` without polling from here (as a host would) */
static void run_for(bstate *st, double seconds) {
  tw_timer_start(st->c, (uint64_t)(seconds * 1000), 0, stop_cb, st);
  tw_client_run(st->c);
}

static tw_conduit *open_conduit(bstate *st, int shards, double timeout) {
  tw_error err;
  tw_conduit_opts co = {.shards = shards};
  st->cd = tw_conduit_open(st->c, &co, &err);
  if (!st->cd) {
    fprintf(stderr, "twbench: conduit: %s %s\n", err.code, err.message);
    exit(1);
  }
  if (!step_until(st, is_ready, timeout)) {
    fprintf(stderr, "twbench: conduit not ready in %.0f s (%d enabled)\n", timeout, st->enabled);
    exit(1);
  }
  return st->cd;
}

/* channel.chat.message subscriptions with the conduit transport, one per channel */
static int subscribe_chat(const char *token, const char *conduit_id, int nchan) {
  char url[512];
  snprintf(url, sizeof url, "%s/eventsub/subscriptions", E.api);
  int okn = 0;
  for (int ch = 0; ch < nchan; ch++) {
    char body[512];
    snprintf(body, sizeof body,
             "{\"type\":\"channel.chat.message\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"%d\","
             "\"user_id\":\"1\"},\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
             BENCH_CHAN0 + ch, conduit_id);
    int status = 0;
    cJSON_Delete(http_json("POST", url, body, token, E.client_id, &status));
    okn += status == 202;
  }
  return okn;
}

static void on_deadline(void *user) {
  bstate *st = user;
  if (mono_s() > st->deadline) {
    fprintf(stderr, "twbench: deadline passed with %llu of %llu notifications\n",
            (unsigned long long)st->notifications, (unsigned long long)st->target);
    tw_client_stop(st->c);
  }
}

/* POST /_mock/blast of `total` chat messages over the 64 channels; returns the id */
static void start_blast(uint64_t total, char *bid, size_t n, uint64_t *got_total) {
  char chans[BENCH_NCHAN * 10 + 8], body[1024];
  chan_list(chans, sizeof chans, BENCH_NCHAN);
  snprintf(body, sizeof body, "{\"type\":\"channel.chat.message\",\"channels\":%s,\"count\":%llu}", chans,
           (unsigned long long)(total / BENCH_NCHAN));
  cJSON *r = control(&E, "POST", "/blast", body);
  snprintf(bid, n, "%s", jstr(r, "blast_id") ? jstr(r, "blast_id") : "");
  *got_total = (uint64_t)jnum(r, "total");
  cJSON_Delete(r);
}

static void put_blast_report(const char *bid) {
  char p[128];
  snprintf(p, sizeof p, "/blast/%s", bid);
  cJSON *r = control(&E, "GET", p, NULL);
  put("emulator_rate", "%.0f", jnum(r, "rate"));
  put("emulator_seconds", "%.4f", jnum(r, "seconds"));
  put("emulator_sent", "%.0f", jnum(r, "sent"));
  put("emulator_dropped", "%.0f", jnum(r, "dropped"));
  cJSON_Delete(r);
}

/* ---- pipeline: notifications into a C sink that only counts them ---- */
static int run_pipeline(int shards, uint64_t total) {
  bstate st = {0};
  tw_client *c = new_client(&st);
  open_conduit(&st, shards, 60);
  int subs = subscribe_chat(tw_client_token(c), tw_conduit_id(st.cd), BENCH_NCHAN);
  if (subs != BENCH_NCHAN) {
    fprintf(stderr, "twbench: %d of %d subscriptions\n", subs, BENCH_NCHAN);
    return 1;
  }
  for (int i = 0; i < 10; i++) tw_client_step(c, 10);
  st.notifications = 0;
  char bid[64];
  uint64_t produced = 0;
  double cpu0 = cpu_s(), t0 = mono_s();
  start_blast(total, bid, sizeof bid, &produced);
  st.target = produced;
  st.deadline = t0 + 120;
  tw_timer *t = tw_timer_start(c, 1000, 1000, on_deadline, &st);
  if (st.notifications < st.target) tw_client_run(c);
  double t1 = mono_s(), cpu1 = cpu_s();
  tw_timer_cancel(t);
  put("shards", "%d", shards);
  put("produced", "%llu", (unsigned long long)produced);
  put("handled", "%llu", (unsigned long long)st.notifications);
  put("wall_s", "%.4f", t1 - t0);
  put("cpu_s", "%.4f", cpu1 - cpu0);
  put("cpu_us_per_notification", "%.4f", st.notifications ? (cpu1 - cpu0) * 1e6 / (double)st.notifications : -1);
  put("notifications_per_s", "%.0f", (double)st.notifications / (t1 - t0));
  put_blast_report(bid);
  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  put("duplicates", "%llu", (unsigned long long)cs.duplicates);
  put("rss_kb", "%ld", rss_kb());
  fflush(stdout);
  _exit(st.notifications == produced ? 0 : 2);
}

/* ---- drain: the emulator's ceiling, raw sockets that only count frames ---- */
typedef struct drain {
  int fd;
  unsigned char *buf;
  size_t len, cap;
  uint64_t frames, bytes;
  char session_id[64];
} drain;

static int ws_port(void) {
  const char *p = strstr(E.ws, "127.0.0.1:");
  return p ? atoi(p + 10) : 0;
}

/* counts complete text frames over 500 bytes (notifications), keeps the first text
 * frame's session id (the welcome) */
static void drain_parse(drain *d) {
  size_t off = 0;
  while (d->len - off >= 2) {
    unsigned char *p = d->buf + off;
    size_t plen = p[1] & 0x7f, hl = 2;
    if (plen == 126) {
      if (d->len - off < 4) break;
      plen = ((size_t)p[2] << 8) | p[3];
      hl = 4;
    } else if (plen == 127) {
      if (d->len - off < 10) break;
      plen = 0;
      for (int i = 0; i < 8; i++) plen = (plen << 8) | p[2 + i];
      hl = 10;
    }
    if (d->len - off < hl + plen) break;
    if ((p[0] & 0x0f) == 1) {
      if (!d->session_id[0]) {
        const char *q = memmem(p + hl, plen, "\"id\":\"", 6);
        if (q) {
          q += 6;
          size_t k = 0;
          while (k < sizeof d->session_id - 1 && q + k < (const char *)p + hl + plen && q[k] != '"') k++;
          memcpy(d->session_id, q, k);
          d->session_id[k] = 0;
        }
      } else if (plen > 500) {
        d->frames++;
      }
    }
    d->bytes += plen;
    off += hl + plen;
  }
  memmove(d->buf, d->buf + off, d->len - off);
  d->len -= off;
}

static int drain_open(drain *d, int port) {
  memset(d, 0, sizeof *d);
  d->cap = 1 << 20;
  d->buf = malloc(d->cap);
  d->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(d->fd, (struct sockaddr *)&a, sizeof a) != 0) return -1;
  char req[512];
  int n = snprintf(req, sizeof req,
                   "GET /ws?keepalive_timeout_seconds=600 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n",
                   port);
  if (send(d->fd, req, (size_t)n, 0) != n) return -1;
  /* the 101 answer, then frames */
  double end = mono_s() + 5;
  int headers_done = 0;
  while (!d->session_id[0] && mono_s() < end) {
    ssize_t k = recv(d->fd, d->buf + d->len, d->cap - d->len, 0);
    if (k <= 0) return -1;
    d->len += (size_t)k;
    if (!headers_done) {
      unsigned char *h = memmem(d->buf, d->len, "\r\n\r\n", 4);
      if (!h) continue;
      size_t hl = (size_t)(h + 4 - d->buf);
      if (memcmp(d->buf, "HTTP/1.1 101", 12) != 0) return -1;
      memmove(d->buf, d->buf + hl, d->len - hl);
      d->len -= hl;
      headers_done = 1;
    }
    drain_parse(d);
  }
  return d->session_id[0] ? 0 : -1;
}

static int run_drain(int shards, uint64_t total) {
  char url[512];
  int status = 0;
  snprintf(url, sizeof url, "%s/token?client_id=%s&client_secret=%s&grant_type=client_credentials", E.auth,
           E.client_id, E.client_secret);
  cJSON *tok = http_json("POST", url, NULL, NULL, NULL, &status);
  char token[256];
  snprintf(token, sizeof token, "%s", jstr(tok, "access_token") ? jstr(tok, "access_token") : "");
  cJSON_Delete(tok);
  snprintf(url, sizeof url, "%s/eventsub/conduits", E.api);
  char body[1024];
  snprintf(body, sizeof body, "{\"shard_count\":%d}", shards);
  cJSON *cr = http_json("POST", url, body, token, E.client_id, &status);
  cJSON *d0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(cr, "data"), 0);
  char cid[64];
  snprintf(cid, sizeof cid, "%s", jstr(d0, "id") ? jstr(d0, "id") : "");
  cJSON_Delete(cr);
  if (!cid[0]) {
    fprintf(stderr, "twbench: drain: no conduit (%d)\n", status);
    return 1;
  }
  drain *d = calloc((size_t)shards, sizeof *d);
  snprintf(url, sizeof url, "%s/eventsub/conduits/shards", E.api);
  for (int i = 0; i < shards; i++) {
    if (drain_open(&d[i], ws_port()) != 0) {
      fprintf(stderr, "twbench: drain: websocket %d failed\n", i);
      return 1;
    }
    snprintf(body, sizeof body,
             "{\"conduit_id\":\"%s\",\"shards\":[{\"id\":\"%d\",\"transport\":{\"method\":\"websocket\","
             "\"session_id\":\"%s\"}}]}",
             cid, i, d[i].session_id);
    cJSON_Delete(http_json("PATCH", url, body, token, E.client_id, &status));
    if (status != 202) {
      fprintf(stderr, "twbench: drain: PATCH %d\n", status);
      return 1;
    }
  }
  if (subscribe_chat(token, cid, BENCH_NCHAN) != BENCH_NCHAN) return 1;
  char bid[64];
  uint64_t produced = 0, got = 0;
  double cpu0 = cpu_s(), t0 = mono_s();
  start_blast(total, bid, sizeof bid, &produced);
  struct pollfd *pf = calloc((size_t)shards, sizeof *pf);
  while (got < produced && mono_s() < t0 + 60) {
    for (int i = 0; i < shards; i++) pf[i] = (struct pollfd){.fd = d[i].fd, .events = POLLIN};
    if (poll(pf, (nfds_t)shards, 1000) <= 0) continue;
    got = 0;
    for (int i = 0; i < shards; i++) {
      if (pf[i].revents & POLLIN) {
        ssize_t k = recv(d[i].fd, d[i].buf + d[i].len, d[i].cap - d[i].len, 0);
        if (k > 0) {
          d[i].len += (size_t)k;
          drain_parse(&d[i]);
        }
      }
      got += d[i].frames;
    }
  }
  double t1 = mono_s(), cpu1 = cpu_s();
  uint64_t bytes = 0;
  for (int i = 0; i < shards; i++) bytes += d[i].bytes;
  put("shards", "%d", shards);
  put("produced", "%llu", (unsigned long long)produced);
  put("handled", "%llu", (unsigned long long)got);
  put("wall_s", "%.4f", t1 - t0);
  put("cpu_s", "%.4f", cpu1 - cpu0);
  put("cpu_us_per_notification", "%.4f", got ? (cpu1 - cpu0) * 1e6 / (double)got : -1);
  put("notifications_per_s", "%.0f", (double)got / (t1 - t0));
  put("avg_bytes", "%.0f", got ? (double)bytes / (double)got : 0);
  put_blast_report(bid);
  fflush(stdout);
  _exit(got == produced ? 0 : 2);
}

/* the allocator's bytes in use (glibc), -1 elsewhere: RSS minus this is what it keeps free */
static long heap_kb(void) {
#ifdef __GLIBC__
  struct mallinfo2 mi = mallinfo2();
  return (long)((mi.uordblks + mi.hblkhd) / 1024);
#else
  return -1;
#endif
}

/* ---- shards: bring-up, RSS per idle shard, idle CPU ---- */
static int run_shards(int shards, double idle_s) {
  bstate st = {0};
  raise_nofile((rlim_t)shards * 2 + 1024);
  tw_client *c = new_client(&st);
  double calls0, patches0;
  helix_calls(&E, &calls0, &patches0);
  for (int i = 0; i < 5; i++) tw_client_step(c, 1);
  long rss0 = rss_kb(), heap0 = heap_kb();
  double t0 = mono_s();
  open_conduit(&st, shards, shards > 2000 ? 300 : 60);
  double t1 = mono_s();
  double calls1, patches1;
  helix_calls(&E, &calls1, &patches1);
  /* settle: let the last PATCH answers and welcomes be processed */
  run_for(&st, 1.0);
  long rss1 = rss_kb(), heap1 = heap_kb();
  put("shards", "%d", shards);
  put("bringup_s", "%.4f", t1 - t0);
  put("helix_calls", "%.0f", calls1 - calls0);
  put("patch_calls", "%.0f", patches1 - patches0);
  put("rss_before_kb", "%ld", rss0);
  put("rss_after_kb", "%ld", rss1);
  put("rss_per_shard_kb", "%.3f", (double)(rss1 - rss0) / shards);
  if (heap0 >= 0) put("heap_per_shard_kb", "%.3f", (double)(heap1 - heap0) / shards);
  if (idle_s > 0) {
    int dis0 = st.disabled;
    uint64_t ka0 = 0, ka1 = 0;
    tw_shard_stats ss;
    for (int i = 0; i < shards; i++) {
      tw_shard_get_stats(tw_conduit_shard(st.cd, (size_t)i), &ss);
      ka0 += ss.keepalives;
    }
    double w0 = mono_s(), cpu0 = cpu_s();
    run_for(&st, idle_s);
    double w1 = mono_s(), cpu1 = cpu_s();
    for (int i = 0; i < shards; i++) {
      tw_shard_get_stats(tw_conduit_shard(st.cd, (size_t)i), &ss);
      ka1 += ss.keepalives;
    }
    put("idle_wall_s", "%.3f", w1 - w0);
    put("idle_cpu_s", "%.4f", cpu1 - cpu0);
    put("idle_cpu_pct", "%.4f", (cpu1 - cpu0) * 100.0 / (w1 - w0));
    put("idle_keepalives", "%llu", (unsigned long long)(ka1 - ka0));
    put("idle_disabled", "%d", st.disabled - dis0);
    put("rss_after_idle_kb", "%ld", rss_kb());
  }
  fflush(stdout);
  _exit(0);
}

/* ---- recovery: one socket dropped under a steady stream ---- */
static int watch_back(bstate *st) { return st->watch_enabled_at > 0; }
static uint64_t rec_target;
static int all_in(bstate *st) { return st->notifications >= rec_target; }

static int cmp_id(const void *a, const void *b) { return strcmp(a, b); }

/* ledger entries marked delivered that the client never handled, to stderr */
static int report_missing(bstate *st) {
  qsort(st->ids, st->nids, sizeof st->ids[0], cmp_id);
  cJSON *led = control(&E, "GET", "/ledger", NULL);
  cJSON *e;
  int missing = 0;
  cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(led, "entries")) {
    const char *id = jstr(e, "message_id");
    const char *status = jstr(e, "status");
    if (!id || !status || strcmp(status, "delivered") != 0) continue;
    char key[48];
    snprintf(key, sizeof key, "%s", id);
    if (bsearch(key, st->ids, st->nids, sizeof st->ids[0], cmp_id)) continue;
    if (missing++ < 5) {
      char *txt = cJSON_PrintUnformatted(e);
      fprintf(stderr, "twbench: delivered but not handled: %s\n", txt);
      free(txt);
    }
  }
  cJSON_Delete(led);
  return missing;
}

static int run_recovery(int shards, int rate, double seconds) {
  bstate st = {0};
  st.capids = (size_t)(rate * seconds) + 1024;
  st.ids = calloc(st.capids, sizeof st.ids[0]);
  tw_client *c = new_client(&st);
  open_conduit(&st, shards, 60);
  if (subscribe_chat(tw_client_token(c), tw_conduit_id(st.cd), BENCH_NCHAN) != BENCH_NCHAN) return 1;
  int count = (int)(rate * seconds);
  char chans[BENCH_NCHAN * 10 + 8], body[1024];
  chan_list(chans, sizeof chans, BENCH_NCHAN);
  snprintf(body, sizeof body, "{\"type\":\"channel.chat.message\",\"channels\":%s,\"rate\":%d,\"count\":%d}", chans,
           rate, count);
  cJSON *r = control(&E, "POST", "/stream", body);
  char sid[64];
  snprintf(sid, sizeof sid, "%s", jstr(r, "stream_id") ? jstr(r, "stream_id") : "");
  cJSON_Delete(r);
  /* a third of the way into the stream, drop the socket of the busiest shard: shard 0 */
  step_until(&st, is_never, seconds / 3);
  tw_shard *s0 = tw_conduit_shard(st.cd, 0);
  char path[256];
  snprintf(path, sizeof path, "/sessions/%s/drop", tw_shard_session_id(s0) ? tw_shard_session_id(s0) : "none");
  st.watch = s0;
  double tk = mono_s();
  cJSON_Delete(control(&E, "POST", path, "{}"));
  int back = step_until(&st, watch_back, 30);
  /* the rest of the stream, then everything it produced */
  snprintf(path, sizeof path, "/stream/%s", sid);
  double end = mono_s() + seconds + 30;
  for (;;) {
    cJSON *s = control(&E, "GET", path, NULL);
    int done = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "done"));
    cJSON_Delete(s);
    if (done || mono_s() > end) break;
    step_until(&st, is_never, 0.2);
  }
  cJSON *led = control(&E, "GET", "/ledger?since=999999999", NULL);
  double delivered = jnum(led, "delivered"), dropped = jnum(led, "dropped"), pending = jnum(led, "pending");
  cJSON_Delete(led);
  rec_target = (uint64_t)count;
  step_until(&st, all_in, 5);
  led = control(&E, "GET", "/ledger?since=999999999", NULL);
  delivered = jnum(led, "delivered");
  dropped = jnum(led, "dropped");
  pending = jnum(led, "pending");
  cJSON_Delete(led);
  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  put("shards", "%d", shards);
  put("recovered", "%d", back);
  put("recovery_s", "%.4f", back ? st.watch_enabled_at - tk : -1);
  put("produced", "%d", count);
  put("handled", "%llu", (unsigned long long)st.notifications);
  put("lost", "%lld", (long long)count - (long long)st.notifications);
  put("ledger_delivered", "%.0f", delivered);
  put("ledger_dropped", "%.0f", dropped);
  put("ledger_pending", "%.0f", pending);
  put("duplicates_dropped", "%llu", (unsigned long long)cs.duplicates);
  put("delivered_not_handled", "%d", report_missing(&st));
  fflush(stdout);
  _exit(0);
}

int main(int argc, char **argv) {
  if (argc < 2 || bench_env_load(&E) != 0) {
    fprintf(stderr, "usage: twbench pipeline|drain|shards|recovery ...\n");
    return 64;
  }
  tw_set_lws_log_level(0);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const char *mode = argv[1];
  int n = argc > 2 ? atoi(argv[2]) : 1;
  if (strcmp(mode, "pipeline") == 0) return run_pipeline(n, argc > 3 ? strtoull(argv[3], NULL, 10) : 1000000);
  if (strcmp(mode, "drain") == 0) return run_drain(n, argc > 3 ? strtoull(argv[3], NULL, 10) : 1000000);
  if (strcmp(mode, "shards") == 0) return run_shards(n, argc > 3 ? atof(argv[3]) : 0);
  if (strcmp(mode, "recovery") == 0)
    return run_recovery(n, argc > 3 ? atoi(argv[3]) : 2000, argc > 4 ? atof(argv[4]) : 6);
  fprintf(stderr, "twbench: unknown mode %s\n", mode);
  return 64;
}
