/* The Redis link's replies (redis.c builds them in an arena of the connection): every
 * RESP2 type, nested and empty arrays, nil bulk and nil array, a reply of 1.2 MB that
 * arrives over many reads and outgrows the arena's first block, small replies after it
 * (the arena reused), and a protocol error in the middle of a reply (the link dropped,
 * the command answered with an error, nothing leaked: run under ASan and valgrind). The
 * server is a socket of this test writing RESP of its own. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../../csrc/core/internal.h"
#include "../../csrc/core/tw_redis.h"
#include "support.h"

#define BIG_N 300
#define BIG_LEN 4000

typedef struct {
  int ups, downs, replies, errors, good;
  char why[320];
} seen;

static void on_state(void *user, tw_redis *r, int up, const tw_error *err) {
  (void)r;
  (void)err;
  seen *s = user;
  if (up) s->ups++;
  else s->downs++;
}

static int is(const redisReply *r, int type) { return r && r->type == type; }

static int is_str(const redisReply *r, int type, const char *v) {
  return is(r, type) && r->len == strlen(v) && memcmp(r->str, v, r->len) == 0 && r->str[r->len] == 0;
}

/* *6: nil bulk, nil array, :42, +OK, -ERR bad, *2 [*0, $3 abc] */
static void on_mixed(tw_redis *rd, void *user, redisReply *r, const tw_error *err) {
  (void)rd;
  seen *s = user;
  if (!r) {
    s->errors++;
    snprintf(s->why, sizeof s->why, "%s", err ? err->message : "?");
    return;
  }
  s->replies++;
  s->good = is(r, REDIS_REPLY_ARRAY) && r->elements == 6 && is(r->element[0], REDIS_REPLY_NIL) &&
            is(r->element[1], REDIS_REPLY_NIL) && is(r->element[2], REDIS_REPLY_INTEGER) &&
            r->element[2]->integer == 42 && is_str(r->element[3], REDIS_REPLY_STATUS, "OK") &&
            is_str(r->element[4], REDIS_REPLY_ERROR, "ERR bad") && is(r->element[5], REDIS_REPLY_ARRAY) &&
            r->element[5]->elements == 2 && is(r->element[5]->element[0], REDIS_REPLY_ARRAY) &&
            r->element[5]->element[0]->elements == 0 && r->element[5]->element[0]->element == NULL &&
            is_str(r->element[5]->element[1], REDIS_REPLY_STRING, "abc");
}

static void on_big(tw_redis *rd, void *user, redisReply *r, const tw_error *err) {
  (void)rd;
  (void)err;
  seen *s = user;
  if (!r) {
    s->errors++;
    return;
  }
  s->replies++;
  int good = is(r, REDIS_REPLY_ARRAY) && r->elements == BIG_N;
  for (size_t i = 0; good && i < BIG_N; i++) {
    const redisReply *e = r->element[i];
    good = is(e, REDIS_REPLY_STRING) && e->len == BIG_LEN && e->str[0] == (char)('a' + i % 26) &&
           e->str[BIG_LEN - 1] == (char)('A' + i % 26) && e->str[BIG_LEN] == 0;
  }
  s->good = good;
}

static void on_small(tw_redis *rd, void *user, redisReply *r, const tw_error *err) {
  (void)rd;
  (void)err;
  seen *s = user;
  if (!r) {
    s->errors++;
    return;
  }
  s->replies++;
  if (is(r, REDIS_REPLY_INTEGER) && r->integer == 7) s->good++;
  else if (is_str(r, REDIS_REPLY_STRING, "after")) s->good++;
  else if (is_str(r, REDIS_REPLY_ERROR, "NOSCRIPT x")) s->good++;
}

static void step_until(tw_client *c, int *v, int want, int ms) {
  uint64_t end = tw_client_now_ms(c) + (uint64_t)ms;
  while (*v < want && tw_client_now_ms(c) < end) tw_client_step(c, 10);
}

/* Writes all of p to the non-blocking socket fd, stepping the client while it is full. */
static int feed(tw_client *c, int fd, const char *p, size_t n) {
  uint64_t end = tw_client_now_ms(c) + 10000;
  while (n > 0 && tw_client_now_ms(c) < end) {
    ssize_t w = write(fd, p, n);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
    } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      return -1;
    } else {
      tw_client_step(c, 5);
    }
  }
  return n == 0 ? 0 : -1;
}

