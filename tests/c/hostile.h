/* hostile.h - small hostile servers for the C tests: a listening socket on 127.0.0.1
 * served by a child process that runs one function per connection (read an HTTP
 * request, answer what the scenario wants: a websocket upgrade and frames, or an HTTP
 * answer). They share nothing with the client or the emulator. Header-only. */
#ifndef TW_TEST_HOSTILE_H
#define TW_TEST_HOSTILE_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

typedef void (*hs_conn_fn)(int fd, const char *req, void *arg);

typedef struct hserver {
  pid_t pid;
  int port;
  char base[64]; /* "127.0.0.1:port" */
} hserver;

/* Reads up to the end of the request head (and a Content-Length body); 0-terminated. */
static __attribute__((unused)) int hs_read_request(int fd, char *buf, size_t cap) {
  size_t n = 0;
  while (n + 1 < cap) {
    ssize_t r = read(fd, buf + n, cap - 1 - n);
    if (r <= 0) return -1;
    n += (size_t)r;
    buf[n] = 0;
    char *end = strstr(buf, "\r\n\r\n");
    if (!end) continue;
    size_t head = (size_t)(end - buf) + 4;
    const char *cl = strcasestr(buf, "Content-Length:");
    size_t want = cl && cl < end ? (size_t)strtoul(cl + 15, NULL, 10) : 0;
    if (n - head >= want) return (int)n;
  }
  return (int)n;
}

static __attribute__((unused)) int hs_write(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

static __attribute__((unused)) int hs_printf(int fd, const char *fmt, ...) {
  char b[8192];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(b, sizeof b, fmt, ap);
  va_end(ap);
  return n > 0 ? hs_write(fd, b, (size_t)n < sizeof b ? (size_t)n : sizeof b - 1) : -1;
}

/* An HTTP answer with a JSON body. */
static __attribute__((unused)) int hs_json(int fd, int status, const char *body) {
  return hs_printf(fd, "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n%s", status,
                   strlen(body), body);
}

/* Sec-WebSocket-Accept for the request's key; bad: a wrong one. */
static __attribute__((unused)) void hs_ws_accept(const char *req, char *out, int bad) {
  char key[64] = "";
  const char *k = strcasestr(req, "Sec-WebSocket-Key:");
  if (k) sscanf(k + 18, " %63s", key);
  char buf[160];
  int n = snprintf(buf, sizeof buf, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", bad ? "x" : key);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdn = 0;
  EVP_Digest(buf, (size_t)n, md, &mdn, EVP_sha1(), NULL);
  EVP_EncodeBlock((unsigned char *)out, md, (int)mdn);
}

static __attribute__((unused)) int hs_ws_upgrade(int fd, const char *req, int bad_key) {
  char acc[64];
  hs_ws_accept(req, acc, bad_key);
  return hs_printf(fd,
                   "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Accept: %s\r\n\r\n",
                   acc);
}

/* One unmasked server frame. */
static __attribute__((unused)) int hs_ws_frame(int fd, int fin, int op, const void *p, size_t n) {
  unsigned char h[10];
  size_t hl = 2;
  h[0] = (unsigned char)((fin ? 0x80 : 0) | op);
  if (n < 126) h[1] = (unsigned char)n;
  else if (n < 65536) {
    h[1] = 126;
    h[2] = (unsigned char)(n >> 8);
    h[3] = (unsigned char)n;
    hl = 4;
  } else {
    h[1] = 127;
    for (int i = 0; i < 8; i++) h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    hl = 10;
  }
  return hs_write(fd, h, hl) || (n && hs_write(fd, p, n)) ? -1 : 0;
}

static __attribute__((unused)) int hs_ws_text(int fd, const char *s) { return hs_ws_frame(fd, 1, 1, s, strlen(s)); }

/* A session_welcome whose keepalive_timeout_seconds is the text ka. */
static __attribute__((unused)) int hs_ws_welcome(int fd, const char *ka) {
  char b[512];
  snprintf(b, sizeof b,
           "{\"metadata\":{\"message_id\":\"w1\",\"message_type\":\"session_welcome\",\"message_timestamp\":"
           "\"2030-01-01T00:00:00Z\"},\"payload\":{\"session\":{\"id\":\"AgoQhostile\",\"status\":\"connected\","
           "\"connected_at\":\"2030-01-01T00:00:00Z\",\"keepalive_timeout_seconds\":%s,\"reconnect_url\":null}}}",
           ka);
  return hs_ws_text(fd, b);
}

static __attribute__((unused)) int hs_ws_keepalive(int fd) {
  return hs_ws_text(fd, "{\"metadata\":{\"message_id\":\"k1\",\"message_type\":\"session_keepalive\","
                        "\"message_timestamp\":\"2030-01-01T00:00:00Z\"},\"payload\":{}}");
}

/* Reads the client's frames until its close frame; returns the close code (0: none came). */
static __attribute__((unused)) int hs_ws_read_close(int fd, int timeout_ms) {
  unsigned char b[4096];
  size_t n = 0;
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0) return 0;
    ssize_t r = read(fd, b + n, sizeof b - n);
    if (r <= 0) return 0;
    n += (size_t)r;
    while (n >= 6) { /* client frames are masked: 2 + (ext) + 4 + payload */
      size_t len = b[1] & 127, hl = 2;
      if (len == 126) len = ((size_t)b[2] << 8) | b[3], hl = 4;
      if (n < hl + 4 + len) break;
      unsigned char *m = b + hl, *pl = b + hl + 4;
      for (size_t i = 0; i < len; i++) pl[i] ^= m[i & 3];
      if ((b[0] & 15) == 8) return len >= 2 ? (pl[0] << 8) | pl[1] : 1005;
      memmove(b, b + hl + 4 + len, n - hl - 4 - len);
      n -= hl + 4 + len;
    }
  }
}

/* Listens on a free port and serves each connection with fn in a child process. */
static __attribute__((unused)) int hs_start(hserver *s, hs_conn_fn fn, void *arg) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 16) ||
      getsockname(lfd, (struct sockaddr *)&a, &al)) {
    close(lfd);
    return -1;
  }
  s->port = ntohs(a.sin_port);
  snprintf(s->base, sizeof s->base, "127.0.0.1:%d", s->port);
  fflush(stdout);
  fflush(stderr);
  s->pid = fork();
  if (s->pid < 0) return -1;
  if (s->pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
      int fd = accept(lfd, NULL, NULL);
      if (fd < 0) _exit(0);
      static char req[65536];
      if (hs_read_request(fd, req, sizeof req) > 0) fn(fd, req, arg);
      close(fd);
    }
  }
  close(lfd);
  return 0;
}

static __attribute__((unused)) void hs_stop(hserver *s) {
  if (s->pid > 0) {
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
  }
  s->pid = 0;
}

#endif
