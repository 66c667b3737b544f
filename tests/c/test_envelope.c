/* The envelope decoder (envelope.c): websocket envelopes and the payload body every
 * transport shares, on good and bad input. */
#include "support.h"

static tw_json *parse(const char *s) {
  char e[128];
  tw_json *d = tw_json_parse(s, strlen(s), e, sizeof e);
  if (!d) printf("# parse: %s\n", e);
  return d;
}

#define NOTIF                                                                                                   \
  "{\"metadata\":{\"message_id\":\"m-1\",\"message_type\":\"notification\",\"message_timestamp\":\"2026-01-01T0" \
  "0:00:00.5Z\",\"subscription_type\":\"stream.online\",\"subscription_version\":\"1\"},\"payload\":{"           \
  "\"subscription\":{\"id\":\"s\",\"type\":\"stream.online\",\"version\":\"1\",\"status\":\"enabled\"},"         \
  "\"event\":{\"broadcaster_user_id\":\"7\"}}}"

int main(void) {
  tw_msg m;
  const char *kind = NULL;
  tw_error err;
  tw_json *d = parse(NOTIF);
  int r = tw_envelope_decode_ws(d, &m, &kind, &err);
  ok(r == 1 && strcmp(kind, "notification") == 0, "a notification decodes (%d)", r);
  ok(m.transport == TW_TRANSPORT_WEBSOCKET && m.strings_in_doc, "websocket transport, strings in the document");
  ok(m.id && strcmp(m.id, "m-1") == 0 && m.id_len == 3, "message id and length");
  ok(strcmp(m.type, "stream.online") == 0 && strcmp(m.version, "1") == 0, "type and version from the metadata");
  ok(strcmp(m.timestamp, "2026-01-01T00:00:00.5Z") == 0, "timestamp");
  ok(strcmp(m.status, "enabled") == 0 && strcmp(m.message_type, "notification") == 0, "status, message type");
  ok(tw_json_streq(d, tw_json_get(d, m.event, "broadcaster_user_id", 19), "7"), "the event node");
  tw_json_unref(d);

  d = parse("{\"metadata\":{\"message_id\":\"m-2\",\"message_type\":\"revocation\",\"message_timestamp\":\"x\"},"
            "\"payload\":{\"subscription\":{\"type\":\"channel.follow\",\"version\":\"2\",\"status\":"
            "\"authorization_revoked\"}}}");
  r = tw_envelope_decode_ws(d, &m, &kind, &err);
  ok(r == 1 && strcmp(m.message_type, "revocation") == 0 && m.event == TW_JNONE, "a revocation decodes, no event");
  ok(strcmp(m.type, "channel.follow") == 0 && strcmp(m.version, "2") == 0,
     "type and version from the subscription when the metadata lacks them");
  ok(strcmp(m.status, "authorization_revoked") == 0, "its status");
  tw_json_unref(d);

  d = parse("{\"metadata\":{\"message_id\":\"w\",\"message_type\":\"session_welcome\"},\"payload\":{}}");
  ok(tw_envelope_decode_ws(d, &m, &kind, &err) == 0 && strcmp(kind, "session_welcome") == 0,
     "another message type: 0 and its kind");
  tw_json_unref(d);

  static const char *const bad[] = {
      "{\"payload\":{}}",
      "{\"metadata\":{\"message_type\":\"notification\"}}",
      "{\"metadata\":{\"message_type\":\"notification\",\"message_id\":\"a\"},\"payload\":{\"event\":{}}}",
      "{\"metadata\":{\"message_type\":\"notification\",\"message_id\":\"a\"},\"payload\":{\"subscription\":[]," "\"event\":{}}}",
      "{\"metadata\":{\"message_type\":\"notification\"},\"payload\":{\"subscription\":{\"type\":\"t\"},\"event\":{}}}",
      "{\"metadata\":{\"message_type\":\"notification\",\"message_id\":\"a\"},\"payload\":{\"subscription\":{\"type\":"
      "\"t\"}}}",
      "{\"metadata\":{\"message_type\":\"notification\",\"message_id\":\"a\"},\"payload\":{\"subscription\":{}," "\"event\":{}}}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    d = parse(bad[i]);
    memset(&err, 0, sizeof err);
    r = tw_envelope_decode_ws(d, &m, &kind, &err);
    ok(r == -1 && strcmp(err.code, "bad_message") == 0, "malformed envelope %zu refused: %s", i, err.message);
    tw_json_unref(d);
  }

  /* the shared body, as a webhook receiver would use it (its fields come from headers) */
  d = parse("{\"subscription\":{\"type\":\"channel.raid\",\"version\":\"1\",\"status\":\"enabled\"},"
            "\"events\":[{\"a\":1},{\"a\":2}]}");
  memset(&m, 0, sizeof m);
  m.id = "hdr-id";
  m.id_len = 6;
  r = tw_envelope_decode_body(d, 0, &m, &err);
  ok(r == 0 && strcmp(m.type, "channel.raid") == 0 && tw_json_len(d, m.event) == 2,
     "a body with a batched events array decodes");
  ok(strcmp(m.id, "hdr-id") == 0, "the caller's fields are kept");
  tw_json_unref(d);
  return done_testing();
}
