/* tw_tls13.h - the TLS 1.3 record layer of an established wss connection (tls13.c).
 *
 * OpenSSL runs the handshake (certificate and host name verification included) exactly
 * as before. Once it is done, the connection is TLS 1.3 with an AEAD suite and OpenSSL
 * holds nothing unread, the session takes the traffic secrets and sequence numbers over
 * and frees its SSL object (~20 KB of state per connection: the SSL, the session with
 * the peer's certificate, the cipher contexts, the handshake's leftovers). What it keeps
 * is this struct and one cipher context (~1.5 KB). Records are decrypted straight from
 * the socket's read buffer into the plaintext buffer the framer parses. */
#ifndef TW_TLS13_H
#define TW_TLS13_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#define TW_TLS13_MAX_SECRET 48
#define TW_TLS13_REC_OVERHEAD 22 /* header 5 + inner type 1 + tag 16 */
#define TW_TLS13_MAX_REC (5 + 16384 + 256)

typedef struct tw_tls13 {
  /* while OpenSSL runs the connection: what the callbacks saw */
  uint8_t rsec[TW_TLS13_MAX_SECRET], wsec[TW_TLS13_MAX_SECRET]; /* application traffic secrets */
  bool have_rsec, have_wsec;
  bool rfin, wfin;       /* the server's / our Finished went past: records after it count */
  bool spoiled;          /* a KeyUpdate went through OpenSSL: the secrets above are old */
  bool never;            /* TLS 1.2, another suite: OpenSSL keeps the connection */
  uint64_t rseq, wseq;   /* records under the application keys, read / written */
  uint16_t rlen;         /* the length in the last record header read */
  uint32_t hs_seen;      /* handshake bytes read after the Finished, not yet in a whole message */
  /* once taken over */
  bool active;
  int suite;             /* 1 AES-128-GCM, 2 AES-256-GCM, 3 ChaCha20-Poly1305 */
  size_t hlen, klen;     /* secret (hash) and key lengths */
  EVP_CIPHER_CTX *rd;    /* the server's key */
  uint8_t riv[12], wkey[32], wiv[12];
  unsigned char *part;   /* a record split across reads */
  size_t part_len, part_cap;
  uint32_t hs_left;      /* bytes of a post-handshake message still to come */
  uint8_t hs_hdr[4];
  uint8_t hs_hlen;
  bool hs_keyupdate;     /* the message being read is a KeyUpdate */
  bool ku_reply;         /* the server asked for our KeyUpdate: sent with the next write */
  bool dead;             /* an error or close_notify was read: nothing more is */
} tw_tls13;

/* the client's SSL_CTX: the keylog callback that hands the secrets over */
void tw_tls13_ctx_init(SSL_CTX *ctx);
/* an SSL about to connect: t watches it (t must outlive the SSL or be detached first) */
void tw_tls13_watch(tw_tls13 *t, SSL *ssl);

/* 1: taken over (the caller frees the SSL); 0: not now (data still inside OpenSSL) or
 * never (t->never: TLS 1.2, another suite); -1: out of memory */
int tw_tls13_take(tw_tls13 *t, SSL *ssl);
/* The record layer runs from here with keys and IVs derived from t->rsec / t->wsec (RFC
 * 8446 7.3) for suite (1-3) and the sequence numbers t->rseq / t->wseq (what take does
 * once OpenSSL is done; tests and the fuzz target set a state up with it). 1, or -1. */
int tw_tls13_start(tw_tls13 *t, int suite);
enum { TW_TLS13_OK = 0, TW_TLS13_CLOSED = 1, TW_TLS13_ERROR = -1 };
/* Decrypts records from in[0..len) (after any partial one kept from before) into
 * out[0..cap), stopping early when the next record would not fit. *used: input bytes
 * consumed (all of them unless out filled up); *outn: plaintext bytes written. A partial
 * record at the end is kept inside t. why gets the reason on an error or close. *outn
 * counts only authenticated bytes (a read that ends in a bad record yields the records
 * before it); once an error or close_notify was returned, every call is an error. */
int tw_tls13_open(tw_tls13 *t, const unsigned char *in, size_t len, size_t *used, unsigned char *out, size_t cap,
                  size_t *outn, char *why, size_t whyn);
/* Seals plaintext p[0..n) (n <= 16384) as one application-data record into out, which
 * has room for n + TW_TLS13_REC_OVERHEAD bytes, preceded by our KeyUpdate when the
 * server asked for one (+ TW_TLS13_REC_OVERHEAD + 5). Returns the bytes written, or 0
 * on failure. */
size_t tw_tls13_seal(tw_tls13 *t, const unsigned char *p, size_t n, unsigned char *out);
void tw_tls13_free(tw_tls13 *t);

#endif
