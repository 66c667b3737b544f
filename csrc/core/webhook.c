/* webhook.c - the EventSub webhook receiver: one tw_httpd route per callback path.
 *
 * A request is checked in this order (tw_webhook_check_request, pure): POST; the
 * message id, timestamp, type and signature headers present; the signature is "sha256="
 * + 64 hex digits; HMAC-SHA256 over id || timestamp || raw body with the route's secret
 * (or the previous one during a rotation's grace period), compared with CRYPTO_memcmp;
 * only then the timestamp window. Refusals are answered (400/403/405), counted and never
 * reach the application. The message id is recorded (de-duplication, in
 * tw_client_deliver) only after the signature checked, so a forged request cannot spend
 * a real id; a duplicate is answered 2xx (Twitch stops retrying) and not delivered.
 *
 * Then by type: webhook_callback_verification -> 200 text/plain with the raw challenge;
 * notification and revocation -> 204 at once, then the same delivery as websocket
 * messages (transport "webhook"), or a sink that answers later (tw_webhook_set_sink). */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "internal.h"

struct tw_hmac_key {
  EVP_MAC *mac;
  EVP_MAC_CTX *ctx;
};

tw_hmac_key *tw_hmac_key_new(const char *secret, size_t len) {
  tw_hmac_key *k = calloc(1, sizeof *k);
  if (!k) return NULL;
  k->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  k->ctx = k->mac ? EVP_MAC_CTX_new(k->mac) : NULL;
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
                         OSSL_PARAM_construct_end()};
  if (!k->ctx || EVP_MAC_init(k->ctx, (const unsigned char *)secret, len, params) != 1) {
    tw_hmac_key_free(k);
    return NULL;
  }
  return k;
}

void tw_hmac_key_free(tw_hmac_key *k) {
  if (!k) return;
  EVP_MAC_CTX_free(k->ctx);
  EVP_MAC_free(k->mac);
  free(k);
}

/* HMAC(id || ts || body) into out[32]; false on failure */
static bool hmac3(tw_hmac_key *k, const char *a, size_t an, const char *b, size_t bn, const char *c, size_t cn,
                  unsigned char out[32]) {
  size_t olen = 0;
  if (EVP_MAC_init(k->ctx, NULL, 0, NULL) != 1) return false; /* same key, fresh state */
  if (EVP_MAC_update(k->ctx, (const unsigned char *)a, an) != 1 ||
      EVP_MAC_update(k->ctx, (const unsigned char *)b, bn) != 1 ||
      (cn && EVP_MAC_update(k->ctx, (const unsigned char *)c, cn) != 1))
    return false;
  return EVP_MAC_final(k->ctx, out, &olen, 32) == 1 && olen == 32;
}

static int hexval(unsigned char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  ch = (unsigned char)tolower(ch);
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  return -1;
}

static bool copy_field(char *dst, size_t cap, const char *v, size_t n) {
  if (n >= cap) return false;
  memcpy(dst, v, n);
  dst[n] = 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)dst[i] < 0x20) return false;
  return true;
}

static int refuse_check(tw_webhook_check *out, int status, const char *reason) {
  out->status = status;
  out->reason = reason;
  return status;
}

