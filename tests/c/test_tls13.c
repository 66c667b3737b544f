/* The TLS 1.3 record layer a wss connection moves to after its handshake (tls13.c),
 * against OpenSSL's own server in this process (memory BIOs, a certificate made here):
 * the takeover point, data both ways for each AEAD suite, records split anywhere across
 * reads, session tickets and key updates (asked for or not) after the takeover, a
 * tampered record, close_notify, and a TLS 1.2 connection that stays with OpenSSL. */
#include "support.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "tls13_forge.h"
#include "tw_tls13.h"

static EVP_PKEY *key;
static X509 *cert;

/* the set-up's variations: the client trusts the certificate (default), the server sends
 * no ticket of its own, a ticket (made here) comes in the same read as the server's
 * Finished */
static bool untrusted, no_tickets, early_ticket;
static uint8_t srv_sec[48]; /* the server's application traffic secret, from its key log */

static void srv_keylog(const SSL *ssl, const char *line) {
  (void)ssl;
  if (strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) != 0) return;
  const char *h = strrchr(line, ' ') + 1;
  for (size_t i = 0; i < 48 && h[2 * i] && h[2 * i + 1]; i++) sscanf(h + 2 * i, "%2hhx", &srv_sec[i]);
}

/* a ticket as a server sends it: lifetime, age_add, nonce, ticket, extensions */
static const uint8_t nst[] = {4, 0, 0, 14, 0, 0, 0, 60, 1, 2, 3, 4, 0, 0, 1, 0xaa, 0, 0};

static void make_cert(void) {
  key = EVP_EC_gen("P-256");
  cert = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
  X509_set_pubkey(cert, key);
  X509_NAME *n = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"127.0.0.1", -1, -1, 0);
  X509_set_issuer_name(cert, n);
  X509_EXTENSION *san = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, "IP:127.0.0.1");
  X509_add_ext(cert, san, -1);
  X509_EXTENSION_free(san);
  X509_sign(cert, key, EVP_sha256());
}

typedef struct {
  SSL_CTX *cctx, *sctx;
  SSL *c, *s;
  tw_tls13 t;
} pair;

/* moves what one side wrote to the other's read BIO */
static size_t move(SSL *from, SSL *to) {
  char b[65536];
  size_t all = 0;
  int n;
  while ((n = BIO_read(SSL_get_wbio(from), b, sizeof b)) > 0) {
    BIO_write(SSL_get_rbio(to), b, n);
    all += (size_t)n;
  }
  return all;
}

/* ciphertext the server wrote, taken out of its write BIO */
static size_t server_out(pair *p, unsigned char *dst, size_t cap) {
  size_t all = 0;
  int n;
  while (all < cap && (n = BIO_read(SSL_get_wbio(p->s), dst + all, (int)(cap - all))) > 0) all += (size_t)n;
  return all;
}

