/* metrics.c - metrics and plain HTTP routes in Lua (twconduit.core).
 *
 *   client:metrics([families]) -> the Prometheus text (tw_metrics_render); families:
 *       { { name =, type = "counter" | "gauge", help =,
 *           samples = { { labels = { "k", "v", ... }, value = n }, ... } }, ... }
 *       appended after the core's own
 *   server:route(path, fn) -> route userdata; fn(method, path, query, authorization)
 *       returns status, content_type, body[, extra_headers] and is called from the loop
 *       for each request on path. An error in fn answers 500 (reported on stderr).
 *   route:close()          removes the route (also when the server closes)
 */
#include <stdlib.h>
#include <string.h>

#include "twl.h"

#define MROUTE_MT "twconduit.http_route"

static int cl_metrics(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  int has = !lua_isnoneornil(L, 2);
  if (has) luaL_checktype(L, 2, LUA_TTABLE);
  size_t nf = has ? lua_rawlen(L, 2) : 0;
  /* one scratch block: families, then samples, then label pointers; strings stay
   * referenced by the argument table during the call */
  size_t ns = 0, nl = 0;
  for (size_t f = 1; f <= nf; f++) {
    lua_rawgeti(L, 2, (lua_Integer)f);
    luaL_checktype(L, -1, LUA_TTABLE);
    if (lua_getfield(L, -1, "name") != LUA_TSTRING) return luaL_error(L, "family %d: name must be a string", (int)f);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "samples") == LUA_TTABLE) {
      size_t n = lua_rawlen(L, -1);
      ns += n;
      for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        luaL_checktype(L, -1, LUA_TTABLE);
        if (lua_getfield(L, -1, "labels") == LUA_TTABLE) nl += lua_rawlen(L, -1) + 1;
        else nl += 1;
        lua_pop(L, 2);
      }
    }
    lua_pop(L, 2);
  }
  size_t bytes = nf * sizeof(tw_metric_family) + ns * sizeof(tw_metric_sample) + nl * sizeof(char *);
  char *blk = lua_newuserdatauv(L, bytes ? bytes : 1, 0); /* collected with the call's stack */
  tw_metric_family *fams = (tw_metric_family *)(void *)blk;
  tw_metric_sample *smp = (tw_metric_sample *)(void *)(blk + nf * sizeof *fams);
  const char **lab = (const char **)(void *)(blk + nf * sizeof *fams + ns * sizeof *smp);
  for (size_t f = 1; f <= nf; f++) {
    tw_metric_family *x = &fams[f - 1];
    lua_rawgeti(L, 2, (lua_Integer)f);
    lua_getfield(L, -1, "name");
    x->name = lua_tostring(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, -1, "help");
    x->help = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    lua_pop(L, 1);
    lua_getfield(L, -1, "type");
    x->type = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "gauge";
    if (strcmp(x->type, "counter") && strcmp(x->type, "gauge")) return luaL_error(L, "%s: type must be counter or gauge", x->name);
    lua_pop(L, 1);
    x->samples = smp;
    x->nsamples = 0;
    if (lua_getfield(L, -1, "samples") == LUA_TTABLE) {
      size_t n = lua_rawlen(L, -1);
      for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        lua_getfield(L, -1, "value");
        if (!lua_isnumber(L, -1)) return luaL_error(L, "%s: sample %d: value must be a number", x->name, (int)i);
        smp->value = lua_tonumber(L, -1);
        lua_pop(L, 1);
        smp->labels = lab;
        if (lua_getfield(L, -1, "labels") == LUA_TTABLE) {
          size_t k = lua_rawlen(L, -1);
          if (k % 2) return luaL_error(L, "%s: labels must be name, value pairs", x->name);
          for (size_t j = 1; j <= k; j++) {
            lua_rawgeti(L, -1, (lua_Integer)j);
            if (lua_type(L, -1) != LUA_TSTRING) /* kept alive by the table */
              return luaL_error(L, "%s: label names and values must be strings", x->name);
            *lab++ = lua_tostring(L, -1);
            lua_pop(L, 1);
          }
        }
        *lab++ = NULL;
        lua_pop(L, 2);
        smp++;
        x->nsamples++;
      }
    }
    lua_pop(L, 2);
  }
  size_t len = 0;
  char *text = tw_metrics_render(cl->c, fams, nf, &len);
  if (!text) return luaL_error(L, "out of memory rendering the metrics");
  lua_pushlstring(L, text, len);
  free(text);
  return 1;
}

/* ---- plain routes ----
 * A route userdata must be kept by its owner while it serves (the Lua server object
 * does): its __gc removes the route when the server is still open. The handler is held
 * by a registry reference, dropped with the route. */

typedef struct mroute {
  twl_client *cl;
  int fn_ref;    /* the handler; LUA_NOREF once closed */
  lua_State *L;
  char path[256];
} mroute;

