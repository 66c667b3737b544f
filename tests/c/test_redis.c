/* The Redis link's glue (redis.c) against servers that misbehave, made here: nobody
 * listening (a connect that fails), a socket that accepts and never answers (the command
 * deadline, then a reconnection), a peer that closes (the loss reported, every command in
 * flight answered), and URLs that cannot be used. */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../../csrc/core/internal.h"
#include "../../csrc/core/tw_queue.h"
#include "../../csrc/core/tw_redis.h"
#include "support.h"

typedef struct {
  int ups, downs, replies, errors;
  char last_code[32];
  char last_err[320];
} seen;

static void on_state(void *user, tw_redis *r, int up, const tw_error *err) {
  (void)r;
  seen *s = user;
  if (up) s->ups++;
  else {
    s->downs++;
    snprintf(s->last_code, sizeof s->last_code, "%s", err ? err->code : "");
  }
}

static void on_reply(tw_redis *r, void *user, redisReply *rep, const tw_error *err) {
  (void)r;
  seen *s = user;
  if (rep) s->replies++;
  else {
    s->errors++;
    snprintf(s->last_err, sizeof s->last_err, "%s: %s", err->code, err->message);
  }
}

static void step_until(tw_client *c, int *v, int want, int ms) {
  uint64_t end = tw_client_now_ms(c) + (uint64_t)ms;
  while (*v < want && tw_client_now_ms(c) < end) tw_client_step(c, 20);
}

int main(void) {
  tw_set_lws_log_level(0);
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  /* no credentials: the Redis link needs none */
  tw_error err;
  tw_client *c = tw_client_new(&o, &err);
  ok(c != NULL, "a client");

  /* URLs */
  seen s0 = {0};
  ok(tw_redis_new(c, "http://x", 1, 1, on_state, &s0, &err) == NULL && strcmp(err.code, "invalid_argument") == 0,
     "a URL of another scheme is refused (%s)", err.message);
  ok(tw_redis_new(c, "redis://h:99999", 1, 1, on_state, &s0, &err) == NULL, "a port out of range is refused");
  ok(tw_redis_new(c, "unix:", 1, 1, on_state, &s0, &err) == NULL, "a unix URL without a path is refused");

  /* nobody listening */
  char dir[] = "/tmp/twq-redis-test.XXXXXX";
  ok(mkdtemp(dir) != NULL, "a temporary folder");
  char path[200], url[220];
  snprintf(path, sizeof path, "%s/none.sock", dir);
  snprintf(url, sizeof url, "unix:%s", path);
  seen s1 = {0};
  tw_redis *r = tw_redis_new(c, url, 0.5, 0.3, on_state, &s1, &err);
  ok(r != NULL, "a link to a socket nobody listens on is made (it connects in the background)");
  step_until(c, &s1.downs, 2, 3000);
  ok(s1.downs >= 2 && s1.ups == 0, "each failed attempt is reported, and attempts go on (%d)", s1.downs);
  ok(strcmp(s1.last_code, "redis_unreachable") == 0, "as redis_unreachable (%s)", s1.last_code);
  const char *argv[] = {"PING"};
  size_t lens[] = {4};
  ok(tw_redis_cmd(r, on_reply, &s1, 1, argv, lens) == -1 || !tw_redis_up(r), "commands are refused while down");
  tw_redis_free(r);

  /* a server that accepts and never answers: the command's deadline */
  snprintf(path, sizeof path, "%s/mute.sock", dir);
  snprintf(url, sizeof url, "unix:%s", path);
  int lfd = listen_unix(path);
  ok(lfd >= 0, "a mute server");
  seen s2 = {0};
  r = tw_redis_new(c, url, 0.5, 0.3, on_state, &s2, &err);
  step_until(c, &s2.ups, 1, 2000);
  ok(s2.ups == 1 && tw_redis_up(r), "connected (the kernel accepted)");
  ok(tw_redis_cmd(r, on_reply, &s2, 1, argv, lens) == 0 && tw_redis_cmd(r, on_reply, &s2, 1, argv, lens) == 0,
     "two commands sent");
  uint64_t t0 = tw_client_now_ms(c);
  step_until(c, &s2.errors, 2, 3000);
  uint64_t took = tw_client_now_ms(c) - t0;
  ok(s2.errors == 2 && s2.replies == 0, "both are answered with an error, none with a reply");
  ok(strstr(s2.last_err, "no reply within") != NULL, "the error says why (%s)", s2.last_err);
  ok(took >= 250 && took < 2000, "after the deadline (%llu ms)", (unsigned long long)took);
  ok(s2.downs == 1 && strcmp(s2.last_code, "redis_timeout") == 0, "the link is reported down once, redis_timeout (%s)",
     s2.last_code);
  step_until(c, &s2.ups, 2, 3000);
  ok(s2.ups == 2, "and it reconnects");

  /* the peer closes: the loss is reported, the command in flight answered */
  int afd = accept(lfd, NULL, NULL);
  int afd2 = accept(lfd, NULL, NULL);
  ok(afd >= 0 && afd2 >= 0, "the server takes its two connections");
  ok(tw_redis_cmd(r, on_reply, &s2, 1, argv, lens) == 0, "a command in flight");
  close(afd2);
  int downs = s2.downs;
  step_until(c, &s2.downs, downs + 1, 3000);
  ok(s2.downs == downs + 1 && strcmp(s2.last_code, "redis_disconnected") == 0, "a closed peer is reported (%s)",
     s2.last_code);
  ok(s2.errors == 3, "and the command in flight answered with an error (%d)", s2.errors);
  tw_redis_free(r);
  close(afd);
  close(lfd);

  /* a queue with bad options */
  tw_queue_opts qo = TW_QUEUE_OPTS_INIT;
  qo.redis = url;
  ok(tw_queue_new(c, &qo, &err) == NULL && strcmp(err.code, "invalid_argument") == 0, "a queue needs a name (%s)",
     err.message);
  qo.name = "bot";
  qo.partitions = 0;
  ok(tw_queue_new(c, &qo, &err) == NULL, "partitions must be >= 1");
  qo.partitions = 4;
  qo.spool = "/nonexistent-dir/spool";
  ok(tw_queue_new(c, &qo, &err) == NULL && strcmp(err.code, "queue_spool") == 0, "an unusable spool path is refused (%s)",
     err.message);

  ok(tw_client_free(c) == TW_OK, "the client frees");
  unlink(path);
  rmdir(dir);
  return done_testing();
}
