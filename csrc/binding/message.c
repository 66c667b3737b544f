/* message.c - twconduit.message: what a handler gets besides the event.
 *
 * A small userdata holding one reference on the parsed message; its finalizer is the
 * only one an event costs: the event view and every view reached from it or from the
 * message are anchored to the message (user value) and have none. When it is
 * collected the document's memory goes back to the client's pool for the next message.
 * (A copy of the document inside the userdata would spare the finalizer, but then Lua
 * counts ~6 KB per event and runs full collections thirty times as often: measured
 * slower.)
 *
 * It owns the envelope's fields (tw_msg, whatever the transport): id, type, version,
 * timestamp and status point into the document it holds (websocket), or are copied into
 * the userdata itself when the transport had them outside the document (webhook headers,
 * queue entries). Fields: id, type, version, timestamp, message_type, transport
 * ("websocket" | "webhook" | "queue"), shard, conduit (the Lua objects, user values 1 and
 * 2), subscription and metadata (read-only views; metadata is nil off websockets).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "twl.h"

enum { F_TYPE, F_VERSION, F_TIMESTAMP, F_N };

/* Kept small (32 bytes): it is allocated for every event. */
typedef struct {
  tw_json *doc; /* one reference; NULL when the event had no document or once collected.
                 * First field: views read it through their anchor (view.c anchor_alive). */
  tw_jnode meta;            /* websocket: the metadata, read on access */
  tw_jnode sub;
  const char *id;           /* inside doc, or in tail */
  uint32_t idlen;
  uint8_t transport;        /* tw_transport_kind */
  uint8_t revocation;
  uint8_t origin;           /* queue: the transport the gateway received it on */
  uint8_t copied;           /* the fields live in tail: uint16_t offsets[F_N] (NO_FIELD when
                               absent), then the NUL-terminated strings */
  char tail[];
} twl_msg;

#define NO_FIELD 0xffff

_Static_assert(offsetof(twl_msg, doc) == 0, "a view anchor starts with its document");

void twl_push_message(lua_State *L, twl_frame *fr, const tw_event *ev, int conduit_obj) {
  conduit_obj = lua_absindex(L, conduit_obj);
  const tw_msg *src = ev->msg;
  bool copy = !src->strings_in_doc || src->doc == NULL || src->metadata == TW_JNONE;
  const char *f[F_N] = {src->type, src->version, src->timestamp};
  size_t len[F_N] = {0}, idlen = src->id ? src->id_len : 0, extra = 0;
  if (copy) {
    extra = src->id ? idlen + 1 : 0;
    for (int i = 0; i < F_N; i++)
      if (f[i]) {
        len[i] = strlen(f[i]);
        extra += len[i] + 1;
      }
    if (extra > NO_FIELD - 16) extra = 0, copy = false; /* absurd lengths: keep none */
  }
  if (copy) extra += sizeof(uint16_t) * F_N;
  twl_msg *m = lua_newuserdatauv(L, sizeof *m + extra, 2);
  m->doc = NULL;
  m->meta = src->metadata;
  m->sub = src->subscription;
  m->id = src->id;
  m->idlen = (uint32_t)idlen;
  m->transport = (uint8_t)src->transport;
  m->origin = (uint8_t)(src->origin ? src->origin : src->transport);
  m->revocation = src->message_type && src->message_type[0] == 'r';
  m->copied = copy;
  if (copy) {
    uint16_t offs[F_N];
    size_t t = sizeof offs;
    if (src->id) {
      memcpy(m->tail + t, src->id, idlen);
      m->tail[t + idlen] = 0;
      m->id = m->tail + t;
      t += idlen + 1;
    }
    for (int i = 0; i < F_N; i++) {
      offs[i] = NO_FIELD;
      if (!f[i]) continue;
      memcpy(m->tail + t, f[i], len[i]);
      m->tail[t + len[i]] = 0;
      offs[i] = (uint16_t)t;
      t += len[i] + 1;
    }
    memcpy(m->tail, offs, sizeof offs);
  }
  lua_pushvalue(L, fr->msg_mt);
  lua_setmetatable(L, -2);
  if (src->doc != NULL) {
    tw_json_ref(src->doc);
    m->doc = src->doc;
  } else if (!copy) {
    m->id = NULL; /* nothing would keep it */
  }
  lua_pushvalue(L, conduit_obj);
  lua_setiuservalue(L, -2, 2);
}

static int msg_gc(lua_State *L) {
  twl_msg *m = lua_touserdata(L, 1);
  if (m && m->doc) {
    tw_json_unref(m->doc);
    m->doc = NULL;
    if (!m->copied) m->id = NULL;
  }
  return 0;
}

tw_json *twl_message_doc(lua_State *L, int idx) {
  twl_msg *m = lua_touserdata(L, idx);
  return m ? m->doc : NULL;
}

static int push_sub_type(lua_State *L, const twl_msg *m) {
  size_t len;
  const char *s = tw_json_str(m->doc, tw_json_get(m->doc, m->sub, "type", 4), &len);
  if (s) lua_pushlstring(L, s, len);
  else lua_pushnil(L);
  return 1;
}