int tw_webhook_check_request(const tw_http_request *rq, tw_hmac_key *const *keys, size_t nkeys, double now_s,
                             double max_age_s, double max_future_s, tw_webhook_check *out) {
  memset(out, 0, sizeof *out);
  out->key = -1;
  out->retry = -1;
  if (rq->method_len != 4 || memcmp(rq->method, "POST", 4) != 0) return refuse_check(out, 405, "method");
  size_t idn, tsn, tyn, sgn, n;
  const char *id = tw_http_header_get(rq, "twitch-eventsub-message-id", &idn);
  const char *ts = tw_http_header_get(rq, "twitch-eventsub-message-timestamp", &tsn);
  const char *ty = tw_http_header_get(rq, "twitch-eventsub-message-type", &tyn);
  const char *sg = tw_http_header_get(rq, "twitch-eventsub-message-signature", &sgn);
  if (!id || !ts || !ty || !sg || !idn || !tsn || !tyn) return refuse_check(out, 400, "missing_header");
  /* the signature's form before any work */
  if (sgn != 7 + 64 || memcmp(sg, "sha256=", 7) != 0) return refuse_check(out, 403, "bad_signature_format");
  unsigned char want[32];
  for (int i = 0; i < 32; i++) {
    int hi = hexval((unsigned char)sg[7 + 2 * i]), lo = hexval((unsigned char)sg[8 + 2 * i]);
    if (hi < 0 || lo < 0) return refuse_check(out, 403, "bad_signature_format");
    want[i] = (unsigned char)(hi << 4 | lo);
  }
  /* the HMAC: every key is tried (a rotation's grace period); constant-time compare */
  int match = -1;
  for (size_t k = 0; k < nkeys; k++) {
    unsigned char got[32];
    if (!keys[k] || !hmac3(keys[k], id, idn, ts, tsn, rq->body, rq->body_len, got)) continue;
    if (CRYPTO_memcmp(got, want, 32) == 0 && match < 0) match = (int)k;
  }
  if (match < 0) return refuse_check(out, 403, "bad_signature");
  out->key = match;
  /* only now, with the sender known: the fields and the timestamp window */
  if (!copy_field(out->id, sizeof out->id, id, idn) || !copy_field(out->timestamp, sizeof out->timestamp, ts, tsn) ||
      !copy_field(out->message_type, sizeof out->message_type, ty, tyn))
    return refuse_check(out, 400, "header_too_long");
  const char *v = tw_http_header_get(rq, "twitch-eventsub-subscription-type", &n);
  if (v && !copy_field(out->sub_type, sizeof out->sub_type, v, n)) return refuse_check(out, 400, "header_too_long");
  v = tw_http_header_get(rq, "twitch-eventsub-subscription-version", &n);
  if (v && !copy_field(out->sub_version, sizeof out->sub_version, v, n))
    return refuse_check(out, 400, "header_too_long");
  v = tw_http_header_get(rq, "twitch-eventsub-message-retry", &n);
  if (v && n > 0 && n < 6) {
    int r = 0;
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
      if (v[i] < '0' || v[i] > '9') ok = false;
      else r = r * 10 + (v[i] - '0');
    }
    if (ok) out->retry = r;
  }
  if (!tw_parse_rfc3339(out->timestamp, &out->timestamp_s)) return refuse_check(out, 400, "bad_timestamp");
  if (now_s - out->timestamp_s > max_age_s) return refuse_check(out, 403, "stale");
  if (out->timestamp_s - now_s > max_future_s) return refuse_check(out, 403, "future");
  return 0;
}

int tw_webhook_secret_ok(const char *s) {
  if (!s) return 0;
  size_t n = strlen(s);
  if (n < 10 || n > 100) return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) return 0;
  return 1;
}

/* ---- routes ---- */

struct tw_webhook {
  tw_httpd *h;
  tw_client *c;
  char *path;
  tw_hmac_key *keys[2];   /* current, previous (until prev_until) */
  uint64_t prev_until;    /* loop ms */
  tw_conduit *cd;
  char shard_id[16];
  double max_age_s, max_future_s;
  tw_webhook_event_fn on_event;
  void *on_event_user;
  tw_webhook_sink_fn sink;
  void *sink_user;
  tw_webhook_stats st;
  bool delivering;        /* inside a delivery: a close from a handler frees afterwards */
  bool close_pending;
};

static void webhook_free(tw_webhook *w);

static void answer(tw_httpd_reply *rp, int status, const char *reason) {
  char msg[96];
  int n = snprintf(msg, sizeof msg, "%s\n", reason);
  tw_httpd_respond(rp, status, "text/plain", msg, (size_t)n, NULL);
}

static void count_refusal(tw_webhook *w, const tw_webhook_check *ck) {
  w->st.rejected++;
  if (ck->status == 403) {
    if (strcmp(ck->reason, "stale") == 0) w->st.stale++;
    else if (strcmp(ck->reason, "future") == 0) w->st.future++;
    else w->st.bad_signature++;
  } else {
    w->st.bad_request++;
  }
}

/* A message's completion: 204 once delivered or stored, 503 (Twitch retries) when the
 * gateway queue could not store it. */
static void reply_stored(void *reply, const tw_error *err) {
  if (!err) {
    tw_httpd_respond(reply, 204, NULL, NULL, 0, NULL);
    return;
  }
  static const char msg[] = "not stored: retry";
  tw_httpd_respond(reply, 503, "text/plain", msg, sizeof msg - 1, NULL);
}

