/* view.c - read-only Lua views over tw_json documents, the null sentinel,
 * totable / json_decode / json_view / isview.
 *
 * A view is a 16-byte userdata {anchor, node, kind} whose one user value is the
 * document's anchor: the Lua object that owns the document's memory (for a
 * notification, the message, which holds one reference on the parsed document; for
 * json_view, a holder with a finalizer). The box points at the anchor's first field,
 * its document pointer, so the document and the "still alive?" test are one load.
 * Views have no finalizer of their own, so a handler that touches a few nested objects
 * creates a few small userdata and nothing more for the collector to call. __index,
 * __len and __pairs decode only what is touched. The metamethods that push values
 * carry the view metatable and the null sentinel as upvalues, so a nested view costs
 * one lua_newuserdatauv and no lookup.
 *
 * The metamethods do not check that argument 1 is a view: they are reached only
 * through the view metatable, which __metatable hides from getmetatable (the debug
 * library, which could hand them another value, can as well give any userdata this
 * metatable, which no check of the metatable would catch). That check (a
 * lua_getmetatable and a lua_rawequal) was a quarter of a field read. Functions of the
 * module that take a view (totable, json_encode, isview) still check. */
#include "twl.h"

#include <string.h>

const char *const twl_null_name = TWL_NULL_MT;

/* Registry keys: the addresses of these constants. */
static const char view_mt_key = 'v';
static const char null_key = 'n';
static const char holder_mt_key = 'h';

typedef struct {
  tw_json *const *anchor; /* the anchor's first field, its document pointer (NULL once the
                           * anchor was finalized): the anchor is kept from the allocator by
                           * user value 1, so this reads live memory even from a finalizer
                           * that runs after the anchor's */
  tw_jnode n;
  uint8_t kind; /* TW_JSON_OBJ or TW_JSON_ARR */
} view_box;

_Static_assert(sizeof(view_box) <= 16, "a view is allocated for every nested object read");

/* The anchor of json_view documents: owns one reference, dropped by __gc. */
typedef struct {
  tw_json *d;
} doc_holder;

enum { UV_MT = 1, UV_NULL = 2 }; /* upvalues of __index / __pairs */

void twl_push_null(lua_State *L) { lua_rawgetp(L, LUA_REGISTRYINDEX, &null_key); }
void twl_push_view_mt(lua_State *L) { lua_rawgetp(L, LUA_REGISTRYINDEX, &view_mt_key); }


/* An anchor is a userdata whose first field is its document pointer, set to NULL by its
 * finalizer (doc_holder here, the message in message.c). A finalizer of the user's can
 * run after the anchor's in the same collection and still reach a view: the view must
 * then refuse to read, as the memory went back to the pool or the allocator. */
static int anchor_alive(const view_box *b) { return *b->anchor != NULL; }

static int dead_view(lua_State *L) {
  return luaL_error(L, "twconduit.view used after its document was collected (from a finalizer?)");
}

/* The document of view b; raises when it is gone. */
static tw_json *view_doc(lua_State *L, const view_box *b) {
  tw_json *d = *b->anchor;
  if (d == NULL) dead_view(L);
  return d;
}

/* The view at idx, or NULL; raises if it is a view whose document is gone. */
static view_box *toview(lua_State *L, int idx) {
  view_box *b = luaL_testudata(L, idx, TWL_VIEW_MT);
  if (b) view_doc(L, b);
  return b;
}

int twl_isview(lua_State *L, int idx) { return luaL_testudata(L, idx, TWL_VIEW_MT) != NULL; }

tw_json *twl_view_get(lua_State *L, int idx, tw_jnode *n) {
  view_box *b = toview(L, idx);
  if (!b) return NULL;
  if (n) *n = b->n;
  return *b->anchor;
}

/* Pushes node n; mtidx / nullidx: stack (or upvalue) indices of the view metatable and
 * the null sentinel; anchor: the anchor's document field. A container's view also gets
 * the anchor itself as user value 1: found at idx (ANCHOR_AT), or as user value 1 of
 * the view at idx (ANCHOR_OF_VIEW). */
enum { ANCHOR_AT, ANCHOR_OF_VIEW };

/* Pushes a scalar node (string, number, boolean, null) and returns 1; returns 0 and
 * pushes nothing for an array or object. */
