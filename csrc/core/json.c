/* tw_json: strict single-pass JSON parser producing a tape of 16-byte nodes.
 *
 * One allocation per document (grown with realloc only when the first estimate
 * of the node count is too small):
 *
 *   [struct tw_json][text: verbatim copy + NUL + padding][sbuf][nodes ...]
 *
 * text is the verbatim input (tw_json_raw slices it; the zero padding lets the
 * string scanner read 16 bytes at a time without running off the end). sbuf
 * starts as a second copy of the text; the parser writes each string's
 * unescaped contents in place at the same offset, followed by a NUL (the
 * unescaped form is never longer than the escaped one, and the closing quote
 * leaves room for the NUL). A string without escapes therefore costs only the
 * scan and one byte store.
 *
 * Node: start (offset of the value's first byte in text), len (raw length),
 * next (next sibling index, TW_JNONE at the end), and tag = type (3 bits) |
 * FLAT flag (arrays of scalars only) | aux << 4, aux being the member/element
 * count of a container or the unescaped length of a string. Children follow
 * their container immediately, so the first child of n is n + 1.
 */
#include "tw_json.h"

#include <locale.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

typedef struct {
  uint32_t start;
  uint32_t len;
  uint32_t next;
  uint32_t tag;
} tw_node;

#define TAG_TYPE(t) ((t)&7u)
#define TAG_FLAT 8u
#define TAG_AUX(t) ((t) >> 4)
#define MKTAG(type, aux) ((uint32_t)(type) | ((uint32_t)(aux) << 4))

#define PAD 32 /* zero bytes after the text copy */

struct tw_json {
  uint32_t refs;
  uint32_t nnodes;
  uint32_t cap;
  uint32_t len;
  size_t alloc;          /* bytes allocated */
  tw_json_pool *pool;    /* where the memory goes back to, or NULL */
  struct tw_json *next;  /* in the pool's free list */
  char *text;
  char *sbuf;
  tw_node *nodes;
};

struct tw_json_pool {
  struct tw_json *free; /* documents whose memory waits for reuse */
  size_t nfree, idle_bytes; /* documents waiting, and their bytes */
  size_t max_idle, max_doc; /* limits: bytes waiting in all, bytes of one document */
  size_t out;   /* documents from this pool still referenced */
  int gone;     /* the owner has let go: free on the last return */
};

static size_t round16(size_t n) { return (n + 15u) & ~(size_t)15u; }

static size_t head_size(size_t len) {
  return round16(sizeof(struct tw_json)) + round16(len + PAD) + round16(len + 1);
}

static void set_ptrs(struct tw_json *d) {
  char *base = (char *)d;
  d->text = base + round16(sizeof(struct tw_json));
  d->sbuf = d->text + round16(d->len + PAD);
  d->nodes = (tw_node *)(void *)(d->sbuf + round16(d->len + 1));
}

/* ---- parser ------------------------------------------------------------ */

typedef struct {
  uint32_t node;  /* container node */
  uint32_t count; /* members (objects) or elements (arrays) */
  int isobj;
} frame;

typedef struct {
  struct tw_json *d;
  const char *t; /* d->text */
  char *s;       /* d->sbuf */
  tw_node *nodes;
  uint32_t n, cap;
  char *err;
  size_t errlen;
} parser;

static void fail(parser *P, size_t at, const char *fmt, ...) {
  if (!P->err || !P->errlen) return;
  char msg[96];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  snprintf(P->err, P->errlen, "%s at byte %zu", msg, at);
}

static void fail_char(parser *P, const char *p, const char *what) {
  size_t at = (size_t)(p - P->t);
  unsigned char c = (unsigned char)*p;
  if (at >= P->d->len)
    fail(P, at, "unexpected end of input (%s)", what);
  else if (c >= 0x20 && c < 0x7f)
    fail(P, at, "unexpected character '%c' (%s)", c, what);
  else
    fail(P, at, "unexpected byte 0x%02x (%s)", c, what);
}

