/* conduit.c - twconduit.conduit: a box over a tw_conduit owned by its client.
 *
 * A box (twl.h): user value 1 holds the Lua object bound to it (ud:bind(obj)), which
 * events carry; user value 2 the client userdata. The client anchors the userdata (by
 * the core pointer) until the core frees the conduit.
 */
#include <string.h>

#include "twl.h"

enum { UV_CLIENT = TWL_BOX_CLIENT };

void twl_push_conduit_ud(lua_State *L, twl_client *cl, int objs, int client_ud, tw_conduit *cd) {
  tw_conduit_set_user(cd, twl_box_push(L, cl, objs, client_ud, cd, TWL_CONDUIT_MT));
}

static twl_obj *check_box(lua_State *L, int i) { return twl_box_check(L, i, TWL_CONDUIT_MT, "conduit"); }
static tw_conduit *check_conduit(lua_State *L, int i) { return check_box(L, i)->obj; }
static int cd_bind(lua_State *L) { return twl_box_bind(L, TWL_CONDUIT_MT); }
static int cd_bound(lua_State *L) { return twl_box_bound(L, TWL_CONDUIT_MT); }
static int cd_closed(lua_State *L) { return twl_box_is_closed(L, TWL_CONDUIT_MT); }

static int cd_id(lua_State *L) {
  twl_push_opt_string(L, tw_conduit_id(check_conduit(L, 1)));
  return 1;
}

static int cd_state(lua_State *L) {
  twl_obj *b = luaL_checkudata(L, 1, TWL_CONDUIT_MT);
  if (twl_box_closed(b))
    lua_pushliteral(L, "closed");
  else
    twl_push_opt_string(L, tw_conduit_state(b->obj));
  return 1;
}

static int cd_shard_count(lua_State *L) {
  lua_pushinteger(L, tw_conduit_shard_count(check_conduit(L, 1)));
  return 1;
}

static int cd_nshards(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)tw_conduit_nshards(check_conduit(L, 1)));
  return 1;
}

/* pushes the Lua value for shard s (bound object, else its userdata) */
static void push_shard(lua_State *L, twl_obj *b, int objs, int client_ud, tw_shard *s) {
  if (lua_rawgetp(L, objs, s) == LUA_TNIL) {
    lua_pop(L, 1);
    twl_push_shard_ud(L, b->cl, objs, client_ud, s);
  }
  if (lua_getiuservalue(L, -1, 1) != LUA_TNIL)
    lua_remove(L, -2);
  else
    lua_pop(L, 1);
}

/* ud:shards() -> list of the shards run here, in id order */
static int cd_shards(lua_State *L) {
  twl_obj *b = check_box(L, 1);
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, UV_CLIENT);            /* 2 */
  lua_getiuservalue(L, 2, TWL_UV_OBJS);          /* 3 */
  size_t n = tw_conduit_nshards(b->obj);
  lua_createtable(L, (int)n, 0);
  lua_Integer k = 0;
  for (size_t i = 0; i < n; i++) {
    tw_shard *s = tw_conduit_shard(b->obj, i);
    if (s == NULL) continue;
    push_shard(L, b, 3, 2, s);
    lua_rawseti(L, 4, ++k);
  }
  return 1;
}

/* ud:shard(id) -> shard or nil */
static int cd_shard(lua_State *L) {
  twl_obj *b = check_box(L, 1);
  const char *id = luaL_checkstring(L, 2);
  lua_settop(L, 2);
  tw_shard *s = tw_conduit_find_shard(b->obj, id);
  if (s == NULL) {
    lua_pushnil(L);
    return 1;
  }
  lua_getiuservalue(L, 1, UV_CLIENT);
  lua_getiuservalue(L, 3, TWL_UV_OBJS);
  push_shard(L, b, 4, 3, s);
  return 1;
}

static int cd_client(lua_State *L) {
  luaL_checkudata(L, 1, TWL_CONDUIT_MT);
  lua_getiuservalue(L, 1, UV_CLIENT);
  return 1;
}

static int cd_close(lua_State *L) {
  twl_obj *b = luaL_checkudata(L, 1, TWL_CONDUIT_MT);
  if (twl_box_closed(b)) return 0;
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, UV_CLIENT);
  twl_frame saved;
  twl_frame_begin(b->cl, L, 2, &saved);
  tw_conduit_close(b->obj);
  twl_frame_end(b->cl, &saved);
  twl_close_if_requested(b->cl, L, 2);
  return 0;
}

static int cd_tostring(lua_State *L) {
  twl_obj *b = luaL_checkudata(L, 1, TWL_CONDUIT_MT);
  if (twl_box_closed(b)) {
    lua_pushliteral(L, "twconduit.conduit{state=\"closed\"}");
  } else {
    const char *id = tw_conduit_id(b->obj);
    lua_pushfstring(L, "twconduit.conduit{id=\"%s\",state=\"%s\"}", id ? id : "?",
                    tw_conduit_state(b->obj));
  }
  return 1;
}

void twl_conduit_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"bind", cd_bind},
                                     {"bound", cd_bound},
                                     {"closed", cd_closed},
                                     {"id", cd_id},
                                     {"state", cd_state},
                                     {"shard_count", cd_shard_count},
                                     {"nshards", cd_nshards},
                                     {"shards", cd_shards},
                                     {"shard", cd_shard},
                                     {"client", cd_client},
                                     {"close", cd_close},
                                     {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__tostring", cd_tostring}, {NULL, NULL}};
  twl_newclass(L, TWL_CONDUIT_MT, methods, meta);
}