static void on_request(void *user, const tw_http_request *rq, tw_httpd_reply *rp) {
  tw_webhook *w = user;
  tw_client *c = w->c;
  w->st.requests++;
  if (w->keys[1] && uv_now(c->loop) >= w->prev_until) { /* the grace period is over */
    tw_hmac_key_free(w->keys[1]);
    w->keys[1] = NULL;
  }
  tw_webhook_check ck;
  if (tw_webhook_check_request(rq, w->keys, 2, tw_wall_now(), w->max_age_s, w->max_future_s, &ck) != 0) {
    count_refusal(w, &ck);
    answer(rp, ck.status, ck.reason);
    return;
  }
  if (ck.key == 1) w->st.old_secret++;
  char perr[128];
  tw_json *d = tw_json_parse_pooled(c->doc_pool, rq->body, rq->body_len, perr, sizeof perr);
  tw_error e;
  if (!d || tw_json_type(d, 0) != TW_JSON_OBJ) {
    tw_json_unref(d);
    w->st.rejected++;
    w->st.bad_request++;
    answer(rp, 400, "bad_body");
    /* signed, so Twitch's (or a proxy's) doing: worth an error the application sees */
    tw_err_set(&e, "bad_message", 400, "webhook %s: message %s has a body that is not a JSON object%s%s", w->path,
               ck.id, d ? "" : ": ", d ? "" : perr);
    tw_emit_error(c, NULL, NULL, &e);
    return;
  }
  if (strcmp(ck.message_type, "webhook_callback_verification") == 0) {
    size_t n = 0;
    const char *chal = tw_json_str(d, tw_json_get(d, 0, "challenge", 9), &n);
    if (!chal) {
      tw_json_unref(d);
      w->st.rejected++;
      w->st.bad_request++;
      answer(rp, 400, "no_challenge");
      return;
    }
    w->st.challenges++;
    tw_httpd_respond(rp, 200, "text/plain", chal, n, NULL);
    tw_jnode cs = tw_json_get(d, 0, "conduit_shard", 13);
    const char *cid = tw_json_str(d, tw_json_get(d, cs, "conduit_id", 10), NULL);
    const char *sid = tw_json_str(d, tw_json_get(d, cs, "shard", 5), NULL);
    const char *subid = tw_json_str(d, tw_json_getp(d, 0, "subscription.id"), NULL);
    if (cid && sid) tw_conduit_webhook_challenged(c, cid, sid);
    if (w->on_event) w->on_event(w->on_event_user, w, "challenge", cid && sid ? sid : subid, cid);
    tw_json_unref(d);
    return;
  }
  bool notif = strcmp(ck.message_type, "notification") == 0;
  if (!notif && strcmp(ck.message_type, "revocation") != 0) {
    tw_json_unref(d);
    tw_httpd_respond(rp, 204, NULL, NULL, 0, NULL); /* Twitch's: acknowledged, reported */
    tw_err_set(&e, "unknown_message_type", 0, "webhook %s: message %s of unknown type '%s' acknowledged, not delivered",
               w->path, ck.id, ck.message_type);
    tw_emit_error(c, NULL, NULL, &e);
    return;
  }
  tw_msg m;
  memset(&m, 0, sizeof m);
  m.transport = TW_TRANSPORT_WEBHOOK;
  m.message_type = notif ? "notification" : "revocation";
  m.id = ck.id;
  m.id_len = strlen(ck.id);
  m.timestamp = ck.timestamp;
  m.type = ck.sub_type[0] ? ck.sub_type : NULL;
  m.version = ck.sub_version[0] ? ck.sub_version : NULL;
  m.metadata = TW_JNONE;
  m.strings_in_doc = 0;
  if (tw_envelope_decode_body(d, 0, &m, &e) != 0) {
    tw_json_unref(d);
    w->st.rejected++;
    w->st.bad_request++;
    answer(rp, 400, "bad_body");
    tw_emit_error(c, NULL, NULL, &e);
    return;
  }
  if (notif) w->st.notifications++;
  else w->st.revocations++;
  if (w->sink) {
    w->sink(w->sink_user, w, &m, rp);
    tw_json_unref(d);
    return;
  }
  /* answered by the delivery (m.done): at once without a gateway queue (Twitch's delivery
   * is done whatever the handlers do), once stored with one (503 if it never will be:
   * Twitch retries), at once for a duplicate or a stale message */
  m.done = reply_stored;
  m.done_user = rp;
  uint64_t dups = c->stats.duplicates;
  w->delivering = true;
  tw_conduit_webhook_deliver(c, w->cd, w->cd ? w->shard_id : NULL, &m);
  w->delivering = false;
  w->st.duplicates += c->stats.duplicates - dups;
  tw_json_unref(d);
  if (w->close_pending) webhook_free(w); /* closed by a handler of this delivery */
}

