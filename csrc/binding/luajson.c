/* luajson.c - json_encode: Lua values to JSON text.
 *
 * The output grows in a local buffer, then in userdata kept at a fixed stack
 * slot, so an error raised midway leaks nothing. Ancestor tables and the keys
 * leading to the current value stay on the stack: they give cycle detection
 * and the path named in error messages (".condition.x", "[2]"). */
#include "twl_json.h"

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENC_MAX_DEPTH 64

typedef struct {
  lua_State *L;
  char *p;
  size_t n, cap;
  int slot;    /* stack slot holding the growth buffer */
  int nullidx; /* the null sentinel */
  int mtidx;   /* the view metatable */
  int depth;
  struct {
    int tab;         /* stack index of the table at this level */
    int key;         /* stack index of the member key, or 0 for an array index */
    lua_Integer idx; /* array index (1-based) */
  } lv[ENC_MAX_DEPTH + 1];
  char local[512];
} enc;

static char *reserve(enc *e, size_t k) {
  if (e->cap - e->n < k) {
    size_t nc = e->cap * 2;
    if (nc < e->n + k) nc = e->n + k;
    char *np = lua_newuserdatauv(e->L, nc, 0);
    memcpy(np, e->p, e->n);
    lua_replace(e->L, e->slot);
    e->p = np;
    e->cap = nc;
  }
  return e->p + e->n;
}

static void put(enc *e, const char *s, size_t l) {
  memcpy(reserve(e, l), s, l);
  e->n += l;
}

static void putc_(enc *e, char c) {
  *reserve(e, 1) = c;
  e->n++;
}

/* Raises "json_encode: <what> at <path>" for the value at the current depth. */
static void fail(enc *e, const char *what) {
  lua_State *L = e->L;
  char path[256];
  size_t o = 0;
  path[0] = '\0';
  for (int i = 1; i <= e->depth && o < sizeof path - 1; i++) {
    int w;
    if (e->lv[i].key) {
      size_t kl;
      const char *k = lua_tolstring(L, e->lv[i].key, &kl);
      w = snprintf(path + o, sizeof path - o, ".%.*s", (int)(kl > 64 ? 64 : kl), k);
    } else {
      w = snprintf(path + o, sizeof path - o, "[%lld]", (long long)e->lv[i].idx);
    }
    if (w < 0) break;
    o += (size_t)w;
    if (o >= sizeof path) o = sizeof path - 1;
  }
  luaL_error(L, "json_encode: %s at %s", what, o ? path : "(root)");
}

static int utf8_len(const unsigned char *p, const unsigned char *end) {
  unsigned c = p[0];
  size_t room = (size_t)(end - p);
  if (c >= 0xc2 && c <= 0xdf) return room >= 2 && (p[1] & 0xc0) == 0x80 ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    unsigned lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    return room >= 3 && p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 ? 3 : 0;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    unsigned lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    return room >= 4 && p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 &&
                   (p[3] & 0xc0) == 0x80
               ? 4
               : 0;
  }
  return 0;
}

static void put_string(enc *e, const char *s, size_t l) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *p = (const unsigned char *)s, *end = p + l;
  putc_(e, '"');
  while (p < end) {
    const unsigned char *run = p;
    while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\') p++;
    if (p > run) put(e, (const char *)run, (size_t)(p - run));
    if (p == end) break;
    unsigned c = *p;
    if (c >= 0x80) {
      int k = utf8_len(p, end);
      if (!k) fail(e, "invalid UTF-8 in string");
      put(e, (const char *)p, (size_t)k);
      p += k;
      continue;
    }
    char esc[6] = {'\\', 0, 0, 0, 0, 0};
    size_t el = 2;
    switch (c) {
    case '"': esc[1] = '"'; break;
    case '\\': esc[1] = '\\'; break;
    case '\b': esc[1] = 'b'; break;
    case '\f': esc[1] = 'f'; break;
    case '\n': esc[1] = 'n'; break;
    case '\r': esc[1] = 'r'; break;
    case '\t': esc[1] = 't'; break;
    default:
      esc[1] = 'u';
      esc[2] = '0';
      esc[3] = '0';
      esc[4] = hex[c >> 4];
      esc[5] = hex[c & 15];
      el = 6;
    }
    put(e, esc, el);
    p++;
  }
  putc_(e, '"');
}

