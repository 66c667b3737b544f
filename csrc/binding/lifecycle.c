/* lifecycle.c - the shard-lifecycle verbs of conduits and shards, added to their classes.
 *
 * Each starts a core operation (conduit.c) and returns at once; the Lua layer waits for
 * the outcome through the events the operation produces (shard_enabled, shard_released,
 * the object closing), so no completion callback crosses into Lua here.
 *   conduit: add_shards(n) -> list of the new shard objects | nil, err
 *            _resize(n), _verify(), _lost_policy("reassign" | "report") -> true | nil, err
 *   shard:   release(), _point_at(target), _handover(), _hold(bool) -> true | nil, err
 *            _transport() -> {method, session_id, callback, status, assigned}, _held(),
 *            _renumber(id)
 */
#include <string.h>

#include "twl.h"

static twl_obj *live_box(lua_State *L, int i, const char *mt, const char *what) {
  twl_obj *b = luaL_checkudata(L, i, mt);
  if (b->obj == NULL || b->cl->c == NULL) luaL_error(L, "%s is closed", what);
  return b;
}

static int result(lua_State *L, int rc, const tw_error *e) {
  if (rc == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  luaL_pushfail(L);
  twl_push_error(L, e);
  return 2;
}

/* runs f inside a frame, so events emitted synchronously reach Lua safely */
#define IN_FRAME(b, L, uvclient, stmt)                                                     \
  do {                                                                                     \
    lua_getiuservalue(L, 1, uvclient);                                                     \
    twl_frame saved_;                                                                      \
    twl_frame_begin((b)->cl, L, lua_gettop(L), &saved_);                                   \
    stmt;                                                                                  \
    twl_frame_end((b)->cl, &saved_);                                                       \
    lua_pop(L, 1);                                                                         \
  } while (0)

enum { UV_CLIENT = 2 };

/* A verb's object (argument 1) and what its arguments gave. */
typedef struct verb {
  twl_obj *b;
  lua_Integer n;    /* _resize: the shard count */
  twl_obj *target;  /* _point_at: the target shard */
  const char *id;   /* _renumber: the new id */
} verb;
typedef int (*verb_fn)(const verb *v, tw_error *e);

/* Runs the verb's core call, in a frame when it may emit events at once (so they reach
 * Lua safely): true | nil, err. */
static int run_verb(lua_State *L, const verb *v, verb_fn fn, int framed) {
  tw_error e;
  memset(&e, 0, sizeof e);
  int rc = 0;
  if (framed) {
    lua_settop(L, 1);
    IN_FRAME(v->b, L, UV_CLIENT, rc = fn(v, &e));
  } else {
    rc = fn(v, &e);
  }
  return result(L, rc, &e);
}

static int cd_add_shards(lua_State *L) {
  twl_obj *b = live_box(L, 1, TWL_CONDUIT_MT, "conduit");
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 1 && n <= 20000, 2, "a shard count in 1..20000 expected");
  lua_settop(L, 1);
  tw_error e;
  memset(&e, 0, sizeof e);
  size_t first = 0;
  int rc = 0;
  IN_FRAME(b, L, UV_CLIENT, rc = tw_conduit_add_shards(b->obj, (int)n, NULL, NULL, &first, &e));
  if (rc != 0) return result(L, rc, &e);
  lua_getiuservalue(L, 1, UV_CLIENT);        /* 2 */
  lua_getiuservalue(L, 2, TWL_UV_OBJS);      /* 3 */
  lua_createtable(L, (int)n, 0);             /* 4 */
  for (lua_Integer i = 0; i < n; i++) {
    tw_shard *s = tw_conduit_shard(b->obj, first + (size_t)i);
    if (s == NULL) break;
    if (lua_rawgetp(L, 3, s) == LUA_TNIL) {
      lua_pop(L, 1);
      twl_push_shard_ud(L, b->cl, 3, 2, s);
    }
    lua_rawseti(L, 4, i + 1);
  }
  return 1;
}

static int do_resize(const verb *v, tw_error *e) { return tw_conduit_resize(v->b->obj, (int)v->n, NULL, NULL, e); }
static int cd_resize(lua_State *L) {
  verb v = {.b = live_box(L, 1, TWL_CONDUIT_MT, "conduit")};
  v.n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, v.n >= 1 && v.n <= 20000, 2, "a shard count in 1..20000 expected");
  return run_verb(L, &v, do_resize, 1);
}

static int do_verify(const verb *v, tw_error *e) { return tw_conduit_verify(v->b->obj, NULL, NULL, e); }
static int cd_verify(lua_State *L) {
  verb v = {.b = live_box(L, 1, TWL_CONDUIT_MT, "conduit")};
  return run_verb(L, &v, do_verify, 1);
}

