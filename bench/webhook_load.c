/* webhook_load.c - verified webhook notifications per second and CPU per notification
 * of the receiver (tw_httpd + tw_webhook + tw_client_deliver into a C sink) on one core.
 *
 * The receiver runs in this process, pinned to CPU 0. A forked load client, pinned to
 * CPU 1, opens `conns` keep-alive connections and keeps `window` requests in flight on
 * each (pipelined), every request a fresh message id, signed with HMAC-SHA256 (its own
 * OpenSSL one-shot HMAC), its body the ~1.7 KB channel.chat.message payload of
 * bench/fixtures. Two runs on the same listener, same load:
 *   floor     a route that only answers 204 (HTTP parsing + sockets, no verification)
 *   verified  the webhook route: verify, parse, de-duplicate, deliver, 204
 * CPU = user+sys of this process (getrusage) over the run; rate = requests / wall time.
 * Output: one JSON object per run line, then a summary line.
 *
 *   webhook_load [--n N] [--conns C] [--window W]   (defaults 200000, 8, 16) */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "twconduit.h"

#define SECRET "bench-webhook-secret"

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         (double)ru.ru_stime.tv_usec / 1e6;
}

static void pin(int cpu_id) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu_id, &s);
  sched_setaffinity(0, sizeof s, &s);
}

static char *payload(size_t *len) {
  FILE *f = fopen("bench/fixtures/chat_message.json", "rb");
  static char buf[8192];
  size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  if (f) fclose(f);
  buf[n] = 0;
  char *p = strstr(buf, "\"payload\":");
  if (!p) {
    fprintf(stderr, "webhook_load: bench/fixtures/chat_message.json not found (run from the source tree)\n");
    exit(2);
  }
  p += 10;
  size_t l = strlen(p);
  while (l && (p[l - 1] == '\n' || p[l - 1] == ' ')) l--;
  l--; /* the envelope's closing brace */
  *len = l;
  return p;
}

/* ---- the load client (child process) ---- */

static size_t make_request(char *out, size_t cap, const char *path, long seq, const char *run, const char *body,
                           size_t blen) {
  char id[64], ts[40], sig[72];
  snprintf(id, sizeof id, "%s-%08ld-5b1e-4c1a-9f00-bench", run, seq);
  time_t t = time(NULL);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S.000000000Z", &tm);
  unsigned char mac[32];
  unsigned int ml = 0;
  size_t il = strlen(id), tl = strlen(ts);
  static unsigned char msg[8192];
  memcpy(msg, id, il);
  memcpy(msg + il, ts, tl);
  memcpy(msg + il + tl, body, blen);
  HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), msg, il + tl + blen, mac, &ml);
  memcpy(sig, "sha256=", 7);
  for (int i = 0; i < 32; i++) snprintf(sig + 7 + 2 * i, 3, "%02x", mac[i]);
  int n = snprintf(out, cap,
                   "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   "Twitch-Eventsub-Message-Id: %s\r\nTwitch-Eventsub-Message-Retry: 0\r\n"
                   "Twitch-Eventsub-Message-Type: notification\r\nTwitch-Eventsub-Message-Signature: %s\r\n"
                   "Twitch-Eventsub-Message-Timestamp: %s\r\nTwitch-Eventsub-Subscription-Type: channel.chat.message\r\n"
                   "Twitch-Eventsub-Subscription-Version: 1\r\nContent-Length: %zu\r\n\r\n",
                   path, id, sig, ts, blen);
  memcpy(out + n, body, blen);
  return (size_t)n + blen;
}

typedef struct lconn {
  int fd;
  long sent, answered;
  char out[1 << 16];
  size_t olen, ooff;
  char tail[4]; /* the last bytes read, for "\r\n\r\n" across reads */
} lconn;

static int load(int port, const char *path, const char *run, long n, int nconns, int window) {
  pin(1);
  size_t blen;
  char *body = payload(&blen);
  lconn *cs = calloc((size_t)nconns, sizeof *cs);
  for (int i = 0; i < nconns; i++) {
    cs[i].fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(cs[i].fd, (struct sockaddr *)&a, sizeof a) != 0) return 3;
    int one = 1;
    setsockopt(cs[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(cs[i].fd, F_SETFL, O_NONBLOCK);
  }
  long next = 0, answered = 0;
  struct pollfd *pf = calloc((size_t)nconns, sizeof *pf);
  char rbuf[1 << 16];
  while (answered < n) {
    for (int i = 0; i < nconns; i++) {
      lconn *c = &cs[i];
      /* top up the window */
      while (c->olen - c->ooff < 8192 && c->sent - c->answered < window && next < n) {
        if (c->ooff && c->olen == c->ooff) c->olen = c->ooff = 0;
        if (sizeof c->out - c->olen < 4096) break;
        c->olen += make_request(c->out + c->olen, sizeof c->out - c->olen, path, next++, run, body, blen);
        c->sent++;
      }
      pf[i].fd = c->fd;
      pf[i].events = POLLIN | (c->olen > c->ooff ? POLLOUT : 0);
    }
    if (poll(pf, (nfds_t)nconns, 10000) <= 0) {
      fprintf(stderr, "webhook_load: stalled at %ld of %ld answers\n", answered, n);
      return 4;
    }
    for (int i = 0; i < nconns; i++) {
      lconn *c = &cs[i];
      if (pf[i].revents & POLLOUT) {
        ssize_t w = send(c->fd, c->out + c->ooff, c->olen - c->ooff, MSG_NOSIGNAL);
        if (w > 0) c->ooff += (size_t)w;
        if (c->ooff == c->olen) c->ooff = c->olen = 0;
      }
      if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (r <= 0) {
          fprintf(stderr, "webhook_load: connection closed by the server\n");
          return 5;
        }
        /* answers carry no body: count header ends */
        char joined[4 + sizeof rbuf];
        memcpy(joined, c->tail, 4);
        memcpy(joined + 4, rbuf, (size_t)r);
        size_t tot = 4 + (size_t)r;
        for (size_t k = 0; k + 3 < tot; k++)
          if (joined[k] == '\r' && joined[k + 1] == '\n' && joined[k + 2] == '\r' && joined[k + 3] == '\n') {
            if (k >= 1) { /* ends in the new bytes: one answer (k == 0 was counted before) */
              c->answered++;
              answered++;
            }
            k += 3;
          }
        memcpy(c->tail, joined + tot - 4, 4);
      }
    }
  }
  for (int i = 0; i < nconns; i++) close(cs[i].fd);
  return 0;
}

