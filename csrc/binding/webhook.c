/* webhook.c - the HTTP server and webhook routes in Lua (twconduit.core).
 *
 *   client:webhook_server{host, port, tls_cert, tls_key, max_body, max_header_bytes,
 *                         max_headers, max_conns, request_timeout, idle_timeout}
 *       -> server userdata | nil, err
 *   server: port(), tls(), stats(), close(), closed(),
 *           webhook{path, secret, conduit = conduit userdata?, shard = id?, on_challenge = fn?,
 *                   max_age?, max_future?} -> route userdata | nil, err
 *   route:  rotate(secret, grace_s), bind(conduit userdata | nil, shard id), stats(), close()
 *   conduit:add_webhook_shard(id | -1, callback, secret) -> shard userdata | nil, err
 *   shard:_set_webhook(callback, secret) -> true | nil, err
 *
 * A server or route box holds its core object and the client box; both read as closed
 * once the client is (the core freed the server). on_challenge(kind, id, conduit_id) is
 * called from the loop when a challenge was answered on the route. */
#include <string.h>

#include "twl.h"

#define HTTPD_MT "twconduit.httpd"
#define ROUTE_MT "twconduit.webhook_route"

typedef struct {
  tw_httpd *h; /* NULL once closed */
  twl_client *cl;
} httpd_box;

typedef struct {
  tw_webhook *w; /* NULL once closed */
  twl_client *cl;
  int fn_ref;    /* on_challenge, or LUA_NOREF */
  lua_State *L;  /* the main state, for unref in __gc */
} route_box;

static httpd_box *check_httpd(lua_State *L, int i) {
  httpd_box *b = luaL_checkudata(L, i, HTTPD_MT);
  if (!b->h || !b->cl->c) luaL_error(L, "webhook server is closed");
  return b;
}

tw_httpd *twl_check_httpd(lua_State *L, int i) { return check_httpd(L, i)->h; }
tw_httpd *twl_httpd_at(lua_State *L, int i) {
  httpd_box *b = luaL_testudata(L, i, HTTPD_MT);
  return b && b->h && b->cl->c ? b->h : NULL;
}

static route_box *check_route(lua_State *L, int i) {
  route_box *b = luaL_checkudata(L, i, ROUTE_MT);
  if (!b->w || !b->cl->c) luaL_error(L, "webhook route is closed");
  return b;
}

static lua_Number opt_num(lua_State *L, int t, const char *k, lua_Number def) {
  lua_getfield(L, t, k);
  lua_Number v = def;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TNUMBER) luaL_error(L, "%s must be a number", k);
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

static const char *opt_str(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  const char *v = NULL;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "%s must be a string", k);
    v = lua_tostring(L, -1); /* kept alive by the options table */
  }
  lua_pop(L, 1);
  return v;
}

static int cl_webhook_server(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  tw_httpd_opts o = TW_HTTPD_OPTS_INIT;
  o.host = opt_str(L, 2, "host");
  lua_Number port = opt_num(L, 2, "port", 0);
  if (port != (int)port || port < 0 || port > 65535) return luaL_error(L, "port must be an integer in 0..65535");
  o.port = (int)port;
  o.tls_cert = opt_str(L, 2, "tls_cert");
  o.tls_key = opt_str(L, 2, "tls_key");
  lua_Number v;
  if ((v = opt_num(L, 2, "max_body", (lua_Number)o.max_body)) < 0) return luaL_error(L, "max_body must be >= 0");
  o.max_body = (size_t)v;
  if ((v = opt_num(L, 2, "max_header_bytes", (lua_Number)o.max_header_bytes)) < 256)
    return luaL_error(L, "max_header_bytes must be >= 256");
  o.max_header_bytes = (size_t)v;
  if ((v = opt_num(L, 2, "max_headers", o.max_headers)) < 1 || v > TW_HTTP_MAX_HEADERS)
    return luaL_error(L, "max_headers must be in 1..%d", TW_HTTP_MAX_HEADERS);
  o.max_headers = (int)v;
  if ((v = opt_num(L, 2, "max_conns", o.max_conns)) < 1 || v > 1e6) return luaL_error(L, "max_conns must be >= 1");
  o.max_conns = (int)v;
  if (!((v = opt_num(L, 2, "request_timeout", o.request_timeout_s)) > 0))
    return luaL_error(L, "request_timeout must be > 0");
  o.request_timeout_s = v;
  if (!((v = opt_num(L, 2, "idle_timeout", o.idle_timeout_s)) > 0)) return luaL_error(L, "idle_timeout must be > 0");
  o.idle_timeout_s = v;
  tw_error e;
  memset(&e, 0, sizeof e);
  tw_httpd *h = tw_httpd_open(cl->c, &o, &e);
  if (!h) return twl_fail(L, &e);
  httpd_box *b = lua_newuserdatauv(L, sizeof *b, 1);
  b->h = h;
  b->cl = cl;
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, HTTPD_MT);
  return 1;
}