static int cd_lost_policy(lua_State *L) {
  twl_obj *b = live_box(L, 1, TWL_CONDUIT_MT, "conduit");
  static const char *const opts[] = {"reassign", "report", NULL};
  int p = luaL_checkoption(L, 2, NULL, opts);
  tw_conduit_set_lost_policy(b->obj, p == 0 ? TW_LOST_REASSIGN : TW_LOST_REPORT);
  lua_pushboolean(L, 1);
  return 1;
}

static int do_release(const verb *v, tw_error *e) { return tw_shard_release(v->b->obj, NULL, NULL, e); }
static int sh_release(lua_State *L) {
  verb v = {.b = live_box(L, 1, TWL_SHARD_MT, "shard")};
  return run_verb(L, &v, do_release, 1);
}

static int do_point_at(const verb *v, tw_error *e) {
  return tw_shard_point_at(v->b->obj, v->target->obj, NULL, NULL, e);
}
static int sh_point_at(lua_State *L) {
  verb v = {.b = live_box(L, 1, TWL_SHARD_MT, "shard")};
  v.target = live_box(L, 2, TWL_SHARD_MT, "shard");
  return run_verb(L, &v, do_point_at, 1);
}

static int do_handover(const verb *v, tw_error *e) { return tw_shard_handover(v->b->obj, NULL, NULL, e); }
static int sh_handover(lua_State *L) {
  verb v = {.b = live_box(L, 1, TWL_SHARD_MT, "shard")};
  return run_verb(L, &v, do_handover, 1);
}

/* not in a frame: renumbering emits nothing; the id stays on the stack meanwhile */
static int do_renumber(const verb *v, tw_error *e) { return tw_shard_renumber(v->b->obj, v->id, e); }
static int sh_renumber(lua_State *L) {
  verb v = {.b = live_box(L, 1, TWL_SHARD_MT, "shard")};
  v.id = luaL_checkstring(L, 2);
  return run_verb(L, &v, do_renumber, 0);
}

static int sh_hold(lua_State *L) {
  twl_obj *b = live_box(L, 1, TWL_SHARD_MT, "shard");
  int on = lua_isnoneornil(L, 2) ? 1 : lua_toboolean(L, 2);
  tw_error e;
  memset(&e, 0, sizeof e);
  int rc = tw_shard_hold(b->obj, on);
  if (rc != 0) snprintf(e.code, sizeof e.code, "closed"), snprintf(e.message, sizeof e.message, "shard is closed");
  return result(L, rc, &e);
}

static int sh_held(lua_State *L) {
  twl_obj *b = live_box(L, 1, TWL_SHARD_MT, "shard");
  lua_pushboolean(L, tw_shard_held(b->obj));
  return 1;
}

static int sh_transport(lua_State *L) {
  twl_obj *b = live_box(L, 1, TWL_SHARD_MT, "shard");
  tw_transport_info t;
  int assigned = 0;
  tw_shard_transport(b->obj, &t, &assigned);
  twl_push_transport(L, &t);
  lua_pushboolean(L, assigned);
  lua_setfield(L, -2, "assigned");
  return 1;
}

void twl_push_transport(lua_State *L, const tw_transport_info *t) {
  lua_createtable(L, 0, 5);
  if (!t) return;
  const char *k[4] = {"method", "session_id", "callback", "status"};
  const char *v[4] = {t->method, t->session_id, t->callback, t->status};
  for (int i = 0; i < 4; i++)
    if (v[i]) {
      lua_pushstring(L, v[i]);
      lua_setfield(L, -2, k[i]);
    }
}

static void add_methods(lua_State *L, const char *mt, const luaL_Reg *fns) {
  luaL_getmetatable(L, mt);
  lua_getfield(L, -1, "__index");
  luaL_setfuncs(L, fns, 0);
  lua_pop(L, 2);
}

void twl_lifecycle_open(lua_State *L) {
  static const luaL_Reg conduit[] = {{"add_shards", cd_add_shards},
                                     {"_resize", cd_resize},
                                     {"_verify", cd_verify},
                                     {"_lost_policy", cd_lost_policy},
                                     {NULL, NULL}};
  static const luaL_Reg shard[] = {{"release", sh_release},   {"_point_at", sh_point_at},
                                   {"_handover", sh_handover}, {"_hold", sh_hold},
                                   {"_held", sh_held},         {"_transport", sh_transport},
                                   {"_renumber", sh_renumber},
                                   {NULL, NULL}};
  add_methods(L, TWL_CONDUIT_MT, conduit);
  add_methods(L, TWL_SHARD_MT, shard);
}
