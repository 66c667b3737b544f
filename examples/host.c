/* host.c - a C program that embeds Lua and twconduit in its own poll(2) loop.
 *
 * The host owns the loop: it waits on its own descriptors (here: a timerfd-free
 * heartbeat on a deadline, and stdin when it is a terminal) plus the client's pollable
 * fd, with the client's timeout, and calls client:step(0) when the client has work.
 *
 *   twconduit-host-example script.lua
 *
 * The script returns a table { client = <twconduit client>, done = function() ... end }.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* calls app.client:<method>() and leaves its results on the stack */
static int call_client(lua_State *L, int app, const char *method, int nres) {
  lua_getfield(L, app, "client");
  lua_getfield(L, -1, method);
  lua_insert(L, -2);
  if (lua_pcall(L, 1, nres, 0) != LUA_OK) {
    fprintf(stderr, "host: client:%s() failed: %s\n", method, lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s script.lua\n", argv[0]);
    return 2;
  }
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  if (luaL_dofile(L, argv[1]) != LUA_OK || !lua_istable(L, -1)) {
    fprintf(stderr, "host: %s: %s\n", argv[1], lua_isstring(L, -1) ? lua_tostring(L, -1) : "must return a table");
    lua_close(L);
    return 1;
  }
  int app = lua_gettop(L);
  double start = now_s(), next_beat = start + 1, deadline = start + 30;
  int steps = 0, rc = 1;
  for (;;) {
    lua_getfield(L, app, "done");
    if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
      fprintf(stderr, "host: done() failed: %s\n", lua_tostring(L, -1));
      break;
    }
    int done = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (done) {
      rc = 0;
      break;
    }
    if (now_s() > deadline) {
      fprintf(stderr, "host: gave up after 30 s\n");
      break;
    }
    if (call_client(L, app, "pollfd", 1) != 0) break;
    int fd = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (call_client(L, app, "timeout", 1) != 0) break;
    double t = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : -1; /* nil: no deadline */
    lua_pop(L, 1);
    /* the host's own deadline (its heartbeat) bounds the wait too */
    double until_beat = next_beat - now_s();
    if (until_beat < 0) until_beat = 0;
    if (t < 0 || t > until_beat) t = until_beat;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    poll(&p, 1, (int)ceil(t * 1000)); /* round up: rather wake late than early */
    if (now_s() >= next_beat) {
      printf("host: heartbeat at %.1f s (%d client steps so far)\n", now_s() - start, steps);
      fflush(stdout);
      next_beat += 1;
    }
    if (call_client(L, app, "step", 0) != 0) break; /* step() with no argument never blocks */
    steps++;
  }
  lua_getfield(L, app, "finish");
  if (lua_isfunction(L, -1)) {
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) fprintf(stderr, "host: finish() failed: %s\n", lua_tostring(L, -1));
  } else {
    lua_pop(L, 1);
  }
  printf("host: %s after %d steps\n", rc == 0 ? "done" : "failed", steps);
  lua_close(L);
  return rc;
}