static int grow(parser *P, const char **pp) {
  size_t off = (size_t)(*pp - P->t);
  size_t ncap = (size_t)P->cap * 2;
  if (ncap > UINT32_MAX - 1) return -1;
  size_t bytes = head_size(P->d->len) + ncap * sizeof(tw_node);
  struct tw_json *nd = realloc(P->d, bytes);
  if (!nd) return -1;
  nd->alloc = bytes;
  set_ptrs(nd);
  P->d = nd;
  P->t = nd->text;
  P->s = nd->sbuf;
  P->nodes = nd->nodes;
  P->cap = (uint32_t)ncap;
  *pp = P->t + off;
  return 0;
}

static inline const char *skip_ws(const char *p) {
  if ((unsigned char)*p > ' ') return p; /* compact JSON: one compare */
  while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') p++;
  return p;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int hex4(const char *p) {
  int a = hexval((unsigned char)p[0]), b, c, e;
  if (a < 0 || (b = hexval((unsigned char)p[1])) < 0 || (c = hexval((unsigned char)p[2])) < 0 ||
      (e = hexval((unsigned char)p[3])) < 0)
    return -1;
  return a << 12 | b << 8 | c << 4 | e;
}

/* Length of the valid UTF-8 sequence starting at non-ASCII byte p[0], or 0. */
static int utf8_seq(const unsigned char *p) {
  unsigned c = p[0];
  if (c >= 0xc2 && c <= 0xdf) return (p[1] & 0xc0) == 0x80 ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    unsigned lo = 0x80, hi = 0xbf;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
    if (p[1] < lo || p[1] > hi || (p[2] & 0xc0) != 0x80) return 0;
    return 3;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    unsigned lo = 0x80, hi = 0xbf;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
    if (p[1] < lo || p[1] > hi || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80) return 0;
    return 4;
  }
  return 0;
}

static char *put_utf8(char *w, uint32_t cp) {
  if (cp < 0x80) {
    *w++ = (char)cp;
  } else if (cp < 0x800) {
    *w++ = (char)(0xc0 | cp >> 6);
    *w++ = (char)(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    *w++ = (char)(0xe0 | cp >> 12);
    *w++ = (char)(0x80 | (cp >> 6 & 0x3f));
    *w++ = (char)(0x80 | (cp & 0x3f));
  } else {
    *w++ = (char)(0xf0 | cp >> 18);
    *w++ = (char)(0x80 | (cp >> 12 & 0x3f));
    *w++ = (char)(0x80 | (cp >> 6 & 0x3f));
    *w++ = (char)(0x80 | (cp & 0x3f));
  }
  return w;
}

/* Slow path: string with escapes. p points at the first backslash; q0 at the
 * first content byte. Decodes into sbuf at the same offsets. Returns the
 * position after the closing quote and the unescaped length, or NULL. */
static const char *string_escaped(parser *P, const char *q0, const char *p, uint32_t *ulen) {
  char *w = P->s + (p - P->t); /* bytes before p are already in place */
  for (;;) {
    unsigned char c = (unsigned char)*p;
    if (c == '"') {
      *w = '\0';
      *ulen = (uint32_t)(w - (P->s + (q0 - P->t)));
      return p + 1;
    }
    if (c == '\\') {
      const char *esc = p;
      p++;
      switch (*p) {
      case '"': *w++ = '"'; p++; break;
      case '\\': *w++ = '\\'; p++; break;
      case '/': *w++ = '/'; p++; break;
      case 'b': *w++ = '\b'; p++; break;
      case 'f': *w++ = '\f'; p++; break;
      case 'n': *w++ = '\n'; p++; break;
      case 'r': *w++ = '\r'; p++; break;
      case 't': *w++ = '\t'; p++; break;
      case 'u': {
        int u = hex4(p + 1);
        if (u < 0) {
          fail(P, (size_t)(esc - P->t), "invalid \\u escape");
          return NULL;
        }
        p += 5;
        uint32_t cp = (uint32_t)u;
        if (cp >= 0xdc00 && cp <= 0xdfff) {
          fail(P, (size_t)(esc - P->t), "lone low surrogate \\u%04x", (unsigned)cp);
          return NULL;
        }
        if (cp >= 0xd800 && cp <= 0xdbff) {
          int lo = (p[0] == '\\' && p[1] == 'u') ? hex4(p + 2) : -1;
          if (lo < 0xdc00 || lo > 0xdfff) {
            fail(P, (size_t)(esc - P->t), "lone high surrogate \\u%04x", (unsigned)cp);
            return NULL;
          }
          cp = 0x10000 + ((cp - 0xd800) << 10) + ((uint32_t)lo - 0xdc00);
          p += 6;
        }
        w = put_utf8(w, cp);
        break;
      }
      default:
        fail(P, (size_t)(esc - P->t), "invalid escape");
        return NULL;
      }
    } else if (c < 0x20) {
      if ((size_t)(p - P->t) >= P->d->len)
        fail(P, (size_t)(p - P->t), "unterminated string");
      else
        fail(P, (size_t)(p - P->t), "unescaped control character 0x%02x in string", c);
      return NULL;
    } else if (c < 0x80) {
      *w++ = (char)c;
      p++;
    } else {
      int k = utf8_seq((const unsigned char *)p);
      if (!k) {
        fail(P, (size_t)(p - P->t), "invalid UTF-8 in string");
        return NULL;
      }
      for (int i = 0; i < k; i++) *w++ = p[i];
      p += k;
    }
  }
}

/* p points after the opening quote. Returns the position after the closing
 * quote, the unescaped length in *ulen, or NULL on error. */
static inline __attribute__((always_inline)) const char *scan_string(parser *P, const char *p, uint32_t *ulen) {
  const char *q0 = p;
  for (;;) {
#if defined(__SSE2__)
    {
      const __m128i quote = _mm_set1_epi8('"'), bs = _mm_set1_epi8('\\'),
                    ctl = _mm_set1_epi8(0x1f);
      for (;;) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i sp = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bs)),
                                  _mm_cmpeq_epi8(_mm_min_epu8(v, ctl), v));
        /* stop at a quote, a backslash, a control byte or a non-ASCII byte */
        unsigned m = (unsigned)_mm_movemask_epi8(sp) | (unsigned)_mm_movemask_epi8(v);
        if (!m) {
          p += 16;
          continue;
        }
        p += __builtin_ctz(m);
        break;
      }
    }
