/* module.c - luaopen_twconduit_core and the helpers every binding file shares. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "twl.h"

void twl_newclass(lua_State *L, const char *name, const luaL_Reg *methods, const luaL_Reg *meta) {
  luaL_newmetatable(L, name);
  luaL_setfuncs(L, meta, 0);
  if (methods != NULL) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

/* ---- errors ---------------------------------------------------------------------- */

void twl_push_error(lua_State *L, const tw_error *e) {
  lua_createtable(L, 0, 3);
  lua_pushstring(L, e->code[0] ? e->code : "error");
  lua_setfield(L, -2, "code");
  lua_pushinteger(L, e->status);
  lua_setfield(L, -2, "status");
  lua_pushstring(L, e->message);
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, TWL_ERROR_MT);
}

void twl_push_errorf(lua_State *L, const char *code, int status, const char *fmt, ...) {
  tw_error e;
  memset(&e, 0, sizeof e);
  snprintf(e.code, sizeof e.code, "%s", code);
  e.status = status;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e.message, sizeof e.message, fmt, ap);
  va_end(ap);
  twl_push_error(L, &e);
}

int twl_fail(lua_State *L, const tw_error *e) {
  luaL_pushfail(L);
  twl_push_error(L, e);
  return 2;
}

static int error_tostring(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "code");
  lua_getfield(L, 1, "status");
  lua_getfield(L, 1, "message");
  const char *code = lua_tostring(L, -3);
  lua_Integer status = lua_tointeger(L, -2);
  const char *msg = lua_tostring(L, -1);
  if (status != 0)
    lua_pushfstring(L, "%s (%I): %s", code ? code : "error", status, msg ? msg : "");
  else
    lua_pushfstring(L, "%s: %s", code ? code : "error", msg ? msg : "");
  return 1;
}

static int error_concat(lua_State *L) {
  lua_settop(L, 2);
  for (int i = 1; i <= 2; i++) {
    if (lua_type(L, i) == LUA_TTABLE && lua_getmetatable(L, i)) {
      luaL_getmetatable(L, TWL_ERROR_MT);
      int ours = lua_rawequal(L, -1, -2);
      lua_pop(L, 2);
      if (ours) {
        lua_pushcfunction(L, error_tostring);
        lua_pushvalue(L, i);
        lua_call(L, 1, 1); /* our own function, never user code */
        lua_replace(L, i);
        continue;
      }
    }
    luaL_tolstring(L, i, NULL);
    lua_replace(L, i);
  }
  lua_concat(L, 2);
  return 1;
}

static void open_error(lua_State *L, int modidx) {
  static const luaL_Reg meta[] = {{"__tostring", error_tostring}, {"__concat", error_concat},
                                  {NULL, NULL}};
  luaL_newmetatable(L, TWL_ERROR_MT);
  luaL_setfuncs(L, meta, 0);
  lua_setfield(L, modidx, "Error");
}

/* ---- conduit and shard boxes ------------------------------------------------------------ */

twl_obj *twl_box_push(lua_State *L, twl_client *cl, int objs, int client_ud, void *obj, const char *mt) {
  objs = lua_absindex(L, objs);
  client_ud = lua_absindex(L, client_ud);
  twl_obj *b = lua_newuserdatauv(L, sizeof *b, 2);
  b->obj = obj;
  b->cl = cl;
  luaL_setmetatable(L, mt);
  lua_pushvalue(L, client_ud);
  lua_setiuservalue(L, -2, TWL_BOX_CLIENT);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, objs, obj);
  return b;
}

int twl_box_closed(const twl_obj *b) { return b->obj == NULL || b->cl->c == NULL; }

twl_obj *twl_box_check(lua_State *L, int i, const char *mt, const char *what) {
  twl_obj *b = luaL_checkudata(L, i, mt);
  if (twl_box_closed(b)) luaL_error(L, "%s is closed", what);
  return b;
}

int twl_box_bind(lua_State *L, const char *mt) {
  luaL_checkudata(L, 1, mt);
  lua_settop(L, 2);
  lua_setiuservalue(L, 1, TWL_BOX_BOUND);
  return 0;
}

int twl_box_bound(lua_State *L, const char *mt) {
  luaL_checkudata(L, 1, mt);
  lua_getiuservalue(L, 1, TWL_BOX_BOUND);
  return 1;
}

int twl_box_is_closed(lua_State *L, const char *mt) {
  lua_pushboolean(L, twl_box_closed(luaL_checkudata(L, 1, mt)));
  return 1;
}

void twl_push_opt_string(lua_State *L, const char *s) {
  if (s)
    lua_pushstring(L, s);
  else
    lua_pushnil(L);
}

/* ---- calling Lua ---------------------------------------------------------------------- */

int twl_msgh(lua_State *L) {
  if (lua_type(L, 1) == LUA_TSTRING) {
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
  }
  if (lua_type(L, 1) == LUA_TTABLE) return 1; /* error objects pass as they are */
  if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) {
    luaL_traceback(L, L, lua_tostring(L, -1), 1);
    return 1;
  }
  luaL_traceback(L, L, lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1)), 1);
  return 1;
}

int twl_pcall(twl_client *cl, lua_State *L, int nargs) {
  int fn = lua_gettop(L) - nargs;
  lua_pushcfunction(L, twl_msgh);
  lua_insert(L, fn);
  if (cl) cl->depth++;
  int rc = lua_pcall(L, nargs, 0, fn);
  if (cl) cl->depth--;
  if (rc != LUA_OK) {
    const char *m = luaL_tolstring(L, -1, NULL);
    fprintf(stderr, "twconduit: error in event dispatch: %s\n", m);
    fflush(stderr);
  }
  lua_settop(L, fn - 1);
  return rc == LUA_OK;
}

int twl_seconds_to_ms(lua_Number s) {
  if (!(s > 0)) return 0; /* also NaN */
  lua_Number ms = ceil(s * 1000.0);
  if (ms > 2147483647.0) return 2147483647;
  return (int)ms;
}

/* ---- module ---------------------------------------------------------------------- */

static int mod_set_log_level(lua_State *L) {
  lua_Integer lvl = luaL_checkinteger(L, 1);
  luaL_argcheck(L, lvl >= 0 && lvl <= 2, 1, "level must be 0, 1 or 2");
  tw_set_lws_log_level((int)lvl);
  return 0;
}

__attribute__((visibility("default"))) int luaopen_twconduit_core(lua_State *L) {
  static const luaL_Reg fns[] = {{"http_sync", twl_http_sync},
                                 {"set_log_level", mod_set_log_level},
                                 {NULL, NULL}};
  luaL_checkversion(L);
  lua_newtable(L);
  int mod = lua_gettop(L);
  luaL_setfuncs(L, fns, 0);
  lua_pushliteral(L, TWCONDUIT_VERSION);
  lua_setfield(L, mod, "VERSION");
  open_error(L, mod);
  twl_json_open(L, mod);
  twl_message_open(L);
  twl_shard_open(L);
  twl_conduit_open(L);
  twl_lifecycle_open(L);
  twl_statefile_open(L, mod);
  twl_client_open(L, mod);
  twl_wsession_open(L);
  twl_queue_open(L);
  twl_webhook_open(L);
  twl_metrics_open(L);
  lua_settop(L, mod);
  return 1;
}
