/* queue.c - twconduit.queue: the queue transport's userdata (a box over tw_queue).
 *
 * client_ud:queue(opts) opens it; the Lua object bound to it (lua/twconduit/queue.lua)
 * receives the entries through the client's dispatcher ("queued", "queue_error") and
 * calls done() when an entry's handlers finished. command() sends any Redis command on
 * the queue's connection and calls back with the reply converted to Lua values. */
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "tw_queue.h"
#include "twl.h"


static twl_obj *check_box(lua_State *L, int i) { return twl_box_check(L, i, TWL_QUEUE_MT, "queue"); }
static tw_queue *check_queue(lua_State *L, int i) { return check_box(L, i)->obj; }
static int q_bind(lua_State *L) { return twl_box_bind(L, TWL_QUEUE_MT); }
static int q_bound(lua_State *L) { return twl_box_bound(L, TWL_QUEUE_MT); }
static int q_closed(lua_State *L) { return twl_box_is_closed(L, TWL_QUEUE_MT); }

static const char *opt_str(lua_State *L, int t, const char *k) {
  int ty = lua_getfield(L, t, k);
  const char *s = NULL;
  if (ty == LUA_TSTRING) s = lua_tostring(L, -1);
  else if (ty != LUA_TNIL) luaL_error(L, "%s must be a string", k);
  lua_pop(L, 1);
  return s;
}

static lua_Number opt_num(lua_State *L, int t, const char *k, lua_Number dflt) {
  int ty = lua_getfield(L, t, k);
  lua_Number v = dflt;
  if (ty == LUA_TNUMBER) v = lua_tonumber(L, -1);
  else if (ty != LUA_TNIL) luaL_error(L, "%s must be a number", k);
  lua_pop(L, 1);
  return v;
}

/* client_ud:queue{redis, name, role, consumer, partitions, ...} -> box | nil, err */
static int cl_queue(lua_State *L) {
  twl_client *cl = twl_check_client(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  tw_queue_opts o = TW_QUEUE_OPTS_INIT;
  o.redis = opt_str(L, 2, "redis");
  o.name = opt_str(L, 2, "name");
  o.consumer = opt_str(L, 2, "consumer");
  o.spool = opt_str(L, 2, "spool");
  const char *role = opt_str(L, 2, "role");
  if (role) {
    if (strcmp(role, "gateway") == 0) o.role = TW_QUEUE_GATEWAY;
    else if (strcmp(role, "worker") == 0) o.role = TW_QUEUE_WORKER;
    else if (strcmp(role, "both") == 0) o.role = TW_QUEUE_BOTH;
    else return luaL_error(L, "role must be \"gateway\", \"worker\" or \"both\"");
  }
  o.partitions = (int)opt_num(L, 2, "partitions", o.partitions);
  o.claim_idle_s = opt_num(L, 2, "claim_idle", o.claim_idle_s);
  o.max_deliveries = (int)opt_num(L, 2, "max_deliveries", o.max_deliveries);
  o.dedupe_window_s = opt_num(L, 2, "dedupe_window", o.dedupe_window_s);
  o.maxlen = (long long)opt_num(L, 2, "maxlen", (lua_Number)o.maxlen);
  o.max_age_s = opt_num(L, 2, "max_age", o.max_age_s);
  lua_Number bm = opt_num(L, 2, "buffer_max", (lua_Number)o.buffer_max);
  lua_Number sm = opt_num(L, 2, "spool_max", (lua_Number)o.spool_max);
  luaL_argcheck(L, bm >= 1 && bm < 1e12 && sm >= 0 && sm < 1e15, 2, "buffer_max and spool_max out of range");
  o.buffer_max = (size_t)bm;
  o.spool_max = (size_t)sm;
  o.connect_timeout_s = opt_num(L, 2, "connect_timeout", o.connect_timeout_s);
  o.command_timeout_s = opt_num(L, 2, "command_timeout", o.command_timeout_s);
  o.batch = (int)opt_num(L, 2, "batch", o.batch);
  o.max_outstanding = (int)opt_num(L, 2, "max_outstanding", o.max_outstanding);
  lua_getfield(L, 2, "local");
  o.local = lua_toboolean(L, -1);
  lua_pop(L, 1);
  tw_error err;
  memset(&err, 0, sizeof err);
  tw_queue *q = tw_queue_new(cl->c, &o, &err);
  if (!q) return twl_fail(L, &err);
  cl->nconduits++; /* keeps the client anchored while the queue lives */
  lua_getiuservalue(L, 1, TWL_UV_OBJS);
  int objs = lua_gettop(L);
  tw_queue_set_user(q, twl_box_push(L, cl, objs, 1, q, TWL_QUEUE_MT));
  twl_client_update_anchor(cl, L, 1);
  return 1;
}

static int q_close(lua_State *L) {
  twl_obj *b = luaL_checkudata(L, 1, TWL_QUEUE_MT);
  if (twl_box_closed(b)) return 0;
  tw_queue *q = b->obj;
  twl_client *cl = b->cl;
  b->obj = NULL;
  tw_queue_set_user(q, NULL);
  /* in a frame: what closing reports (queue_lost) reaches the error handlers even when
   * close is called outside step/run */
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, TWL_BOX_CLIENT);
  twl_frame saved;
  twl_frame_begin(cl, L, 2, &saved);
  tw_queue_free(q);
  twl_frame_end(cl, &saved);
  if (cl->nconduits > 0) cl->nconduits--;
  cl->sweep = 1;
  twl_close_if_requested(cl, L, 2);
  return 0;
}