/* ---- the receiver ---- */

static uint64_t delivered;
static void on_event(void *user, const tw_event *ev) {
  (void)user;
  if (ev->type == TW_EV_NOTIFICATION) delivered++;
}

static void floor_route(void *user, const tw_http_request *rq, tw_httpd_reply *rp) {
  (void)user;
  (void)rq;
  tw_httpd_respond(rp, 204, NULL, NULL, 0, NULL);
}

static int child_done;
static void on_chld(int s) {
  (void)s;
  child_done = 1;
}

static void run(tw_client *c, tw_httpd *h, const char *name, const char *path, long n, int conns, int window,
                double *rate, double *us) {
  uint64_t d0 = delivered;
  tw_httpd_stats s0;
  tw_httpd_get_stats(h, &s0);
  double t0 = mono(), c0 = cpu();
  child_done = 0;
  pid_t pid = fork();
  if (pid == 0) _exit(load(tw_httpd_port(h), path, name, n, conns, window));
  int status = 0;
  for (;;) {
    tw_client_step(c, 5);
    if (child_done && waitpid(pid, &status, WNOHANG) == pid) break;
  }
  double wall = mono() - t0, used = cpu() - c0;
  tw_httpd_stats s1;
  tw_httpd_get_stats(h, &s1);
  uint64_t answered = s1.responses - s0.responses;
  *rate = (double)answered / wall;
  *us = used / (double)answered * 1e6;
  printf("{\"run\":\"%s\",\"requests\":%ld,\"answered\":%llu,\"delivered\":%llu,\"wall_s\":%.3f,\"cpu_s\":%.3f,"
         "\"rate\":%.0f,\"cpu_us\":%.3f,\"load_exit\":%d}\n",
         name, n, (unsigned long long)answered, (unsigned long long)(delivered - d0), wall, used, *rate, *us,
         WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  fflush(stdout);
}

int main(int argc, char **argv) {
  long n = 200000;
  int conns = 8, window = 16;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--n")) n = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--conns")) conns = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--window")) window = atoi(argv[i + 1]);
  }
  signal(SIGCHLD, on_chld);
  pin(0);
  tw_set_lws_log_level(0);
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = "bench";
  o.access_token = "bench";
  o.api_base = "http://127.0.0.1:9/helix";
  o.auth_base = "http://127.0.0.1:9/oauth2";
  o.eventsub_ws = "ws://127.0.0.1:9/ws";
  o.dedupe_max = (size_t)n + 16;
  tw_client *c = tw_client_new(&o, &err);
  if (!c) {
    fprintf(stderr, "client: %s\n", err.message);
    return 1;
  }
  tw_client_on_event(c, on_event, NULL);
  tw_httpd_opts ho = TW_HTTPD_OPTS_INIT;
  tw_httpd *h = tw_httpd_open(c, &ho, &err);
  tw_webhook_opts wo = {.path = "/wh", .secret = SECRET};
  if (!h || !tw_webhook_listen(h, &wo, &err) || tw_httpd_route(h, "/floor", floor_route, NULL, &err) != 0) {
    fprintf(stderr, "server: %s\n", err.message);
    return 1;
  }
  double fr, fu, vr, vu, wr, wu;
  run(c, h, "warmup", "/wh", n / 10 + 1, conns, window, &wr, &wu);
  run(c, h, "floor", "/floor", n, conns, window, &fr, &fu);
  run(c, h, "verified", "/wh", n, conns, window, &vr, &vu);
  printf("{\"summary\":true,\"verified_rate\":%.0f,\"verified_cpu_us\":%.3f,\"floor_rate\":%.0f,\"floor_cpu_us\":%.3f,"
         "\"rate_ratio\":%.3f,\"cpu_ratio\":%.3f,\"delivered\":%llu}\n",
         vr, vu, fr, fu, vr / fr, vu / fu, (unsigned long long)delivered);
  fprintf(stderr,
          "webhook receiver, one core, %d keep-alive connections x %d in flight, %ld requests a run:\n"
          "  verified: %.0f notifications/s, %.2f us CPU each (target >= 50,000/s, <= 10 us)\n"
          "  floor (204 only, no verification): %.0f/s, %.2f us CPU each\n"
          "  verified / floor: rate %.2f, CPU %.2f\n",
          conns, window, n, vr, vu, fr, fu, vr / fr, vu / fu);
  tw_client_free(c);
  return 0;
}