/* a field: from the metadata (websocket, read on access) or the copy */
static int push_field(lua_State *L, const twl_msg *m, int i) {
  static const char *const meta_key[F_N] = {"subscription_type", "subscription_version", "message_timestamp"};
  if (m->copied) {
    uint16_t off;
    memcpy(&off, m->tail + i * sizeof off, sizeof off);
    if (off != NO_FIELD) lua_pushstring(L, m->tail + off);
    else lua_pushnil(L);
    return 1;
  }
  size_t len;
  const char *s = m->doc ? tw_json_str(m->doc, tw_json_get(m->doc, m->meta, meta_key[i], strlen(meta_key[i])), &len)
                         : NULL;
  if (s)
    lua_pushlstring(L, s, len);
  else if (i == F_TYPE && m->doc) /* a websocket message without it: the subscription's */
    return push_sub_type(L, m);
  else
    lua_pushnil(L);
  return 1;
}

static const char *transport_name(int k) {
  switch (k) {
  case TW_TRANSPORT_WEBHOOK: return "webhook";
  case TW_TRANSPORT_QUEUE: return "queue";
  default: return "websocket";
  }
}

/* user value 2 holds the conduit, or the plain websocket session (a table with _session)
 * the message came on: msg.conduit and msg.session each give theirs, or nil */
static int push_holder(lua_State *L, int session) {
  lua_getiuservalue(L, 1, 2);
  int is_session = 0;
  if (lua_type(L, -1) == LUA_TTABLE) {
    lua_pushliteral(L, "_session");
    is_session = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 1);
  }
  if (is_session != session) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
  return 1;
}

/* __index, a closure whose upvalue is the message metatable (a check without a lookup). */
static int msg_index(lua_State *L) {
  twl_msg *m = lua_touserdata(L, 1);
  if (!m || !lua_getmetatable(L, 1) || !lua_rawequal(L, -1, lua_upvalueindex(1)))
    luaL_typeerror(L, 1, TWL_MESSAGE_MT);
  lua_pop(L, 1);
  size_t kl;
  const char *k = lua_tolstring(L, 2, &kl);
  if (k == NULL || (m->doc == NULL && !m->copied)) return 0;
  switch (k[0]) {
  case 'i':
    if (kl == 2 && k[1] == 'd') {
      if (m->id)
        lua_pushlstring(L, m->id, m->idlen);
      else
        lua_pushnil(L);
      return 1;
    }
    break;
  case 't':
    if (strcmp(k, "type") == 0) return push_field(L, m, F_TYPE);
    if (strcmp(k, "timestamp") == 0) return push_field(L, m, F_TIMESTAMP);
    if (strcmp(k, "transport") == 0) return lua_pushstring(L, transport_name(m->transport)), 1;
    break;
  case 'v':
    if (strcmp(k, "version") == 0) return push_field(L, m, F_VERSION);
    break;
  case 'm':
    if (strcmp(k, "message_type") == 0)
      return lua_pushstring(L, m->revocation ? "revocation" : "notification"), 1;
    if (strcmp(k, "metadata") == 0) {
      if (m->doc && m->meta != TW_JNONE) twl_view_push(L, m->doc, m->meta, 1);
      else lua_pushnil(L);
      return 1;
    }
    break;
  case 's':
    if (strcmp(k, "shard") == 0) return lua_getiuservalue(L, 1, 1), 1;
    if (strcmp(k, "session") == 0) return push_holder(L, 1);
    if (strcmp(k, "subscription") == 0) {
      if (m->doc && m->sub != TW_JNONE) twl_view_push(L, m->doc, m->sub, 1);
      else lua_pushnil(L);
      return 1;
    }
    break;
  case 'c':
    if (strcmp(k, "conduit") == 0) return push_holder(L, 0);
    break;
  case 'o':
    if (strcmp(k, "origin") == 0) return lua_pushstring(L, transport_name(m->origin)), 1;
    break;
  default:
    break;
  }
  return 0;
}

static int msg_tostring(lua_State *L) {
  twl_msg *m = luaL_checkudata(L, 1, TWL_MESSAGE_MT);
  lua_pushfstring(L, "twconduit.message{id=\"%s\",transport=\"%s\"}",
                  m->id ? m->id : "?", transport_name(m->transport));
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

int twl_message_to_msg(lua_State *L, int idx, tw_msg *out) {
  twl_msg *m = lua_touserdata(L, idx);
  memset(out, 0, sizeof *out);
  if (!m || !m->doc) return -1;
  tw_json *d = m->doc;
  out->transport = (tw_transport_kind)m->origin;
  out->message_type = m->revocation ? "revocation" : "notification";
  out->id = m->id;
  out->id_len = m->id ? m->idlen : 0;
  out->doc = d;
  out->subscription = m->sub;
  out->metadata = m->meta;
  tw_jnode body = tw_json_get(d, 0, "payload", 7);
  if (body == TW_JNONE) body = 0;
  out->event = tw_json_get(d, body, "event", 5);
  if (out->event == TW_JNONE) out->event = tw_json_get(d, body, "events", 6);
  if (m->copied) {
    uint16_t off;
    memcpy(&off, m->tail + F_TIMESTAMP * sizeof off, sizeof off);
    out->timestamp = off != NO_FIELD ? m->tail + off : NULL;
  } else {
    out->timestamp = tw_json_str(d, tw_json_get(d, m->meta, "message_timestamp", 17), NULL);
  }
  out->type = tw_json_str(d, tw_json_get(d, m->sub, "type", 4), NULL);
  return 0;
}