/* done(partition, entry[, error]) */
static int q_done(lua_State *L) {
  tw_queue *q = check_queue(L, 1);
  lua_Integer k = luaL_checkinteger(L, 2);
  const char *entry = luaL_checkstring(L, 3);
  const char *e = lua_isnoneornil(L, 4) ? NULL : luaL_checkstring(L, 4);
  luaL_argcheck(L, k >= 0 && k < 1024, 2, "partition out of range");
  tw_queue_done(q, (int)k, entry, e);
  return 0;
}

static void set_int(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

static int q_stats(lua_State *L) {
  tw_queue *q = check_queue(L, 1);
  tw_queue_stats s;
  tw_queue_get_stats(q, &s);
  lua_createtable(L, 0, 17);
  set_int(L, "published", (lua_Integer)s.published);
  set_int(L, "duplicates", (lua_Integer)s.duplicates);
  set_int(L, "spooled", (lua_Integer)s.spooled);
  set_int(L, "dropped", (lua_Integer)s.dropped);
  set_int(L, "delivered", (lua_Integer)s.delivered);
  set_int(L, "acked", (lua_Integer)s.acked);
  set_int(L, "failed", (lua_Integer)s.failed);
  set_int(L, "claimed", (lua_Integer)s.claimed);
  set_int(L, "dead", (lua_Integer)s.dead);
  set_int(L, "bad_entries", (lua_Integer)s.bad_entries);
  set_int(L, "outages", (lua_Integer)s.outages);
  set_int(L, "buffered", (lua_Integer)s.buffered);
  set_int(L, "spool_bytes", (lua_Integer)s.spool_bytes);
  set_int(L, "outstanding", (lua_Integer)s.outstanding);
  set_int(L, "partitions", s.partitions);
  lua_pushboolean(L, s.up);
  lua_setfield(L, -2, "up");
  return 1;
}

static int q_name(lua_State *L) {
  lua_pushstring(L, tw_queue_name(check_queue(L, 1)));
  return 1;
}
static int q_consumer(lua_State *L) {
  lua_pushstring(L, tw_queue_consumer(check_queue(L, 1)));
  return 1;
}

/* ---- commands ---------------------------------------------------------------------- */

typedef struct cmd_req {
  twl_client *cl;
  lua_Integer id;
} cmd_req;

typedef struct {
  cmd_req *req;
  const redisReply *rep;
  const tw_error *err;
} reply_args;

static void push_reply(lua_State *L, const redisReply *r, int depth) {
  luaL_checkstack(L, 4, "redis reply");
  switch (r->type) {
  case REDIS_REPLY_INTEGER: lua_pushinteger(L, (lua_Integer)r->integer); break;
  case REDIS_REPLY_STRING:
  case REDIS_REPLY_STATUS:
  case REDIS_REPLY_ERROR: lua_pushlstring(L, r->str, r->len); break;
  case REDIS_REPLY_ARRAY:
    lua_createtable(L, (int)r->elements, 0);
    for (size_t i = 0; i < r->elements; i++) {
      if (depth > 16) lua_pushboolean(L, 0);
      else push_reply(L, r->element[i], depth + 1);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    break;
  default: lua_pushboolean(L, 0); break; /* nil: false, so arrays keep their length */
  }
}

static int reply_protected(lua_State *L) {
  twl_client *cl = twl_protected_frame(L);
  reply_args *a = lua_touserdata(L, 2);
  twl_frame *fr = &cl->fr;
  lua_rawgeti(L, fr->pending, a->req->id);
  lua_pushnil(L);
  lua_rawseti(L, fr->pending, a->req->id);
  if (lua_isnil(L, -1)) return 0;
  if (a->rep && a->rep->type == REDIS_REPLY_ERROR) {
    lua_pushnil(L);
    twl_push_errorf(L, "redis_error", 0, "%s", a->rep->str);
  } else if (a->rep) {
    if (a->rep->type == REDIS_REPLY_NIL) lua_pushnil(L);
    else push_reply(L, a->rep, 0);
    lua_pushnil(L);
  } else {
    lua_pushnil(L);
    if (a->err) twl_push_error(L, a->err);
    else twl_push_errorf(L, "redis_disconnected", 0, "no reply");
  }
  twl_pcall(cl, L, 2);
  return 0;
}

static void on_reply(void *user, const void *rep, const tw_error *err) {
  cmd_req *req = user;
  twl_client *cl = req->cl;
  if (cl->npending > 0) cl->npending--;
  int top;
  twl_frame *fr = twl_enter(cl, &top);
  if (fr) {
    reply_args a = {req, rep, err};
    twl_call_protected(cl, reply_protected, &a);
    twl_enter_end(cl, top);
  }
  free(req);
}

/* command({ "SADD", "k", "v" }, fn) -> true | nil, err; fn(reply, err) from the loop */
static int q_command(lua_State *L) {
  twl_obj *b = check_box(L, 1);
  tw_queue *q = b->obj;
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_Integer n = luaL_len(L, 2);
  luaL_argcheck(L, n >= 1 && n <= 100000, 2, "a command is a non-empty array of strings");
  const char **argv = lua_newuserdatauv(L, sizeof *argv * (size_t)n, 0);
  size_t *lens = lua_newuserdatauv(L, sizeof *lens * (size_t)n, 0);
  lua_createtable(L, (int)n, 0); /* keeps the strings alive */
  int keep = lua_gettop(L);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 2, i);
    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
      return luaL_error(L, "command argument %d must be a string or a number", (int)i);
    argv[i - 1] = lua_tolstring(L, -1, &lens[i - 1]);
    lua_rawseti(L, keep, i);
  }
  cmd_req *req = malloc(sizeof *req);
  if (!req) return luaL_error(L, "out of memory");
  twl_client *cl = b->cl;
  req->cl = cl;
  req->id = ++cl->next_id;
  tw_error err;
  memset(&err, 0, sizeof err);
  lua_getiuservalue(L, 1, TWL_BOX_CLIENT);
  int cud = lua_gettop(L);
  lua_getiuservalue(L, cud, TWL_UV_PENDING);
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, req->id);
  if (tw_queue_command(q, (int)n, argv, lens, on_reply, req, &err) != TW_OK) {
    lua_pushnil(L);
    lua_rawseti(L, -2, req->id);
    free(req);
    return twl_fail(L, &err);
  }
  cl->npending++;
  twl_client_update_anchor(cl, L, cud);
  lua_pushboolean(L, 1);
  return 1;
}

