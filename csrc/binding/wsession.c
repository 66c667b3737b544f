/* wsession.c - twconduit.wsession: a box over a tw_wsession (plain websocket mode).
 *
 * A box like a conduit's (twl.h): user value 1 holds the bound Lua object (the session
 * object of lua/twconduit/wsession.lua), which events carry; user value 2 the client
 * userdata. The client anchors the userdata (by the core pointer) until the core frees
 * the session (TW_EV_FREED), and an open session keeps the client alive like an open
 * conduit (it counts in nconduits).
 */
#include <stdio.h>
#include <string.h>

#include "twl.h"

static twl_obj *check_box(lua_State *L, int i) { return twl_box_check(L, i, TWL_WSESSION_MT, "websocket session"); }
static tw_wsession *check_ws(lua_State *L, int i) { return check_box(L, i)->obj; }
static int ws_bind(lua_State *L) { return twl_box_bind(L, TWL_WSESSION_MT); }
static int ws_bound(lua_State *L) { return twl_box_bound(L, TWL_WSESSION_MT); }
static int ws_closed(lua_State *L) { return twl_box_is_closed(L, TWL_WSESSION_MT); }

static int ws_state(lua_State *L) {
  twl_obj *b = luaL_checkudata(L, 1, TWL_WSESSION_MT);
  if (twl_box_closed(b))
    lua_pushliteral(L, "closed");
  else
    lua_pushstring(L, tw_wsession_state(b->obj));
  return 1;
}

static int ws_session_id(lua_State *L) {
  twl_push_opt_string(L, tw_wsession_session_id(check_ws(L, 1)));
  return 1;
}

static int ws_user_id(lua_State *L) {
  twl_push_opt_string(L, tw_wsession_user_id(check_ws(L, 1)));
  return 1;
}

static int ws_login(lua_State *L) {
  twl_push_opt_string(L, tw_wsession_login(check_ws(L, 1)));
  return 1;
}

static int ws_scopes(lua_State *L) {
  tw_wsession *ws = check_ws(L, 1);
  size_t n = tw_wsession_nscopes(ws);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(L, tw_wsession_scope(ws, i));
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* ud:tokens() -> access_token, refresh_token|nil (the ones in use: refresh tokens rotate) */
static int ws_tokens(lua_State *L) {
  tw_wsession *ws = check_ws(L, 1);
  lua_pushstring(L, tw_wsession_token(ws));
  twl_push_opt_string(L, tw_wsession_refresh_token(ws));
  return 2;
}

/* ud:error() -> the error that failed the session, or nil */
static int ws_error(lua_State *L) {
  const tw_error *e = tw_wsession_error(check_ws(L, 1));
  if (e)
    twl_push_error(L, e);
  else
    lua_pushnil(L);
  return 1;
}

#define SET_U(f) (lua_pushinteger(L, (lua_Integer)st.f), lua_setfield(L, -2, #f))
static int ws_stats(lua_State *L) {
  tw_wsession_stats st;
  tw_wsession_get_stats(check_ws(L, 1), &st);
  lua_createtable(L, 0, 12);
  SET_U(notifications);
  SET_U(duplicates);
  SET_U(keepalives);
  SET_U(connects);
  SET_U(sessions);
  SET_U(reconnects);
  SET_U(outages);
  SET_U(failed_connects);
  SET_U(bytes);
  SET_U(token_validations);
  SET_U(token_refreshes);
  SET_U(last_close_code);
  return 1;
}

static int ws_close(lua_State *L) {
  twl_obj *b = luaL_checkudata(L, 1, TWL_WSESSION_MT);
  if (!twl_box_closed(b)) tw_wsession_close(b->obj); /* reports nothing synchronously */
  return 0;
}

/* ud:helix(method, path, body_or_nil, fn) -> id | nil, err ; as client:helix, with the
 * session's user token */
static int ws_helix(lua_State *L) {
  twl_obj *b = check_box(L, 1);
  const char *method = luaL_checkstring(L, 2);
  const char *path = luaL_checkstring(L, 3);
  size_t blen = 0;
  const char *body = luaL_optlstring(L, 4, NULL, &blen);
  luaL_checktype(L, 5, LUA_TFUNCTION);
  twl_client *cl = b->cl;
  twl_req *req = twl_req_new(cl);
  if (req == NULL) return luaL_error(L, "out of memory");
  lua_getiuservalue(L, 1, TWL_BOX_CLIENT);
  int cud = lua_gettop(L);
  lua_getiuservalue(L, cud, TWL_UV_PENDING);
  lua_pushvalue(L, 5);
  lua_rawseti(L, -2, req->id);
  tw_error err;
  memset(&err, 0, sizeof err);
  if (tw_wsession_helix(b->obj, method, path, body, blen, twl_req_response, req, &err) != TW_OK) {
    lua_pushnil(L);
    lua_rawseti(L, -2, req->id);
    twl_req_drop(req);
    if (err.code[0] == '\0') snprintf(err.code, sizeof err.code, "invalid_argument");
    return twl_fail(L, &err);
  }
  cl->npending++;
  twl_client_update_anchor(cl, L, cud);
  lua_pushinteger(L, req->id);
  return 1;
}

static int ws_tostring(lua_State *L) {
  twl_obj *b = luaL_checkudata(L, 1, TWL_WSESSION_MT);
  if (twl_box_closed(b)) {
    lua_pushliteral(L, "twconduit.wsession{state=\"closed\"}");
  } else {
    const char *id = tw_wsession_session_id(b->obj);
    lua_pushfstring(L, "twconduit.wsession{session_id=\"%s\",state=\"%s\"}", id ? id : "?",
                    tw_wsession_state(b->obj));
  }
  return 1;
}

/* client:open_wsession{access_token=, refresh_token=} -> userdata | nil, err */
static int cl_open_wsession(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  tw_wsession_opts o;
  memset(&o, 0, sizeof o);
  lua_getfield(L, 2, "access_token");
  o.access_token = lua_tostring(L, -1);
  lua_getfield(L, 2, "refresh_token");
  o.refresh_token = lua_tostring(L, -1);
  luaL_argcheck(L, o.access_token != NULL, 2, "access_token must be a string");
  tw_error err;
  memset(&err, 0, sizeof err);
  tw_wsession *ws = tw_wsession_open(cl->c, &o, &err); /* reports nothing synchronously */
  if (ws == NULL) return twl_fail(L, &err);
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, TWL_UV_OBJS);
  tw_wsession_set_user(ws, twl_box_push(L, cl, 2, 1, ws, TWL_WSESSION_MT));
  cl->nconduits++; /* an open session keeps the client alive, as a conduit does */
  twl_client_update_anchor(cl, L, 1);
  return 1;
}