static int push_scalar(lua_State *L, const tw_json *d, tw_jnode n, int nullidx) {
  switch (tw_json_type(d, n)) {
  case TW_JSON_STR: {
    size_t l;
    const char *s = tw_json_str(d, n, &l);
    lua_pushlstring(L, s, l);
    return 1;
  }
  case TW_JSON_INT: lua_pushinteger(L, (lua_Integer)tw_json_int(d, n)); return 1;
  case TW_JSON_NUM: lua_pushnumber(L, (lua_Number)tw_json_num(d, n)); return 1;
  case TW_JSON_TRUE: lua_pushboolean(L, 1); return 1;
  case TW_JSON_FALSE: lua_pushboolean(L, 0); return 1;
  case TW_JSON_NULL: lua_pushvalue(L, nullidx); return 1;
  case TW_JSON_ARR:
  case TW_JSON_OBJ: return 0;
  default: lua_pushnil(L); return 1;
  }
}

static void push_node(lua_State *L, tw_json *d, tw_jnode n, int mtidx, int nullidx, tw_json *const *anchor,
                      int how, int idx) {
  if (push_scalar(L, d, n, nullidx)) return;
  view_box *b = lua_newuserdatauv(L, sizeof *b, 1);
  b->anchor = anchor;
  b->n = n;
  b->kind = (uint8_t)tw_json_type(d, n);
  lua_pushvalue(L, mtidx);
  lua_setmetatable(L, -2);
  if (how == ANCHOR_AT)
    lua_pushvalue(L, idx);
  else
    lua_getiuservalue(L, idx, 1);
  lua_setiuservalue(L, -2, 1);
}

void twl_view_push(lua_State *L, tw_json *d, tw_jnode n, int anchor) {
  anchor = lua_absindex(L, anchor);
  luaL_checkstack(L, 5, "twl_view_push");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &view_mt_key);
  twl_push_null(L);
  int top = lua_gettop(L); /* absolute indices: push_node pushes before it reads them */
  push_node(L, d, n, top - 1, top, lua_touserdata(L, anchor), ANCHOR_AT, anchor);
  lua_replace(L, -3);
  lua_pop(L, 1);
}

void twl_view_push_frame(lua_State *L, const twl_frame *fr, tw_json *d, tw_jnode n, int anchor) {
  anchor = lua_absindex(L, anchor);
  push_node(L, d, n, fr->view_mt, fr->null, lua_touserdata(L, anchor), ANCHOR_AT, anchor);
}

/* ---- metamethods ---------------------------------------------------------- */

/* The view at 1 of a metamethod (see the top of the file: no metatable check). */
static view_box *selfview(lua_State *L) {
  view_box *b = lua_touserdata(L, 1);
  if (b == NULL) luaL_typeerror(L, 1, TWL_VIEW_MT);
  return b;
}

static int view_index(lua_State *L) {
  view_box *b = selfview(L);
  tw_json *d = view_doc(L, b);
  tw_jnode c;
  if (b->kind == TW_JSON_OBJ) {
    size_t kl;
    if (lua_type(L, 2) != LUA_TSTRING) return 0;
    const char *k = lua_tolstring(L, 2, &kl);
    c = tw_json_get(d, b->n, k, kl);
  } else {
    if (lua_type(L, 2) != LUA_TNUMBER) return 0;
    int isint;
    lua_Integer i = lua_tointegerx(L, 2, &isint);
    if (!isint || i < 1) return 0;
    c = tw_json_at(d, b->n, (size_t)(i - 1));
  }
  if (c == TW_JNONE) return 0;
  push_node(L, d, c, lua_upvalueindex(UV_MT), lua_upvalueindex(UV_NULL), b->anchor, ANCHOR_OF_VIEW, 1);
  return 1;
}

static int view_len(lua_State *L) {
  view_box *b = selfview(L);
  lua_pushinteger(L, (lua_Integer)tw_json_len(view_doc(L, b), b->n));
  return 1;
}

