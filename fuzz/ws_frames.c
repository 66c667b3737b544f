/* fuzz/ws_frames.c - the websocket reader (ws.c: the upgrade answer, frame parsing across
 * reads, fragment reassembly, control frames, the messages they carry) fed what a server
 * could send, cut into reads three ways: whole, byte by byte, and at random points.
 *
 * Input: byte 0 picks the mode (bit 0: the stream starts with the upgrade answer, for
 * RFC 6455's example key; bits 1-2: 0 whole, 1 byte by byte, 2-3 random cuts seeded by
 * byte 1), the rest is the stream. max_message_bytes is 4096, so oversized messages and
 * frames are in reach. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static tw_client *client;
static unsigned events;

static void on_event(void *user, const tw_event *ev) {
  (void)user;
  events++;
  if (ev->type == TW_EV_ERROR && (!ev->error || !ev->error->code[0])) abort(); /* an error has a code */
}

static void on_err(void *o, tw_session *ss, const tw_error *e) {
  (void)o;
  (void)ss;
  if (!e->code[0] || !e->message[0]) abort();
}
static void on_closed(void *o, tw_session *ss, int code, const char *why) {
  (void)o;
  (void)ss;
  (void)code;
  (void)why;
}
static void on_welcome(void *o, tw_session *ss, const char *sid) {
  (void)o;
  if (!sid || strcmp(sid, tw_ws_session_id(ss)) != 0) abort();
}
static void on_reconnect(void *o, tw_session *ss, const char *url) {
  (void)o;
  (void)ss;
  if (!url || !*url) abort();
}
static void on_keepalive(void *o, tw_session *ss) {
  (void)o;
  (void)ss;
}
static void on_message(void *o, tw_session *ss, tw_msg *m) {
  (void)o;
  (void)ss;
  tw_client_deliver(client, m, NULL, NULL, NULL); /* de-duplication and the replay guard too */
}
static const tw_session_ops ops = {on_welcome, on_reconnect, on_message, on_keepalive, on_err, on_closed};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!client) {
    tw_client_opts o = TW_CLIENT_OPTS_INIT;
    o.client_id = "fuzz";
    o.client_secret = "fuzz-secret";
    o.max_message_bytes = 4096;
    o.dedupe_max = 1024;
    tw_error err;
    tw_set_lws_log_level(0);
    client = tw_client_new(&o, &err);
    if (!client) abort();
    tw_client_on_event(client, on_event, NULL);
  }
  if (size < 2) return 0;
  int mode = data[0];
  uint64_t rng = data[1] * 0x9E3779B97F4A7C15ull + 1;
  data += 2;
  size -= 2;
  tw_session *ss = tw_ws_detached(client, &ops, NULL, mode & 1);
  size_t pos = 0;
  while (pos < size) {
    size_t n = size - pos;
    int cut = (mode >> 1) & 3;
    if (cut == 1) n = 1;
    else if (cut >= 2) {
      rng ^= rng << 13;
      rng ^= rng >> 7;
      rng ^= rng << 17;
      size_t k = 1 + (size_t)(rng % 64);
      if (k < n) n = k;
    }
    /* each read in its own allocation, as a socket read would be: overreads are caught */
    unsigned char *chunk = malloc(n);
    memcpy(chunk, data + pos, n);
    tw_ws_feed(ss, chunk, n);
    free(chunk);
    pos += n;
  }
  tw_ws_detached_free(ss);
  uv_run(client->loop, UV_RUN_NOWAIT); /* the session's timer closes, its memory goes */
  return 0;
}
