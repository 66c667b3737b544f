/* message.c - twconduit.message: what a handler gets besides the event.
 *
 * A small userdata holding one reference on the parsed message; its finalizer is the
 * only one an event costs: the event view and every view reached from it or from the
 * message are anchored to the message (user value) and have none. When it is
 * collected the document's memory goes back to the client's pool for the next message.
 * (A copy of the document inside the userdata would spare the finalizer, but then Lua
 * counts ~6 KB per event and runs full collections thirty times as often: measured
 * slower.) Its fields are read on access: id, type,
 * version, timestamp, message_type (from the metadata), shard, conduit (the Lua
 * objects, kept in user values 1 and 2), transport ("websocket"), subscription and
 * metadata (read-only views).
 */
#include <stddef.h>
#include <string.h>

#include "twl.h"

typedef struct {
  tw_json *doc; /* one reference; NULL when the event had no document or once collected.
                 * First field: views read it through their anchor (view.c anchor_alive). */
  tw_jnode meta;
  tw_jnode sub;
  const char *id; /* the message id inside doc (the core found it already) */
  size_t idlen;
} twl_msg;

_Static_assert(offsetof(twl_msg, doc) == 0, "a view anchor starts with its document");

void twl_push_message(lua_State *L, twl_frame *fr, const tw_event *ev, int conduit_obj) {
  conduit_obj = lua_absindex(L, conduit_obj);
  twl_msg *m = lua_newuserdatauv(L, sizeof *m, 2);
  m->doc = NULL;
  m->meta = ev->metadata;
  m->sub = ev->subscription;
  m->id = ev->message_id;
  m->idlen = ev->message_id ? strlen(ev->message_id) : 0;
  lua_pushvalue(L, fr->msg_mt);
  lua_setmetatable(L, -2);
  if (ev->doc != NULL) {
    tw_json_ref(ev->doc);
    m->doc = ev->doc;
  } else {
    m->id = NULL;
  }
  lua_pushvalue(L, conduit_obj);
  lua_setiuservalue(L, -2, 2);
}

static int msg_gc(lua_State *L) {
  twl_msg *m = lua_touserdata(L, 1);
  if (m && m->doc) {
    tw_json_unref(m->doc);
    m->doc = NULL;
    m->id = NULL;
  }
  return 0;
}

tw_json *twl_message_doc(lua_State *L, int idx) {
  twl_msg *m = lua_touserdata(L, idx);
  return m ? m->doc : NULL;
}

static void push_meta(lua_State *L, twl_msg *m, const char *key) {
  size_t len;
  const char *s = tw_json_str(m->doc, tw_json_get(m->doc, m->meta, key, strlen(key)), &len);
  if (s)
    lua_pushlstring(L, s, len);
  else
    lua_pushnil(L);
}

/* __index, a closure whose upvalue is the message metatable (a check without a lookup). */
static int msg_index(lua_State *L) {
  twl_msg *m = lua_touserdata(L, 1);
  if (!m || !lua_getmetatable(L, 1) || !lua_rawequal(L, -1, lua_upvalueindex(1)))
    luaL_typeerror(L, 1, TWL_MESSAGE_MT);
  lua_pop(L, 1);
  size_t kl;
  const char *k = lua_tolstring(L, 2, &kl);
  if (k == NULL || m->doc == NULL) return 0;
  switch (k[0]) {
  case 'i':
    if (kl == 2 && k[1] == 'd') {
      if (m->id)
        lua_pushlstring(L, m->id, m->idlen);
      else
        push_meta(L, m, "message_id");
      return 1;
    }
    break;
  case 't':
    if (strcmp(k, "type") == 0) return push_meta(L, m, "subscription_type"), 1;
    if (strcmp(k, "timestamp") == 0) return push_meta(L, m, "message_timestamp"), 1;
    if (strcmp(k, "transport") == 0) return lua_pushliteral(L, "websocket"), 1;
    break;
  case 'v':
    if (strcmp(k, "version") == 0) return push_meta(L, m, "subscription_version"), 1;
    break;
  case 'm':
    if (strcmp(k, "message_type") == 0) return push_meta(L, m, "message_type"), 1;
    if (strcmp(k, "metadata") == 0) return twl_view_push(L, m->doc, m->meta, 1), 1;
    break;
  case 's':
    if (strcmp(k, "shard") == 0) return lua_getiuservalue(L, 1, 1), 1;
    if (strcmp(k, "subscription") == 0) return twl_view_push(L, m->doc, m->sub, 1), 1;
    break;
  case 'c':
    if (strcmp(k, "conduit") == 0) return lua_getiuservalue(L, 1, 2), 1;
    break;
  default:
    break;
  }
  return 0;
}

static int msg_tostring(lua_State *L) {
  twl_msg *m = luaL_checkudata(L, 1, TWL_MESSAGE_MT);
  size_t len = 0;
  const char *id = m->doc ? tw_json_str(m->doc, tw_json_get(m->doc, m->meta, "message_id", 10), &len)
                          : NULL;
  lua_pushfstring(L, "twconduit.message{id=\"%s\"}", id ? id : "?");
  return 1;
}

void twl_message_open(lua_State *L) {
  static const luaL_Reg meta[] = {{"__gc", msg_gc}, {"__tostring", msg_tostring}, {NULL, NULL}};
  twl_newclass(L, TWL_MESSAGE_MT, NULL, meta);
  luaL_getmetatable(L, TWL_MESSAGE_MT);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, msg_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
