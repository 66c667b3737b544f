/* The record layer of tls13.c against records made here (tls13_forge.h: OpenSSL's own
 * TLS 1.3 KDF and AEADs) with a state set up from known secrets: what RFC 8446 section 5
 * requires of a receiver (lengths, padding, content types, the tag before any plaintext
 * is used, sequence numbers), post-handshake messages split and coalesced (4.6.1,
 * 4.6.3), alerts (6), and that a failed or closed connection yields nothing more. */
#include "support.h"

#include "tls13_forge.h"
#include "tw_tls13.h"

static uint8_t rsec[48], wsec[48];
static tw_tls13 t;
static forge_key srv, cli; /* the server's records, ours */
static uint8_t in[1 << 18], out[1 << 18], buf[1 << 17];
static size_t inn;
static char why[160];

static void state(int suite) {
  tw_tls13_free(&t);
  memset(&t, 0, sizeof t);
  for (int i = 0; i < 48; i++) rsec[i] = (uint8_t)(0xa0 + i), wsec[i] = (uint8_t)(0x30 + 7 * i);
  memcpy(t.rsec, rsec, sizeof rsec);
  memcpy(t.wsec, wsec, sizeof wsec);
  if (tw_tls13_start(&t, suite) != 1 || !forge_init(&srv, suite, rsec) || !forge_init(&cli, suite, wsec)) {
    printf("Bail out! state\n");
    exit(1);
  }
  inn = 0;
}

static void rec(int type, const void *c, size_t n, size_t pad) {
  inn += forge_record(&srv, type, c, n, pad, in + inn);
}

/* everything in in[0..inn) at once; *got: the plaintext */
static int open_all(size_t *got) {
  size_t used = 0;
  *got = 0;
  why[0] = 0;
  int r = tw_tls13_open(&t, in, inn, &used, out, sizeof out, got, why, sizeof why);
  inn = 0;
  return r;
}

/* the same a byte at a time */
static int open_bytes(size_t *got) {
  *got = 0;
  why[0] = 0;
  int r = TW_TLS13_OK;
  for (size_t i = 0; i < inn && r == TW_TLS13_OK; i++) {
    size_t used = 0, o = 0;
    r = tw_tls13_open(&t, in + i, 1, &used, out + *got, sizeof out - *got, &o, why, sizeof why);
    *got += o;
  }
  inn = 0;
  return r;
}