static int hd_port(lua_State *L) {
  lua_pushinteger(L, tw_httpd_port(check_httpd(L, 1)->h));
  return 1;
}

static int hd_tls(lua_State *L) {
  lua_pushboolean(L, tw_httpd_tls(check_httpd(L, 1)->h));
  return 1;
}

static int hd_closed(lua_State *L) {
  httpd_box *b = luaL_checkudata(L, 1, HTTPD_MT);
  lua_pushboolean(L, !b->h || !b->cl->c);
  return 1;
}

static int hd_close(lua_State *L) {
  httpd_box *b = luaL_checkudata(L, 1, HTTPD_MT);
  if (b->h && b->cl->c) tw_httpd_close(b->h);
  b->h = NULL;
  return 0;
}

#define SET(k, v)                                                                                                     \
  do {                                                                                                                \
    lua_pushinteger(L, (lua_Integer)(v));                                                                             \
    lua_setfield(L, -2, k);                                                                                           \
  } while (0)

static int hd_stats(lua_State *L) {
  httpd_box *b = check_httpd(L, 1);
  tw_httpd_stats s;
  tw_httpd_get_stats(b->h, &s);
  lua_createtable(L, 0, 12);
  SET("connections", s.connections);
  SET("requests", s.requests);
  SET("responses", s.responses);
  SET("refused_conns", s.refused_conns);
  SET("bad_requests", s.bad_requests);
  SET("too_large", s.too_large);
  SET("headers_too_large", s.headers_too_large);
  SET("timeouts", s.timeouts);
  SET("not_found", s.not_found);
  SET("tls_errors", s.tls_errors);
  SET("open_conns", s.open_conns);
  SET("lingering", s.lingering);
  return 1;
}

static void on_route_event(void *user, tw_webhook *w, const char *kind, const char *id, const char *conduit_id) {
  route_box *b = user;
  (void)w;
  if (b->fn_ref == LUA_NOREF || !b->cl->c) return;
  int top;
  twl_frame *fr = twl_enter(b->cl, &top);
  if (!fr) return;
  lua_State *L = fr->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->fn_ref);
  lua_pushstring(L, kind);
  twl_push_opt_string(L, id);
  twl_push_opt_string(L, conduit_id);
  twl_pcall(b->cl, L, 3);
  twl_enter_end(b->cl, top);
}