/* pairs iterator; upvalues: mt, null, the view, the cursor (next node or -1). */
static int view_iter(lua_State *L) {
  view_box *b = lua_touserdata(L, lua_upvalueindex(3));
  lua_Integer cur = lua_tointeger(L, lua_upvalueindex(4));
  if (cur < 0) return 0;
  tw_json *d = view_doc(L, b);
  tw_jnode c = (tw_jnode)cur, nx;
  if (b->kind == TW_JSON_OBJ) {
    size_t kl;
    const char *k = tw_json_str(d, c, &kl);
    lua_pushlstring(L, k, kl);
    c = tw_json_next(d, c);
    nx = tw_json_next(d, c);
  } else {
    lua_pushinteger(L, lua_tointeger(L, 2) + 1);
    nx = tw_json_next(d, c);
  }
  push_node(L, d, c, lua_upvalueindex(UV_MT), lua_upvalueindex(UV_NULL), b->anchor, ANCHOR_OF_VIEW,
            lua_upvalueindex(3));
  lua_pushinteger(L, nx == TW_JNONE ? -1 : (lua_Integer)nx);
  lua_replace(L, lua_upvalueindex(4));
  return 2;
}

static int view_pairs(lua_State *L) {
  view_box *b = selfview(L);
  tw_jnode f = tw_json_first(view_doc(L, b), b->n);
  lua_pushvalue(L, lua_upvalueindex(UV_MT));
  lua_pushvalue(L, lua_upvalueindex(UV_NULL));
  lua_pushvalue(L, 1);
  lua_pushinteger(L, f == TW_JNONE ? -1 : (lua_Integer)f);
  lua_pushcclosure(L, view_iter, 4);
  lua_pushvalue(L, 1);
  lua_pushinteger(L, 0);
  return 3;
}

static int view_newindex(lua_State *L) { return luaL_error(L, "twconduit.view is read-only"); }

static int view_tostring(lua_State *L) {
  view_box *b = luaL_checkudata(L, 1, TWL_VIEW_MT);
  if (!anchor_alive(b)) {
    lua_pushliteral(L, "twconduit.view (collected)");
    return 1;
  }
  size_t l = 0;
  const char *s = tw_json_raw(*b->anchor, b->n, &l);
  lua_pushlstring(L, s ? s : "", l);
  return 1;
}

/* compares identities only: reads no document. The same node of one document is the
 * same value, whichever anchor holds it; once collected, only views of one anchor. */
static int view_eq(lua_State *L) {
  view_box *a = luaL_testudata(L, 1, TWL_VIEW_MT), *b = luaL_testudata(L, 2, TWL_VIEW_MT);
  int eq = 0;
  if (a && b && a->n == b->n) {
    tw_json *da = *a->anchor;
    eq = da ? da == *b->anchor : a->anchor == b->anchor;
  }
  lua_pushboolean(L, eq);
  return 1;
}

static int holder_gc(lua_State *L) {
  doc_holder *h = lua_touserdata(L, 1);
  if (h && h->d) {
    tw_json_unref(h->d);
    h->d = NULL;
  }
  return 0;
}

static int null_tostring(lua_State *L) {
  lua_pushstring(L, twl_null_name);
  return 1;
}

/* ---- plain tables ---------------------------------------------------------- */

static void push_plain(lua_State *L, const tw_json *d, tw_jnode n, int nullidx) {
  switch (tw_json_type(d, n)) {
  case TW_JSON_OBJ: {
    luaL_checkstack(L, 4, "json nesting");
    lua_createtable(L, 0, (int)tw_json_len(d, n));
    for (tw_jnode k = tw_json_first(d, n); k != TW_JNONE; k = tw_json_next(d, k)) {
      size_t kl;
      const char *ks = tw_json_str(d, k, &kl);
      lua_pushlstring(L, ks, kl);
      k = tw_json_next(d, k);
      push_plain(L, d, k, nullidx);
      lua_rawset(L, -3);
    }
    return;
  }
  case TW_JSON_ARR: {
    luaL_checkstack(L, 4, "json nesting");
    lua_createtable(L, (int)tw_json_len(d, n), 0);
    lua_Integer i = 1;
    for (tw_jnode e = tw_json_first(d, n); e != TW_JNONE; e = tw_json_next(d, e)) {
      push_plain(L, d, e, nullidx);
      lua_rawseti(L, -2, i++);
    }
    return;
  }
  default: push_scalar(L, d, n, nullidx); return;
  }
}