static void on_request(void *user, const tw_http_request *rq, tw_httpd_reply *reply) {
  mroute *r = user;
  int top;
  twl_frame *fr = r->fn_ref != LUA_NOREF && r->cl->c ? twl_enter(r->cl, &top) : NULL;
  if (!fr) {
    tw_httpd_respond(reply, 503, "text/plain", "unavailable\n", 12, NULL);
    return;
  }
  lua_State *L = fr->L;
  lua_pushcfunction(L, twl_msgh);
  int h = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->fn_ref);
  lua_pushlstring(L, rq->method, rq->method_len);
  lua_pushlstring(L, rq->path, rq->path_len);
  if (rq->query) lua_pushlstring(L, rq->query, rq->query_len);
  else lua_pushnil(L);
  size_t alen = 0;
  const char *auth = tw_http_header_get(rq, "authorization", &alen);
  if (auth) lua_pushlstring(L, auth, alen);
  else lua_pushnil(L);
  if (lua_pcall(L, 4, 4, h) != LUA_OK) {
    fprintf(stderr, "twconduit: error in an HTTP route: %s\n", lua_tostring(L, -1));
    tw_httpd_respond(reply, 500, "text/plain", "internal error\n", 15, NULL);
  } else {
    int st = lua_isinteger(L, h + 1) ? (int)lua_tointeger(L, h + 1) : 500;
    const char *ct = lua_type(L, h + 2) == LUA_TSTRING ? lua_tostring(L, h + 2) : NULL;
    size_t blen = 0;
    const char *body = lua_type(L, h + 3) == LUA_TSTRING ? lua_tolstring(L, h + 3, &blen) : NULL;
    const char *xh = lua_type(L, h + 4) == LUA_TSTRING ? lua_tostring(L, h + 4) : NULL;
    if (st < 100 || st > 599) st = 500;
    tw_httpd_respond(reply, st, ct, body ? body : "", blen, xh);
  }
  twl_enter_end(r->cl, top);
}

static int hd_route(lua_State *L) {
  tw_httpd *h = twl_check_httpd(L, 1);
  const char *path = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (strlen(path) >= sizeof((mroute *)0)->path) return luaL_argerror(L, 2, "path too long");
  lua_getiuservalue(L, 1, 1); /* the client userdata */
  twl_client *cl = twl_check_client(L, -1);
  lua_pop(L, 1);
  mroute *r = lua_newuserdatauv(L, sizeof *r, 1);
  memset(r, 0, sizeof *r);
  r->fn_ref = LUA_NOREF;
  r->L = L;
  r->cl = cl;
  snprintf(r->path, sizeof r->path, "%s", path);
  luaL_setmetatable(L, MROUTE_MT);
  lua_pushvalue(L, 1); /* the server box */
  lua_setiuservalue(L, -2, 1);
  tw_error e;
  memset(&e, 0, sizeof e);
  if (tw_httpd_route(h, path, on_request, r, &e) != 0) return twl_fail(L, &e);
  lua_pushvalue(L, 3);
  r->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

static int rt_close(lua_State *L) {
  mroute *r = luaL_checkudata(L, 1, MROUTE_MT);
  if (r->fn_ref == LUA_NOREF) return 0;
  lua_getiuservalue(L, 1, 1);
  tw_httpd *h = twl_httpd_at(L, -1);
  lua_pop(L, 1);
  if (h) tw_httpd_unroute(h, r->path);
  luaL_unref(L, LUA_REGISTRYINDEX, r->fn_ref);
  r->fn_ref = LUA_NOREF;
  return 0;
}

static int rt_closed(lua_State *L) {
  mroute *r = luaL_checkudata(L, 1, MROUTE_MT);
  lua_getiuservalue(L, 1, 1);
  lua_pushboolean(L, r->fn_ref == LUA_NOREF || !twl_httpd_at(L, -1));
  return 1;
}

void twl_metrics_open(lua_State *L) {
  static const luaL_Reg rt_methods[] = {{"close", rt_close}, {"closed", rt_closed}, {NULL, NULL}};
  static const luaL_Reg rt_meta[] = {{"__gc", rt_close}, {NULL, NULL}};
  twl_newclass(L, MROUTE_MT, rt_methods, rt_meta);
  static const luaL_Reg client[] = {{"metrics", cl_metrics}, {NULL, NULL}};
  static const luaL_Reg server[] = {{"route", hd_route}, {NULL, NULL}};
  luaL_getmetatable(L, TWL_CLIENT_MT);
  lua_getfield(L, -1, "__index");
  luaL_setfuncs(L, client, 0);
  lua_pop(L, 2);
  luaL_getmetatable(L, "twconduit.httpd");
  lua_getfield(L, -1, "__index");
  luaL_setfuncs(L, server, 0);
  lua_pop(L, 2);
}
