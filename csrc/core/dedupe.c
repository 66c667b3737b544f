/* dedupe.c - remembers message ids for a window, in a bounded open-addressing table.
 *
 * Ids live in a FIFO ring (insertion order = time order); the hash table indexes the
 * ring. Expired or evicted entries leave the table by backward-shift deletion, so a
 * lookup never walks tombstones. Cost per notification: one hash, one probe sequence,
 * no allocation once warm. An id is remembered by a 64-bit hash of it and its length
 * (16 bytes a ring entry and 8 an index slot: a million ids take 16 MB of ring plus a 16 MB index): two
 * different ids are taken for one another with a chance of about n / 2^64 per message,
 * below 1e-13 with a million ids remembered. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct entry {
  uint64_t hash;
  uint64_t t_ms : 48; /* loop milliseconds: 8,900 years */
  uint64_t len : 16;
} entry;

/* A table slot: the ring index + 1 (0 = empty) in the low half, the low 32 bits of
 * the id's hash in the high half, so probing and backward-shift deletion find home
 * slots and reject mismatches without touching the ring (one cache miss a lookup). */
typedef uint64_t slot;
#define SLOT(ri1, h) ((uint64_t)(uint32_t)(h) << 32 | (uint32_t)(ri1))
#define SLOT_RI1(s) ((uint32_t)(s))
#define SLOT_H32(s) ((uint32_t)((s) >> 32))

struct tw_dedupe {
  entry *ring;    /* capacity `max` */
  size_t max, head, count;
  slot *table; /* size `tsize` (power of two, at most 2^32) */
  size_t tsize;
  uint64_t window_ms;
};

static uint64_t mix64(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

/* 8 bytes at a time (ids are UUIDs: 36 bytes, five steps), then a final mix. */
static uint64_t hash_id(const char *p, size_t n) {
  uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)n;
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    h = (h ^ w) * 0x100000001b3ull;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  if (n) {
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0x100000001b3ull;
  }
  return mix64(h);
}

tw_dedupe *tw_dedupe_new(size_t max, uint64_t window_ms) {
  if (max < 16) max = 16;
  if (max > 0x7fffffff) max = 0x7fffffff;
  tw_dedupe *d = calloc(1, sizeof *d);
  if (!d) return NULL;
  d->max = max;
  d->window_ms = window_ms;
  /* the ring grows on demand: start small so idle clients stay lean */
  d->tsize = 64;
  d->table = calloc(d->tsize, sizeof *d->table);
  d->ring = NULL;
  if (!d->table) {
    free(d);
    return NULL;
  }
  return d;
}

void tw_dedupe_free(tw_dedupe *d) {
  if (!d) return;
  free(d->ring);
  free(d->table);
  free(d);
}

static size_t ring_cap(const tw_dedupe *d) { return d->tsize / 2 < d->max ? d->tsize / 2 : d->max; }

static size_t home(const tw_dedupe *d, uint64_t h32) { return (size_t)h32 & (d->tsize - 1); }

static void table_remove(tw_dedupe *d, size_t ring_index) {
  size_t mask = d->tsize - 1;
  size_t i = home(d, (uint32_t)d->ring[ring_index].hash);
  while (SLOT_RI1(d->table[i]) != ring_index + 1) {
    if (d->table[i] == 0) return; /* not present */
    i = (i + 1) & mask;
  }
  /* backward-shift deletion */
  size_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    if (d->table[j] == 0) break;
    size_t k = home(d, SLOT_H32(d->table[j]));
    /* can the entry at j move to i? (k cyclically outside (i, j]) */
    if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
      d->table[i] = d->table[j];
      i = j;
    }
  }
  d->table[i] = 0;
}

static void pop_oldest(tw_dedupe *d) {
  size_t cap = ring_cap(d);
  size_t oldest = (d->head + cap - d->count) % cap;
  table_remove(d, oldest);
  d->count--;
}

/* Doubles the table (and the ring with it) while under `max`. */
static int grow(tw_dedupe *d) {
  size_t oldcap = ring_cap(d);
  size_t ntsize = d->tsize * 2;
  size_t ncap = ntsize / 2 < d->max ? ntsize / 2 : d->max;
  if (ncap <= oldcap && d->ring) return 0;
  entry *nring = malloc(ncap * sizeof *nring);
  slot *ntable = calloc(ntsize, sizeof *ntable);
  if (!nring || !ntable) {
    free(nring);
    free(ntable);
    return -1;
  }
  /* copy entries oldest first */
  for (size_t n = 0; n < d->count; n++) nring[n] = d->ring[(d->head + oldcap - d->count + n) % oldcap];
  free(d->ring);
  free(d->table);
  d->ring = nring;
  d->table = ntable;
  d->tsize = ntsize;
  d->head = d->count % ncap;
  size_t mask = ntsize - 1;
  for (size_t n = 0; n < d->count; n++) {
    if (nring[n].hash == 0 && nring[n].len == 0) continue; /* forgotten (tw_dedupe_forget) */
    size_t i = (size_t)(uint32_t)nring[n].hash & mask;
    while (ntable[i]) i = (i + 1) & mask;
    ntable[i] = SLOT(n + 1, nring[n].hash);
  }
  return 0;
}