#endif
    unsigned char c = (unsigned char)*p;
    if (c == '"') {
      P->s[p - P->t] = '\0';
      *ulen = (uint32_t)(p - q0);
      return p + 1;
    }
    if (c == '\\') return string_escaped(P, q0, p, ulen);
    if (c < 0x20) {
      if ((size_t)(p - P->t) >= P->d->len)
        fail(P, (size_t)(p - P->t), "unterminated string");
      else
        fail(P, (size_t)(p - P->t), "unescaped control character 0x%02x in string", c);
      return NULL;
    }
    if (c >= 0x80) {
      int k = utf8_seq((const unsigned char *)p);
      if (!k) {
        fail(P, (size_t)(p - P->t), "invalid UTF-8 in string");
        return NULL;
      }
      p += k;
    } else {
      p++;
    }
  }
}

/* Validates a number at p; sets *type to INT or NUM. Returns the end or NULL. */
static inline __attribute__((always_inline)) const char *scan_number(parser *P, const char *p, int *type) {
  const char *s = p;
  int neg = 0, isint = 1;
  uint64_t m = 0;
  int nd = 0;
  if (*p == '-') {
    neg = 1;
    p++;
  }
  if (*p == '0') {
    p++;
    if (*p >= '0' && *p <= '9') {
      fail(P, (size_t)(s - P->t), "leading zero in number");
      return NULL;
    }
  } else if (*p >= '1' && *p <= '9') {
    while (*p >= '0' && *p <= '9') {
      m = m * 10 + (uint64_t)(*p - '0'); /* wraps past 20 digits; nd says so */
      nd++;
      p++;
    }
  } else {
    fail_char(P, p, "digit expected");
    return NULL;
  }
  if (*p == '.') {
    isint = 0;
    p++;
    if (!(*p >= '0' && *p <= '9')) {
      fail_char(P, p, "digit expected after '.'");
      return NULL;
    }
    while (*p >= '0' && *p <= '9') p++;
  }
  if (*p == 'e' || *p == 'E') {
    isint = 0;
    p++;
    if (*p == '+' || *p == '-') p++;
    if (!(*p >= '0' && *p <= '9')) {
      fail_char(P, p, "digit expected in exponent");
      return NULL;
    }
    while (*p >= '0' && *p <= '9') p++;
  }
  if (isint) {
    /* 19 digits or fewer cannot wrap; 20-digit values may have wrapped. */
    if (nd > 19)
      isint = 0;
    else if (neg ? m > (uint64_t)INT64_MAX + 1u : m > (uint64_t)INT64_MAX)
      isint = 0;
  }
  *type = isint ? TW_JSON_INT : TW_JSON_NUM;
  return p;
}

