/* Helpers of the webhook receiver tests (test_webhook.c, test_webhook_close.c): signed
 * requests built by hand and sent over a plain socket to the receiver on the loop. The
 * including test defines SECRET, the route's secret. */
#ifndef TW_WEBHOOK_SUPPORT_H
#define TW_WEBHOOK_SUPPORT_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/hmac.h>
#include <sys/socket.h>

#include "support.h"

static void iso(double t, char *out, size_t n) {
  time_t s = (time_t)t;
  struct tm tm;
  gmtime_r(&s, &tm);
  strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
  size_t l = strlen(out);
  snprintf(out + l, n - l, ".%06dZ", (int)((t - (double)s) * 1e6));
}

static double wall(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sign(const char *secret, const char *id, const char *ts, const char *body, size_t blen, char out[72]) {
  size_t n = strlen(id) + strlen(ts) + blen;
  unsigned char *msg = malloc(n + 1), mac[32];
  unsigned int ml = 0;
  memcpy(msg, id, strlen(id));
  memcpy(msg + strlen(id), ts, strlen(ts));
  memcpy(msg + strlen(id) + strlen(ts), body, blen);
  HMAC(EVP_sha256(), secret, (int)strlen(secret), msg, n, mac, &ml);
  free(msg);
  strcpy(out, "sha256=");
  for (int i = 0; i < 32; i++) sprintf(out + 7 + 2 * i, "%02x", mac[i]);
}

static const char *NOTIF_BODY =
    "{\"subscription\":{\"id\":\"sub-1\",\"status\":\"enabled\",\"type\":\"stream.online\",\"version\":\"1\","
    "\"condition\":{\"broadcaster_user_id\":\"42\"},\"transport\":{\"method\":\"webhook\",\"callback\":\"x\"}},"
    "\"event\":{\"id\":\"e1\",\"broadcaster_user_id\":\"42\",\"type\":\"live\"}}";

/* a request: `sigsecret` NULL -> a correct signature; `sig` given -> that header */
static char *request(const char *path, const char *type, const char *id, double ts_s, const char *body,
                     const char *sigsecret, const char *sig, size_t send_len, const char *extra) {
  char ts[64], sg[72];
  iso(ts_s, ts, sizeof ts);
  sign(sigsecret ? sigsecret : SECRET, id, ts, body, strlen(body), sg);
  size_t cap = strlen(body) + 2048;
  char *r = malloc(cap);
  snprintf(r, cap,
           "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           "Twitch-Eventsub-Message-Id: %s\r\nTwitch-Eventsub-Message-Retry: 0\r\n"
           "Twitch-Eventsub-Message-Type: %s\r\nTwitch-Eventsub-Message-Signature: %s\r\n"
           "Twitch-Eventsub-Message-Timestamp: %s\r\nTwitch-Eventsub-Subscription-Type: stream.online\r\n"
           "Twitch-Eventsub-Subscription-Version: 1\r\n%sContent-Length: %zu\r\n\r\n%.*s",
           path, id, type, sig ? sig : sg, ts, extra ? extra : "", send_len, (int)send_len, body);
  return r;
}

static int port;

static int sock_open(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  fcntl(fd, F_SETFL, O_NONBLOCK);
  return fd;
}

static void sock_send(tw_client *c, int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
    } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      tw_client_step(c, 5); /* the server reads meanwhile */
    } else {
      return; /* closed by the server: what it answered is still readable */
    }
  }
}

/* Steps the loop until `want` HTTP responses were read (or the connection closed, or
 * `secs` passed). Returns the bytes read (NUL-terminated, caller frees). */
static char *read_responses(tw_client *c, int fd, int want, double secs, int *closed) {
  size_t cap = 65536, len = 0;
  char *buf = malloc(cap);
  buf[0] = 0;
  double end = now_s() + secs;
  *closed = 0;
  for (;;) {
    int got = 0;
    for (char *p = buf; (p = strstr(p, "HTTP/1.1 ")); p += 9) got++;
    if (got >= want) {
      /* the last one's body too */
      char *last = buf, *p = buf;
      while ((p = strstr(p, "HTTP/1.1 "))) last = p++;
      char *he = strstr(last, "\r\n\r\n");
      char *cl = strstr(last, "Content-Length: ");
      if (he && cl && (size_t)(buf + len - (he + 4)) >= (size_t)atol(cl + 16)) break;
    }
    if (now_s() > end) break;
    tw_client_step(c, 10);
    ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
    if (r > 0) {
      len += (size_t)r;
      buf[len] = 0;
      if (cap - len < 4096) buf = realloc(buf, cap *= 2);
    } else if (r == 0) {
      *closed = 1;
      break;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
      *closed = 1;
      break;
    }
  }
  return buf;
}

static int status_of(const char *resp) { return strncmp(resp, "HTTP/1.1 ", 9) == 0 ? atoi(resp + 9) : 0; }

/* one request on a fresh connection: the status (0 when none) */
static int roundtrip(tw_client *c, const char *req, size_t n, char **body_out) {
  int fd = sock_open();
  if (fd < 0) return -1;
  sock_send(c, fd, req, n);
  int closed;
  char *r = read_responses(c, fd, 1, 5, &closed);
  close(fd);
  int st = status_of(r);
  if (body_out) *body_out = r;
  else free(r);
  return st;
}

static int send_one(tw_client *c, char *req) {
  int s = roundtrip(c, req, strlen(req), NULL);
  free(req);
  return s;
}

#endif