void twl_wsession_freed(twl_client *cl, const tw_event *ev) {
  twl_obj *b = tw_wsession_user(ev->wsession);
  if (b == NULL) return;
  b->obj = NULL;
  tw_wsession_set_user(ev->wsession, NULL);
  if (cl->nconduits > 0) cl->nconduits--;
}

int twl_wsession_push_event(lua_State *L, twl_frame *fr, const tw_event *ev) {
  switch (ev->type) {
  case TW_EV_WS_CONNECTED:
    lua_pushliteral(L, "session_connected");
    break;
  case TW_EV_WS_RECONNECTED:
    lua_pushliteral(L, "reconnect");
    break;
  case TW_EV_WS_TOKEN:
    lua_pushliteral(L, "session_token");
    break;
  case TW_EV_WS_DISCONNECTED:
    lua_pushliteral(L, "session_disconnected");
    twl_push_bound(L, fr->objs, ev->wsession);
    twl_push_opt_string(L, ev->status);
    if (ev->error)
      twl_push_error(L, ev->error);
    else
      lua_pushnil(L);
    return 4;
  default:
    return -1;
  }
  twl_push_bound(L, fr->objs, ev->wsession);
  return 2;
}

void twl_wsession_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"bind", ws_bind},
                                     {"bound", ws_bound},
                                     {"closed", ws_closed},
                                     {"state", ws_state},
                                     {"session_id", ws_session_id},
                                     {"user_id", ws_user_id},
                                     {"login", ws_login},
                                     {"scopes", ws_scopes},
                                     {"tokens", ws_tokens},
                                     {"error", ws_error},
                                     {"stats", ws_stats},
                                     {"close", ws_close},
                                     {"helix", ws_helix},
                                     {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__tostring", ws_tostring}, {NULL, NULL}};
  twl_newclass(L, TWL_WSESSION_MT, methods, meta);
  luaL_getmetatable(L, TWL_CLIENT_MT);
  lua_getfield(L, -1, "__index");
  lua_pushcfunction(L, cl_open_wsession);
  lua_setfield(L, -2, "open_wsession");
  lua_pop(L, 2);
}