static int setup(pair *p, int server_max, const char *suite) {
  memset(p, 0, sizeof *p);
  p->cctx = SSL_CTX_new(TLS_client_method());
  p->sctx = SSL_CTX_new(TLS_server_method());
  SSL_CTX_set_min_proto_version(p->cctx, TLS1_2_VERSION);
  SSL_CTX_set_read_ahead(p->cctx, 1);
  SSL_CTX_set_mode(p->cctx, SSL_MODE_RELEASE_BUFFERS);
  tw_tls13_ctx_init(p->cctx);
  SSL_CTX_use_certificate(p->sctx, cert);
  SSL_CTX_set_keylog_callback(p->sctx, srv_keylog);
  if (no_tickets) SSL_CTX_set_num_tickets(p->sctx, 0);
  if (!untrusted) { /* verified the way ws.c does: the chain and the address */
    X509_STORE_add_cert(SSL_CTX_get_cert_store(p->cctx), cert);
    SSL_CTX_set_verify(p->cctx, SSL_VERIFY_PEER, NULL);
  }
  SSL_CTX_use_PrivateKey(p->sctx, key);
  if (server_max) SSL_CTX_set_max_proto_version(p->sctx, server_max);
  if (suite) SSL_CTX_set_ciphersuites(p->sctx, suite);
  p->c = SSL_new(p->cctx);
  p->s = SSL_new(p->sctx);
  SSL_set_bio(p->c, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
  SSL_set_bio(p->s, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
  SSL_set_connect_state(p->c);
  SSL_set_accept_state(p->s);
  tw_tls13_watch(&p->t, p->c);
  if (!untrusted) X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(p->c), "127.0.0.1");
  memset(srv_sec, 0, sizeof srv_sec);
  int cd = 0, sd = 0;
  bool sent = false;
  for (int i = 0; i < 20 && !(cd && sd); i++) {
    if (!cd) cd = SSL_do_handshake(p->c) == 1;
    move(p->c, p->s);
    if (!sd) sd = SSL_do_handshake(p->s) == 1;
    move(p->s, p->c);
    if (early_ticket && !sent && srv_sec[0]) { /* the server's flight is out: a ticket right behind it */
      forge_key fk;
      unsigned char r[64];
      size_t rn = forge_init(&fk, 1, srv_sec) ? forge_record(&fk, 22, nst, sizeof nst, 0, r) : 0;
      BIO_write(SSL_get_rbio(p->c), r, (int)rn);
      sent = true;
    }
  }
  /* what came after the handshake (session tickets) is read the way ws.c reads: until
   * OpenSSL wants more */
  char b[256];
  while (SSL_read(p->c, b, sizeof b) > 0) {
  }
  move(p->c, p->s);
  return cd && sd;
}

static void teardown(pair *p) {
  SSL_free(p->c);
  SSL_free(p->s);
  SSL_CTX_free(p->cctx);
  SSL_CTX_free(p->sctx);
  tw_tls13_free(&p->t);
}

static unsigned char in[1 << 20], out[1 << 20], want[1 << 20];

/* feeds in[0..n) to the record layer in pieces of `step` (0: all at once) */
static int feed(tw_tls13 *t, size_t n, size_t step, size_t *got, char *why, size_t whyn) {
  size_t pos = 0;
  *got = 0;
  while (pos < n) {
    size_t k = step && n - pos > step ? step : n - pos, used = 0, o = 0;
    int r = tw_tls13_open(t, in + pos, k, &used, out + *got, sizeof out - *got, &o, why, whyn);
    *got += o;
    if (r != TW_TLS13_OK) return r;
    if (used != k) return 99; /* the buffer had room: everything must be taken */
    pos += k;
  }
  return TW_TLS13_OK;
}

/* the server writes `count` messages of varied sizes; returns the ciphertext length */
static size_t server_writes(pair *p, int count, size_t *plain, unsigned seed) {
  size_t pn = 0;
  for (int i = 0; i < count; i++) {
    size_t len = 1 + (seed = seed * 1103515245u + 12345u) % 3000;
    if (i % 17 == 0) len = 16384; /* a full record */
    for (size_t k = 0; k < len; k++) want[pn + k] = (unsigned char)(seed >> 16) + (unsigned char)k;
    SSL_write(p->s, want + pn, (int)len);
    pn += len;
  }
  *plain = pn;
  return server_out(p, in, sizeof in);
}

/* our record to the server: what it reads */
static int client_says(pair *p, const char *msg) {
  unsigned char rec[512];
  size_t n = tw_tls13_seal(&p->t, (const unsigned char *)msg, strlen(msg), rec);
  if (!n) return 0;
  BIO_write(SSL_get_rbio(p->s), rec, (int)n);
  char b[256];
  int r = SSL_read(p->s, b, sizeof b - 1);
  if (r <= 0) return 0;
  b[r] = 0;
  return strcmp(b, msg) == 0;
}

static void suite_run(const char *suite, int expect) {
  pair p;
  char why[160] = "";
  size_t got = 0, plain = 0;
  ok(setup(&p, 0, suite), "%s: the handshake completes", suite);
  /* data OpenSSL has not read yet: not a point to take over at */
  SSL_write(p.s, "early", 5);
  move(p.s, p.c);
  ok(tw_tls13_take(&p.t, p.c) == 0 && !p.t.never && !p.t.active, "%s: not taken over while OpenSSL holds unread bytes",
     suite);
  char b[64];
  int r = SSL_read(p.c, b, sizeof b);
  ok(r == 5 && memcmp(b, "early", 5) == 0 && SSL_read(p.c, b, sizeof b) <= 0, "%s: OpenSSL reads them first", suite);
  ok(tw_tls13_take(&p.t, p.c) == 1 && p.t.active && p.t.suite == expect, "%s: taken over at a record boundary (suite %d)",
     suite, p.t.suite);
  size_t n = server_writes(&p, 200, &plain, 7);
  r = feed(&p.t, n, 0, &got, why, sizeof why);
  ok(r == TW_TLS13_OK && got == plain && memcmp(out, want, plain) == 0, "%s: %zu bytes in 200 records read at once (%d %s)",
     suite, plain, r, why);
  n = server_writes(&p, 60, &plain, 11);
  r = feed(&p.t, n, 1, &got, why, sizeof why);
  ok(r == TW_TLS13_OK && got == plain && memcmp(out, want, plain) == 0, "%s: the same one byte a read (%d %s)", suite, r,
     why);
  n = server_writes(&p, 60, &plain, 13);
  r = feed(&p.t, n, 4093, &got, why, sizeof why);
  ok(r == TW_TLS13_OK && got == plain && memcmp(out, want, plain) == 0, "%s: and in reads of 4093 bytes", suite);
  ok(p.t.part == NULL, "%s: nothing kept between records once they are read", suite);
  ok(client_says(&p, "ping"), "%s: the server reads our record", suite);

  /* a ticket and a key update the server did not ask us to answer */
  SSL_new_session_ticket(p.s);
  SSL_do_handshake(p.s);
  SSL_key_update(p.s, SSL_KEY_UPDATE_NOT_REQUESTED);
  n = server_writes(&p, 30, &plain, 17);
  r = feed(&p.t, n, 700, &got, why, sizeof why);
  ok(r == TW_TLS13_OK && got == plain && memcmp(out, want, plain) == 0 && !p.t.ku_reply,
     "%s: a ticket and a key update after the takeover: data read on, no reply due (%d %s)", suite, r, why);
  ok(client_says(&p, "still here"), "%s: our key unchanged, the server reads us", suite);

  /* a key update the server asks us to answer */
  SSL_key_update(p.s, SSL_KEY_UPDATE_REQUESTED);
  n = server_writes(&p, 30, &plain, 19);
  r = feed(&p.t, n, 0, &got, why, sizeof why);
  ok(r == TW_TLS13_OK && got == plain && memcmp(out, want, plain) == 0 && p.t.ku_reply,
     "%s: a key update asked for: data read on, our update due", suite);
  ok(client_says(&p, "updated") && !p.t.ku_reply, "%s: our update goes first, the server reads us under the new key",
     suite);
  ok(client_says(&p, "and again"), "%s: and keeps reading us", suite);
  n = server_writes(&p, 5, &plain, 23);
  r = feed(&p.t, n, 0, &got, why, sizeof why);
  ok(r == TW_TLS13_OK && got == plain && memcmp(out, want, plain) == 0, "%s: the server's data after our update", suite);

  /* no room for a whole record: nothing is taken, then all of it */
  n = server_writes(&p, 1, &plain, 29);
  size_t used = 9, o = 9;
  r = tw_tls13_open(&p.t, in, n, &used, out, 10, &o, why, sizeof why);
  ok(r == TW_TLS13_OK && used == 0 && o == 0, "%s: a record that does not fit the buffer waits", suite);
  r = feed(&p.t, n, 0, &got, why, sizeof why);
  ok(r == TW_TLS13_OK && got == plain && memcmp(out, want, plain) == 0, "%s: and is read when there is room", suite);

  /* close_notify */
  SSL_shutdown(p.s);
  n = server_out(&p, in, sizeof in);
  r = feed(&p.t, n, 0, &got, why, sizeof why);
  ok(r == TW_TLS13_CLOSED && strstr(why, "closed by the server"), "%s: close_notify ends it (%s)", suite, why);
  teardown(&p);
}

int main(void) {
  make_cert();
  suite_run("TLS_AES_128_GCM_SHA256", 1);
  suite_run("TLS_AES_256_GCM_SHA384", 2);
  suite_run("TLS_CHACHA20_POLY1305_SHA256", 3);

  /* a record changed on the way */
  pair p;
  char why[160] = "";
  size_t got = 0, plain = 0;
  setup(&p, 0, NULL);
  ok(tw_tls13_take(&p.t, p.c) == 1, "default suites: taken over");
  size_t n = server_writes(&p, 3, &plain, 31);
  in[n / 2] ^= 1;
  int r = feed(&p.t, n, 0, &got, why, sizeof why);
  ok(r == TW_TLS13_ERROR && strstr(why, "bad record MAC"), "a tampered record is an error (%s)", why);
  teardown(&p);

  /* a record header that is not application data, or too long */
  setup(&p, 0, NULL);
  tw_tls13_take(&p.t, p.c);
  memcpy(in, "\x16\x03\x03\x00\x20", 5);
  r = feed(&p.t, 5, 0, &got, why, sizeof why);
  ok(r == TW_TLS13_ERROR && strstr(why, "unexpected record"), "a plaintext handshake record is an error (%s)", why);
  teardown(&p);
  setup(&p, 0, NULL);
  tw_tls13_take(&p.t, p.c);
  memcpy(in, "\x17\x03\x03\x41\x01", 5);
  r = feed(&p.t, 5, 0, &got, why, sizeof why);
  ok(r == TW_TLS13_ERROR && strstr(why, "bad length"), "a record over 16 KB + 256 is an error (%s)", why);
  teardown(&p);

  /* a ticket in the same read as the server's Finished: OpenSSL reads it before the
   * takeover, and the sequence number goes on after it */
  no_tickets = early_ticket = true;
  ok(setup(&p, 0, "TLS_AES_128_GCM_SHA256"), "a ticket right behind the server's Finished: the handshake completes");
  early_ticket = false;
  forge_key fk;
  forge_init(&fk, 1, srv_sec);
  fk.seq = 1;
  ok(p.t.rseq == 1 && tw_tls13_take(&p.t, p.c) == 1, "taken over after it (%llu records read)", (unsigned long long)p.t.rseq);
  n = forge_record(&fk, 23, (const uint8_t *)"next", 4, 0, in);
  r = feed(&p.t, n, 0, &got, why, sizeof why);
  ok(r == TW_TLS13_OK && got == 4 && memcmp(out, "next", 4) == 0, "the record after the ticket is read (%s)", why);
  teardown(&p);

  /* the first bytes of a ticket's header in OpenSSL (a record of 1 to 3 of them, which it
   * keeps aside): not a point to take over at; once the ticket is complete, it is */
  for (size_t cut = 1; cut <= 5; cut += 2) {
    ok(setup(&p, 0, "TLS_AES_128_GCM_SHA256"), "cut %zu: the handshake completes", cut);
    forge_init(&fk, 1, srv_sec);
    fk.seq = p.t.rseq;
    n = forge_record(&fk, 22, nst, cut, 0, in);
    BIO_write(SSL_get_rbio(p.c), in, (int)n);
    char b[16];
    int sr = SSL_read(p.c, b, sizeof b);
    ok(sr <= 0 && SSL_get_error(p.c, sr) == SSL_ERROR_WANT_READ && tw_tls13_take(&p.t, p.c) == 0 && !p.t.never,
       "cut %zu: a ticket's first %zu bytes read by OpenSSL: not taken over", cut, cut);
    n = forge_record(&fk, 22, nst + cut, sizeof nst - cut, 0, in);
    BIO_write(SSL_get_rbio(p.c), in, (int)n);
    sr = SSL_read(p.c, b, sizeof b);
    ok(sr <= 0 && tw_tls13_take(&p.t, p.c) == 1, "cut %zu: the rest of it read: taken over", cut);
    n = forge_record(&fk, 23, (const uint8_t *)"then", 4, 0, in);
    r = feed(&p.t, n, 0, &got, why, sizeof why);
    ok(r == TW_TLS13_OK && got == 4 && memcmp(out, "then", 4) == 0, "cut %zu: the next record is read (%s)", cut, why);
    teardown(&p);
  }
  no_tickets = false;

  /* the certificate as OpenSSL verified it: a connection whose verification did not pass
   * (here: not asked for) is never taken over */
  untrusted = true;
  ok(setup(&p, 0, NULL) && SSL_get_verify_result(p.c) != X509_V_OK, "an unverified certificate: the handshake completes");
  ok(tw_tls13_take(&p.t, p.c) == 0 && p.t.never && !p.t.active, "a connection not verified is never taken over");
  teardown(&p);
  untrusted = false;

  /* TLS 1.2: OpenSSL keeps the connection */
  ok(setup(&p, TLS1_2_VERSION, NULL) && SSL_version(p.c) == TLS1_2_VERSION, "a TLS 1.2 server: the handshake completes");
  ok(tw_tls13_take(&p.t, p.c) == 0 && p.t.never && !p.t.active, "TLS 1.2 is never taken over");
  teardown(&p);

  X509_free(cert);
  EVP_PKEY_free(key);
  return done_testing();
}