/* publish(message) -> true | nil, err: queues a message a handler received */
static int q_publish(lua_State *L) {
  tw_queue *q = check_queue(L, 1);
  luaL_checkudata(L, 2, TWL_MESSAGE_MT);
  tw_msg m;
  if (twl_message_to_msg(L, 2, &m) != 0) {
    lua_pushnil(L);
    twl_push_errorf(L, "invalid_argument", 0, "the message holds no document any more");
    return 2;
  }
  tw_error err;
  memset(&err, 0, sizeof err);
  if (tw_queue_publish(q, &m, NULL, NULL, &err) != TW_OK) return twl_fail(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

static int q_tostring(lua_State *L) {
  twl_obj *b = luaL_checkudata(L, 1, TWL_QUEUE_MT);
  lua_pushfstring(L, "twconduit.queue%s", twl_box_closed(b) ? "(closed)" : "");
  return 1;
}

void twl_queue_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"bind", q_bind},       {"bound", q_bound},     {"closed", q_closed},
                                     {"close", q_close},     {"done", q_done},       {"stats", q_stats},
                                     {"name", q_name},       {"consumer", q_consumer}, {"command", q_command},
                                     {"publish", q_publish}, {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__tostring", q_tostring}, {NULL, NULL}};
  twl_newclass(L, TWL_QUEUE_MT, methods, meta);
  luaL_getmetatable(L, TWL_CLIENT_MT);
  lua_getfield(L, -1, "__index");
  lua_pushcfunction(L, cl_queue);
  lua_setfield(L, -2, "queue");
  lua_pop(L, 2);
}
