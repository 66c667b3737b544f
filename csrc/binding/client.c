/* client.c - twconduit.client: the loop, event dispatch into Lua, Helix and timers.
 *
 * Every event of the core reaches Lua through one dispatcher function installed by the
 * Lua layer (set_dispatcher). The core only calls back from inside a method that set up
 * a frame (step, run, open_conduit, conduit:close, shard:reconnect), so Lua is entered
 * on the thread that called that method.
 */
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "twl.h"

twl_client *twl_check_client(lua_State *L, int idx) {
  twl_client *cl = luaL_checkudata(L, idx, TWL_CLIENT_MT);
  if (cl->c == NULL) luaL_error(L, "client is closed");
  return cl;
}

/* ---- frames ---------------------------------------------------------------------- */

void twl_frame_begin(twl_client *cl, lua_State *L, int ud, twl_frame *saved) {
  ud = lua_absindex(L, ud);
  *saved = cl->fr;
  luaL_checkstack(L, 8, "twconduit: frame");
  lua_getiuservalue(L, ud, TWL_UV_DISPATCH);
  int dispatch = lua_gettop(L);
  lua_getiuservalue(L, ud, TWL_UV_OBJS);
  lua_getiuservalue(L, ud, TWL_UV_PENDING);
  luaL_getmetatable(L, TWL_MESSAGE_MT);
  lua_pushliteral(L, "notification");
  twl_push_view_mt(L);
  twl_push_null(L);
  cl->fr.L = L;
  cl->fr.ud = ud;
  cl->fr.dispatch = dispatch;
  cl->fr.objs = dispatch + 1;
  cl->fr.pending = dispatch + 2;
  cl->fr.msg_mt = dispatch + 3;
  cl->fr.s_notification = dispatch + 4;
  cl->fr.view_mt = dispatch + 5;
  cl->fr.null = dispatch + 6;
}

void twl_frame_end(twl_client *cl, twl_frame *saved) {
  lua_State *L = cl->fr.L;
  if (L != NULL) lua_settop(L, cl->fr.dispatch - 1);
  cl->fr = *saved;
}

twl_frame *twl_enter(twl_client *cl, int *top) {
  if (cl->dispatch_off || cl->c == NULL || cl->close_requested) return NULL;
  lua_State *L = cl->fr.L;
  if (L == NULL) { /* no frame: cannot happen while every entry sets one; say so if it does */
    fprintf(stderr, "twconduit: an event arrived outside step/run and was dropped\n");
    return NULL;
  }
  if (!lua_checkstack(L, 16)) {
    fprintf(stderr, "twconduit: no Lua stack left for an event; it was dropped\n");
    return NULL;
  }
  *top = lua_gettop(L);
  return &cl->fr;
}

void twl_enter_end(twl_client *cl, int top) {
  if (cl->fr.L != NULL) lua_settop(cl->fr.L, top);
}

/* ---- anchoring ------------------------------------------------------------------- */

void twl_client_update_anchor(twl_client *cl, lua_State *L, int client_ud) {
  int live = cl->c != NULL && (cl->nconduits > 0 || cl->npending > 0);
  if (live && cl->self_ref == LUA_NOREF) {
    lua_pushvalue(L, client_ud);
    cl->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  } else if (!live && cl->self_ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, cl->self_ref);
    cl->self_ref = LUA_NOREF;
  }
}

void twl_push_bound(lua_State *L, int objs, void *ptr) {
  if (ptr == NULL) {
    lua_pushnil(L);
    return;
  }
  if (lua_rawgetp(L, objs, ptr) == LUA_TUSERDATA) {
    if (lua_getiuservalue(L, -1, 1) != LUA_TNIL)
      lua_replace(L, -2); /* a copy and a pop: cheaper than lua_remove's rotation */
    else
      lua_pop(L, 1);
  }
}

void twl_sweep(twl_client *cl, lua_State *L, int objs) {
  objs = lua_absindex(L, objs);
  cl->sweep = 0;
  lua_newtable(L);
  int dead = lua_gettop(L);
  lua_Integer n = 0;
  lua_pushnil(L);
  while (lua_next(L, objs)) {
    twl_obj *b = lua_touserdata(L, -1);
    if (b == NULL || b->obj == NULL) {
      lua_pushvalue(L, -2);
      lua_rawseti(L, dead, ++n);
    }
    lua_pop(L, 1);
  }
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, dead, i);
    lua_pushnil(L);
    lua_rawset(L, objs);
  }
  lua_pop(L, 1);
}

/* After step/run or a method that may have changed liveness. */
static void post_call(twl_client *cl, lua_State *L, int ud) {
  if (cl->sweep && cl->c != NULL) {
    lua_getiuservalue(L, ud, TWL_UV_OBJS);
    twl_sweep(cl, L, -1);
    lua_pop(L, 1);
  }
  twl_client_update_anchor(cl, L, ud);
}

/* ---- the event handler -------------------------------------------------------------- */

