/* tw_json: a strict, single-pass JSON parser that builds a compact index
 * ("tape") over a private copy of the text, for the notification hot path.
 *
 * A parsed document is immutable and reference counted. Nodes are addressed by
 * index: node 0 is the root. Every accessor accepts TW_JNONE (and any index out
 * of range) and answers "absent" (TW_JNONE, 0, NULL or -1), so lookups chain
 * without checks: tw_json_get(d, tw_json_get(d, 0, "a", 1), "b", 1).
 *
 * Accepted language: RFC 8259, strictly. Rejected: trailing commas, leading
 * zeros, '+' signs, bare '.', bad or truncated escapes, unescaped control
 * characters (< 0x20) in strings, invalid UTF-8 anywhere (overlong forms,
 * encoded surrogates, code points above U+10FFFF), lone or mispaired UTF-16
 * surrogate escapes (\ud800 alone, \udc00 first), trailing non-whitespace,
 * empty input, nesting deeper than TW_JSON_MAX_DEPTH, documents larger than
 * TW_JSON_MAX_LEN. Any value may be the root. "\u0000" is accepted and decodes
 * to an embedded NUL byte (lengths report it). Duplicate object keys are kept;
 * tw_json_get returns the first.
 *
 * Numbers: an integer literal (no fraction, no exponent) that fits int64 is
 * TW_JSON_INT; every other number is TW_JSON_NUM (so "1.0" and "1e2" are NUM,
 * 9223372036854775808 is NUM).
 *
 * Threads: a document may be read from several threads at once, but
 * tw_json_ref / tw_json_unref are not atomic: one thread owns the count.
 */
#ifndef TW_JSON_H
#define TW_JSON_H

#include <stddef.h>
#include <stdint.h>

#ifndef TW_API
#define TW_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tw_json tw_json; /* parsed document: immutable, refcounted */
typedef uint32_t tw_jnode;      /* node index; 0 = root */
#define TW_JNONE UINT32_MAX     /* absent node */

#define TW_JSON_MAX_DEPTH 64                  /* containers nested deeper: error */
#define TW_JSON_MAX_LEN ((size_t)0x0fffffff)  /* larger documents: error */

enum {
  TW_JSON_NULL,
  TW_JSON_FALSE,
  TW_JSON_TRUE,
  TW_JSON_INT,
  TW_JSON_NUM,
  TW_JSON_STR,
  TW_JSON_ARR,
  TW_JSON_OBJ
};

/* Parses text[0..len) (need not be NUL-terminated; copied, so the caller keeps
 * ownership of text). Returns a new document with refcount 1 (caller releases
 * with tw_json_unref), or NULL with a message ending in "at byte N" (0-based
 * offset) written to err (if err && errlen) on invalid JSON or out of memory. */
TW_API tw_json *tw_json_parse(const char *text, size_t len, char *err, size_t errlen);

TW_API void tw_json_ref(tw_json *d);   /* adds a reference; d must be live */
TW_API void tw_json_unref(tw_json *d); /* drops one; frees at 0; NULL is a no-op */

/* A pool recycles document memory: a document parsed from it goes back to it when its
 * last reference is dropped (documents of at most `max_doc` bytes wait there, up to
 * `max_idle` bytes in all), so a reader of a stream of messages allocates nothing once
 * warm.
 * tw_json_pool_free is the owner letting go: the idle memory is freed at once, the pool
 * itself when the last document from it is released (documents may outlive the owner).
 * Same threading rule as the reference counts. */
typedef struct tw_json_pool tw_json_pool;
TW_API tw_json_pool *tw_json_pool_new(size_t max_idle, size_t max_doc);
TW_API void tw_json_pool_free(tw_json_pool *p);
TW_API tw_json *tw_json_parse_pooled(tw_json_pool *p, const char *text, size_t len, char *err,
                                     size_t errlen);
TW_API size_t tw_json_pool_idle(const tw_json_pool *p); /* documents waiting for reuse */

/* Node type (TW_JSON_*), or -1 for an absent node. */
TW_API int tw_json_type(const tw_json *d, tw_jnode n);

/* Members of an object / elements of an array; 0 for anything else. */
TW_API size_t tw_json_len(const tw_json *d, tw_jnode n);

/* Value of the first member named key[0..klen) of object obj; TW_JNONE if
 * absent or obj is not an object. Linear in the member count. */
TW_API tw_jnode tw_json_get(const tw_json *d, tw_jnode obj, const char *key, size_t klen);

/* Follows a dotted path from n: "payload.session.id". A segment made only of
 * digits indexes an array (0-based) when the current node is an array. Keys
 * containing '.' cannot be addressed this way (use tw_json_get). "" is n. */
TW_API tw_jnode tw_json_getp(const tw_json *d, tw_jnode n, const char *dotted);

/* Element i (0-based) of array arr, TW_JNONE if out of range or not an array.
 * O(1) for arrays holding only scalars, else linear in i. */
TW_API tw_jnode tw_json_at(const tw_json *d, tw_jnode arr, size_t i);

/* First child of a non-empty container (for objects the first KEY node: its
 * value is tw_json_next(key)); TW_JNONE otherwise. */
TW_API tw_jnode tw_json_first(const tw_json *d, tw_jnode n);

/* Next sibling, skipping n's subtree; TW_JNONE at the end. Within an object
 * siblings alternate key, value, key, value. */
TW_API tw_jnode tw_json_next(const tw_json *d, tw_jnode n);

/* Unescaped contents of a string node (keys are string nodes), NUL-terminated,
 * length in *len (if len); borrowed: valid while d lives. NULL if not a string. */
TW_API const char *tw_json_str(const tw_json *d, tw_jnode n, size_t *len);

/* Value of an INT node; 0 for any other node. */
TW_API int64_t tw_json_int(const tw_json *d, tw_jnode n);

/* Value of a NUM or INT node (nearest double); 0.0 for any other node. */
TW_API double tw_json_num(const tw_json *d, tw_jnode n);

/* The node's original JSON text, verbatim (strings include their quotes and
 * escapes); not NUL-terminated; borrowed: valid while d lives. NULL if absent. */
TW_API const char *tw_json_raw(const tw_json *d, tw_jnode n, size_t *len);

/* 1 if n is a string node whose unescaped contents equal the C string s. */
TW_API int tw_json_streq(const tw_json *d, tw_jnode n, const char *s);

/* Number of nodes in the document (valid indices are 0 .. count-1). */
TW_API size_t tw_json_count(const tw_json *d);

#ifdef __cplusplus
}
#endif
#endif
