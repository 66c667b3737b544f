/* tls13.c - the TLS 1.3 record layer of an established wss connection (RFC 8446 section 5;
 * keys from section 7). See tw_tls13.h.
 *
 * The handover: OpenSSL reports every record header it reads or writes and every
 * handshake message (its message callback), and the application traffic secrets (its key
 * log callback). The records that follow each side's Finished are the ones under the
 * application keys, so their count is the sequence number to go on from. The takeover
 * happens only at a point where OpenSSL holds no byte of the connection: nothing read and
 * not yet returned, no partial record, no post-handshake message half read, nothing
 * written and not yet sent. A KeyUpdate OpenSSL processed itself leaves it in charge.
 *
 * After it: records of type application_data carry the websocket bytes; handshake records
 * may carry NewSessionTicket (skipped: the client resumes nothing) and KeyUpdate (the
 * read key moves on; when the server asks, ours does too, with the next record we send);
 * an alert close_notify ends the connection, any other alert is an error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>

#include "tw_tls13.h"

static void on_keylog(const SSL *ssl, const char *line) {
  tw_tls13 *t = SSL_get_app_data(ssl);
  if (!t) return;
  uint8_t *dst;
  bool *flag;
  if (strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0) {
    dst = t->rsec;
    flag = &t->have_rsec;
  } else if (strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0) {
    dst = t->wsec;
    flag = &t->have_wsec;
  } else {
    return;
  }
  const char *h = strrchr(line, ' ');
  if (!h) return;
  h++;
  size_t n = strlen(h) / 2;
  if (n != 32 && n != 48) return;
  for (size_t i = 0; i < n; i++) {
    int v = 0;
    for (int k = 0; k < 2; k++) {
      char ch = h[2 * i + k];
      int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
      if (d < 0) return;
      v = v * 16 + d;
    }
    dst[i] = (uint8_t)v;
  }
  *flag = true;
}

static void on_msg(int write_p, int version, int type, const void *buf, size_t len, SSL *ssl, void *arg) {
  (void)version;
  (void)ssl;
  tw_tls13 *t = arg;
  const uint8_t *b = buf;
  if (!t) return;
  if (type == SSL3_RT_HEADER) {
    if (write_p && t->wfin) t->wseq++;
    else if (!write_p && t->rfin) t->rseq++;
    if (!write_p && len >= 5) t->rlen = (uint16_t)(((unsigned)b[3] << 8) | b[4]);
  } else if (type == SSL3_RT_INNER_CONTENT_TYPE && !write_p && len == 1 && t->rfin) {
    /* a handshake record read after the server's Finished: at most this many handshake
     * bytes (less its padding), which complete messages must account for before the
     * takeover (OpenSSL keeps the first bytes of a message's header aside, unseen by
     * SSL_has_pending or SSL_in_init) */
    if (b[0] == SSL3_RT_HANDSHAKE) t->hs_seen += t->rlen > 17 ? t->rlen - 17u : 0;
  } else if (type == SSL3_RT_HANDSHAKE && len >= 1) {
    if (!write_p && t->rfin) t->hs_seen -= len < t->hs_seen ? len : t->hs_seen;
    if (b[0] == SSL3_MT_FINISHED) {
      if (write_p) {
        t->wfin = true;
        t->wseq = 0;
      } else {
        t->rfin = true;
        t->rseq = 0;
      }
    } else if (b[0] == SSL3_MT_KEY_UPDATE) {
      t->spoiled = true;
    }
  }
}

void tw_tls13_ctx_init(SSL_CTX *ctx) { SSL_CTX_set_keylog_callback(ctx, on_keylog); }

void tw_tls13_watch(tw_tls13 *t, SSL *ssl) {
  SSL_set_app_data(ssl, t);
  SSL_set_msg_callback(ssl, on_msg);
  SSL_set_msg_callback_arg(ssl, t);
}

static const EVP_CIPHER *suite_cipher(int suite) {
  return suite == 1 ? EVP_aes_128_gcm() : suite == 2 ? EVP_aes_256_gcm() : EVP_chacha20_poly1305();
}