static void on_server_closed(void *user) {
  tw_webhook *w = user;
  w->h = NULL; /* the route went with its server; w lives until tw_webhook_close */
}

tw_webhook *tw_webhook_listen(tw_httpd *h, const tw_webhook_opts *o, tw_error *err) {
  if (!h || !o || !o->path || o->path[0] != '/') {
    tw_err_set(err, "invalid_argument", 0, "a webhook route needs a server and a path starting with '/'");
    return NULL;
  }
  if (!tw_webhook_secret_ok(o->secret)) {
    tw_err_set(err, "invalid_argument", 0, "the webhook secret must be 10 to 100 ASCII characters");
    return NULL;
  }
  if (o->shard_id && strlen(o->shard_id) >= 16) {
    tw_err_set(err, "invalid_argument", 0, "shard id too long");
    return NULL;
  }
  tw_webhook *w = calloc(1, sizeof *w);
  if (!w || !(w->path = tw_strdup(o->path)) || !(w->keys[0] = tw_hmac_key_new(o->secret, strlen(o->secret)))) {
    if (w) free(w->path);
    free(w);
    tw_err_set(err, "no_memory", 0, "out of memory (or no HMAC in OpenSSL)");
    return NULL;
  }
  w->h = h;
  w->c = tw_httpd_client(h);
  w->max_age_s = o->max_age_s > 0 ? o->max_age_s : 600;
  w->max_future_s = o->max_future_s > 0 ? o->max_future_s : 60;
  tw_webhook_bind(w, o->conduit, o->shard_id);
  if (tw_httpd_route(h, o->path, on_request, w, err) != 0) {
    tw_hmac_key_free(w->keys[0]);
    free(w->path);
    free(w);
    return NULL;
  }
  tw_httpd_route_on_drop(h, o->path, on_server_closed);
  return w;
}

void tw_webhook_on_event(tw_webhook *w, tw_webhook_event_fn fn, void *user) {
  w->on_event = fn;
  w->on_event_user = user;
}

void tw_webhook_set_sink(tw_webhook *w, tw_webhook_sink_fn fn, void *user) {
  w->sink = fn;
  w->sink_user = user;
}

void tw_webhook_bind(tw_webhook *w, tw_conduit *cd, const char *shard_id) {
  w->cd = cd;
  snprintf(w->shard_id, sizeof w->shard_id, "%s", cd && shard_id ? shard_id : "");
}

int tw_webhook_rotate(tw_webhook *w, const char *secret, double grace_s, tw_error *err) {
  if (!tw_webhook_secret_ok(secret)) {
    tw_err_set(err, "invalid_argument", 0, "the webhook secret must be 10 to 100 ASCII characters");
    return TW_EINVAL;
  }
  if (!(grace_s >= 0)) {
    tw_err_set(err, "invalid_argument", 0, "grace must be >= 0 seconds");
    return TW_EINVAL;
  }
  tw_hmac_key *k = tw_hmac_key_new(secret, strlen(secret));
  if (!k) {
    tw_err_set(err, "no_memory", 0, "out of memory");
    return TW_ENOMEM;
  }
  tw_hmac_key_free(w->keys[1]);
  w->keys[1] = grace_s > 0 ? w->keys[0] : NULL;
  if (grace_s <= 0) tw_hmac_key_free(w->keys[0]);
  w->keys[0] = k;
  w->prev_until = w->h ? uv_now(w->c->loop) + (uint64_t)(grace_s * 1000) : 0;
  return 0;
}

void tw_webhook_close(tw_webhook *w) {
  if (!w || w->close_pending) return;
  if (w->h) tw_httpd_unroute(w->h, w->path);
  w->h = NULL;
  if (w->delivering) {
    w->close_pending = true;
    return;
  }
  webhook_free(w);
}

static void webhook_free(tw_webhook *w) {
  tw_hmac_key_free(w->keys[0]);
  tw_hmac_key_free(w->keys[1]);
  free(w->path);
  free(w);
}

void tw_webhook_get_stats(const tw_webhook *w, tw_webhook_stats *out) {
  if (w) *out = w->st;
  else memset(out, 0, sizeof *out);
}
