/* fuzz/webhook.c - libFuzzer target for the webhook receiver's request path:
 * tw_http_parse (every request in the input, as pipelined on one connection), then
 * tw_webhook_check_request, then the body through the JSON parser and the envelope
 * decoder, as webhook.c runs them.
 *
 * A mutated request never carries a valid HMAC, so the target checks each request
 * twice: as it is (the refusal paths), and re-signed with the key — the signature
 * header's 64 hex digits overwritten with the right ones — so the paths after the
 * signature (fields, timestamp window, body) are reached too. "now" is the request's
 * own timestamp, shifted by the input's length (mod 3: -700 s, 0, +700 s) to cover the
 * stale and future refusals.
 *
 * Seed corpus: fuzz/corpus/webhook/ (requests of the emulator's webhook delivery,
 * secret "fuzz-secret-0123"); dictionary fuzz/webhook.dict. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/hmac.h>

#include "twconduit.h"

/* the core's RFC 3339 parser (internal.h; declared here so that only twconduit.h's
 * directory is needed to build this target) */
bool tw_parse_rfc3339(const char *s, double *out);

#define FUZZ_SECRET "fuzz-secret-0123"

static void body_path(const tw_http_request *rq, const tw_webhook_check *ck) {
  char perr[64];
  tw_json *d = tw_json_parse(rq->body, rq->body_len, perr, sizeof perr);
  if (!d) return;
  tw_msg m;
  memset(&m, 0, sizeof m);
  m.transport = TW_TRANSPORT_WEBHOOK;
  m.id = ck->id;
  m.id_len = strlen(ck->id);
  m.timestamp = ck->timestamp;
  m.type = ck->sub_type[0] ? ck->sub_type : NULL;
  m.metadata = TW_JNONE;
  tw_error e;
  size_t n;
  (void)tw_json_str(d, tw_json_get(d, 0, "challenge", 9), &n);
  (void)tw_json_getp(d, 0, "conduit_shard.shard");
  if (tw_json_type(d, 0) == TW_JSON_OBJ) (void)tw_envelope_decode_body(d, 0, &m, &e);
  tw_json_unref(d);
}

/* overwrites the signature's hex digits with the right HMAC; false when there is none */
static int resign(const tw_http_request *rq) {
  size_t idn, tsn, sgn;
  const char *id = tw_http_header_get(rq, "twitch-eventsub-message-id", &idn);
  const char *ts = tw_http_header_get(rq, "twitch-eventsub-message-timestamp", &tsn);
  const char *sg = tw_http_header_get(rq, "twitch-eventsub-message-signature", &sgn);
  if (!id || !ts || !sg || sgn != 71) return 0;
  size_t n = idn + tsn + rq->body_len;
  unsigned char *msg = malloc(n + 1), mac[32];
  unsigned int ml = 0;
  if (!msg) return 0;
  memcpy(msg, id, idn);
  memcpy(msg + idn, ts, tsn);
  if (rq->body_len) memcpy(msg + idn + tsn, rq->body, rq->body_len);
  HMAC(EVP_sha256(), FUZZ_SECRET, (int)strlen(FUZZ_SECRET), msg, n, mac, &ml);
  free(msg);
  static const char hex[] = "0123456789abcdef";
  char *w = (char *)sg + 7; /* the input copy is ours */
  for (int i = 0; i < 32; i++) {
    w[2 * i] = hex[mac[i] >> 4];
    w[2 * i + 1] = hex[mac[i] & 15];
  }
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static tw_hmac_key *key; /* one per process: the target's own, not the library's */
  if (!key) key = tw_hmac_key_new(FUZZ_SECRET, strlen(FUZZ_SECRET));
  char *buf = malloc(size + 1);
  if (!buf) return 0;
  if (size) memcpy(buf, data, size);
  buf[size] = 0;
  tw_http_limits lim = {.max_body = 1 << 20, .max_header_bytes = 16384, .max_headers = 64};
  size_t off = 0;
  double shift = ((double)(size % 3) - 1.0) * 700.0;
  for (int k = 0; k < 8 && off < size; k++) {
    tw_http_request rq;
    long r = tw_http_parse(buf + off, size - off, &lim, &rq);
    if (r <= 0) break;
    tw_webhook_check ck;
    size_t tsn;
    const char *ts = tw_http_header_get(&rq, "twitch-eventsub-message-timestamp", &tsn);
    double now = 0;
    char tsb[64];
    if (ts && tsn < sizeof tsb) {
      memcpy(tsb, ts, tsn);
      tsb[tsn] = 0;
      if (!tw_parse_rfc3339(tsb, &now)) now = 0;
    }
    now += shift;
    if (tw_webhook_check_request(&rq, &key, 1, now, 600, 60, &ck) == 0) body_path(&rq, &ck);
    if (resign(&rq) && tw_webhook_check_request(&rq, &key, 1, now, 600, 60, &ck) == 0) body_path(&rq, &ck);
    off += (size_t)r;
  }
  free(buf);
  return 0;
}