int main(void) {
  size_t got = 0;
  int r;
  for (int s = 1; s <= 3; s++) {
    state(s);
    rec(23, "hello", 5, 0);
    rec(23, "world", 5, 100);
    r = open_all(&got);
    ok(r == TW_TLS13_OK && got == 10 && memcmp(out, "helloworld", 10) == 0, "suite %d: records of a known key (padded too)", s);
  }

  /* the tag before any plaintext: a forged record after a good one in the same read */
  state(1);
  rec(23, "good", 4, 0);
  memset(buf, 'X', 3000);
  size_t at = inn;
  rec(23, buf, 3000, 0);
  in[at + 100] ^= 0x40;
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && strstr(why, "bad record MAC") && got == 4 && memcmp(out, "good", 4) == 0,
     "a record that fails its tag adds no byte to what the read yields (%zu bytes, %s)", got, why);

  /* lengths: TLSInnerPlaintext at most 2^14 + 1 (content, type, padding), the record 2^14 + 256 */
  state(1);
  memset(buf, 'a', sizeof buf);
  rec(23, buf, 16384, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_OK && got == 16384, "2^14 bytes of data in a record");
  rec(23, buf, 16384 + 1, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && got == 0 && strstr(why, "overflow"), "2^14 + 1 bytes is a record overflow (%s)", why);
  state(1);
  rec(23, buf, 16384, 1);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && got == 0 && strstr(why, "overflow"), "2^14 bytes and padding beyond 2^14 + 1: overflow (%s)", why);
  state(1);
  rec(23, buf, 100, 16384 + 256 - 16 - 1 - 100);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && got == 0 && strstr(why, "overflow"), "a record of 2^14 + 256 that is mostly padding: overflow (%s)",
     why);

  /* padding and content types */
  state(1);
  rec(0, "", 0, 40);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && strstr(why, "content type"), "an all-zero plaintext is an error (%s)", why);
  state(1);
  rec(23, "", 0, 0);
  rec(23, "", 0, 7);
  rec(23, "after", 5, 0);
  r = open_bytes(&got);
  ok(r == TW_TLS13_OK && got == 5 && memcmp(out, "after", 5) == 0, "zero-length application data records yield nothing");
  state(1);
  rec(20, "\x01", 1, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && strstr(why, "unexpected record"), "change_cipher_spec after the handshake, encrypted: error (%s)", why);
  state(1);
  memcpy(in, "\x14\x03\x03\x00\x01\x01", 6);
  inn = 6;
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && strstr(why, "unexpected record"), "change_cipher_spec after the handshake, in clear: error (%s)", why);
  state(1);
  rec(22, "", 0, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR, "an empty handshake record is an error (%s)", why);

  /* post-handshake messages: a ticket split at every place, several in one record */
  static const uint8_t nst[] = {4, 0, 0, 14, 0, 0, 0, 60, 1, 2, 3, 4, 0, 0, 1, 0xaa, 0, 0};
  state(1);
  rec(22, nst, 2, 0);
  rec(22, nst + 2, 5, 3);
  rec(22, nst + 7, sizeof nst - 7, 0);
  rec(23, "x", 1, 0);
  r = open_bytes(&got);
  ok(r == TW_TLS13_OK && got == 1 && out[0] == 'x', "a ticket over three records, read a byte at a time (%s)", why);
  uint8_t two[sizeof nst * 2 + 5];
  memcpy(two, nst, sizeof nst);
  memcpy(two + sizeof nst, nst, sizeof nst);
  memcpy(two + 2 * sizeof nst, "\x18\x00\x00\x01\x00", 5);
  rec(22, two, sizeof two, 0);
  forge_update(&srv);
  rec(23, "new key", 7, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_OK && got == 7 && memcmp(out, "new key", 7) == 0 && !t.ku_reply,
     "two tickets and a KeyUpdate in one record: the read key moves on (%s)", why);
  state(1);
  rec(22, nst, 5, 0);
  rec(23, "x", 1, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && got == 0, "application data inside a ticket is an error (%s)", why);
  state(1);
  rec(22, nst, 5, 0);
  rec(21, "\x01\x00", 2, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && strstr(why, "handshake message"), "close_notify inside a ticket is an error (%d %s)", r, why);
  state(1);
  rec(22, nst, 3, 0);
  rec(21, "\x01\x5a", 2, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && strstr(why, "handshake message"), "user_canceled inside a ticket header is an error (%d %s)", r, why);
  state(1);
  rec(22, "\x0d\x00\x00\x00", 4, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && strstr(why, "unexpected handshake"), "a CertificateRequest (not offered) is an error (%s)", why);
  state(1);
  rec(22, "\x02\x00\x00\x00", 4, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && strstr(why, "unexpected handshake"), "a ServerHello after the handshake is an error (%s)", why);
  state(1);
  rec(22, "\x04\x00\x00\x02\x00\x00", 6, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && strstr(why, "NewSessionTicket"), "a ticket too short to be one is an error (%s)", why);

  /* KeyUpdate: at a record boundary, asked for twice: one update of ours */
  state(2);
  uint8_t kun[sizeof nst + 5];
  memcpy(kun, "\x18\x00\x00\x01\x01", 5);
  memcpy(kun + 5, nst, sizeof nst);
  rec(22, kun, sizeof kun, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && strstr(why, "KeyUpdate"), "a KeyUpdate not at the end of its record is an error (%s)", why);
  state(2);
  rec(22, "\x18\x00\x00", 3, 0);
  rec(22, "\x01\x01", 2, 0);
  forge_update(&srv);
  rec(22, "\x18\x00\x00\x01\x01", 5, 0);
  forge_update(&srv);
  rec(23, "data", 4, 0);
  r = open_bytes(&got);
  ok(r == TW_TLS13_OK && got == 4 && t.ku_reply, "two KeyUpdates asking for ours (one split over two records): read on (%s)", why);
  size_t sn = tw_tls13_seal(&t, (const uint8_t *)"pong", 4, buf);
  size_t n1 = sn > 5 ? 5 + (((size_t)buf[3] << 8) | buf[4]) : 0, pn = 0;
  uint8_t pt[64];
  int ty = n1 && n1 < sn ? forge_open(&cli, buf, n1, pt, &pn) : -1;
  ok(ty == 22 && pn == 5 && memcmp(pt, "\x18\x00\x00\x01\x00", 5) == 0 && !t.ku_reply,
     "our KeyUpdate (update_not_requested) goes first, once");
  forge_update(&cli);
  ty = n1 ? forge_open(&cli, buf + n1, sn - n1, pt, &pn) : -1;
  ok(ty == 23 && pn == 4 && memcmp(pt, "pong", 4) == 0, "then our data under the next key");
  sn = tw_tls13_seal(&t, (const uint8_t *)"again", 5, buf);
  ty = forge_open(&cli, buf, sn, pt, &pn);
  ok(ty == 23 && pn == 5 && sn == 5 + 22, "and no second update");
  state(1);
  rec(22, "\x18\x00\x00\x01\x02", 5, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && strstr(why, "KeyUpdate"), "a KeyUpdate with another value is an error (%s)", why);
  /* a KeyUpdate with the next record already partly read */
  state(3);
  rec(22, "\x18\x00\x00\x01\x00", 5, 0);
  forge_update(&srv);
  rec(23, "after the update", 16, 0);
  size_t used = 0, o1 = 0, o2 = 0;
  r = tw_tls13_open(&t, in, 5 + 22 + 9, &used, out, sizeof out, &o1, why, sizeof why);
  int r2 = tw_tls13_open(&t, in + used, inn - used, &used, out, sizeof out, &o2, why, sizeof why);
  ok(r == TW_TLS13_OK && r2 == TW_TLS13_OK && o1 == 0 && o2 == 16 && memcmp(out, "after the update", 16) == 0,
     "a record cut after a KeyUpdate is read under the new key");

  /* alerts */
  state(1);
  rec(21, "\x02\x28", 2, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && strstr(why, "alert"), "a fatal alert is an error (%s)", why);
  state(1);
  rec(21, "\x01\x00\x01\x00", 4, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR, "two alerts in one record are an error (%s)", why);
  state(1);
  rec(23, "last", 4, 0);
  rec(21, "\x01\x00", 2, 0);
  rec(23, "ignored", 7, 0);
  size_t all = inn;
  used = 0;
  r = tw_tls13_open(&t, in, all, &used, out, sizeof out, &got, why, sizeof why);
  ok(r == TW_TLS13_CLOSED && got == 4 && strstr(why, "closed"), "close_notify: what came before it, then closed");
  size_t o3 = 0;
  r2 = tw_tls13_open(&t, in + used, all - used, &used, out, sizeof out, &o3, why, sizeof why);
  ok(r2 != TW_TLS13_OK && o3 == 0, "nothing is read after close_notify (%d, %zu bytes)", r2, o3);
  state(1);
  rec(23, "bad", 3, 0);
  in[7] ^= 1;
  rec(23, "good", 4, 0);
  all = inn;
  r = tw_tls13_open(&t, in, 5 + 3 + 17, &used, out, sizeof out, &got, why, sizeof why);
  srv.seq = 0; /* the same record again, sealed right */
  inn = 0;
  rec(23, "bad", 3, 0);
  r2 = tw_tls13_open(&t, in, inn, &used, out, sizeof out, &o3, why, sizeof why);
  ok(r == TW_TLS13_ERROR && r2 != TW_TLS13_OK && o3 == 0, "nor after a failed record");

  /* sequence numbers never wrap (RFC 8446 5.3) */
  state(1);
  t.rseq = srv.seq = UINT64_MAX - 1;
  rec(23, "one", 3, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_OK && got == 3, "the record numbered 2^64 - 2");
  rec(23, "two", 3, 0);
  r = open_all(&got);
  ok(r == TW_TLS13_ERROR && got == 0, "the next one would wrap the sequence number: an error (%s)", why);
  t.wseq = UINT64_MAX;
  ok(tw_tls13_seal(&t, (const uint8_t *)"x", 1, buf) == 0, "and no record of ours with the last sequence number");

  /* the secrets go with the state */
  state(1);
  tw_tls13_free(&t);
  static const uint8_t zero[sizeof t.rsec];
  ok(memcmp(t.rsec, zero, sizeof zero) == 0 && memcmp(t.wsec, zero, sizeof zero) == 0 && memcmp(t.wkey, zero, 32) == 0 &&
     !t.rd && !t.active, "free leaves no secret, key or IV behind");
  memset(&t, 0, sizeof t);
  return done_testing();
}