static void on_freed(twl_client *cl, const tw_event *ev) {
  if (ev->shard != NULL) {
    twl_obj *b = tw_shard_user(ev->shard);
    if (b != NULL) {
      b->obj = NULL;
      tw_shard_set_user(ev->shard, NULL);
    }
  } else if (ev->conduit != NULL) {
    twl_obj *b = tw_conduit_user(ev->conduit);
    if (b != NULL) {
      b->obj = NULL;
      tw_conduit_set_user(ev->conduit, NULL);
      if (cl->nconduits > 0) cl->nconduits--;
    }
  } else if (ev->wsession != NULL) {
    twl_wsession_freed(cl, ev);
  }
  cl->sweep = 1;
}

static void push_shard_obj(lua_State *L, twl_frame *fr, twl_client *cl, tw_shard *s) {
  if (s == NULL) {
    lua_pushnil(L);
    return;
  }
  if (lua_rawgetp(L, fr->objs, s) == LUA_TNIL) {
    lua_pop(L, 1);
    twl_push_shard_ud(L, cl, fr->objs, fr->ud, s);
  }
  if (lua_getiuservalue(L, -1, 1) != LUA_TNIL)
    lua_replace(L, -2);
  else
    lua_pop(L, 1);
}

/* Pushes the dispatcher's arguments for ev; returns their count (-1: nothing to do). */
static int push_event(lua_State *L, twl_frame *fr, twl_client *cl, const tw_event *ev) {
  int base = lua_gettop(L);
  switch (ev->type) {
  case TW_EV_NOTIFICATION:
  case TW_EV_REVOCATION: {
    const tw_msg *m = ev->msg;
    if (ev->type == TW_EV_NOTIFICATION)
      lua_pushvalue(L, fr->s_notification);
    else
      lua_pushliteral(L, "revocation");
    twl_push_bound(L, fr->objs, TWL_HOLDER(ev));
    if (m->type)
      lua_pushstring(L, m->type);
    else
      lua_pushnil(L);
    /* base+4: the message, which owns the document the views read */
    twl_push_message(L, fr, ev, base + 2);
    tw_json *doc = twl_message_doc(L, base + 4);
    if (doc)
      twl_view_push_frame(L, fr, doc, ev->type == TW_EV_NOTIFICATION ? m->event : m->subscription, base + 4);
    else
      lua_pushnil(L);
    push_shard_obj(L, fr, cl, ev->shard); /* base+6 */
    lua_pushvalue(L, base + 6);
    lua_setiuservalue(L, base + 4, 1);
    if (ev->type == TW_EV_REVOCATION) {
      if (ev->status)
        lua_pushstring(L, ev->status);
      else
        lua_pushnil(L);
      return 7;
    }
    return 6;
  }
  case TW_EV_READY:
    lua_pushliteral(L, "ready");
    twl_push_bound(L, fr->objs, ev->conduit);
    return 2;
  case TW_EV_CONDUIT_STARTED:
    lua_pushliteral(L, "started");
    twl_push_bound(L, fr->objs, ev->conduit);
    return 2;
  case TW_EV_SHARD_ENABLED:
  case TW_EV_RECONNECT:
    if (ev->type == TW_EV_SHARD_ENABLED)
      lua_pushliteral(L, "shard_enabled");
    else
      lua_pushliteral(L, "reconnect");
    twl_push_bound(L, fr->objs, ev->conduit);
    push_shard_obj(L, fr, cl, ev->shard);
    return 3;
  case TW_EV_SHARD_RELEASED:
    lua_pushliteral(L, "shard_released");
    twl_push_bound(L, fr->objs, ev->conduit);
    push_shard_obj(L, fr, cl, ev->shard);
    return 3;
  case TW_EV_SHARD_LOST: {
    lua_pushliteral(L, "shard_lost");
    twl_push_bound(L, fr->objs, ev->conduit);
    push_shard_obj(L, fr, cl, ev->shard);
    twl_push_transport(L, ev->twitch);
    if (ev->error)
      twl_push_error(L, ev->error);
    else
      lua_pushnil(L);
    return 5;
  }
  case TW_EV_SHARD_DISABLED:
    lua_pushliteral(L, "shard_disabled");
    twl_push_bound(L, fr->objs, ev->conduit);
    push_shard_obj(L, fr, cl, ev->shard);
    if (ev->status)
      lua_pushstring(L, ev->status);
    else
      lua_pushnil(L);
    if (ev->error)
      twl_push_error(L, ev->error);
    else
      lua_pushnil(L);
    return 5;
  case TW_EV_ERROR:
    lua_pushliteral(L, "error");
    twl_push_bound(L, fr->objs, TWL_HOLDER(ev));
    if (ev->error)
      twl_push_error(L, ev->error);
    else
      twl_push_errorf(L, "error", 0, "unknown error");
    push_shard_obj(L, fr, cl, ev->shard);
    return 4;
  case TW_EV_QUEUED: /* kind, queue, type, message, view, entry, partition | queue_error, queue, err */
    if (ev->msg == NULL) {
      lua_pushliteral(L, "queue_error");
      twl_push_bound(L, fr->objs, ev->queue);
      twl_push_error(L, ev->error);
      return 3;
    }
    lua_pushliteral(L, "queued");
    twl_push_bound(L, fr->objs, ev->queue);
    lua_pushstring(L, ev->msg->type);
    twl_push_message(L, fr, ev, base + 2);
    twl_view_push(L, ev->msg->doc, ev->msg->message_type[0] == 'n' ? ev->msg->event : ev->msg->subscription, base + 4);
    lua_pushstring(L, ev->entry);
    lua_pushinteger(L, ev->partition);
    return 7;
  case TW_EV_TOKEN:
    lua_pushliteral(L, "token");
    lua_pushnil(L);
    return 2;
  default:
    return twl_wsession_push_event(L, fr, ev);
  }
}