/* HKDF-Expand-Label(secret, label, "", n), n <= the hash length (one HMAC block) */
static bool expand_label(const tw_tls13 *t, const uint8_t *secret, const char *label, uint8_t *out, size_t n) {
  uint8_t info[64], md[EVP_MAX_MD_SIZE];
  size_t ll = strlen(label), k = 0;
  unsigned int mdn = 0;
  if (ll > 32 || n > t->hlen) return false;
  info[k++] = (uint8_t)(n >> 8);
  info[k++] = (uint8_t)n;
  info[k++] = (uint8_t)(6 + ll);
  memcpy(info + k, "tls13 ", 6);
  k += 6;
  memcpy(info + k, label, ll);
  k += ll;
  info[k++] = 0; /* no context */
  info[k++] = 1; /* the first (only) block */
  if (!HMAC(t->suite == 2 ? EVP_sha384() : EVP_sha256(), secret, (int)t->hlen, info, k, md, &mdn) || mdn < n) return false;
  memcpy(out, md, n);
  OPENSSL_cleanse(md, sizeof md);
  return true;
}

/* key and IV of a traffic secret */
static bool traffic_keys(const tw_tls13 *t, const uint8_t *secret, uint8_t *key, uint8_t *iv) {
  return expand_label(t, secret, "key", key, t->klen) && expand_label(t, secret, "iv", iv, 12);
}

static bool next_secret(const tw_tls13 *t, uint8_t *secret) {
  uint8_t s[TW_TLS13_MAX_SECRET];
  if (!expand_label(t, secret, "traffic upd", s, t->hlen)) return false;
  memcpy(secret, s, t->hlen);
  OPENSSL_cleanse(s, sizeof s);
  return true;
}

int tw_tls13_take(tw_tls13 *t, SSL *ssl) {
  if (t->active || t->never) return 0;
  if (SSL_in_init(ssl) || !SSL_is_init_finished(ssl)) return 0;
  const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
  uint32_t id = c ? SSL_CIPHER_get_id(c) : 0;
  t->suite = id == TLS1_3_CK_AES_128_GCM_SHA256 ? 1 : id == TLS1_3_CK_AES_256_GCM_SHA384 ? 2
             : id == TLS1_3_CK_CHACHA20_POLY1305_SHA256 ? 3 : 0;
  /* the certificate and the host name passed OpenSSL's verification (a failure ends the
   * handshake; this holds the takeover to it) */
  if (SSL_version(ssl) != TLS1_3_VERSION || !t->suite || t->spoiled || !t->have_rsec || !t->have_wsec || !t->rfin ||
      !t->wfin || SSL_get_shutdown(ssl) || SSL_get_verify_result(ssl) != X509_V_OK || !SSL_get0_peer_certificate(ssl)) {
    t->never = true;
    return 0;
  }
  if (SSL_has_pending(ssl) || BIO_ctrl_pending(SSL_get_rbio(ssl)) > 0 || BIO_ctrl_pending(SSL_get_wbio(ssl)) > 0 ||
      t->hs_seen)
    return 0; /* not at a boundary yet (a server that pads its handshake records stays with OpenSSL) */
  int r = tw_tls13_start(t, t->suite);
  if (r < 0) t->never = true;
  return r;
}

int tw_tls13_start(tw_tls13 *t, int suite) {
  if (suite < 1 || suite > 3 || t->active) return -1;
  t->suite = suite;
  t->hlen = t->suite == 2 ? 48 : 32;
  t->klen = t->suite == 1 ? 16 : 32;
  uint8_t rkey[32];
  bool ok = traffic_keys(t, t->rsec, rkey, t->riv) && traffic_keys(t, t->wsec, t->wkey, t->wiv);
  if (ok) {
    t->rd = EVP_CIPHER_CTX_new();
    ok = t->rd && EVP_DecryptInit_ex(t->rd, suite_cipher(t->suite), NULL, rkey, t->riv) == 1;
  }
  OPENSSL_cleanse(rkey, sizeof rkey);
  if (!ok) {
    EVP_CIPHER_CTX_free(t->rd);
    t->rd = NULL;
    return -1;
  }
  t->active = true;
  return 1;
}