static tw_json *parse_into(tw_json_pool *pool, const char *text, size_t len, char *err, size_t errlen);

TW_API tw_json *tw_json_parse(const char *text, size_t len, char *err, size_t errlen) {
  return parse_into(NULL, text, len, err, errlen);
}

TW_API tw_json *tw_json_parse_pooled(tw_json_pool *pool, const char *text, size_t len, char *err,
                                     size_t errlen) {
  return parse_into(pool, text, len, err, errlen);
}

/* Gives d's memory back to its pool (or frees it) once nothing references it. */
static void release(struct tw_json *d) {
  tw_json_pool *p = d->pool;
  if (p == NULL) {
    free(d);
    return;
  }
  p->out--;
  if (!p->gone && d->alloc <= p->max_doc && p->idle_bytes + d->alloc <= p->max_idle) {
    d->next = p->free;
    p->free = d;
    p->nfree++;
    p->idle_bytes += d->alloc;
    return;
  }
  free(d);
  if (p->gone && p->out == 0) free(p);
}

static tw_json *parse_into(tw_json_pool *pool, const char *text, size_t len, char *err, size_t errlen) {
  parser P;
  P.err = err;
  P.errlen = errlen;
  if (err && errlen) err[0] = '\0';
  if (len > TW_JSON_MAX_LEN) {
    if (err && errlen)
      snprintf(err, errlen, "document larger than %zu bytes at byte 0", (size_t)TW_JSON_MAX_LEN);
    return NULL;
  }
  uint32_t cap = (uint32_t)(len / 8 + 16);
  size_t need = head_size(len) + (size_t)cap * sizeof(tw_node);
  struct tw_json *d = NULL;
  if (pool && pool->free) {
    d = pool->free;
    pool->free = d->next;
    pool->nfree--;
    pool->idle_bytes -= d->alloc;
    if (d->alloc >= need) {
      cap = (uint32_t)((d->alloc - head_size(len)) / sizeof(tw_node)); /* use all of it */
    } else {
      free(d);
      d = NULL;
    }
  }
  if (d == NULL) {
    d = malloc(need);
    if (d) d->alloc = need;
  }
  if (!d) {
    if (err && errlen) snprintf(err, errlen, "out of memory at byte 0");
    return NULL;
  }
  d->pool = pool;
  if (pool) pool->out++;
  d->refs = 1;
  d->len = (uint32_t)len;
  set_ptrs(d);
  if (len) memcpy(d->text, text, len);
  memset(d->text + len, 0, PAD);
  memcpy(d->sbuf, d->text, len + 1);
  P.d = d;
  P.t = d->text;
  P.s = d->sbuf;
  P.nodes = d->nodes;
  P.n = 0;
  P.cap = cap;

  frame stack[TW_JSON_MAX_DEPTH];
  int depth = 0;      /* frames in use */
  uint32_t done = 0;  /* the value that ended last */
  const char *p = skip_ws(P.t);
  const char *end = P.t + len;

  for (;;) {
    /* ---- a value starts at p (already past whitespace) ---- */
    if (P.n == P.cap && grow(&P, &p)) goto oom;
    end = P.t + len;
    uint32_t idx = P.n++;
    tw_node *nd = &P.nodes[idx];
    nd->start = (uint32_t)(p - P.t);
    nd->next = TW_JNONE; /* set to the following node when a ',' follows */
    done = idx;
    switch (*p) {
    case '{':
    case '[': {
      int isobj = *p == '{';
      if (depth == TW_JSON_MAX_DEPTH) {
        fail(&P, (size_t)(p - P.t), "nesting deeper than %d", TW_JSON_MAX_DEPTH);
        goto bad;
      }
      nd->tag = isobj ? TW_JSON_OBJ : TW_JSON_ARR;
      stack[depth].node = idx;
      stack[depth].count = 0;
      stack[depth].isobj = isobj;
      depth++;
      p = skip_ws(p + 1);
      if (*p == (isobj ? '}' : ']')) goto close;
      if (!isobj) {
        stack[depth - 1].count = 1;
        continue;
      }
      goto key;
    }
    case '"': {
      uint32_t ulen;
      const char *q = scan_string(&P, p + 1, &ulen);
      if (!q) goto bad;
      nd->tag = MKTAG(TW_JSON_STR, ulen);
      nd->len = (uint32_t)(q - p);
      p = q;
      break;
    }
    case 't':
      if (memcmp(p, "true", 4)) goto badlit;
      nd->tag = TW_JSON_TRUE;
      nd->len = 4;
      p += 4;
      break;
    case 'f':
      if (memcmp(p, "false", 5)) goto badlit;
      nd->tag = TW_JSON_FALSE;
      nd->len = 5;
      p += 5;
      break;
    case 'n':
      if (memcmp(p, "null", 4)) goto badlit;
      nd->tag = TW_JSON_NULL;
      nd->len = 4;
      p += 4;
      break;
    case '-':
    case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9': {
      int type;
      const char *q = scan_number(&P, p, &type);
      if (!q) goto bad;
      nd->tag = (uint32_t)type;
      nd->len = (uint32_t)(q - p);
      p = q;
      break;
    }
    default:
      fail_char(&P, p, "value expected");
      goto bad;
    }

  after:
    /* ---- a value ended at p ---- */
    if (!depth) {
      p = skip_ws(p);
      if (p != end) {
        fail_char(&P, p, "trailing characters after the document");
        goto bad;
      }
      break;
    }
    p = skip_ws(p);
    {
      frame *f = &stack[depth - 1];
      int isobj = f->isobj;
      if (*p == ',') {
        P.nodes[done].next = P.n;
        p = skip_ws(p + 1);
        if (isobj) goto key;
        f->count++;
        continue;
      }
      if (*p == (isobj ? '}' : ']')) goto close;
      fail_char(&P, p, isobj ? "',' or '}' expected" : "',' or ']' expected");
      goto bad;
    }

  close:
    /* ---- p is at the closing bracket of stack[depth-1] ---- */
    {
      frame *f = &stack[--depth];
      tw_node *c = &P.nodes[f->node];
      c->len = (uint32_t)(p + 1 - P.t) - c->start;
      c->tag |= f->count << 4;
      if (TAG_TYPE(c->tag) == TW_JSON_ARR && P.n - f->node - 1 == f->count) c->tag |= TAG_FLAT;
      done = f->node;
      p++;
      goto after;
    }

  key:
    /* ---- an object member starts at p (past whitespace) ---- */
    {
      if (*p != '"') {
        fail_char(&P, p, "string key expected");
        goto bad;
      }
      if (P.n == P.cap && grow(&P, &p)) goto oom;
      end = P.t + len;
      frame *f = &stack[depth - 1];
      uint32_t k = P.n++;
      tw_node *kn = &P.nodes[k];
      kn->start = (uint32_t)(p - P.t);
      kn->next = k + 1; /* the value follows */
      f->count++;
      uint32_t ulen;
      const char *q = scan_string(&P, p + 1, &ulen);
      if (!q) goto bad;
      kn = &P.nodes[k];
      kn->tag = MKTAG(TW_JSON_STR, ulen);
      kn->len = (uint32_t)(q - p);
      p = skip_ws(q);
      if (*p != ':') {
        fail_char(&P, p, "':' expected");
        goto bad;
      }
      p = skip_ws(p + 1);
      continue;
    }
  }
  P.d->nnodes = P.n;
  P.d->cap = P.cap;
  return P.d;

