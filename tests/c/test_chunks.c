/* Websocket frames cut at every kind of place: the emulator's stream reaches the client
 * through a proxy that writes it in small pieces (1-14 bytes mostly, some of a few KB)
 * with a pause after each, so the client's reads end inside frame headers (2, 4 and
 * 10-byte forms), inside payloads and exactly at frame boundaries. Every notification
 * must arrive whole and exactly once. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>

#include "support.h"

static mock M;

/* ---- the proxy ----------------------------------------------------------------------- */

typedef struct {
  int lfd;       /* listening socket */
  int target;    /* emulator port */
  volatile int stop;
} proxy;

typedef struct {
  int cfd, sfd;
  uint32_t rng;
  volatile int *stop;
} pair;

static uint32_t next_rand(uint32_t *s) {
  *s = *s * 1664525u + 1013904223u;
  return *s >> 8;
}

static size_t piece_size(uint32_t *s) {
  uint32_t r = next_rand(s);
  if (r % 5 == 0) return 100 + r % 4000;
  return 1 + r % 14;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static void *pair_main(void *arg) {
  pair *pr = arg;
  char *buf = malloc(65536);
  struct pollfd fds[2] = {{.fd = pr->cfd, .events = POLLIN}, {.fd = pr->sfd, .events = POLLIN}};
  while (!*pr->stop && buf) {
    int n = poll(fds, 2, 100);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) { /* client -> server, as is */
      ssize_t r = read(pr->cfd, buf, 65536);
      if (r <= 0 || write_all(pr->sfd, buf, (size_t)r) != 0) break;
    }
    if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) { /* server -> client, in pieces */
      ssize_t r = read(pr->sfd, buf, 65536);
      if (r <= 0) break;
      size_t off = 0;
      while (off < (size_t)r) {
        size_t k = piece_size(&pr->rng);
        if (k > (size_t)r - off) k = (size_t)r - off;
        if (write_all(pr->cfd, buf + off, k) != 0) goto out;
        off += k;
        usleep(k > 50 ? 200 : 60); /* lets the client read the piece on its own */
      }
    }
  }
out:
  free(buf);
  close(pr->cfd);
  close(pr->sfd);
  free(pr);
  return NULL;
}

static void *proxy_main(void *arg) {
  proxy *px = arg;
  uint32_t seed = 12345;
  while (!px->stop) {
    struct pollfd p = {.fd = px->lfd, .events = POLLIN};
    if (poll(&p, 1, 100) <= 0) continue;
    int cfd = accept(px->lfd, NULL, NULL);
    if (cfd < 0) continue;
    int sfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)px->target)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (sfd < 0 || connect(sfd, (struct sockaddr *)&sa, sizeof sa) != 0) {
      close(cfd);
      if (sfd >= 0) close(sfd);
      continue;
    }
    int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pair *pr = calloc(1, sizeof *pr);
    pr->cfd = cfd;
    pr->sfd = sfd;
    pr->rng = seed += 7919;
    pr->stop = &px->stop;
    pthread_t t;
    if (pthread_create(&t, NULL, pair_main, pr) != 0) {
      close(cfd);
      close(sfd);
      free(pr);
      continue;
    }
    pthread_detach(t);
  }
  return NULL;
}