static void nonce(const uint8_t *iv, uint64_t seq, uint8_t *n) {
  memcpy(n, iv, 12);
  for (int i = 0; i < 8; i++) n[4 + i] ^= (uint8_t)(seq >> (56 - 8 * i));
}

static int fail(char *why, size_t whyn, const char *s) {
  snprintf(why, whyn, "%s", s);
  return TW_TLS13_ERROR;
}

/* post-handshake messages in a handshake record's plaintext */
static int handshake_bytes(tw_tls13 *t, const uint8_t *p, size_t n, char *why, size_t whyn) {
  size_t i = 0;
  while (i < n) {
    if (t->hs_left == 0 && !t->hs_keyupdate) {
      t->hs_hdr[t->hs_hlen++] = p[i++];
      if (t->hs_hlen < 4) continue;
      t->hs_hlen = 0;
      uint32_t ml = ((uint32_t)t->hs_hdr[1] << 16) | ((uint32_t)t->hs_hdr[2] << 8) | t->hs_hdr[3];
      if (t->hs_hdr[0] == SSL3_MT_NEWSESSION_TICKET) {
        /* lifetime, age_add, nonce<0..255>, ticket<1..2^16-1>, extensions<0..2^16-2> */
        if (ml < 4 + 4 + 1 + 2 + 1 + 2 || ml > 4 + 4 + 1 + 255 + 2 + 65535 + 2 + 65534)
          return fail(why, whyn, "TLS: a bad NewSessionTicket from the server");
        t->hs_left = ml;
      } else if (t->hs_hdr[0] == SSL3_MT_KEY_UPDATE) {
        if (ml != 1) return fail(why, whyn, "TLS: a bad KeyUpdate from the server");
        t->hs_keyupdate = true;
      } else {
        return fail(why, whyn, "TLS: an unexpected handshake message from the server");
      }
      continue;
    }
    if (t->hs_keyupdate) {
      uint8_t req = p[i++];
      if (req > 1 || i != n) return fail(why, whyn, "TLS: a bad KeyUpdate from the server");
      t->hs_keyupdate = false;
      uint8_t key[32];
      bool ok = next_secret(t, t->rsec) && traffic_keys(t, t->rsec, key, t->riv) &&
                EVP_DecryptInit_ex(t->rd, NULL, NULL, key, NULL) == 1;
      OPENSSL_cleanse(key, sizeof key);
      if (!ok) return fail(why, whyn, "TLS: the key update failed");
      t->rseq = 0;
      if (req) t->ku_reply = true;
      return TW_TLS13_OK;
    }
    size_t k = n - i < t->hs_left ? n - i : t->hs_left;
    t->hs_left -= (uint32_t)k;
    i += k;
  }
  return TW_TLS13_OK;
}

/* one whole record rec[0..5+ctn): decrypted into out (room for ctn - 16), *pn: the
 * application data it carried */