badlit:
  fail_char(&P, p, "value expected");
  goto bad;
oom:
  fail(&P, (size_t)(p - P.t), "out of memory");
bad:
  release(P.d);
  return NULL;
}

/* ---- lifetime ------------------------------------------------------------ */

TW_API void tw_json_ref(tw_json *d) { d->refs++; }

TW_API void tw_json_unref(tw_json *d) {
  if (d && --d->refs == 0) release(d);
}

TW_API tw_json_pool *tw_json_pool_new(size_t max_idle, size_t max_doc) {
  tw_json_pool *p = calloc(1, sizeof *p);
  if (p) {
    p->max_idle = max_idle;
    p->max_doc = max_doc;
  }
  return p;
}

TW_API void tw_json_pool_free(tw_json_pool *p) {
  if (!p) return;
  while (p->free) {
    struct tw_json *d = p->free;
    p->free = d->next;
    free(d);
  }
  p->nfree = 0;
  p->idle_bytes = 0;
  p->gone = 1;
  if (p->out == 0) free(p);
}

TW_API size_t tw_json_pool_idle(const tw_json_pool *p) { return p ? p->nfree : 0; }

/* ---- navigation ---------------------------------------------------------- */

static inline const tw_node *node(const tw_json *d, tw_jnode n) {
  return n < d->nnodes ? &d->nodes[n] : NULL;
}