/* Lua is entered through a protected C function so that a failed allocation never
 * unwinds through the core. Stack indices are only valid in the C frame that pushed
 * them, so the frame's values are passed as arguments and cl->fr points at them while
 * the function runs (nested entries from methods called by handlers use it). */
enum { PA_CL = 1, PA_ARG, PA_UD, PA_DISPATCH, PA_OBJS, PA_PENDING, PA_MSGMT, PA_SNOTIF, PA_VIEWMT, PA_NULL, PA_N = 10 };

static twl_client *protected_frame(lua_State *L) {
  twl_client *cl = lua_touserdata(L, PA_CL);
  cl->fr.L = L;
  cl->fr.ud = PA_UD;
  cl->fr.dispatch = PA_DISPATCH;
  cl->fr.objs = PA_OBJS;
  cl->fr.pending = PA_PENDING;
  cl->fr.msg_mt = PA_MSGMT;
  cl->fr.s_notification = PA_SNOTIF;
  cl->fr.view_mt = PA_VIEWMT;
  cl->fr.null = PA_NULL;
  return cl;
}

static void call_protected(twl_client *cl, lua_CFunction f, void *arg) {
  twl_frame saved = cl->fr;
  lua_State *L = saved.L;
  int depth = cl->depth;
  int base = lua_gettop(L);
  lua_pushcfunction(L, twl_msgh);
  lua_pushcfunction(L, f);
  lua_pushlightuserdata(L, cl);
  lua_pushlightuserdata(L, arg);
  lua_pushvalue(L, saved.ud);
  lua_pushvalue(L, saved.dispatch);
  lua_pushvalue(L, saved.objs);
  lua_pushvalue(L, saved.pending);
  lua_pushvalue(L, saved.msg_mt);
  lua_pushvalue(L, saved.s_notification);
  lua_pushvalue(L, saved.view_mt);
  lua_pushvalue(L, saved.null);
  if (lua_pcall(L, PA_N, 0, base + 1) != LUA_OK) {
    /* unprotected here: nothing that could raise (no __tostring, no allocation) */
    fprintf(stderr, "twconduit: error in event dispatch: %s\n",
            lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1));
    fflush(stderr);
  }
  lua_settop(L, base);
  cl->depth = depth; /* an error unwound past the decrement */
  cl->fr = saved;
}

/* A notification straight to the Lua layer's idle runner (set_hot): the coroutine that
 * finds the plan and runs the handlers, then yields hot_done and waits for the next. It
 * is resumed here rather than by the dispatcher, which saves a Lua call and
 * coroutine.resume per notification. kind is at k, then conduit, type, message, event
 * view, shard. A runner suspended anywhere else (a handler yielded) or one that raised
 * is handed back to the dispatcher as ("hot_exit", conduit, ok, err, event, message),
 * which reports the error and runs the rest of the plan, as it does for the runners it
 * resumes itself. */
static void resume_hot(lua_State *L, twl_client *cl, int k) {
  lua_State *co = cl->hot;
  int nres = 0;
  for (int i = 1; i <= 5; i++) lua_pushvalue(L, k + i);
  lua_xmove(L, co, 5);
  int st = lua_resume(co, L, 5, &nres);
  if (st == LUA_YIELD && nres == 1 && lua_topointer(co, -1) == cl->hot_done) {
    lua_pop(co, 1);
    return;
  }
  int ok = st == LUA_YIELD || st == LUA_OK;
  if (ok)
    lua_pop(co, nres);
  else
    lua_xmove(co, L, 1); /* the error */
  int err = lua_gettop(L);
  lua_pushvalue(L, k - 1); /* the dispatcher */
  lua_pushliteral(L, "hot_exit");
  lua_pushvalue(L, k + 1);
  lua_pushboolean(L, ok);
  if (ok)
    lua_pushnil(L);
  else
    lua_pushvalue(L, err);
  lua_pushvalue(L, k + 4);
  lua_pushvalue(L, k + 3);
  lua_call(L, 6, 0);
}

static int dispatch_protected(lua_State *L) {
  twl_client *cl = protected_frame(L);
  const tw_event *ev = lua_touserdata(L, PA_ARG);
  twl_frame *fr = &cl->fr;
  if (lua_type(L, fr->dispatch) != LUA_TFUNCTION) return 0;
  lua_pushvalue(L, fr->dispatch);
  int n = push_event(L, fr, cl, ev);
  if (n < 0) return 0;
  /* already protected (call_protected, with a traceback): the dispatcher protects
   * each handler itself, so an error here is the dispatcher's own or out of memory */
  cl->depth++;
  if (ev->type == TW_EV_NOTIFICATION && cl->hot != NULL && lua_status(cl->hot) == LUA_YIELD &&
      lua_checkstack(cl->hot, n + 2))
    resume_hot(L, cl, lua_gettop(L) - n + 1);
  else
    lua_call(L, n, 0);
  cl->depth--;
  return 0;
}

