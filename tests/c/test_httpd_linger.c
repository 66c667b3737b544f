/* A client freed while one of its webhook server's connections lingers after a refusal
 * (the answer written, the peer's remaining bytes read and dropped until it ends): the
 * connection goes with the client, as every other of its handles, and nothing of it is
 * left on the host's loop (nor does an owned loop wait for the linger's 2 s). */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <uv.h>

#include "support.h"

/* the inode of the server's socket connected to the peer's local port (/proc/net/tcp) */
static unsigned long server_inode(int server_port, int peer_port) {
  FILE *f = fopen("/proc/net/tcp", "r");
  char line[512];
  unsigned long found = 0;
  if (!f) return 0;
  while (fgets(line, sizeof line, f)) {
    unsigned la, lp, ra, rp, st;
    unsigned long ino;
    if (sscanf(line, " %*d: %x:%x %x:%x %x %*x:%*x %*x:%*x %*x %*u %*u %lu", &la, &lp, &ra, &rp, &st, &ino) == 6 &&
        (int)lp == server_port && (int)rp == peer_port)
      found = ino;
  }
  fclose(f);
  return found;
}

/* whether one of this process's descriptors is that socket */
static int fd_open(unsigned long ino) {
  char want[64], path[300], link[64];
  snprintf(want, sizeof want, "socket:[%lu]", ino);
  DIR *d = opendir("/proc/self/fd");
  int found = 0;
  if (!d) return 0;
  for (struct dirent *e; (e = readdir(d));) {
    snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n > 0) {
      link[n] = 0;
      if (strcmp(link, want) == 0) found = 1;
    }
  }
  closedir(d);
  return found;
}

int main(void) {
  tw_set_lws_log_level(0);
  tw_error err;
  uv_loop_t loop;
  uv_loop_init(&loop);
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.uv_loop = &loop;
  o.client_id = "test-client";
  o.access_token = "test-token";
  o.api_base = "http://127.0.0.1:9/helix";
  o.auth_base = "http://127.0.0.1:9/oauth2";
  o.eventsub_ws = "ws://127.0.0.1:9/ws";
  tw_client *c = tw_client_new(&o, &err);
  ok(c != NULL, "client created");
  if (!c) return done_testing();
  tw_httpd_opts ho = TW_HTTPD_OPTS_INIT;
  tw_httpd *h = tw_httpd_open(c, &ho, &err);
  ok(h != NULL, "a server");
  if (!h) return done_testing();
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)tw_httpd_port(h))};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ok(connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "connected");
  const char bad[] = "NOT HTTP AT ALL\r\n\r\n";
  ok(send(fd, bad, sizeof bad - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof bad - 1), "a bad request sent");
  char resp[512];
  size_t got = 0;
  int eof = 0;
  double end = now_s() + 10;
  while (!eof && now_s() < end) { /* until the server shut its side: the answer is whole */
    uv_run(&loop, UV_RUN_NOWAIT);
    ssize_t r = recv(fd, resp + got, sizeof resp - 1 - got, MSG_DONTWAIT);
    if (r > 0) got += (size_t)r;
    else if (r == 0) eof = 1;
    else if (errno != EAGAIN && errno != EWOULDBLOCK) break;
  }
  resp[got] = 0;
  ok(eof && strncmp(resp, "HTTP/1.1 400", 12) == 0, "refused with 400, the server's side shut (%.12s)", resp);
  /* the peer stays silent and open: the server's connection lingers */
  struct sockaddr_in me;
  socklen_t ml = sizeof me;
  getsockname(fd, (struct sockaddr *)&me, &ml);
  unsigned long ino = server_inode(tw_httpd_port(h), ntohs(me.sin_port));
  ok(ino != 0 && fd_open(ino), "the server's connection is still open while it lingers");

  /* a flood of refusals lingers no more than max_conns connections at once */
  tw_httpd_opts ho2 = TW_HTTPD_OPTS_INIT;
  ho2.max_conns = 2;
  tw_httpd *h2 = tw_httpd_open(c, &ho2, &err);
  int fds[5], answered = 0;
  struct sockaddr_in a2 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(h2 ? tw_httpd_port(h2) : 0))};
  a2.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int i = 0; i < 5 && h2; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fds[i], (struct sockaddr *)&a2, sizeof a2) != 0 ||
        send(fds[i], bad, sizeof bad - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof bad - 1))
      continue;
    double e2 = now_s() + 10;
    while (now_s() < e2) { /* its answer and the server's shut side, before the next one */
      uv_run(&loop, UV_RUN_NOWAIT);
      char b2[256];
      ssize_t r = recv(fds[i], b2, sizeof b2, MSG_DONTWAIT);
      if (r == 0) {
        answered++;
        break;
      }
      if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) break;
    }
  }
  tw_httpd_stats hs;
  tw_httpd_get_stats(h2, &hs);
  ok(h2 && answered == 5 && hs.lingering == 2,
     "5 refused connections that stay open: all answered, %d of them lingering (max_conns 2)", hs.lingering);
  for (int i = 0; i < 5 && h2; i++) close(fds[i]);
  tw_client_free(c);
  for (int i = 0; i < 50 && uv_loop_alive(&loop); i++) uv_run(&loop, UV_RUN_NOWAIT);
  ok(!uv_loop_alive(&loop), "after tw_client_free nothing of the client is left on the host's loop");
  ok(!fd_open(ino), "the client freed: the lingering connection's socket is closed");
  ok(uv_loop_close(&loop) == 0, "the host's loop closes cleanly");
  close(fd);
  return done_testing();
}