static int open_record(tw_tls13 *t, const uint8_t *rec, size_t ctn, uint8_t *out, size_t *pn, char *why, size_t whyn) {
  uint8_t nb[12];
  int l = 0, l2 = 0;
  size_t m = ctn - 16;
  *pn = 0; /* out holds unauthenticated bytes until the tag is checked: none counts */
  /* a sequence number never wraps (RFC 8446 5.3): the last one is not used */
  if (t->rseq == UINT64_MAX) return fail(why, whyn, "TLS: the read sequence number is exhausted");
  nonce(t->riv, t->rseq, nb);
  if (EVP_DecryptInit_ex(t->rd, NULL, NULL, NULL, nb) != 1 || EVP_DecryptUpdate(t->rd, NULL, &l, rec, 5) != 1 ||
      EVP_DecryptUpdate(t->rd, out, &l, rec + 5, (int)m) != 1 ||
      EVP_CIPHER_CTX_ctrl(t->rd, EVP_CTRL_AEAD_SET_TAG, 16, (void *)(rec + 5 + m)) != 1 ||
      EVP_DecryptFinal_ex(t->rd, out + l, &l2) != 1)
    return fail(why, whyn, "TLS read failed: bad record MAC");
  t->rseq++;
  size_t k = m;
  while (k > 0 && out[k - 1] == 0) k--; /* padding */
  if (k == 0) return fail(why, whyn, "TLS: a record without a content type");
  int type = out[--k];
  if (k > 16384) return fail(why, whyn, "TLS: record overflow");
  /* a handshake message split over records has nothing else between them (5.1) */
  if (type != SSL3_RT_HANDSHAKE && (t->hs_left || t->hs_hlen || t->hs_keyupdate))
    return fail(why, whyn, type == SSL3_RT_APPLICATION_DATA ? "TLS: data inside a handshake message"
                                                            : "TLS: a record inside a handshake message");
  if (type == SSL3_RT_APPLICATION_DATA) {
    *pn = k;
    return TW_TLS13_OK;
  }
  if (type == SSL3_RT_HANDSHAKE) {
    if (k == 0) return fail(why, whyn, "TLS: an empty handshake record");
    return handshake_bytes(t, out, k, why, whyn);
  }
  if (type == SSL3_RT_ALERT && k == 2) {
    if (out[1] == SSL_AD_CLOSE_NOTIFY) {
      snprintf(why, whyn, "TLS connection closed by the server");
      return TW_TLS13_CLOSED;
    }
    if (out[1] == SSL_AD_USER_CANCELLED) return TW_TLS13_OK; /* a close_notify follows */
    snprintf(why, whyn, "TLS alert from the server: %s", SSL_alert_desc_string_long(out[1]));
    return TW_TLS13_ERROR;
  }
  return fail(why, whyn, "TLS: an unexpected record from the server");
}

/* the record header at h: its whole length, or 0 (an error in why) */
static size_t record_len(const uint8_t *h, char *why, size_t whyn) {
  size_t ctn = ((size_t)h[3] << 8) | h[4];
  if (h[0] != SSL3_RT_APPLICATION_DATA) {
    fail(why, whyn, "TLS: an unexpected record from the server");
    return 0;
  }
  if (ctn < 17 || ctn > 16384 + 256) {
    fail(why, whyn, "TLS: a record of a bad length");
    return 0;
  }
  if (ctn - 16 > 16384 + 1) { /* TLSInnerPlaintext: content, type and padding (5.4) */
    fail(why, whyn, "TLS: record overflow");
    return 0;
  }
  return 5 + ctn;
}

static bool keep(tw_tls13 *t, const uint8_t *p, size_t n, size_t need) {
  if (t->part_cap < need) {
    unsigned char *np = realloc(t->part, need);
    if (!np) return false;
    t->part = np;
    t->part_cap = need;
  }
  memcpy(t->part + t->part_len, p, n);
  t->part_len += n;
  return true;
}