static int hd_webhook(lua_State *L) {
  httpd_box *hb = check_httpd(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  tw_webhook_opts o;
  memset(&o, 0, sizeof o);
  o.path = opt_str(L, 2, "path");
  o.secret = opt_str(L, 2, "secret");
  o.shard_id = opt_str(L, 2, "shard");
  o.max_age_s = opt_num(L, 2, "max_age", 600);
  o.max_future_s = opt_num(L, 2, "max_future", 60);
  lua_getfield(L, 2, "conduit");
  if (!lua_isnil(L, -1)) {
    twl_obj *cb = twl_box_check(L, lua_gettop(L), TWL_CONDUIT_MT, "conduit");
    o.conduit = cb->obj;
  }
  lua_pop(L, 1);
  lua_getfield(L, 2, "on_challenge");
  int has_fn = !lua_isnil(L, -1);
  if (has_fn) luaL_checktype(L, -1, LUA_TFUNCTION);
  tw_error e;
  memset(&e, 0, sizeof e);
  route_box *b = lua_newuserdatauv(L, sizeof *b, 2);
  b->w = NULL;
  b->cl = hb->cl;
  b->fn_ref = LUA_NOREF;
  b->L = L;
  luaL_setmetatable(L, ROUTE_MT);
  lua_getiuservalue(L, 1, 1); /* the client userdata */
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, 1);        /* the server */
  lua_setiuservalue(L, -2, 2);
  b->w = tw_webhook_listen(hb->h, &o, &e);
  if (!b->w) return twl_fail(L, &e);
  if (has_fn) {
    lua_pushvalue(L, -2);
    b->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    tw_webhook_on_event(b->w, on_route_event, b);
  }
  return 1;
}

static int rt_rotate(lua_State *L) {
  route_box *b = check_route(L, 1);
  const char *secret = luaL_checkstring(L, 2);
  lua_Number grace = luaL_optnumber(L, 3, 0);
  tw_error e;
  memset(&e, 0, sizeof e);
  if (tw_webhook_rotate(b->w, secret, grace, &e) != 0) return twl_fail(L, &e);
  lua_pushboolean(L, 1);
  return 1;
}

static int rt_bind(lua_State *L) {
  route_box *b = check_route(L, 1);
  tw_conduit *cd = NULL;
  if (!lua_isnoneornil(L, 2)) cd = twl_box_check(L, 2, TWL_CONDUIT_MT, "conduit")->obj;
  const char *sid = luaL_optstring(L, 3, NULL);
  if (sid && strlen(sid) >= 16) return luaL_argerror(L, 3, "shard id too long");
  tw_webhook_bind(b->w, cd, sid);
  lua_pushboolean(L, 1);
  return 1;
}

static void route_free(route_box *b) {
  if (b->w) tw_webhook_close(b->w); /* also after the client closed: then it only frees */
  b->w = NULL;
  if (b->fn_ref != LUA_NOREF) {
    luaL_unref(b->L, LUA_REGISTRYINDEX, b->fn_ref);
    b->fn_ref = LUA_NOREF;
  }
}

static int rt_close(lua_State *L) {
  route_free(luaL_checkudata(L, 1, ROUTE_MT));
  return 0;
}

static int rt_closed(lua_State *L) {
  route_box *b = luaL_checkudata(L, 1, ROUTE_MT);
  lua_pushboolean(L, !b->w || !b->cl->c);
  return 1;
}

static int rt_stats(lua_State *L) {
  route_box *b = check_route(L, 1);
  tw_webhook_stats s;
  tw_webhook_get_stats(b->w, &s);
  lua_createtable(L, 0, 11);
  SET("requests", s.requests);
  SET("notifications", s.notifications);
  SET("revocations", s.revocations);
  SET("challenges", s.challenges);
  SET("duplicates", s.duplicates);
  SET("rejected", s.rejected);
  SET("bad_request", s.bad_request);
  SET("bad_signature", s.bad_signature);
  SET("stale", s.stale);
  SET("future", s.future);
  SET("old_secret", s.old_secret);
  return 1;
}

