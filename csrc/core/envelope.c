/* envelope.c - one decoder of EventSub envelopes for every transport.
 *
 * A websocket message is {metadata, payload}; a webhook request carries the metadata in
 * headers and the payload as its body; a queued entry carries both. What they share is
 * the payload {subscription, event | events}: tw_envelope_decode_body reads it for all,
 * and tw_envelope_decode_ws adds the websocket metadata. The results are tw_msg fields
 * pointing into the document (strings of a tw_json tape are NUL-terminated). */
#include <string.h>

#include "internal.h"

/* The value of member key of obj: looked for first as the member right after the one
 * whose value is `prev`, then anywhere. */
static tw_jnode member_after(const tw_json *d, tw_jnode obj, tw_jnode prev, const char *key, size_t klen) {
  tw_jnode k = prev != TW_JNONE ? tw_json_next(d, prev) : TW_JNONE;
  size_t kl = 0;
  const char *ks = k != TW_JNONE ? tw_json_str(d, k, &kl) : NULL;
  if (ks && kl == klen && memcmp(ks, key, klen) == 0) return tw_json_next(d, k);
  return tw_json_get(d, obj, key, klen);
}

int tw_envelope_decode_body(tw_json *d, tw_jnode body, tw_msg *m, tw_error *err) {
  m->doc = d;
  m->subscription = tw_json_get(d, body, "subscription", 12);
  if (m->subscription == TW_JNONE || tw_json_type(d, m->subscription) != TW_JSON_OBJ) {
    tw_err_set(err, "bad_message", 0, "EventSub message without a subscription object");
    return -1;
  }
  if (!m->type) m->type = tw_json_str(d, tw_json_get(d, m->subscription, "type", 4), NULL);
  if (!m->version) m->version = tw_json_str(d, tw_json_get(d, m->subscription, "version", 7), NULL);
  m->status = tw_json_str(d, tw_json_get(d, m->subscription, "status", 6), NULL);
  m->event = tw_json_get(d, body, "event", 5);
  if (m->event == TW_JNONE) m->event = tw_json_get(d, body, "events", 6);
  if (!m->type) {
    tw_err_set(err, "bad_message", 0, "EventSub message without a subscription type");
    return -1;
  }
  return 0;
}

int tw_envelope_decode_ws(tw_json *d, tw_msg *m, const char **kind, tw_error *err) {
  memset(m, 0, sizeof *m);
  m->transport = TW_TRANSPORT_WEBSOCKET;
  m->strings_in_doc = 1;
  m->subscription = m->event = TW_JNONE;
  tw_jnode md = tw_json_get(d, 0, "metadata", 8);
  const char *type = tw_json_str(d, tw_json_get(d, md, "message_type", 12), NULL);
  *kind = type;
  tw_jnode payload = tw_json_get(d, 0, "payload", 7);
  if (!type || payload == TW_JNONE) {
    tw_err_set(err, "bad_message", 0, "EventSub message without metadata.message_type or payload");
    return -1;
  }
  bool notif = strcmp(type, "notification") == 0;
  if (!notif && strcmp(type, "revocation") != 0) return 0;
  m->message_type = notif ? "notification" : "revocation";
  m->metadata = md;
  /* Twitch writes message_id, message_type, message_timestamp, subscription_type,
   * subscription_version in that order: each is looked for right after the previous
   * one first (one compare), then anywhere */
  size_t idn = 0;
  tw_jnode v = tw_json_get(d, md, "message_id", 10);
  m->id = tw_json_str(d, v, &idn);
  m->id_len = m->id ? idn : 0;
  v = member_after(d, md, tw_json_next(d, tw_json_next(d, v)), "message_timestamp", 17); /* after message_type */
  m->timestamp = tw_json_str(d, v, NULL);
  v = member_after(d, md, v, "subscription_type", 17);
  m->type = tw_json_str(d, v, NULL);
  v = member_after(d, md, v, "subscription_version", 20);
  m->version = tw_json_str(d, v, NULL);
  if (tw_envelope_decode_body(d, payload, m, err) != 0) return -1;
  if (!m->id || !m->id_len || (notif && m->event == TW_JNONE)) {
    tw_err_set(err, "bad_message", 0, "notification without message_id, subscription type or event");
    return -1;
  }
  if (!notif) m->event = TW_JNONE;
  return 1;
}
