/* fuzz/envelope.c - the EventSub envelope decoder: a websocket message (metadata and
 * payload) and a transport body ({subscription, event|events}) from any JSON; every
 * field a decoded message points at is read. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void touch(const char *s) {
  if (s) (void)strlen(s);
}

static void read_msg(const tw_msg *m) {
  touch(m->message_type);
  if (m->id && strlen(m->id) < m->id_len) abort();
  touch(m->type);
  touch(m->version);
  touch(m->timestamp);
  touch(m->status);
  (void)tw_json_type(m->doc, m->subscription);
  (void)tw_json_type(m->doc, m->event);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  tw_json *d = tw_json_parse((const char *)data, size, NULL, 0);
  if (!d) return 0;
  tw_msg m;
  memset(&m, 0, sizeof m);
  const char *kind = NULL;
  tw_error e;
  int r = tw_envelope_decode_ws(d, &m, &kind, &e);
  if (r > 0) read_msg(&m);
  else if (r == 0 && !kind) abort(); /* a message that is not an event names its type */
  else if (r < 0 && !e.code[0]) abort(); /* a refusal has a code */
  if (r == 0) touch(kind);
  memset(&m, 0, sizeof m);
  tw_jnode body = tw_json_get(d, 0, "payload", 7);
  if (tw_envelope_decode_body(d, body != TW_JNONE ? body : 0, &m, &e) >= 0) read_msg(&m);
  tw_json_unref(d);
  return 0;
}