static int cd_add_webhook_shard(lua_State *L) {
  twl_obj *b = twl_box_check(L, 1, TWL_CONDUIT_MT, "conduit");
  lua_Integer id = luaL_checkinteger(L, 2);
  const char *callback = luaL_checkstring(L, 3);
  const char *secret = luaL_checkstring(L, 4);
  luaL_argcheck(L, id >= -1 && id < 20000, 2, "a shard id in 0..19999 (or -1) expected");
  lua_settop(L, 4);
  lua_getiuservalue(L, 1, TWL_BOX_CLIENT); /* 5 */
  tw_error e;
  memset(&e, 0, sizeof e);
  tw_shard *s = NULL;
  twl_frame saved;
  twl_frame_begin(b->cl, L, 5, &saved);
  int rc = tw_conduit_add_webhook_shard(b->obj, (int)id, callback, secret, NULL, NULL, &s, &e);
  twl_frame_end(b->cl, &saved);
  lua_settop(L, 5);
  if (rc != 0 || !s) return twl_fail(L, &e);
  lua_getiuservalue(L, 5, TWL_UV_OBJS); /* 6 */
  if (lua_rawgetp(L, 6, s) == LUA_TNIL) {
    lua_pop(L, 1);
    twl_push_shard_ud(L, b->cl, 6, 5, s);
  }
  return 1;
}

static int sh_set_webhook(lua_State *L) {
  twl_obj *b = twl_box_check(L, 1, TWL_SHARD_MT, "shard");
  const char *callback = luaL_checkstring(L, 2);
  const char *secret = luaL_checkstring(L, 3);
  lua_settop(L, 3);
  lua_getiuservalue(L, 1, TWL_BOX_CLIENT);
  tw_error e;
  memset(&e, 0, sizeof e);
  twl_frame saved;
  twl_frame_begin(b->cl, L, 4, &saved);
  int rc = tw_shard_set_webhook(b->obj, callback, secret, NULL, NULL, &e);
  twl_frame_end(b->cl, &saved);
  if (rc != 0) return twl_fail(L, &e);
  lua_pushboolean(L, 1);
  return 1;
}

static int sh_webhook_stats(lua_State *L) { /* delivered / duplicates counted on the shard */
  twl_obj *b = twl_box_check(L, 1, TWL_SHARD_MT, "shard");
  tw_shard_stats s;
  tw_shard_get_stats(b->obj, &s);
  lua_createtable(L, 0, 2);
  SET("notifications", s.notifications);
  SET("duplicates", s.duplicates);
  return 1;
}

static int hd_gc(lua_State *L) {
  httpd_box *b = luaL_checkudata(L, 1, HTTPD_MT);
  if (b->h && b->cl->c) tw_httpd_close(b->h);
  b->h = NULL;
  return 0;
}

static void add_methods(lua_State *L, const char *mt, const luaL_Reg *fns) {
  luaL_getmetatable(L, mt);
  lua_getfield(L, -1, "__index");
  luaL_setfuncs(L, fns, 0);
  lua_pop(L, 2);
}

void twl_webhook_open(lua_State *L) {
  static const luaL_Reg hd_methods[] = {{"port", hd_port},   {"tls", hd_tls},       {"stats", hd_stats},
                                        {"close", hd_close}, {"closed", hd_closed}, {"webhook", hd_webhook},
                                        {NULL, NULL}};
  static const luaL_Reg hd_meta[] = {{"__gc", hd_gc}, {NULL, NULL}};
  static const luaL_Reg rt_methods[] = {{"rotate", rt_rotate}, {"bind", rt_bind},     {"stats", rt_stats},
                                        {"close", rt_close},   {"closed", rt_closed}, {NULL, NULL}};
  static const luaL_Reg rt_meta[] = {{"__gc", rt_close}, {NULL, NULL}};
  twl_newclass(L, HTTPD_MT, hd_methods, hd_meta);
  twl_newclass(L, ROUTE_MT, rt_methods, rt_meta);
  static const luaL_Reg client[] = {{"webhook_server", cl_webhook_server}, {NULL, NULL}};
  static const luaL_Reg conduit[] = {{"add_webhook_shard", cd_add_webhook_shard}, {NULL, NULL}};
  static const luaL_Reg shard[] = {{"_set_webhook", sh_set_webhook}, {"_webhook_stats", sh_webhook_stats}, {NULL, NULL}};
  add_methods(L, TWL_CLIENT_MT, client);
  add_methods(L, TWL_CONDUIT_MT, conduit);
  add_methods(L, TWL_SHARD_MT, shard);
}