int main(void) {
  tw_set_lws_log_level(0);
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  /* no credentials: the Redis link needs none */
  tw_error err;
  tw_client *c = tw_client_new(&o, &err);
  ok(c != NULL, "a client");
  char dir[] = "/tmp/twq-replies-test.XXXXXX";
  ok(mkdtemp(dir) != NULL, "a temporary folder");
  char path[200], url[220];
  snprintf(path, sizeof path, "%s/r.sock", dir);
  snprintf(url, sizeof url, "unix:%s", path);
  int lfd = listen_unix(path);
  ok(lfd >= 0, "a server socket");
  seen st = {0};
  tw_redis *r = tw_redis_new(c, url, 2, 5, on_state, &st, &err);
  step_until(c, &st.ups, 1, 3000);
  ok(r && st.ups == 1, "connected");
  int afd = accept(lfd, NULL, NULL);
  ok(afd >= 0 && fcntl(afd, F_SETFL, O_NONBLOCK) == 0, "the server takes the connection");
  const char *argv[] = {"PING"};
  size_t lens[] = {4};

  /* every type, nested */
  seen m = {0};
  ok(tw_redis_cmd(r, on_mixed, &m, 1, argv, lens) == 0, "a command");
  const char mixed[] = "*6\r\n$-1\r\n*-1\r\n:42\r\n+OK\r\n-ERR bad\r\n*2\r\n*0\r\n$3\r\nabc\r\n";
  ok(feed(c, afd, mixed, sizeof mixed - 1) == 0, "its reply written");
  step_until(c, &m.replies, 1, 3000);
  ok(m.replies == 1 && m.good, "nil bulk, nil array, integer, status, error, empty and nested arrays, a string (%s)",
     m.why);

  /* a reply of 1.2 MB over many reads */
  seen b = {0};
  ok(tw_redis_cmd(r, on_big, &b, 1, argv, lens) == 0, "a command with a large reply");
  char *big = malloc((size_t)BIG_N * (BIG_LEN + 16) + 16);
  size_t bl = (size_t)sprintf(big, "*%d\r\n", BIG_N);
  for (int i = 0; i < BIG_N; i++) {
    bl += (size_t)sprintf(big + bl, "$%d\r\n", BIG_LEN);
    memset(big + bl, 'a' + i % 26, BIG_LEN - 1);
    big[bl + BIG_LEN - 1] = (char)('A' + i % 26);
    bl += BIG_LEN;
    memcpy(big + bl, "\r\n", 2);
    bl += 2;
  }
  ok(feed(c, afd, big, bl) == 0, "written (%zu bytes)", bl);
  free(big);
  step_until(c, &b.replies, 1, 5000);
  ok(b.replies == 1 && b.good, "every element of it intact");

  /* small replies after it: the arena reused */
  seen sm = {0};
  for (int i = 0; i < 3; i++) tw_redis_cmd(r, on_small, &sm, 1, argv, lens);
  const char small[] = ":7\r\n$5\r\nafter\r\n-NOSCRIPT x\r\n";
  ok(feed(c, afd, small, sizeof small - 1) == 0, "three small replies written at once");
  step_until(c, &sm.replies, 3, 3000);
  ok(sm.replies == 3 && sm.good == 3, "each read right (%d of 3)", sm.good);

  /* a protocol error inside a reply: the partial reply is freed, the link dropped */
  seen pe = {0};
  int downs = st.downs;
  ok(tw_redis_cmd(r, on_mixed, &pe, 1, argv, lens) == 0, "a command");
  const char broken[] = "*3\r\n$3\r\nabc\r\n*2\r\n:1\r\n!nope\r\n";
  ok(feed(c, afd, broken, sizeof broken - 1) == 0, "a reply that breaks the protocol half-way");
  step_until(c, &pe.errors, 1, 3000);
  ok(pe.errors == 1 && pe.replies == 0, "the command is answered with an error (%s)", pe.why);
  step_until(c, &st.downs, downs + 1, 3000);
  ok(st.downs == downs + 1, "and the link is reported down");

  tw_redis_free(r);
  close(afd);
  close(lfd);
  ok(tw_client_free(c) == TW_OK, "the client frees");
  unlink(path);
  rmdir(dir);
  return done_testing();
}