void tw_dedupe_prefetch(const tw_dedupe *d, const char *json, size_t len) {
  static const char key[] = "\"message_id\":\"";
  const size_t kl = sizeof key - 1;
  if (!d || !d->ring || len < kl + 2) return;
  static const char lead[] = "{\"metadata\":{\"message_id\":\""; /* how Twitch starts them */
  const size_t ll = sizeof lead - 1;
  const char *id;
  if (len > ll && memcmp(json, lead, ll) == 0) {
    id = json + ll;
  } else {
    const char *k = memmem(json, len < 160 ? len : 160, key, kl);
    if (!k) return;
    id = k + kl;
  }
  const char *end = json + len;
  const char *q = memchr(id, '"', (size_t)(end - id) < 128 ? (size_t)(end - id) : 128);
  if (!q || q == id || memchr(id, '\\', (size_t)(q - id))) return; /* escaped: the hint is skipped */
  uint64_t h = hash_id(id, (size_t)(q - id));
  __builtin_prefetch(&d->table[home(d, (uint32_t)h)], 1);
  size_t cap = ring_cap(d);
  if (d->count && d->count >= cap / 2) { /* an eviction or expiry is likely: its slot too */
    const entry *old = &d->ring[(d->head + cap - d->count) % cap]; /* read in ring order: cached */
    __builtin_prefetch(&d->table[home(d, (uint32_t)old->hash)], 1);
  }
}

bool tw_dedupe_seen(tw_dedupe *d, const char *id, size_t len, uint64_t now_ms) {
  if (!d || len == 0) return false;
  uint64_t h = hash_id(id, len);
  /* expire old entries */
  size_t cap = ring_cap(d);
  while (d->count && d->ring) {
    size_t oldest = (d->head + cap - d->count) % cap;
    if (now_ms - d->ring[oldest].t_ms <= d->window_ms) break;
    pop_oldest(d);
  }
  size_t mask = d->tsize - 1;
  uint32_t h32 = (uint32_t)h;
  if (d->ring) {
    for (size_t i = home(d, h32); d->table[i]; i = (i + 1) & mask) {
      if (SLOT_H32(d->table[i]) != h32) continue;
      const entry *e = &d->ring[SLOT_RI1(d->table[i]) - 1];
      if (e->hash == h && e->len == (len & 0xffff)) return true;
    }
  }
  /* remember it */
  if (!d->ring || (d->count >= ring_cap(d) && ring_cap(d) < d->max)) {
    if (grow(d) != 0 && !d->ring) return false;
  }
  cap = ring_cap(d);
  if (d->count >= cap) pop_oldest(d);
  mask = d->tsize - 1;
  entry *e = &d->ring[d->head];
  e->hash = h;
  e->t_ms = now_ms;
  e->len = len & 0xffff;
  size_t i = home(d, h32);
  while (d->table[i]) i = (i + 1) & mask;
  d->table[i] = SLOT(d->head + 1, h);
  d->head = (d->head + 1) % cap;
  d->count++;
  return false;
}

/* Forgets an id (a message that was not kept after all: Twitch's retry of it must not
 * read as a duplicate). Its ring entry stays until it expires, blanked (hash and length
 * 0) so that a growing table does not index it again. */
void tw_dedupe_forget(tw_dedupe *d, const char *id, size_t len) {
  if (!d || !d->ring || len == 0) return;
  uint64_t h = hash_id(id, len);
  uint32_t h32 = (uint32_t)h;
  size_t mask = d->tsize - 1;
  for (size_t i = home(d, h32); d->table[i]; i = (i + 1) & mask) {
    if (SLOT_H32(d->table[i]) != h32) continue;
    size_t ri = SLOT_RI1(d->table[i]) - 1;
    if (d->ring[ri].hash == h && d->ring[ri].len == (len & 0xffff)) {
      table_remove(d, ri);
      d->ring[ri].hash = 0; /* not indexed again when the table grows */
      d->ring[ri].len = 0;
      return;
    }
  }
}