static void on_event(void *user, const tw_event *ev) {
  twl_client *cl = user;
  if (ev->type == TW_EV_FREED) {
    on_freed(cl, ev);
    return;
  }
  int top;
  twl_frame *fr = twl_enter(cl, &top);
  if (fr == NULL) return;
  call_protected(cl, dispatch_protected, (void *)ev);
  twl_enter_end(cl, top);
}

/* ---- Helix and timers: pending callbacks ---------------------------------------------- */

static twl_req *req_new(twl_client *cl) {
  twl_req *r = calloc(1, sizeof *r);
  if (r == NULL) return NULL;
  r->cl = cl;
  r->id = ++cl->next_id;
  r->next = cl->reqs;
  if (cl->reqs) cl->reqs->prev = r;
  cl->reqs = r;
  return r;
}

static void req_unlink(twl_req *r) {
  twl_client *cl = r->cl;
  if (r->prev)
    r->prev->next = r->next;
  else
    cl->reqs = r->next;
  if (r->next) r->next->prev = r->prev;
  r->prev = r->next = NULL;
}

typedef struct {
  twl_req *req;
  const tw_response *resp; /* NULL for timers */
} pending_args;

static int pending_protected(lua_State *L) {
  twl_client *cl = protected_frame(L);
  pending_args *a = lua_touserdata(L, PA_ARG);
  twl_frame *fr = &cl->fr;
  lua_rawgeti(L, fr->pending, a->req->id);
  lua_pushnil(L);
  lua_rawseti(L, fr->pending, a->req->id);
  if (lua_isnil(L, -1)) return 0;
  if (a->resp == NULL) {
    twl_pcall(cl, L, 0);
    return 0;
  }
  const tw_response *r = a->resp;
  lua_pushinteger(L, r->status);
  if (r->body != NULL)
    twl_json_push_table(L, r->body, 0);
  else if (r->raw != NULL && r->raw_len > 0)
    lua_pushlstring(L, r->raw, r->raw_len);
  else
    lua_pushnil(L);
  if (r->error != NULL)
    twl_push_error(L, r->error);
  else
    lua_pushnil(L);
  twl_pcall(cl, L, 3);
  return 0;
}

static void finish_pending(twl_req *req, const tw_response *resp) {
  twl_client *cl = req->cl;
  req_unlink(req);
  if (cl->npending > 0) cl->npending--;
  int top;
  twl_frame *fr = twl_enter(cl, &top);
  if (fr != NULL) {
    pending_args a = {req, resp};
    call_protected(cl, pending_protected, &a);
    twl_enter_end(cl, top);
  }
  free(req);
}

static void on_response(void *user, const tw_response *r) { finish_pending(user, r); }

static void on_timer(void *user) {
  twl_req *req = user;
  req->timer = NULL; /* one-shot timers free themselves */
  finish_pending(req, NULL);
}

/* client:helix(method, path, body_or_nil, fn[, "background"]) -> id | nil, err
 * fn(status, body_table_or_string_or_nil, err_or_nil) is called once, from the loop. */
static int cl_helix(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  const char *method = luaL_checkstring(L, 2);
  const char *path = luaL_checkstring(L, 3);
  size_t blen = 0;
  const char *body = luaL_optlstring(L, 4, NULL, &blen);
  luaL_checktype(L, 5, LUA_TFUNCTION);
  static const char *const prios[] = {"bot", "background", NULL};
  int prio = luaL_checkoption(L, 6, "bot", prios);
  twl_req *req = req_new(cl);
  if (req == NULL) return luaL_error(L, "out of memory");
  lua_getiuservalue(L, 1, TWL_UV_PENDING);
  lua_pushvalue(L, 5);
  lua_rawseti(L, -2, req->id);
  tw_error err;
  memset(&err, 0, sizeof err);
  int rc = tw_helix_prio(cl->c, prio, method, path, body, blen, on_response, req, &err);
  if (rc != TW_OK) {
    lua_pushnil(L);
    lua_rawseti(L, -2, req->id);
    req_unlink(req);
    free(req);
    if (err.code[0] == '\0') snprintf(err.code, sizeof err.code, "invalid_argument");
    return twl_fail(L, &err);
  }
  cl->npending++;
  twl_client_update_anchor(cl, L, 1);
  lua_pushinteger(L, req->id);
  return 1;
}

/* client:ratelimit() -> { limit, remaining, reset, hold_until, waiting = {bot, background},
 * inflight = {...}, sent = {...}, final_429 } */
static int cl_ratelimit(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  tw_ratelimit rl;
  tw_client_ratelimit(cl->c, &rl);
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, rl.limit);
  lua_setfield(L, -2, "limit");
  lua_pushnumber(L, rl.remaining);
  lua_setfield(L, -2, "remaining");
  lua_pushinteger(L, rl.reset);
  lua_setfield(L, -2, "reset");
  lua_pushnumber(L, rl.hold_until);
  lua_setfield(L, -2, "hold_until");
  lua_pushinteger(L, (lua_Integer)rl.final_429);
  lua_setfield(L, -2, "final_429");
  const char *names[] = {"waiting", "inflight", "sent"};
  for (int k = 0; k < 3; k++) {
    lua_createtable(L, 0, 2);
    for (int p = 0; p < 2; p++) {
      lua_Integer v = k == 0 ? rl.waiting[p] : k == 1 ? rl.inflight[p] : (lua_Integer)rl.sent[p];
      lua_pushinteger(L, v);
      lua_setfield(L, -2, p ? "background" : "bot");
    }
    lua_setfield(L, -2, names[k]);
  }
  return 1;
}

