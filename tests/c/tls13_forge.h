/* tls13_forge.h - TLS 1.3 records as a server writes them, for the tests of tls13.c and
 * its fuzz target: keys from a traffic secret through OpenSSL's own TLS 1.3 KDF (not the
 * derivation under test), any inner content type, content and padding (RFC 8446 5.2,
 * 5.4), KeyUpdate (7.2). Header-only. */
#ifndef TLS13_FORGE_H
#define TLS13_FORGE_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

typedef struct {
  int suite; /* 1 AES-128-GCM, 2 AES-256-GCM, 3 ChaCha20-Poly1305 */
  uint8_t secret[48], key[32], iv[12];
  uint64_t seq;
} forge_key;

static __attribute__((unused)) bool forge_expand(int suite, const uint8_t *secret, const char *label, uint8_t *out,
                                                  size_t n) {
  EVP_KDF *kdf = EVP_KDF_fetch(NULL, "TLS13-KDF", NULL);
  EVP_KDF_CTX *kc = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  size_t hl = suite == 2 ? 48 : 32;
  OSSL_PARAM ps[] = {OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
                     OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, suite == 2 ? "SHA384" : "SHA256", 0),
                     OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, hl),
                     OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, (void *)"tls13 ", 6),
                     OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, (void *)label, strlen(label)),
                     OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_DATA, (void *)"", 0), OSSL_PARAM_construct_end()};
  bool ok = kc && EVP_KDF_derive(kc, out, n, ps) == 1;
  EVP_KDF_CTX_free(kc);
  EVP_KDF_free(kdf);
  return ok;
}

/* the keys of a secret, sequence number 0 */
static __attribute__((unused)) bool forge_init(forge_key *k, int suite, const uint8_t *secret) {
  k->suite = suite;
  memcpy(k->secret, secret, suite == 2 ? 48 : 32);
  k->seq = 0;
  return forge_expand(suite, k->secret, "key", k->key, suite == 1 ? 16 : 32) && forge_expand(suite, k->secret, "iv", k->iv, 12);
}

/* the next generation of keys (after a KeyUpdate) */
static __attribute__((unused)) bool forge_update(forge_key *k) {
  uint8_t s[48];
  if (!forge_expand(k->suite, k->secret, "traffic upd", s, k->suite == 2 ? 48 : 32)) return false;
  return forge_init(k, k->suite, s);
}

/* one record: content c[0..n), inner type, pad zero bytes; into out (n + pad + 22 bytes);
 * returns its length (0: failure) */
static __attribute__((unused)) size_t forge_record(forge_key *k, int type, const uint8_t *c, size_t n, size_t pad,
                                                    uint8_t *out) {
  size_t m = n + 1 + pad, ctn = m + 16;
  if (ctn > 0xffff) return 0;
  out[0] = 23;
  out[1] = 3;
  out[2] = 3;
  out[3] = (uint8_t)(ctn >> 8);
  out[4] = (uint8_t)ctn;
  memmove(out + 5, c, n);
  out[5 + n] = (uint8_t)type;
  memset(out + 5 + n + 1, 0, pad);
  uint8_t nb[12];
  memcpy(nb, k->iv, 12);
  for (int i = 0; i < 8; i++) nb[4 + i] ^= (uint8_t)(k->seq >> (56 - 8 * i));
  const EVP_CIPHER *ci = k->suite == 1 ? EVP_aes_128_gcm() : k->suite == 2 ? EVP_aes_256_gcm() : EVP_chacha20_poly1305();
  EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
  int l = 0;
  bool ok = x && EVP_EncryptInit_ex(x, ci, NULL, k->key, nb) == 1 && EVP_EncryptUpdate(x, NULL, &l, out, 5) == 1 &&
            EVP_EncryptUpdate(x, out + 5, &l, out + 5, (int)m) == 1 && EVP_EncryptFinal_ex(x, out + 5 + l, &l) == 1 &&
            EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, out + 5 + m) == 1;
  EVP_CIPHER_CTX_free(x);
  if (!ok) return 0;
  k->seq++;
  return 5 + ctn;
}

/* opens one record of ours (what tw_tls13_seal wrote): its inner type, content in
 * out[0..*n); -1 if it does not authenticate */
static __attribute__((unused)) int forge_open(forge_key *k, const uint8_t *rec, size_t len, uint8_t *out, size_t *n) {
  if (len < 5 + 17) return -1;
  size_t ctn = ((size_t)rec[3] << 8) | rec[4];
  if (rec[0] != 23 || ctn + 5 != len) return -1;
  size_t m = ctn - 16;
  uint8_t nb[12];
  memcpy(nb, k->iv, 12);
  for (int i = 0; i < 8; i++) nb[4 + i] ^= (uint8_t)(k->seq >> (56 - 8 * i));
  const EVP_CIPHER *ci = k->suite == 1 ? EVP_aes_128_gcm() : k->suite == 2 ? EVP_aes_256_gcm() : EVP_chacha20_poly1305();
  EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
  int l = 0;
  bool ok = x && EVP_DecryptInit_ex(x, ci, NULL, k->key, nb) == 1 && EVP_DecryptUpdate(x, NULL, &l, rec, 5) == 1 &&
            EVP_DecryptUpdate(x, out, &l, rec + 5, (int)m) == 1 &&
            EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, 16, (void *)(rec + 5 + m)) == 1 &&
            EVP_DecryptFinal_ex(x, out + l, &l) == 1;
  EVP_CIPHER_CTX_free(x);
  if (!ok) return -1;
  k->seq++;
  while (m > 0 && out[m - 1] == 0) m--;
  if (!m) return -1;
  *n = m - 1;
  return out[m - 1];
}

#endif