TW_API int tw_json_type(const tw_json *d, tw_jnode n) {
  const tw_node *x = node(d, n);
  return x ? (int)TAG_TYPE(x->tag) : -1;
}

TW_API size_t tw_json_count(const tw_json *d) { return d->nnodes; }

TW_API size_t tw_json_len(const tw_json *d, tw_jnode n) {
  const tw_node *x = node(d, n);
  if (!x) return 0;
  uint32_t t = TAG_TYPE(x->tag);
  return (t == TW_JSON_ARR || t == TW_JSON_OBJ) ? TAG_AUX(x->tag) : 0;
}

TW_API tw_jnode tw_json_get(const tw_json *d, tw_jnode obj, const char *key, size_t klen) {
  const tw_node *x = node(d, obj);
  if (!x || TAG_TYPE(x->tag) != TW_JSON_OBJ || !TAG_AUX(x->tag)) return TW_JNONE;
  const tw_node *nodes = d->nodes;
  const char *s = d->sbuf;
  tw_jnode k = obj + 1;
  while (k != TW_JNONE) {
    const tw_node *kn = &nodes[k];
    if (TAG_AUX(kn->tag) == klen && memcmp(s + kn->start + 1, key, klen) == 0) return k + 1;
    k = nodes[k + 1].next;
  }
  return TW_JNONE;
}

TW_API tw_jnode tw_json_at(const tw_json *d, tw_jnode arr, size_t i) {
  const tw_node *x = node(d, arr);
  if (!x || TAG_TYPE(x->tag) != TW_JSON_ARR || i >= TAG_AUX(x->tag)) return TW_JNONE;
  if (x->tag & TAG_FLAT) return arr + 1 + (tw_jnode)i;
  tw_jnode e = arr + 1;
  while (i--) e = d->nodes[e].next;
  return e;
}

TW_API tw_jnode tw_json_getp(const tw_json *d, tw_jnode n, const char *dotted) {
  const char *p = dotted;
  while (n != TW_JNONE && *p) {
    const char *e = strchr(p, '.');
    size_t l = e ? (size_t)(e - p) : strlen(p);
    int t = tw_json_type(d, n);
    if (t == TW_JSON_ARR) {
      size_t i = 0;
      if (!l || l > 9) return TW_JNONE;
      for (size_t j = 0; j < l; j++) {
        if (p[j] < '0' || p[j] > '9') return TW_JNONE;
        i = i * 10 + (size_t)(p[j] - '0');
      }
      n = tw_json_at(d, n, i);
    } else {
      n = tw_json_get(d, n, p, l);
    }
    if (!e) break;
    p = e + 1;
  }
  return n;
}

