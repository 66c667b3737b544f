/* fuzz/tls13.c - the TLS 1.3 record layer (tls13.c: tw_tls13_open, and tw_tls13_seal for
 * our KeyUpdate) of a connection in a known state (tw_tls13_start with fixed secrets),
 * fed a stream built from the input: raw bytes (headers, lengths, forged records) and
 * records sealed here with the server's key (tests/c/tls13_forge.h: OpenSSL's own KDF
 * and AEADs), so that the fuzzer gets past the tag to the inner content types, padding,
 * post-handshake messages split and coalesced, KeyUpdates and alerts. The stream is cut
 * into reads at random points, and the plaintext buffer's room varies.
 *
 * Input: byte 0 the suite (% 3) and read pattern, byte 1 the cuts' seed; then
 * operations, each a byte (low 2 bits the kind):
 *   0 raw: a length byte, that many bytes as they are
 *   1 record: inner type byte, 16-bit length (big-endian; content cycles through the
 *     input's next bytes), padding (op >> 2) * 41 zero bytes
 *   2 KeyUpdate record: request_update (op >> 2) & 3, after a ticket when op & 16; the
 *     server's key moves on after it
 *   3 tamper: the stream's byte (next byte) from its end, XORed with the one after
 * Checked: no crash or leak; the plaintext is always a prefix of the application data
 * the sealed records carried (nothing unauthenticated, nothing out of order); every read
 * with room enough takes all its input or stops with a reason; after an error or
 * close_notify nothing more is read; our record after a KeyUpdate asking for one is our
 * KeyUpdate, then the data under the next key. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../tests/c/tls13_forge.h"
#include "tw_tls13.h"

#define STREAM_MAX (1 << 20)
static uint8_t stream[STREAM_MAX], want[STREAM_MAX], got[STREAM_MAX], content[1 << 15];
static forge_key base_srv[3], base_cli[3];
static uint8_t rsec[48], wsec[48];
static bool ready;

static const uint8_t nst[] = {4, 0, 0, 14, 0, 0, 0, 60, 1, 2, 3, 4, 0, 0, 1, 0xaa, 0, 0};

static void setup_keys(void) {
  for (int i = 0; i < 48; i++) rsec[i] = (uint8_t)(0x5a ^ (i * 13)), wsec[i] = (uint8_t)(0xc3 + i);
  for (int s = 1; s <= 3; s++)
    if (!forge_init(&base_srv[s - 1], s, rsec) || !forge_init(&base_cli[s - 1], s, wsec)) abort();
  ready = true;
}

static uint32_t rng;
static uint32_t next(void) {
  rng = rng * 1664525u + 1013904223u;
  return rng >> 8;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!ready) setup_keys();
  if (size < 2) return 0;
  int suite = 1 + data[0] % 3;
  int pattern = (data[0] / 3) % 4; /* 0 whole, 1 bytes, 2 random cuts, 3 random cuts and room */
  rng = data[1] * 2654435761u + 1;
  forge_key srv = base_srv[suite - 1], cli = base_cli[suite - 1];
  tw_tls13 t;
  memset(&t, 0, sizeof t);
  memcpy(t.rsec, rsec, 48);
  memcpy(t.wsec, wsec, 48);
  if (tw_tls13_start(&t, suite) != 1) abort();

  /* the stream */
  size_t sn = 0, wn = 0, i = 2;
  while (i < size && sn < STREAM_MAX - 70000) {
    uint8_t op = data[i++];
    switch (op & 3) {
    case 0: {
      size_t n = i < size ? data[i++] : 0;
      if (n > size - i) n = size - i;
      memcpy(stream + sn, data + i, n);
      sn += n;
      i += n;
      break;
    }
    case 1: {
      if (size - i < 3) {
        i = size;
        break;
      }
      int type = data[i];
      size_t n = ((size_t)data[i + 1] << 8) | data[i + 2];
      i += 3;
      size_t avail = size - i, pad = (size_t)(op >> 2) * 41;
      if (n > 16384 + 256 - 17) n = 16384 + 256 - 17; /* the longest record there is: past 2^14 + 1 inside */
      if (pad > 16384 + 256 - 17 - n) pad = 16384 + 256 - 17 - n;
      for (size_t k = 0; k < n; k++) content[k] = avail ? data[i + k % avail] : 0;
      i += n < avail ? n : avail;
      size_t r = forge_record(&srv, type, content, n, pad, stream + sn);
      if (!r) abort();
      sn += r;
      /* what a receiver finds: the last non-zero byte of content, type, padding is the type */
      size_t j = n;
      if (type == 0)
        while (j > 0 && content[j - 1] == 0) j--;
      if (type == 23 || (type == 0 && j > 0 && content[j - 1] == 23)) {
        size_t an = type == 23 ? n : j - 1;
        memcpy(want + wn, content, an);
        wn += an;
      }
      break;
    }
    case 2: {
      uint8_t m[sizeof nst + 5];
      size_t n = 0;
      if (op & 16) {
        memcpy(m, nst, sizeof nst);
        n = sizeof nst;
      }
      memcpy(m + n, "\x18\x00\x00\x01", 4);
      m[n + 4] = (uint8_t)((op >> 2) & 3);
      size_t r = forge_record(&srv, 22, m, n + 5, 0, stream + sn);
      if (!r || !forge_update(&srv)) abort();
      sn += r;
      break;
    }
    default: {
      size_t back = i < size ? data[i++] : 0;
      uint8_t x = i < size ? data[i++] : 1;
      if (back < sn) stream[sn - 1 - back] ^= x;
      break;
    }
    }
  }

  /* read it */
  size_t pos = 0, gn = 0;
  int r = TW_TLS13_OK;
  char why[128];
  unsigned rounds = 0;
  while (pos < sn && r == TW_TLS13_OK) {
    size_t k = sn - pos, cap = STREAM_MAX - gn;
    if (pattern == 1) k = 1;
    else if (pattern >= 2 && k > 1) k = 1 + next() % (k < 40000 ? k : 40000);
    bool full = pattern < 3 || (++rounds % 4) == 0;
    if (!full) cap = next() % 20000;
    size_t used = 7, o = 7;
    why[0] = 0;
    r = tw_tls13_open(&t, stream + pos, k, &used, got + gn, cap, &o, why, sizeof why);
    if (used > k || o > cap || gn + o > wn) abort();
    if (memcmp(got + gn, want + gn, o) != 0) abort(); /* only what the sealed records carried, in order */
    if (r != TW_TLS13_OK && !why[0]) abort();        /* a reason for every end */
    if (r == TW_TLS13_OK && full && used != k) abort(); /* room enough: all of it taken */
    pos += used;
    gn += o;
  }
  if (r != TW_TLS13_OK) { /* nothing after an error or close_notify */
    size_t used = 0, o = 0;
    if (tw_tls13_open(&t, stream, sn, &used, got, STREAM_MAX, &o, why, sizeof why) == TW_TLS13_OK || o) abort();
  } else if (t.active) {
    /* our record: the KeyUpdate the server asked for first, then the data */
    uint8_t rec[64 + 2 * TW_TLS13_REC_OVERHEAD], pt[64];
    bool ku = t.ku_reply;
    size_t n = tw_tls13_seal(&t, (const uint8_t *)"pong", 4, rec), at = 0, pn = 0;
    if (!n || t.ku_reply) abort();
    if (ku) {
      size_t n1 = 5 + (((size_t)rec[3] << 8) | rec[4]);
      if (n1 >= n || forge_open(&cli, rec, n1, pt, &pn) != 22 || pn != 5 || memcmp(pt, "\x18\x00\x00\x01\x00", 5) != 0)
        abort();
      if (!forge_update(&cli)) abort();
      at = n1;
    }
    if (forge_open(&cli, rec + at, n - at, pt, &pn) != 23 || pn != 4 || memcmp(pt, "pong", 4) != 0) abort();
  }
  tw_tls13_free(&t);
  return 0;
}