int tw_tls13_open(tw_tls13 *t, const unsigned char *in, size_t len, size_t *used, unsigned char *out, size_t cap,
                  size_t *outn, char *why, size_t whyn) {
  size_t pos = 0, o = 0, pn = 0;
  int r = TW_TLS13_OK;
  if (t->dead) { /* nothing is read after an error or close_notify (RFC 8446 6.1) */
    *used = *outn = 0;
    return fail(why, whyn, "TLS: the connection is closed");
  }
  while (r == TW_TLS13_OK) {
    if (t->part_len) { /* a record begun in an earlier read */
      if (t->part_len < 5) {
        size_t k = 5 - t->part_len < len - pos ? 5 - t->part_len : len - pos;
        if (!keep(t, in + pos, k, 5)) {
          r = fail(why, whyn, "out of memory");
          break;
        }
        pos += k;
        if (t->part_len < 5) break;
      }
      size_t rl = record_len(t->part, why, whyn);
      if (!rl) {
        r = TW_TLS13_ERROR;
        break;
      }
      size_t k = rl - t->part_len < len - pos ? rl - t->part_len : len - pos;
      if (!keep(t, in + pos, k, rl)) {
        r = fail(why, whyn, "out of memory");
        break;
      }
      pos += k;
      if (t->part_len < rl) break;
      if (cap - o < rl - 5 - 16) break; /* no room: the caller makes some */
      r = open_record(t, t->part, rl - 5, out + o, &pn, why, whyn);
      o += pn;
      t->part_len = 0;
      continue;
    }
    if (len - pos < 5) {
      if (len - pos && !keep(t, in + pos, len - pos, 5)) r = fail(why, whyn, "out of memory");
      pos = len;
      break;
    }
    size_t rl = record_len(in + pos, why, whyn);
    if (!rl) {
      r = TW_TLS13_ERROR;
      break;
    }
    if (len - pos < rl) {
      if (!keep(t, in + pos, len - pos, rl)) r = fail(why, whyn, "out of memory");
      pos = len;
      break;
    }
    if (cap - o < rl - 5 - 16) break;
    r = open_record(t, in + pos, rl - 5, out + o, &pn, why, whyn);
    o += pn;
    pos += rl;
  }
  if (!t->part_len && t->part) { /* an idle connection keeps no buffer */
    free(t->part);
    t->part = NULL;
    t->part_cap = 0;
  }
  *used = pos;
  *outn = o;
  if (r != TW_TLS13_OK) t->dead = true;
  return r;
}

static size_t seal_one(tw_tls13 *t, int type, const unsigned char *p, size_t n, unsigned char *out) {
  size_t ctn = n + 1 + 16;
  if (t->wseq == UINT64_MAX) return 0; /* the sequence number would wrap */
  out[0] = SSL3_RT_APPLICATION_DATA;
  out[1] = 3;
  out[2] = 3;
  out[3] = (uint8_t)(ctn >> 8);
  out[4] = (uint8_t)ctn;
  memmove(out + 5, p, n);
  out[5 + n] = (uint8_t)type;
  uint8_t nb[12];
  nonce(t->wiv, t->wseq, nb);
  int l = 0;
  /* writes are rare (pongs, a close): a context for each instead of one kept per connection */
  EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
  bool ok = x && EVP_EncryptInit_ex(x, suite_cipher(t->suite), NULL, t->wkey, nb) == 1 &&
            EVP_EncryptUpdate(x, NULL, &l, out, 5) == 1 && EVP_EncryptUpdate(x, out + 5, &l, out + 5, (int)n + 1) == 1 &&
            EVP_EncryptFinal_ex(x, out + 5 + l, &l) == 1 &&
            EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, out + 5 + n + 1) == 1;
  EVP_CIPHER_CTX_free(x);
  if (!ok) return 0;
  t->wseq++;
  return 5 + ctn;
}

size_t tw_tls13_seal(tw_tls13 *t, const unsigned char *p, size_t n, unsigned char *out) {
  size_t o = 0;
  if (n > 16384) return 0;
  if (t->ku_reply) {
    static const unsigned char ku[5] = {SSL3_MT_KEY_UPDATE, 0, 0, 1, 0}; /* update_not_requested */
    /* the data may sit where this record goes: keep it clear */
    memmove(out + 5 + 5 + TW_TLS13_REC_OVERHEAD, p, n);
    p = out + 5 + 5 + TW_TLS13_REC_OVERHEAD;
    o = seal_one(t, SSL3_RT_HANDSHAKE, ku, sizeof ku, out);
    uint8_t iv[12];
    if (!o || !next_secret(t, t->wsec) || !traffic_keys(t, t->wsec, t->wkey, iv)) return 0;
    memcpy(t->wiv, iv, 12);
    t->wseq = 0;
    t->ku_reply = false;
  }
  size_t r = seal_one(t, SSL3_RT_APPLICATION_DATA, p, n, out + o);
  return r ? o + r : 0;
}

void tw_tls13_free(tw_tls13 *t) {
  if (!t) return;
  EVP_CIPHER_CTX_free(t->rd);
  free(t->part);
  OPENSSL_cleanse(t, sizeof *t);
}
