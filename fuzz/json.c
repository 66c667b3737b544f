/* fuzz/json.c - tw_json: any input either parses or is refused with a message; a parsed
 * document is walked whole (every node's type, text, numbers, members by key), and the
 * pooled parser gives the same answer as the plain one. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tw_json.h"

static tw_json_pool *pool;

static size_t walk(const tw_json *d, tw_jnode n, int depth) {
  size_t seen = 1, len = 0;
  int t = tw_json_type(d, n);
  const char *raw = tw_json_raw(d, n, &len);
  if (!raw || !len) abort(); /* every node has its text */
  (void)tw_json_num(d, n);
  (void)tw_json_int(d, n);
  if (t == TW_JSON_STR) {
    const char *s = tw_json_str(d, n, &len);
    if (!s || s[len] != 0) abort();
  }
  if (t == TW_JSON_ARR || t == TW_JSON_OBJ) {
    size_t k = 0;
    for (tw_jnode c = tw_json_first(d, n); c != TW_JNONE; c = tw_json_next(d, c), k++) {
      if (t == TW_JSON_OBJ && (k & 1) == 0) { /* a key: the first member of that name is found */
        size_t kl = 0;
        const char *key = tw_json_str(d, c, &kl);
        if (!key || tw_json_get(d, n, key, kl) == TW_JNONE) abort();
      }
      seen += walk(d, c, depth + 1);
    }
    if ((t == TW_JSON_OBJ ? k / 2 : k) != tw_json_len(d, n)) abort();
    if (t == TW_JSON_ARR && k && tw_json_at(d, n, k - 1) == TW_JNONE) abort();
  }
  return seen;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!pool) pool = tw_json_pool_new(1 << 20, 1 << 16);
  char err[128];
  tw_json *d = tw_json_parse((const char *)data, size, err, sizeof err);
  tw_json *p = tw_json_parse_pooled(pool, (const char *)data, size, NULL, 0);
  if (!d != !p) abort(); /* the pool changes nothing but where the memory comes from */
  if (d) {
    if (walk(d, 0, 0) > tw_json_count(d)) abort();
    (void)tw_json_getp(d, 0, "metadata.message_type");
    (void)tw_json_getp(d, 0, "payload.event.0.id");
  } else if (!strstr(err, "at byte") && !strstr(err, "memory")) {
    abort(); /* a refusal says where */
  }
  tw_json_unref(d);
  tw_json_unref(p);
  return 0;
}