TW_API tw_jnode tw_json_first(const tw_json *d, tw_jnode n) {
  return tw_json_len(d, n) ? n + 1 : TW_JNONE;
}

TW_API tw_jnode tw_json_next(const tw_json *d, tw_jnode n) {
  const tw_node *x = node(d, n);
  return x ? x->next : TW_JNONE;
}

TW_API const char *tw_json_str(const tw_json *d, tw_jnode n, size_t *len) {
  const tw_node *x = node(d, n);
  if (!x || TAG_TYPE(x->tag) != TW_JSON_STR) return NULL;
  if (len) *len = TAG_AUX(x->tag);
  return d->sbuf + x->start + 1;
}

TW_API int tw_json_streq(const tw_json *d, tw_jnode n, const char *s) {
  size_t l;
  const char *v = tw_json_str(d, n, &l);
  return v && strlen(s) == l && memcmp(v, s, l) == 0;
}

TW_API const char *tw_json_raw(const tw_json *d, tw_jnode n, size_t *len) {
  const tw_node *x = node(d, n);
  if (!x) return NULL;
  if (len) *len = x->len;
  return d->text + x->start;
}

TW_API int64_t tw_json_int(const tw_json *d, tw_jnode n) {
  const tw_node *x = node(d, n);
  if (!x || TAG_TYPE(x->tag) != TW_JSON_INT) return 0;
  const char *p = d->text + x->start;
  int neg = *p == '-';
  uint64_t m = 0;
  for (p += neg; *p >= '0' && *p <= '9'; p++) m = m * 10 + (uint64_t)(*p - '0');
  /* the parser guaranteed m fits; negate in unsigned arithmetic */
  return neg ? (int64_t)(0u - m) : (int64_t)m;
}

static const double pow10tab[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                  1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                  1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

TW_API double tw_json_num(const tw_json *d, tw_jnode n) {
  const tw_node *x = node(d, n);
  if (!x) return 0.0;
  uint32_t t = TAG_TYPE(x->tag);
  if (t == TW_JSON_INT) return (double)tw_json_int(d, n);
  if (t != TW_JSON_NUM) return 0.0;
  const char *s = d->text + x->start, *p = s;
  /* Exact fast path: at most 15 significant digits and |exp10| <= 22 gives a
   * correctly rounded result with one IEEE multiplication or division. */
  int neg = *p == '-';
  p += neg;
  uint64_t m = 0;
  int nd = 0, e10 = 0;
  while (*p >= '0' && *p <= '9') {
    if (m || *p != '0') nd++;
    m = m * 10 + (uint64_t)(*p++ - '0');
    if (nd > 15) goto slow;
  }
  if (*p == '.') {
    for (p++; *p >= '0' && *p <= '9'; p++) {
      if (m || *p != '0') nd++;
      if (nd > 15) goto slow;
      m = m * 10 + (uint64_t)(*p - '0');
      e10--;
    }
  }
  if (*p == 'e' || *p == 'E') {
    p++;
    int eneg = *p == '-';
    if (*p == '+' || *p == '-') p++;
    int ev = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
      if (ev > 10000) goto slow;
      ev = ev * 10 + (*p - '0');
    }
    e10 += eneg ? -ev : ev;
  }
  if (e10 >= -22 && e10 <= 22) {
    double v = (double)m;
    v = e10 >= 0 ? v * pow10tab[e10] : v / pow10tab[-e10];
    return neg ? -v : v;
  }
slow: {
  /* strtod honours LC_NUMERIC: give it the locale's decimal point. */
  const char *dp = localeconv()->decimal_point;
  if (dp[0] == '.' && dp[1] == '\0') return strtod(s, NULL);
  char buf[512];
  size_t l = x->len, dl = strlen(dp), o = 0;
  if (l + dl >= sizeof buf) return strtod(s, NULL); /* absurdly long: best effort */
  for (size_t i = 0; i < l; i++) {
    if (s[i] == '.') {
      memcpy(buf + o, dp, dl);
      o += dl;
    } else {
      buf[o++] = s[i];
    }
  }
  buf[o] = '\0';
  return strtod(buf, NULL);
}
}
