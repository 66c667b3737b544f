/* shard.c - twconduit.shard: a box over a tw_shard owned by its conduit.
 *
 * A box (twl.h): user value 1 holds the bound Lua object, user value 2 the client
 * userdata.
 */
#include <string.h>

#include "twl.h"

enum { UV_CLIENT = TWL_BOX_CLIENT };

void twl_push_shard_ud(lua_State *L, twl_client *cl, int objs, int client_ud, tw_shard *s) {
  tw_shard_set_user(s, twl_box_push(L, cl, objs, client_ud, s, TWL_SHARD_MT));
}

static twl_obj *check_box(lua_State *L, int i) { return twl_box_check(L, i, TWL_SHARD_MT, "shard"); }
static tw_shard *check_shard(lua_State *L, int i) { return check_box(L, i)->obj; }
static int sh_bind(lua_State *L) { return twl_box_bind(L, TWL_SHARD_MT); }
static int sh_bound(lua_State *L) { return twl_box_bound(L, TWL_SHARD_MT); }
static int sh_closed(lua_State *L) { return twl_box_is_closed(L, TWL_SHARD_MT); }

static int sh_id(lua_State *L) {
  twl_push_opt_string(L, tw_shard_id(check_shard(L, 1)));
  return 1;
}

static int sh_state(lua_State *L) {
  twl_obj *b = luaL_checkudata(L, 1, TWL_SHARD_MT);
  if (twl_box_closed(b))
    lua_pushliteral(L, "closed");
  else
    twl_push_opt_string(L, tw_shard_state(b->obj));
  return 1;
}

static int sh_status(lua_State *L) {
  twl_push_opt_string(L, tw_shard_status(check_shard(L, 1)));
  return 1;
}

static int sh_session_id(lua_State *L) {
  twl_push_opt_string(L, tw_shard_session_id(check_shard(L, 1)));
  return 1;
}

#define SET_U(f) (lua_pushinteger(L, (lua_Integer)st.f), lua_setfield(L, -2, #f))
static int sh_stats(lua_State *L) {
  tw_shard *s = check_shard(L, 1);
  tw_shard_stats st;
  memset(&st, 0, sizeof st);
  tw_shard_get_stats(s, &st);
  lua_createtable(L, 0, 13);
  SET_U(notifications);
  SET_U(duplicates);
  SET_U(keepalives);
  SET_U(connects);
  SET_U(reconnects);
  SET_U(assignments);
  SET_U(bytes);
  SET_U(assign_errors);
  SET_U(outages);
  SET_U(failed_connects);
  SET_U(lost);
  SET_U(last_close_code);
  SET_U(backoff_attempt);
  SET_U(stale);
  /* loop clock seconds (client:now()); nil when never */
  if (st.enabled_at_ms) lua_pushnumber(L, (lua_Number)st.enabled_at_ms / 1000.0), lua_setfield(L, -2, "enabled_at");
  if (st.last_message_ms) lua_pushnumber(L, (lua_Number)st.last_message_ms / 1000.0), lua_setfield(L, -2, "last_message_at");
  lua_createtable(L, TW_LAG_BUCKETS, 0);
  for (int k = 0; k < TW_LAG_BUCKETS; k++) {
    lua_pushinteger(L, (lua_Integer)st.lag_buckets[k]);
    lua_rawseti(L, -2, k + 1);
  }
  lua_setfield(L, -2, "lag_buckets");
  return 1;
}

static int sh_reconnect(lua_State *L) {
  twl_obj *b = check_box(L, 1);
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, UV_CLIENT);
  twl_frame saved;
  twl_frame_begin(b->cl, L, 2, &saved);
  int rc = tw_shard_reconnect(b->obj);
  twl_frame_end(b->cl, &saved);
  twl_close_if_requested(b->cl, L, 2);
  if (rc != TW_OK) {
    luaL_pushfail(L);
    twl_push_errorf(L, rc == TW_ECLOSED ? "closed" : "invalid_argument", 0,
                    "shard reconnect failed (%d)", rc);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ud:conduit() -> the conduit's bound object (or userdata) */
static int sh_conduit(lua_State *L) {
  twl_obj *b = check_box(L, 1);
  tw_conduit *cd = tw_shard_conduit(b->obj);
  lua_getiuservalue(L, 1, UV_CLIENT);
  lua_getiuservalue(L, -1, TWL_UV_OBJS);
  twl_push_bound(L, lua_gettop(L), cd);
  return 1;
}

static int sh_tostring(lua_State *L) {
  twl_obj *b = luaL_checkudata(L, 1, TWL_SHARD_MT);
  if (twl_box_closed(b)) {
    lua_pushliteral(L, "twconduit.shard{state=\"closed\"}");
  } else {
    const char *id = tw_shard_id(b->obj);
    lua_pushfstring(L, "twconduit.shard{id=\"%s\",state=\"%s\"}", id ? id : "?",
                    tw_shard_state(b->obj));
  }
  return 1;
}

void twl_shard_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"bind", sh_bind},
                                     {"bound", sh_bound},
                                     {"closed", sh_closed},
                                     {"id", sh_id},
                                     {"state", sh_state},
                                     {"status", sh_status},
                                     {"session_id", sh_session_id},
                                     {"stats", sh_stats},
                                     {"reconnect", sh_reconnect},
                                     {"conduit", sh_conduit},
                                     {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__tostring", sh_tostring}, {NULL, NULL}};
  twl_newclass(L, TWL_SHARD_MT, methods, meta);
}