static int proxy_start(proxy *px, int target, pthread_t *t) {
  px->target = target;
  px->stop = 0;
  px->lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t sl = sizeof sa;
  if (px->lfd < 0 || bind(px->lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(px->lfd, 16) != 0 ||
      getsockname(px->lfd, (struct sockaddr *)&sa, &sl) != 0)
    return -1;
  if (pthread_create(t, NULL, proxy_main, px) != 0) return -1;
  return ntohs(sa.sin_port);
}

/* ---- the client ---------------------------------------------------------------------- */

typedef struct {
  int ready, notes, dups, bad, big, chat_ok;
  char ids[512][40];
} rec;

static int seen(rec *r, const char *id) {
  int n = r->notes < 512 ? r->notes : 512;
  for (int i = 0; i < n; i++)
    if (strcmp(r->ids[i], id) == 0) return 1;
  return 0;
}

static void on_event(void *user, const tw_event *ev) {
  rec *r = user;
  if (ev->type == TW_EV_READY) r->ready++;
  if (ev->type == TW_EV_ERROR && ev->error && strcmp(ev->error->code, "bad_message") == 0) r->bad++;
  if (ev->type != TW_EV_NOTIFICATION) return;
  if (seen(r, ev->msg->id)) r->dups++;
  if (r->notes < 512) snprintf(r->ids[r->notes], sizeof r->ids[0], "%s", ev->msg->id);
  r->notes++;
  size_t l = 0;
  const char *big = tw_json_str(ev->msg->doc, tw_json_get(ev->msg->doc, ev->msg->event, "big", 3), &l);
  if (big && l == 70000 && big[0] == 'y' && big[l - 1] == 'y') r->big++;
  if (strcmp(ev->msg->type, "channel.chat.message") == 0 &&
      tw_json_str(ev->msg->doc, tw_json_getp(ev->msg->doc, ev->msg->event, "message.text"), NULL) != NULL)
    r->chat_ok++;
}

static int is_ready(void *a) { return ((rec *)a)->ready > 0; }
static int want;
static int enough(void *a) { return ((rec *)a)->notes >= want; }

static void on_resp(void *u, const tw_response *r) { *(int *)u = r->status ? r->status : -1; }
static int resp_in(void *a) { return *(int *)a != 0; }

static int subscribe(tw_client *c, tw_conduit *cd, const char *type, const char *cond) {
  char body[512];
  snprintf(body, sizeof body,
           "{\"type\":\"%s\",\"version\":\"1\",\"condition\":%s,"
           "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
           type, cond, tw_conduit_id(cd) ? tw_conduit_id(cd) : "");
  int st = 0;
  tw_error err;
  if (tw_helix(c, "POST", "/eventsub/subscriptions", body, strlen(body), on_resp, &st, &err) != 0) return -1;
  wait_until(c, resp_in, &st, 10);
  return st;
}

int main(void) {
  tw_set_lws_log_level(0);
  if (mock_start(&M) != 0) {
    ok(0, "the emulator starts");
    return done_testing();
  }
  int target = atoi(strrchr(M.eventsub_ws, ':') + 1);
  proxy px;
  pthread_t pt;
  int port = proxy_start(&px, target, &pt);
  ok(port > 0, "the chunking proxy listens (port %d)", port);
  char ws[128];
  const char *path = strchr(strstr(M.eventsub_ws, "://") + 3, '/');
  snprintf(ws, sizeof ws, "ws://127.0.0.1:%d%s", port, path ? path : "/");

  rec *r = calloc(1, sizeof *r);
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = M.client_id;
  o.client_secret = M.client_secret;
  o.api_base = M.api_base;
  o.auth_base = M.auth_base;
  o.eventsub_ws = ws;
  o.backoff_min_s = 0.1;
  tw_client *c = tw_client_new(&o, &err);
  tw_client_on_event(c, on_event, r);
  tw_conduit_opts co = {.shards = 2};
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  ok(cd && wait_until(c, is_ready, r, 20), "2 shards connect through the proxy and are assigned");

  ok(subscribe(c, cd, "stream.online", "{\"broadcaster_user_id\":\"41\"}") == 202 &&
         subscribe(c, cd, "channel.chat.message", "{\"broadcaster_user_id\":\"42\",\"user_id\":\"1\"}") == 202 &&
         subscribe(c, cd, "channel.chat.message", "{\"broadcaster_user_id\":\"43\",\"user_id\":\"1\"}") == 202,
     "three subscriptions");

  /* small frames (2-byte header), ~1.7 KB frames (4-byte header), 70 KB frames (10-byte header) */
  cJSON_Delete(mock_call(&M, "POST", "/trigger", "{\"type\":\"stream.online\",\"channels\":[\"41\"],\"count\":60}"));
  cJSON_Delete(mock_call(&M, "POST", "/trigger",
                         "{\"type\":\"channel.chat.message\",\"channels\":[\"42\",\"43\"],\"count\":60}"));
  size_t n = 70000;
  char *body = malloc(n + 200);
  int len = snprintf(body, 200, "{\"type\":\"stream.online\",\"channels\":[\"41\"],\"count\":4,\"event\":{\"big\":\"");
  memset(body + len, 'y', n);
  snprintf(body + len + n, 100, "\"}}");
  cJSON_Delete(mock_call(&M, "POST", "/trigger", body));
  free(body);
  cJSON_Delete(mock_call(&M, "POST", "/trigger", "{\"type\":\"stream.online\",\"channels\":[\"41\"],\"count\":20}"));

  want = 60 + 120 + 4 + 20;
  int got = wait_until(c, enough, r, 60);
  tw_client_step(c, 300); /* anything doubled would show up now */
  ok(got && r->notes == want, "all %d notifications arrive (%d)", want, r->notes);
  ok(r->dups == 0, "none twice (%d)", r->dups);
  ok(r->big == 4, "the 70 KB events arrive whole (%d of 4)", r->big);
  ok(r->chat_ok == 120, "the chat messages parse (%d of 120)", r->chat_ok);
  ok(r->bad == 0, "no frame or message was taken for malformed (%d)", r->bad);
  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  ok(cs.bad_messages == 0 && cs.notifications == (uint64_t)want, "the stats agree (%llu notifications, %llu bad)",
     (unsigned long long)cs.notifications, (unsigned long long)cs.bad_messages);

  tw_client_free(c);
  free(r);
  px.stop = 1;
  pthread_join(pt, NULL);
  close(px.lfd);
  usleep(200000); /* the pair threads see stop within 100 ms */
  mock_stop(&M);
  return done_testing();
}
