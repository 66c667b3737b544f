/* A host that owns the libuv loop: the client runs on it, the host drives it with
 * uv_run, and after tw_client_free the host's loop closes cleanly (nothing of ours is
 * left on it). Also the embedding trio: pollfd + timeout + step(0) from a poll(2) loop. */
#include <poll.h>
#include <uv.h>

#include "support.h"

static int ready, notes;
static void on_event(void *u, const tw_event *ev) {
  (void)u;
  if (ev->type == TW_EV_READY) ready++;
  if (ev->type == TW_EV_NOTIFICATION) notes++;
}

static int host_wait(uv_loop_t *loop, int *flag, int want, double secs) {
  double end = now_s() + secs;
  while (*flag < want && now_s() < end) uv_run(loop, UV_RUN_ONCE);
  return *flag >= want;
}

static void on_tick(uv_timer_t *t) { (void)t; }

int main(void) {
  tw_set_lws_log_level(0);
  mock m = {0};
  if (mock_start(&m) != 0) {
    ok(0, "the emulator starts");
    return done_testing();
  }
  uv_loop_t loop;
  uv_loop_init(&loop);
  uv_timer_t tick; /* the host's own timer keeps its loop turning */
  uv_timer_init(&loop, &tick);
  uv_timer_start(&tick, on_tick, 50, 50);

  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  mock_client_opts(&m, &o);
  o.uv_loop = &loop;
  tw_client *c = tw_client_new(&o, &err);
  ok(c && tw_client_loop(c) == &loop, "the client runs on the host's loop");
  tw_client_on_event(c, on_event, NULL);
  tw_conduit_opts co = {.shards = 2};
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  ok(host_wait(&loop, &ready, 1, 10), "the host's uv_run brings the conduit up");
  ok(tw_client_step(c, 0) == 0, "step works on a host loop too");
  (void)cd;
  tw_client_free(c);
  uv_timer_stop(&tick);
  uv_close((uv_handle_t *)&tick, NULL);
  for (int i = 0; i < 50 && uv_loop_alive(&loop); i++) uv_run(&loop, UV_RUN_NOWAIT);
  ok(!uv_loop_alive(&loop), "after tw_client_free nothing of the client is left on the host's loop");
  ok(uv_loop_close(&loop) == 0, "the host's loop closes cleanly");

  /* the embedding trio from a poll(2) loop, on the client's own loop */
  tw_client_opts o2 = o;
  o2.uv_loop = NULL;
  c = tw_client_new(&o2, &err);
  tw_client_on_event(c, on_event, NULL);
  ready = 0;
  tw_conduit_open(c, &co, &err);
  int fd = tw_client_pollfd(c);
  ok(fd >= 0, "pollfd is a descriptor");
  double end = now_s() + 10;
  int idle_zero = 0, polls = 0;
  while (!ready && now_s() < end) {
    int t = tw_client_timeout_ms(c);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    poll(&p, 1, t < 0 || t > 100 ? 100 : t);
    tw_client_step(c, 0);
    polls++;
  }
  ok(ready == 1, "a conduit comes up driven only by pollfd/timeout/step(0) (%d polls)", polls);
  /* idle: the timeout must not be 0 forever (a host would spin) */
  for (int i = 0; i < 20; i++) {
    int t = tw_client_timeout_ms(c);
    if (t == 0) idle_zero++;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    poll(&p, 1, t < 0 || t > 50 ? 50 : t);
    tw_client_step(c, 0);
  }
  ok(idle_zero < 5, "an idle client does not ask to be stepped at once again and again (%d/20)", idle_zero);
  tw_client_free(c);
  mock_stop(&m);
  return done_testing();
}