void twl_json_push_table(lua_State *L, const tw_json *d, tw_jnode n) {
  luaL_checkstack(L, 2, "twl_json_push_table");
  twl_push_null(L);
  int nullidx = lua_gettop(L);
  push_plain(L, d, n, nullidx);
  lua_remove(L, nullidx);
}

/* ---- module functions ---------------------------------------------------- */

static int l_totable(lua_State *L) {
  luaL_checkany(L, 1);
  view_box *b = toview(L, 1);
  if (!b) {
    lua_settop(L, 1);
    return 1;
  }
  twl_json_push_table(L, *b->anchor, b->n);
  return 1;
}

static int l_isview(lua_State *L) {
  luaL_checkany(L, 1);
  lua_pushboolean(L, twl_isview(L, 1)); /* a predicate: true for a collected view too, never raises */
  return 1;
}

/* Parses argument 1 and leaves the holder of the document on the stack (it owns the
 * document, so a raised error while building cannot leak it). */
static doc_holder *parse_arg(lua_State *L, const char *fname) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  doc_holder *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->d = NULL;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &holder_mt_key);
  lua_setmetatable(L, -2);
  char err[160];
  h->d = tw_json_parse(s, len, err, sizeof err);
  if (!h->d) luaL_error(L, "%s: %s", fname, err);
  return h;
}

static int l_json_decode(lua_State *L) {
  doc_holder *h = parse_arg(L, "json_decode");
  twl_json_push_table(L, h->d, 0);
  return 1;
}

/* json_view(s): the document's root as a view (scalars as values). */
static int l_json_view(lua_State *L) {
  doc_holder *h = parse_arg(L, "json_view");
  twl_view_push(L, h->d, 0, -1);
  return 1;
}

static int l_json_encode(lua_State *L) {
  luaL_checkany(L, 1);
  twl_json_encode(L, 1);
  return 1;
}

void twl_json_open(lua_State *L, int modidx) {
  modidx = lua_absindex(L, modidx);
  luaL_checkstack(L, 8, "twl_json_open");

  /* null sentinel: one per state, reused if the module is opened again */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &null_key) != LUA_TUSERDATA) {
    lua_pop(L, 1);
    lua_newuserdatauv(L, 0, 0);
    if (luaL_newmetatable(L, TWL_NULL_MT)) {
      lua_pushcfunction(L, null_tostring);
      lua_setfield(L, -2, "__tostring");
      lua_pushliteral(L, TWL_NULL_MT);
      lua_setfield(L, -2, "__metatable");
    }
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &null_key);
  }
  int nullidx = lua_gettop(L);

  if (luaL_newmetatable(L, TWL_VIEW_MT)) {
    int mt = lua_gettop(L);
    static const struct {
      const char *name;
      lua_CFunction f;
    } withuv[] = {{"__index", view_index}, {"__pairs", view_pairs}},
      plain[] = {{"__len", view_len}, {"__newindex", view_newindex}, {"__tostring", view_tostring}, {"__eq", view_eq}};
    for (size_t i = 0; i < sizeof withuv / sizeof withuv[0]; i++) {
      lua_pushvalue(L, mt);
      lua_pushvalue(L, nullidx);
      lua_pushcclosure(L, withuv[i].f, 2);
      lua_setfield(L, mt, withuv[i].name);
    }
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
      lua_pushcfunction(L, plain[i].f);
      lua_setfield(L, mt, plain[i].name);
    }
    lua_pushliteral(L, TWL_VIEW_MT); /* getmetatable(view) cannot reach the metamethods */
    lua_setfield(L, mt, "__metatable");
    lua_pushvalue(L, mt);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &view_mt_key);
  }
  lua_pop(L, 1);

  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &holder_mt_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, holder_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, "twconduit.document");
    lua_setfield(L, -2, "__metatable");
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &holder_mt_key);
  }
  lua_pop(L, 1);

  lua_setfield(L, modidx, "null"); /* pops the sentinel */
  static const luaL_Reg fns[] = {{"totable", l_totable},         {"json_decode", l_json_decode},
                                 {"json_encode", l_json_encode}, {"json_view", l_json_view},
                                 {"isview", l_isview},           {NULL, NULL}};
  lua_pushvalue(L, modidx);
  luaL_setfuncs(L, fns, 0);
  lua_pop(L, 1);
}