/* client:timer(seconds, fn) -> id ; fn() is called once from the loop. */
static int cl_timer(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  lua_Number s = luaL_checknumber(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  luaL_argcheck(L, s >= 0, 2, "seconds must be non-negative");
  twl_req *req = req_new(cl);
  if (req == NULL) return luaL_error(L, "out of memory");
  req->timer = tw_timer_start(cl->c, (uint64_t)twl_seconds_to_ms(s), 0, on_timer, req);
  if (req->timer == NULL) {
    req_unlink(req);
    free(req);
    return luaL_error(L, "could not start a timer");
  }
  lua_getiuservalue(L, 1, TWL_UV_PENDING);
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, req->id);
  cl->npending++;
  twl_client_update_anchor(cl, L, 1);
  lua_pushinteger(L, req->id);
  return 1;
}

static int cl_cancel_timer(lua_State *L) {
  twl_client *cl = luaL_checkudata(L, 1, TWL_CLIENT_MT);
  lua_Integer id = luaL_checkinteger(L, 2);
  for (twl_req *r = cl->reqs; r != NULL; r = r->next) {
    if (r->id == id && r->timer != NULL) {
      tw_timer_cancel(r->timer);
      req_unlink(r);
      free(r);
      if (cl->npending > 0) cl->npending--;
      lua_getiuservalue(L, 1, TWL_UV_PENDING);
      lua_pushnil(L);
      lua_rawseti(L, -2, id);
      twl_client_update_anchor(cl, L, 1);
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  lua_pushboolean(L, 0);
  return 1;
}

/* ---- construction, closing ------------------------------------------------------------ */

static const char *opt_string(lua_State *L, int t, const char *k) {
  int ty = lua_getfield(L, t, k);
  const char *s = NULL;
  if (ty == LUA_TSTRING)
    s = lua_tostring(L, -1);
  else if (ty != LUA_TNIL)
    luaL_error(L, "%s must be a string", k);
  lua_pop(L, 1); /* the string stays alive in the options table */
  return s;
}

static lua_Integer opt_integer(lua_State *L, int t, const char *k, lua_Integer dflt) {
  int ty = lua_getfield(L, t, k);
  lua_Integer v = dflt;
  if (ty != LUA_TNIL) {
    int ok = 0;
    v = lua_tointegerx(L, -1, &ok);
    if (!ok) luaL_error(L, "%s must be an integer", k);
  }
  lua_pop(L, 1);
  return v;
}

/* The numeric client options: their Lua names and their fields. The defaults are the
 * core's (TW_CLIENT_OPTS_INIT); nothing here repeats them. */
enum { OPT_INT, OPT_SIZE, OPT_NUM };
static const struct {
  const char *name;
  int kind;
  size_t off;
} NUM_OPTS[] = {
    {"keepalive", OPT_INT, offsetof(tw_client_opts, keepalive_s)},
    {"keepalive_slack", OPT_NUM, offsetof(tw_client_opts, keepalive_slack_s)},
    {"dedupe_window", OPT_NUM, offsetof(tw_client_opts, dedupe_window_s)},
    {"dedupe_max", OPT_SIZE, offsetof(tw_client_opts, dedupe_max)},
    {"max_age", OPT_NUM, offsetof(tw_client_opts, max_age_s)},
    {"backoff_min", OPT_NUM, offsetof(tw_client_opts, backoff_min_s)},
    {"backoff_max", OPT_NUM, offsetof(tw_client_opts, backoff_max_s)},
    {"http_timeout", OPT_NUM, offsetof(tw_client_opts, http_timeout_s)},
    {"http_retries", OPT_INT, offsetof(tw_client_opts, http_retries)},
    {"http_max_inflight", OPT_INT, offsetof(tw_client_opts, http_max_inflight)},
    {"patch_batch", OPT_INT, offsetof(tw_client_opts, patch_batch)},
    {"validate_interval", OPT_NUM, offsetof(tw_client_opts, validate_interval_s)},
    {"verify_interval", OPT_NUM, offsetof(tw_client_opts, verify_interval_s)},
    {"max_message_bytes", OPT_SIZE, offsetof(tw_client_opts, max_message_bytes)},
    {"tls_handshakes", OPT_INT, offsetof(tw_client_opts, tls_handshakes)},
    {"welcome_timeout", OPT_NUM, offsetof(tw_client_opts, welcome_timeout_s)},
    {"reconnect_welcome_timeout", OPT_NUM, offsetof(tw_client_opts, reconnect_welcome_timeout_s)},
};
#define N_NUM_OPTS (sizeof NUM_OPTS / sizeof NUM_OPTS[0])

/* reads opts[name] into its field when present (types only; the core checks ranges) */
static void read_num_opt(lua_State *L, int t, size_t i, tw_client_opts *o) {
  char *f = (char *)o + NUM_OPTS[i].off;
  int ty = lua_getfield(L, t, NUM_OPTS[i].name);
  lua_pop(L, 1);
  if (ty == LUA_TNIL) return;
  if (NUM_OPTS[i].kind == OPT_NUM) {
    lua_getfield(L, t, NUM_OPTS[i].name);
    if (ty != LUA_TNUMBER) luaL_error(L, "%s must be a number", NUM_OPTS[i].name);
    *(double *)(void *)f = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return;
  }
  lua_Integer v = opt_integer(L, t, NUM_OPTS[i].name, 0);
  if (NUM_OPTS[i].kind == OPT_INT) {
    if (v < INT_MIN || v > INT_MAX) luaL_error(L, "%s is out of range", NUM_OPTS[i].name);
    *(int *)(void *)f = (int)v;
  } else {
    if (v < 0) luaL_error(L, "%s must not be negative", NUM_OPTS[i].name);
    *(size_t *)(void *)f = (size_t)v;
  }
}

/* pushes a table of the numeric options of o, by their Lua names */
static void push_num_opts(lua_State *L, const tw_client_opts *o) {
  lua_createtable(L, 0, (int)N_NUM_OPTS);
  for (size_t i = 0; i < N_NUM_OPTS; i++) {
    const char *f = (const char *)o + NUM_OPTS[i].off;
    if (NUM_OPTS[i].kind == OPT_NUM)
      lua_pushnumber(L, *(const double *)(const void *)f);
    else if (NUM_OPTS[i].kind == OPT_INT)
      lua_pushinteger(L, *(const int *)(const void *)f);
    else
      lua_pushinteger(L, (lua_Integer) * (const size_t *)(const void *)f);
    lua_setfield(L, -2, NUM_OPTS[i].name);
  }
}

/* core.defaults() -> the client options' defaults */
static int cl_defaults(lua_State *L) {
  tw_client_opts o;
  tw_client_opts_init(&o);
  push_num_opts(L, &o);
  return 1;
}

/* client:options() -> the options in effect (no secrets) */
static int cl_options(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  tw_client_opts o;
  tw_client_get_options(cl->c, &o);
  push_num_opts(L, &o);
  lua_pushstring(L, o.client_id);
  lua_setfield(L, -2, "client_id");
  lua_pushstring(L, o.api_base);
  lua_setfield(L, -2, "api_base");
  lua_pushstring(L, o.auth_base);
  lua_setfield(L, -2, "auth_base");
  lua_pushstring(L, o.eventsub_ws);
  lua_setfield(L, -2, "eventsub_ws");
  return 1;
}

/* core.client(opts) -> client userdata | nil, err  (options are checked by the Lua
 * layer; here only types, the core checks ranges). */
static int cl_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  tw_client_opts o;
  tw_client_opts_init(&o);
  o.client_id = opt_string(L, 1, "client_id");
  o.client_secret = opt_string(L, 1, "client_secret");
  o.access_token = opt_string(L, 1, "access_token");
  o.api_base = opt_string(L, 1, "api_base");
  o.auth_base = opt_string(L, 1, "auth_base");
  o.eventsub_ws = opt_string(L, 1, "eventsub_ws");
  for (size_t i = 0; i < N_NUM_OPTS; i++) read_num_opt(L, 1, i, &o);

  twl_client *cl = lua_newuserdatauv(L, sizeof *cl, TWL_UV_CLIENT_N);
  memset(cl, 0, sizeof *cl);
  cl->self_ref = LUA_NOREF;
  luaL_setmetatable(L, TWL_CLIENT_MT);
  lua_pushnil(L);
  lua_setiuservalue(L, -2, TWL_UV_DISPATCH);
  lua_newtable(L);
  lua_setiuservalue(L, -2, TWL_UV_OBJS);
  lua_newtable(L);
  lua_setiuservalue(L, -2, TWL_UV_PENDING);

  tw_error err;
  memset(&err, 0, sizeof err);
  cl->c = tw_client_new(&o, &err);
  if (cl->c == NULL) return twl_fail(L, &err);
  tw_client_on_event(cl->c, on_event, cl);
  return 1;
}

static void finish_close(twl_client *cl, lua_State *L, int ud) {
  if (cl->c == NULL) return;
  cl->dispatch_off = 1;
  if (tw_client_free(cl->c) != TW_OK) { /* inside a core callback after all: later */
    cl->dispatch_off = 0;
    cl->close_requested = 1;
    tw_client_stop(cl->c);
    return;
  }
  cl->c = NULL;
  /* every box still anchored loses its object */
  lua_getiuservalue(L, ud, TWL_UV_OBJS);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    twl_obj *b = lua_touserdata(L, -1);
    if (b != NULL) b->obj = NULL;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_newtable(L);
  lua_setiuservalue(L, ud, TWL_UV_OBJS);
  lua_newtable(L);
  lua_setiuservalue(L, ud, TWL_UV_PENDING);
  while (cl->reqs != NULL) {
    twl_req *r = cl->reqs;
    req_unlink(r);
    free(r); /* timers were freed with the client */
  }
  cl->npending = cl->nconduits = 0;
  twl_client_update_anchor(cl, L, ud);
}

void twl_close_if_requested(twl_client *cl, lua_State *L, int ud) {
  if (cl->close_requested && !cl->running && cl->depth == 0) {
    cl->close_requested = 0;
    finish_close(cl, L, lua_absindex(L, ud));
  }
}

/* Closing never frees the core under its own callback: inside step/run, or inside a
 * handler of an event that another method produced (depth > 0), the close is finished
 * when that step/run or method returns. */
static int cl_close(lua_State *L) {
  twl_client *cl = luaL_checkudata(L, 1, TWL_CLIENT_MT);
  if (cl->c == NULL) return 0;
  if (cl->running || cl->depth > 0) {
    cl->close_requested = 1;
    tw_client_stop(cl->c);
    return 0;
  }
  finish_close(cl, L, 1);
  return 0;
}

static int cl_gc(lua_State *L) {
  twl_client *cl = luaL_checkudata(L, 1, TWL_CLIENT_MT);
  cl->dispatch_off = 1;
  if (cl->c != NULL) finish_close(cl, L, 1);
  return 0;
}

static int loop_result(lua_State *L, twl_client *cl, int rc) {
  if (cl->close_requested) {
    cl->close_requested = 0;
    finish_close(cl, L, 1);
  } else {
    post_call(cl, L, 1);
  }
  if (rc == TW_EBUSY) {
    luaL_pushfail(L);
    twl_push_errorf(L, "busy", 0, "loop already running");
    return 2;
  }
  if (rc < 0 && rc != TW_ECLOSED) {
    luaL_pushfail(L);
    twl_push_errorf(L, "closed", 0, "loop failed (%d)", rc);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* client:step([seconds]) -> true | nil, err ; nil waits until something happens */
static int cl_step(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  int ms = -1;
  if (!lua_isnoneornil(L, 2)) {
    lua_Number t = luaL_checknumber(L, 2);
    ms = t < 0 ? -1 : twl_seconds_to_ms(t);
  }
  if (cl->running) return loop_result(L, cl, TW_EBUSY);
  lua_settop(L, 1);
  twl_frame saved;
  twl_frame_begin(cl, L, 1, &saved);
  cl->running = 1;
  int rc = tw_client_step(cl->c, ms);
  cl->running = 0;
  twl_frame_end(cl, &saved);
  return loop_result(L, cl, rc);
}

static int cl_run(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  if (cl->running) return loop_result(L, cl, TW_EBUSY);
  lua_settop(L, 1);
  twl_frame saved;
  twl_frame_begin(cl, L, 1, &saved);
  cl->running = 1;
  int rc = tw_client_run(cl->c);
  cl->running = 0;
  twl_frame_end(cl, &saved);
  return loop_result(L, cl, rc);
}

static int cl_stop(lua_State *L) {
  twl_client *cl = luaL_checkudata(L, 1, TWL_CLIENT_MT);
  if (cl->c) tw_client_stop(cl->c);
  return 0;
}

static int cl_running(lua_State *L) {
  twl_client *cl = luaL_checkudata(L, 1, TWL_CLIENT_MT);
  lua_pushboolean(L, cl->running);
  return 1;
}

static int cl_closed(lua_State *L) {
  twl_client *cl = luaL_checkudata(L, 1, TWL_CLIENT_MT);
  lua_pushboolean(L, cl->c == NULL || cl->close_requested);
  return 1;
}

static int cl_pollfd(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  lua_pushinteger(L, tw_client_pollfd(cl->c));
  return 1;
}

static int cl_events(lua_State *L) {
  twl_check_client(L, 1);
  lua_pushliteral(L, "r");
  return 1;
}

static int cl_timeout(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  int ms = tw_client_timeout_ms(cl->c);
  if (ms < 0)
    lua_pushnil(L);
  else
    lua_pushnumber(L, (lua_Number)ms / 1000.0);
  return 1;
}

static int cl_now(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  lua_pushnumber(L, (lua_Number)tw_client_now_ms(cl->c) / 1000.0);
  return 1;
}

static int cl_token(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  const char *t = tw_client_token(cl->c);
  if (t)
    lua_pushstring(L, t);
  else
    lua_pushnil(L);
  return 1;
}

#define SET_U(f) (lua_pushinteger(L, (lua_Integer)st.f), lua_setfield(L, -2, #f))
static int cl_stats(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  tw_client_stats st;
  memset(&st, 0, sizeof st);
  tw_client_get_stats(cl->c, &st);
  lua_createtable(L, 0, 10);
  SET_U(notifications);
  SET_U(duplicates);
  SET_U(stale);
  SET_U(bad_messages);
  SET_U(helix_requests);
  SET_U(helix_retries);
  SET_U(helix_rate_waits);
  SET_U(token_fetches);
  SET_U(token_validations);
  SET_U(ws_connects);
  SET_U(ratelimit_remaining);
  SET_U(tls_takeovers);
  SET_U(tls_handshakes_max);
  return 1;
}

/* ud:set_hot(co, done) / ud:set_hot(nil): the notification runner (see resume_hot) */
static int cl_set_hot(lua_State *L) {
  twl_client *cl = luaL_checkudata(L, 1, TWL_CLIENT_MT);
  if (lua_isnoneornil(L, 2)) {
    cl->hot = NULL;
    cl->hot_done = NULL;
    lua_pushnil(L);
  } else {
    luaL_checktype(L, 2, LUA_TTHREAD);
    luaL_checktype(L, 3, LUA_TTABLE);
    cl->hot = lua_tothread(L, 2);
    cl->hot_done = lua_topointer(L, 3);
    lua_pushvalue(L, 2);
  }
  lua_setiuservalue(L, 1, TWL_UV_HOT);
  return 0;
}

static int cl_set_dispatcher(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 1, TWL_UV_DISPATCH);
  if (cl->fr.L != NULL) { /* keep the running frame's cached slot current */
    lua_pushvalue(L, 2);
    lua_xmove(L, cl->fr.L, 1);
    lua_replace(cl->fr.L, cl->fr.dispatch);
  }
  return 0;
}

/* client:open_conduit{id=, shards=, offset=, total=} -> conduit userdata | nil, err */
static int cl_open_conduit(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  tw_conduit_opts o;
  memset(&o, 0, sizeof o);
  o.id = opt_string(L, 2, "id");
  o.shards = (int)opt_integer(L, 2, "shards", 0);
  o.offset = (int)opt_integer(L, 2, "offset", 0);
  o.total = (int)opt_integer(L, 2, "total", 0);
  luaL_argcheck(L, o.shards >= 0, 2, "shards must be a non-negative integer");
  luaL_argcheck(L, o.offset >= 0, 2, "offset must be a non-negative integer");
  luaL_argcheck(L, o.total >= 0, 2, "total must be a non-negative integer");
  lua_settop(L, 2);
  tw_error err;
  memset(&err, 0, sizeof err);
  twl_frame saved;
  twl_frame_begin(cl, L, 1, &saved);
  tw_conduit *cd = tw_conduit_open(cl->c, &o, &err);
  twl_frame_end(cl, &saved);
  if (cl->close_requested) { /* a handler closed the client meanwhile */
    twl_close_if_requested(cl, L, 1);
    if (cd == NULL) return twl_fail(L, &err);
    tw_error ce;
    memset(&ce, 0, sizeof ce);
    snprintf(ce.code, sizeof ce.code, "closed");
    snprintf(ce.message, sizeof ce.message, "the client was closed while the conduit was opened");
    return twl_fail(L, &ce);
  }
  if (cd == NULL) return twl_fail(L, &err);
  cl->nconduits++;
  lua_getiuservalue(L, 1, TWL_UV_OBJS);
  int objs = lua_gettop(L);
  twl_push_conduit_ud(L, cl, objs, 1, cd);
  size_t n = tw_conduit_nshards(cd);
  for (size_t i = 0; i < n; i++) {
    tw_shard *s = tw_conduit_shard(cd, i);
    if (s != NULL && lua_rawgetp(L, objs, s) == LUA_TNIL) {
      lua_pop(L, 1);
      twl_push_shard_ud(L, cl, objs, 1, s);
    }
    lua_pop(L, 1);
  }
  twl_client_update_anchor(cl, L, 1);
  return 1;
}

static int cl_tostring(lua_State *L) {
  twl_client *cl = luaL_checkudata(L, 1, TWL_CLIENT_MT);
  lua_pushfstring(L, "twconduit.client{state=\"%s\"}",
                  cl->c == NULL ? "closed" : cl->running ? "running" : "idle");
  return 1;
}

void twl_client_open(lua_State *L, int modidx) {
  static const luaL_Reg methods[] = {
      {"set_dispatcher", cl_set_dispatcher},
      {"set_hot", cl_set_hot},
      {"step", cl_step},
      {"run", cl_run},
      {"stop", cl_stop},
      {"running", cl_running},
      {"closed", cl_closed},
      {"close", cl_close},
      {"pollfd", cl_pollfd},
      {"events", cl_events},
      {"timeout", cl_timeout},
      {"now", cl_now},
      {"token", cl_token},
      {"stats", cl_stats},
      {"options", cl_options},
      {"helix", cl_helix},
      {"ratelimit", cl_ratelimit},
      {"timer", cl_timer},
      {"cancel_timer", cl_cancel_timer},
      {"open_conduit", cl_open_conduit},
      {NULL, NULL}};
  static const luaL_Reg meta[] = {
      {"__gc", cl_gc}, {"__close", cl_close}, {"__tostring", cl_tostring}, {NULL, NULL}};
  twl_newclass(L, TWL_CLIENT_MT, methods, meta);
  lua_pushcfunction(L, cl_new);
  lua_setfield(L, modidx, "client");
  lua_pushcfunction(L, cl_defaults);
  lua_setfield(L, modidx, "defaults");
}

/* For other binding files: a pending-callback slot (its Lua function goes into the
 * PENDING table under r->id), dropped again when the request could not start, and the
 * tw_response_fn that completes it. */
twl_req *twl_req_new(twl_client *cl) { return req_new(cl); }
void twl_req_drop(twl_req *r) {
  req_unlink(r);
  free(r);
}
void twl_req_response(void *user, const tw_response *r) { on_response(user, r); }
void twl_call_protected(twl_client *cl, lua_CFunction f, void *arg) { call_protected(cl, f, arg); }
twl_client *twl_protected_frame(lua_State *L) { return protected_frame(L); }
