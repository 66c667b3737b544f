/* The TLS handshake queue and the welcome deadline: a socket waiting for a handshake slot
 * (tls_handshakes) is not charged for the wait. Against a server that takes TCP and never
 * answers the ClientHello, with one handshake at a time and a short welcome deadline,
 * every socket the client gives up has sent its ClientHello first (its handshake ran and
 * its own deadline passed), and the server never sees two handshakes at once. Were the
 * deadline counted from the connect, the queued sockets would be given up with the first
 * one, before sending anything. */
#include "support.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

typedef struct conn {
  int fd;
  size_t bytes;
} conn;

static conn conns[256];
static int nconns, closed, closed_silent, max_talking;

static void serve(int lfd) {
  for (;;) {
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) break;
    fcntl(fd, F_SETFL, O_NONBLOCK);
    if (nconns < (int)(sizeof conns / sizeof conns[0])) conns[nconns++] = (conn){fd, 0};
    else close(fd);
  }
  int talking = 0;
  for (int i = 0; i < nconns; i++) {
    if (conns[i].fd < 0) continue;
    char buf[4096];
    for (;;) {
      ssize_t n = recv(conns[i].fd, buf, sizeof buf, 0);
      if (n > 0) {
        conns[i].bytes += (size_t)n;
        continue;
      }
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
        close(conns[i].fd);
        conns[i].fd = -1;
        closed++;
        if (conns[i].bytes == 0) closed_silent++;
      }
      break;
    }
    if (conns[i].fd >= 0 && conns[i].bytes > 0) talking++;
  }
  if (talking > max_talking) max_talking = talking;
}

int main(void) {
  tw_set_lws_log_level(0);
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof a;
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 64) != 0 ||
      getsockname(lfd, (struct sockaddr *)&a, &alen) != 0) {
    ok(0, "a listening socket");
    return done_testing();
  }
  fcntl(lfd, F_SETFL, O_NONBLOCK);
  mock m = {0};
  if (mock_start(&m) != 0) {
    ok(0, "the emulator starts");
    return done_testing();
  }
  char wss[64];
  snprintf(wss, sizeof wss, "wss://127.0.0.1:%d/ws", ntohs(a.sin_port));
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.eventsub_ws = wss;
  o.tls_handshakes = 1;
  o.welcome_timeout_s = 0.3;
  o.backoff_min_s = 0.05;
  o.backoff_max_s = 0.1;
  mock_client_opts(&m, &o);
  tw_error err;
  tw_client *c = tw_client_new(&o, &err);
  ok(c != NULL, "a client with one TLS handshake at a time (%s)", c ? "" : err.message);
  if (!c) return done_testing();
  tw_conduit_opts co = {.shards = 4};
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  ok(cd != NULL, "a conduit of 4 websocket shards");
  double end = now_s() + 30;
  while (closed < 12 && now_s() < end) {
    tw_client_step(c, 20);
    serve(lfd);
  }
  ok(closed >= 12, "the client gave up %d sockets on a server that never answers the ClientHello", closed);
  ok(closed_silent == 0, "each of them had sent its ClientHello first: the wait for a slot is not charged to the "
                         "welcome deadline (%d given up without a byte)", closed_silent);
  ok(max_talking == 1, "the server saw at most one handshake at a time (%d)", max_talking);
  tw_client_free(c);
  for (int i = 0; i < nconns; i++)
    if (conns[i].fd >= 0) close(conns[i].fd);
  close(lfd);
  mock_stop(&m);
  return done_testing();
}