static void put_number(enc *e, int idx) {
  lua_State *L = e->L;
  char buf[64];
  int w;
  if (lua_isinteger(L, idx)) {
    w = snprintf(buf, sizeof buf, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
    put(e, buf, (size_t)w);
    return;
  }
  lua_Number v = lua_tonumber(L, idx);
  if (isnan(v)) fail(e, "unsupported number (nan)");
  if (isinf(v)) fail(e, "unsupported number (inf)");
  /* shortest of %.15g..%.17g that reads back exactly (in the current locale) */
  for (int prec = 15; prec <= 17; prec++) {
    w = snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
    if (strtod(buf, NULL) == (double)v) break;
  }
  const char *dp = localeconv()->decimal_point;
  char out[72];
  size_t o = 0, dl = strlen(dp);
  int plain = 1;
  for (int i = 0; i < w; i++) {
    if (dl && strncmp(buf + i, dp, dl) == 0) {
      out[o++] = '.';
      i += (int)dl - 1;
      plain = 0;
    } else {
      if (buf[i] == 'e') plain = 0;
      out[o++] = buf[i];
    }
  }
  if (plain) { /* keep floats floats: 3.0 encodes as 3.0, not 3 */
    out[o++] = '.';
    out[o++] = '0';
  }
  put(e, out, o);
}

static int is_view(enc *e, int idx) {
  if (!lua_getmetatable(e->L, idx)) return 0;
  int r = lua_rawequal(e->L, -1, e->mtidx);
  lua_pop(e->L, 1);
  return r;
}

static void encode(enc *e, int idx);

static void encode_table(enc *e, int idx) {
  lua_State *L = e->L;
  if (e->depth >= ENC_MAX_DEPTH) fail(e, "nesting deeper than 64");
  for (int i = 0; i <= e->depth; i++)
    if (e->lv[i].tab && lua_rawequal(L, e->lv[i].tab, idx)) fail(e, "cycle (table contains itself)");
  luaL_checkstack(L, 6, "json_encode");
  e->lv[e->depth].tab = idx;
  lua_Unsigned n = lua_rawlen(L, idx);
  int isarr = n > 0;
  if (isarr) {
    lua_Unsigned count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      lua_pop(L, 1);
      lua_Integer k;
      if (!lua_isinteger(L, -1) || (k = lua_tointeger(L, -1)) < 1 || (lua_Unsigned)k > n ||
          ++count > n) {
        lua_pop(L, 1);
        isarr = 0;
        break;
      }
    }
    if (count != n) isarr = 0;
  }
  int d = ++e->depth;
  if (isarr) {
    putc_(e, '[');
    for (lua_Unsigned i = 1; i <= n; i++) {
      if (i > 1) putc_(e, ',');
      lua_rawgeti(L, idx, (lua_Integer)i);
      e->lv[d].key = 0;
      e->lv[d].idx = (lua_Integer)i;
      e->lv[d].tab = 0;
      encode(e, lua_gettop(L));
      lua_pop(L, 1);
    }
    putc_(e, ']');
  } else {
    putc_(e, '{');
    int first = 1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      int k = lua_gettop(L) - 1;
      e->lv[d].tab = 0;
      if (lua_type(L, k) != LUA_TSTRING) {
        e->lv[d].key = 0;
        e->lv[d].idx = 0;
        char what[64];
        if (lua_type(L, k) == LUA_TNUMBER) {
          e->lv[d].idx = lua_isinteger(L, k) ? lua_tointeger(L, k) : 0;
          snprintf(what, sizeof what, "non-string key (number) in object");
        } else {
          snprintf(what, sizeof what, "non-string key (%s) in object", luaL_typename(L, k));
        }
        e->depth = d - 1; /* name the object holding the key */
        fail(e, what);
      }
      if (!first) putc_(e, ',');
      first = 0;
      size_t kl;
      const char *ks = lua_tolstring(L, k, &kl);
      put_string(e, ks, kl);
      putc_(e, ':');
      e->lv[d].key = k;
      encode(e, k + 1);
      lua_pop(L, 1);
    }
    putc_(e, '}');
  }
  e->depth = d - 1;
}

static void encode(enc *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
  case LUA_TNIL: put(e, "null", 4); return;
  case LUA_TBOOLEAN:
    if (lua_toboolean(L, idx))
      put(e, "true", 4);
    else
      put(e, "false", 5);
    return;
  case LUA_TNUMBER: put_number(e, idx); return;
  case LUA_TSTRING: {
    size_t l;
    const char *s = lua_tolstring(L, idx, &l);
    put_string(e, s, l);
    return;
  }
  case LUA_TTABLE: encode_table(e, idx); return;
  case LUA_TUSERDATA:
    if (lua_rawequal(L, idx, e->nullidx)) {
      put(e, "null", 4);
      return;
    }
    if (is_view(e, idx)) {
      tw_jnode n;
      tw_json *d = twl_view_get(L, idx, &n);
      size_t l = 0;
      const char *raw = d ? tw_json_raw(d, n, &l) : NULL;
      if (!raw) fail(e, "collected view");
      put(e, raw, l);
      return;
    }
    fail(e, "unsupported value (userdata)");
    return;
  default: {
    char what[64];
    snprintf(what, sizeof what, "unsupported value (%s)", luaL_typename(L, idx));
    fail(e, what);
  }
  }
}

void twl_json_encode(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 8, "json_encode");
  enc *e = lua_newuserdatauv(L, sizeof *e, 0); /* the state itself: freed by the GC */
  int ebox = lua_gettop(L);
  e->L = L;
  e->p = e->local;
  e->n = 0;
  e->cap = sizeof e->local;
  e->depth = 0;
  e->lv[0].tab = 0;
  e->lv[0].key = 0;
  e->lv[0].idx = 0;
  lua_pushnil(L);
  e->slot = lua_gettop(L);
  twl_push_null(L);
  e->nullidx = lua_gettop(L);
  luaL_getmetatable(L, TWL_VIEW_MT);
  e->mtidx = lua_gettop(L);
  encode(e, idx);
  lua_pushlstring(L, e->p, e->n);
  lua_replace(L, ebox);
  lua_settop(L, ebox);
}
