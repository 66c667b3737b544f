/* ws.c - EventSub websocket sessions on libwebsockets (libuv event-lib, foreign loop).
 *
 * libwebsockets owns the socket, TLS and the loop integration; the connection uses its
 * raw-socket role and this file speaks RFC 6455 itself: the upgrade handshake (with the
 * Sec-WebSocket-Accept check) and the framing. The reason is speed: lws 4.1's client
 * parser feeds every payload byte through a function call (client-parser-ws.c), which
 * cost ~10 us per 1.7 KB notification; here a frame that sits whole in the read
 * buffer is handed to the JSON parser in place, with no copy.
 *
 * TLS (wss) is OpenSSL over memory BIOs on the same raw connection: lws 4.1's own TLS
 * for raw client sockets fails to start ("tls start fail"), and this way every byte
 * still goes through one path.
 * After a TLS 1.3 handshake the record layer moves to tls13.c and the SSL object is
 * freed; at most tls_handshakes handshakes run at once (a queue of connected sockets).
 *
 * A session is one socket. It parses every message once (tw_json), decodes its envelope
 * (envelope.c), sends nothing but pongs and a close frame, watches the keepalive, and
 * reports to its owner through tw_session_ops: welcome, session_reconnect, notifications
 * and revocations, bad messages, and its end (deferred to a timer so the owner never
 * re-enters itself). It knows nothing of shards or conduits.
 *
 * A close this side asks for is a handshake: the close frame goes out, and frames keep
 * being read and reported until the server's close frame (or a 5 s limit), so nothing
 * the server wrote before it saw our close is lost. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "internal.h"
#include "tw_tls13.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define OUT_MAX 280 /* two control frames: pongs are answered as soon as writable */

/* ST_CLOSE_SENT: our close frame is out, frames are still read until the server's close;
 * ST_CLOSING: nothing more is read. */
enum { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_CLOSE_SENT, ST_CLOSING };
#define READING(ss) ((ss)->st == ST_OPEN || (ss)->st == ST_CLOSE_SENT)

struct tw_session {
  tw_client *c;
  const tw_session_ops *ops; /* NULL: no owner */
  void *owner;
  uint64_t *bytes;           /* the owner's payload byte counter, or NULL */
  struct tw_session *lnext, *lprev; /* the client's list of sessions */
  struct lws *wsi;
  uv_timer_t timer; /* welcome deadline, then keepalive watchdog, then deferred report */
  int st;              /* ST_* */
  tw_buf hs;           /* the handshake response, until complete */
  tw_buf pend;         /* bytes of a frame split across reads */
  tw_buf rx;           /* a fragmented message being reassembled */
  bool rx_overflow, frag_active, frag_binary;
  char key[32];        /* Sec-WebSocket-Key sent */
  char *req;           /* the upgrade request, until written */
  unsigned char out[OUT_MAX]; /* control frames waiting for WRITEABLE */
  size_t out_len;
  char *host, *path;   /* for the upgrade request */
  char *sni;           /* TLS: the host name (or IP address) to verify */
  SSL *ssl;            /* TLS: NULL for ws://, and once tls13.c runs the connection */
  tw_tls13 *t13;       /* TLS 1.3: the record layer taken over from OpenSSL (tls13.c) */
  bool tls, tls_up;
  bool tls_hs;         /* counted in the client's handshakes in flight */
  bool tls_waiting;    /* in the client's queue for a handshake slot */
  struct tw_session *tls_wnext, *tls_wprev;
  char *session_id;
  uint64_t last_rx;
  uint64_t limit_ms; /* silence tolerated */
  uint64_t welcome_ms; /* the wait for the welcome, from the start of the TLS handshake or the upgrade */
  int close_code;
  char why[128];
  bool welcomed, gone, reported, opening, closing_sent;
  bool wsi_alive; /* lws still holds a wsi pointing at us: free only after WSI_DESTROY */
  bool freeing;
  bool deadline_seen; /* the watchdog found its deadline passed: judged after one more poll */
  int want_close; /* the close code we sent (0: none) */
};

static void tls_hs_end(tw_session *ss);
static void tls_unwait(tw_session *ss);

static void session_free_cb(uv_handle_t *h) {
  tw_session *ss = h->data;
  tls_unwait(ss);
  tls_hs_end(ss);
  tw_buf_free(&ss->rx);
  tw_buf_free(&ss->hs);
  tw_buf_free(&ss->pend);
  free(ss->req);
  free(ss->host);
  free(ss->path);
  free(ss->sni);
  if (ss->ssl) SSL_free(ss->ssl);
  tw_tls13_free(ss->t13);
  free(ss->t13);
  free(ss->session_id);
  free(ss);
}

static void maybe_free(tw_session *ss) {
  if (!ss->reported || ss->wsi_alive || ss->freeing) return;
  ss->freeing = true;
  tw_client *c = ss->c;
  if (ss->lprev) ss->lprev->lnext = ss->lnext;
  else c->sessions = ss->lnext;
  if (ss->lnext) ss->lnext->lprev = ss->lprev;
  c->nsessions--;
  uv_close((uv_handle_t *)&ss->timer, session_free_cb);
}

static void on_report(uv_timer_t *t) {
  tw_session *ss = t->data;
  if (ss->reported) return;
  ss->reported = true;
  uv_timer_stop(&ss->timer);
  const tw_session_ops *ops = ss->ops;
  void *owner = ss->owner;
  ss->ops = NULL;
  ss->owner = NULL;
  ss->bytes = NULL;
  if (ops && ops->closed) ops->closed(owner, ss, ss->close_code, ss->why);
  maybe_free(ss);
}

/* the socket is gone: report to the shard from a fresh timer callback */
static void session_gone(tw_session *ss) {
  if (ss->gone) return;
  ss->gone = true;
  ss->wsi = NULL;
  tls_unwait(ss);
  tls_hs_end(ss);
  uv_timer_stop(&ss->timer);
  uv_timer_start(&ss->timer, on_report, 0, 0);
}

/* Ends the connection from a timer callback, never from inside libwebsockets: a kill
 * requested from outside lws's own callbacks is not serviced until lws's next timer,
 * so it is done synchronously here, where that is safe. */
static void on_kill(uv_timer_t *t) {
  tw_session *ss = t->data;
  if (ss->gone || !ss->wsi) return;
  lws_set_timeout(ss->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_SYNC);
}

static void kill_after(tw_session *ss, uint64_t ms) {
  if (ss->gone || !ss->wsi) return;
  uv_timer_start(&ss->timer, on_kill, ms, 0);
}

static void kill_wsi(tw_session *ss, const char *why) {
  if (!ss->wsi || ss->gone) return;
  if (why && !ss->why[0]) snprintf(ss->why, sizeof ss->why, "%s", why);
  ss->st = ST_CLOSING; /* read nothing more */
  kill_after(ss, 0);
}

static void on_watchdog(uv_timer_t *t);

/* A deadline found passed is judged again after the sockets were polled once: libuv runs
 * timers before it reads, so a loop that was held up would end a socket whose welcome or
 * messages already wait in its buffer. After session_reconnect the server writes events
 * to the new socket before we read its welcome: they would be lost. */
static bool judge_after_poll(tw_session *ss) {
  if (ss->deadline_seen) return false;
  ss->deadline_seen = true;
  uv_timer_start(&ss->timer, on_watchdog, 1, 0); /* 1 ms, not 0: libuv 1.44 runs a 0 ms timer before polling */
  return true;
}

static void on_watchdog(uv_timer_t *t) {
  tw_session *ss = t->data;
  if (ss->gone) return;
  uint64_t now = uv_now(ss->c->loop);
  if (!ss->welcomed) {
    if (judge_after_poll(ss)) return;
    ss->close_code = 0;
    kill_wsi(ss, "no welcome message in time");
    return;
  }
  if (ss->pend.len == 0 && ss->pend.p) tw_buf_free(&ss->pend); /* a quiet session holds no buffer */
  uint64_t silent = now - ss->last_rx;
  if (silent >= ss->limit_ms) {
    if (judge_after_poll(ss)) return;
    char why[96];
    snprintf(why, sizeof why, "no message for %.1f s (keepalive watchdog)", (double)silent / 1000.0);
    kill_wsi(ss, why);
    return;
  }
  ss->deadline_seen = false;
  uv_timer_start(&ss->timer, on_watchdog, ss->limit_ms - silent, 0);
}

static void report_error(tw_session *ss, const tw_error *e) {
  if (ss->ops && ss->ops->error) ss->ops->error(ss->owner, ss, e);
  else tw_emit_error(ss->c, NULL, NULL, e);
}

static void bad_message(tw_session *ss, const char *code, const char *fmt, const char *detail) {
  ss->c->stats.bad_messages++;
  tw_error e;
  tw_err_set(&e, code, 0, fmt, detail);
  report_error(ss, &e);
}

static void handle_message(tw_session *ss, const char *p, size_t n) {
  tw_client *c = ss->c;
  ss->last_rx = uv_now(c->loop); /* any message feeds the watchdog; pings do not */
  if (ss->bytes) *ss->bytes += n;
  char perr[128];
  tw_dedupe_prefetch(c->dedupe, p, n); /* its cache misses overlap the parse */
  tw_json *d = tw_json_parse_pooled(c->doc_pool, p, n, perr, sizeof perr);
  if (!d) {
    bad_message(ss, "bad_message", "malformed message from EventSub: %s", perr);
    return;
  }
  tw_msg m;
  const char *type = NULL;
  tw_error e;
  int r = tw_envelope_decode_ws(d, &m, &type, &e);
  if (r < 0) {
    c->stats.bad_messages++;
    report_error(ss, &e);
  } else if (r > 0) {
    if (ss->ops && ss->ops->message) ss->ops->message(ss->owner, ss, &m);
    else tw_client_deliver(c, &m, NULL, NULL, NULL); /* no owner (its conduit closed) */
  } else if (strcmp(type, "session_keepalive") == 0) {
    if (ss->ops && ss->ops->keepalive) ss->ops->keepalive(ss->owner, ss);
  } else if (strcmp(type, "session_welcome") == 0) {
    tw_jnode sess = tw_json_getp(d, 0, "payload.session");
    size_t idn = 0;
    const char *id = tw_json_str(d, tw_json_get(d, sess, "id", 2), &idn);
    tw_jnode ka = tw_json_get(d, sess, "keepalive_timeout_seconds", 25);
    if (!id || !idn) {
      bad_message(ss, "bad_message", "%s", "session_welcome without a session id");
    } else if (ss->st != ST_OPEN) {
      /* closing already (a release before the welcome): nothing to report, the close
       * handshake's deadline stays */
    } else if (!ss->welcomed) {
      ss->session_id = tw_strndup(id, idn);
      ss->welcomed = true;
      int64_t k = ka != TW_JNONE && tw_json_type(d, ka) == TW_JSON_INT ? tw_json_int(d, ka) : 10;
      if (k < 10 || k > 600) { /* Twitch's range: a huge value would turn the watchdog off */
        char bad[32];
        snprintf(bad, sizeof bad, "%lld", (long long)k);
        bad_message(ss, "bad_message", "session_welcome keepalive_timeout_seconds %s is outside 10..600 (clamped)",
                    bad);
        k = k > 600 ? 600 : 10;
      }
      ss->limit_ms = (uint64_t)(((double)k + c->keepalive_slack_s) * 1000);
      ss->deadline_seen = false;
      uv_timer_start(&ss->timer, on_watchdog, ss->limit_ms, 0);
      if (ss->ops && ss->ops->welcome) ss->ops->welcome(ss->owner, ss, ss->session_id);
    } else {
      bad_message(ss, "bad_message", "%s", "a second session_welcome on one socket (ignored)");
    }
  } else if (strcmp(type, "session_reconnect") == 0) {
    const char *url = tw_json_str(d, tw_json_getp(d, 0, "payload.session.reconnect_url"), NULL);
    if (!url || !*url) bad_message(ss, "bad_message", "%s", "session_reconnect without reconnect_url");
    else if (ss->ops && ss->ops->reconnect) ss->ops->reconnect(ss->owner, ss, url);
  } else {
    bad_message(ss, "unknown_message", "unknown EventSub message type '%s' (ignored)", type);
  }
  tw_json_unref(d);
}

/* ---- writing: control frames and the handshake, sent on WRITEABLE ---- */

static void queue_frame(tw_session *ss, int opcode, const unsigned char *payload, size_t n) {
  if (n > 125 || ss->out_len + 6 + n > OUT_MAX || !ss->wsi) return; /* control frames are small */
  unsigned char *f = ss->out + ss->out_len;
  unsigned char mask[4];
  RAND_bytes(mask, 4);
  f[0] = (unsigned char)(0x80 | opcode);
  f[1] = (unsigned char)(0x80 | n); /* a client masks every frame */
  memcpy(f + 2, mask, 4);
  for (size_t i = 0; i < n; i++) f[6 + i] = payload[i] ^ mask[i & 3];
  ss->out_len += 6 + n;
  lws_callback_on_writable(ss->wsi);
}

static void send_close(tw_session *ss, int code) {
  if (ss->st != ST_OPEN) return;
  unsigned char b[2] = {(unsigned char)(code >> 8), (unsigned char)code};
  queue_frame(ss, 8, b, 2);
  ss->st = ST_CLOSE_SENT; /* frames are still read until the server's close frame */
  kill_after(ss, 5000); /* if the server does not end the connection soon, end it */
}

static void protocol_error(tw_session *ss, const char *why) {
  if (!ss->why[0]) snprintf(ss->why, sizeof ss->why, "%s", why);
  bad_message(ss, "protocol_error", "websocket protocol error: %s", why);
  kill_wsi(ss, why);
}

/* ---- reading: handshake, then frames ---- */

static void on_frame_message(tw_session *ss, bool binary, const char *p, size_t n) {
  if (binary) bad_message(ss, "bad_message", "%s", "binary websocket message (ignored)");
  else if (n > ss->c->max_message_bytes)
    bad_message(ss, "message_too_large", "%s", "websocket message over max_message_bytes");
  else handle_message(ss, p, n);
}

/* one complete frame; returns false when the session must stop reading */
static bool on_frame(tw_session *ss, int fin, int op, const unsigned char *p, size_t n) {
  tw_client *c = ss->c;
  switch (op) {
  case 1: /* text */
  case 2: /* binary */
    if (ss->frag_active) {
      protocol_error(ss, "a new message started inside a fragmented one");
      return false;
    }
    if (fin) {
      on_frame_message(ss, op == 2, (const char *)p, n);
      return true;
    }
    ss->frag_active = true;
    ss->frag_binary = op == 2;
    ss->rx.len = 0;
    ss->rx_overflow = false;
    /* fall through: keep the first fragment */
    /* FALLTHROUGH */
  case 0: /* continuation */
    if (!ss->frag_active) {
      protocol_error(ss, "a continuation frame without a message");
      return false;
    }
    if (!ss->rx_overflow) {
      if (ss->rx.len + n > c->max_message_bytes || tw_buf_append(&ss->rx, p, n) != 0) {
        /* reported now, not at a final frame that may never come; the session closes */
        ss->rx_overflow = true;
        tw_buf_free(&ss->rx);
        bad_message(ss, "message_too_large", "%s", "fragmented websocket message over max_message_bytes");
        if (!ss->want_close) ss->want_close = 1009;
        send_close(ss, 1009);
      }
    }
    if (fin) {
      ss->frag_active = false;
      if (!ss->rx_overflow) on_frame_message(ss, ss->frag_binary, ss->rx.p ? ss->rx.p : "", ss->rx.len);
      ss->rx_overflow = false;
      tw_buf_free(&ss->rx); /* idle sessions hold no buffer */
    }
    return true;
  case 8: { /* close */
    int code = n >= 2 ? (p[0] << 8) | p[1] : 1005;
    ss->close_code = code;
    size_t rl = n > 2 ? n - 2 : 0;
    if (rl > sizeof ss->why - 1) rl = sizeof ss->why - 1;
    if (rl) {
      memcpy(ss->why, p + 2, rl);
      ss->why[rl] = 0;
    }
    if (ss->st == ST_OPEN) { /* the server closes: answer with its code */
      unsigned char b[2] = {(unsigned char)(code >> 8), (unsigned char)code};
      if (code == 1005) queue_frame(ss, 8, NULL, 0);
      else queue_frame(ss, 8, b, 2);
    }
    ss->st = ST_CLOSING; /* our close was answered, or we answered theirs */
    kill_after(ss, 2000);
    return false;
  }
  case 9: /* ping: the pong echoes its payload */
    if (!fin || n > 125) {
      protocol_error(ss, "a bad ping frame");
      return false;
    }
    queue_frame(ss, 10, p, n);
    return true;
  case 10: /* pong */
    return true;
  default:
    protocol_error(ss, "an unknown opcode");
    return false;
  }
}

/* Parses every complete frame in data[0..n); returns the bytes consumed. */
static size_t parse_frames(tw_session *ss, const unsigned char *d, size_t n) {
  size_t pos = 0;
  while (n - pos >= 2 && READING(ss) && !ss->gone) {
    const unsigned char *h = d + pos;
    int fin = h[0] >> 7, op = h[0] & 15;
    if (h[0] & 0x70) {
      protocol_error(ss, "reserved bits set");
      return n;
    }
    if (h[1] & 0x80) {
      protocol_error(ss, "a masked frame from the server");
      return n;
    }
    uint64_t len = h[1] & 127;
    size_t hl = 2;
    if (len == 126) {
      if (n - pos < 4) break;
      len = ((uint64_t)h[2] << 8) | h[3];
      hl = 4;
    } else if (len == 127) {
      if (n - pos < 10) break;
      len = 0;
      for (int i = 0; i < 8; i++) len = (len << 8) | h[2 + i];
      hl = 10;
    }
    if (len > ss->c->max_message_bytes + 1024 && len > (1u << 20)) {
      /* refuse to buffer absurd frames: report and drop the connection */
      bad_message(ss, "message_too_large", "%s", "websocket frame far over max_message_bytes");
      kill_wsi(ss, "oversized frame");
      return n;
    }
    if (n - pos - hl < len) break; /* incomplete: wait for more */
    if (!on_frame(ss, fin, op, h + hl, (size_t)len)) return n;
    pos += hl + (size_t)len;
  }
  return pos;
}

/* Bytes of the frame starting at h (header + payload), or 0 while its header is
 * incomplete. A server frame's header is at most 10 bytes (it is never masked). */
static size_t frame_size(const unsigned char *h, size_t n) {
  if (n < 2) return 0;
  uint64_t len = h[1] & 127;
  size_t hl = 2;
  if (len == 126) {
    if (n < 4) return 0;
    len = ((uint64_t)h[2] << 8) | h[3];
    hl = 4;
  } else if (len == 127) {
    if (n < 10) return 0;
    len = 0;
    for (int i = 0; i < 8; i++) len = (len << 8) | h[2 + i];
    hl = 10;
  }
  return len > SIZE_MAX - hl ? SIZE_MAX : hl + (size_t)len;
}

#define PEND_KEEP 65536 /* a split-frame buffer up to this size is sized at once and kept */

/* Frames are parsed in place from lws's read buffer. A frame cut by the end of a
 * read is kept in ss->pend, and the next read only tops it up to that one frame
 * (its header first, then its payload) before parsing resumes in place: a stream
 * of frames that straddle reads is copied once, not read-buffer by read-buffer. */
static void on_rx(tw_session *ss, const unsigned char *in, size_t len) {
  while (ss->pend.len > 0 && len > 0 && !ss->gone && READING(ss)) {
    size_t want = frame_size((const unsigned char *)ss->pend.p, ss->pend.len);
    size_t take = want ? want - ss->pend.len : 10 - ss->pend.len;
    if (take > len) take = len;
    if (tw_buf_append(&ss->pend, in, take) != 0) {
      kill_wsi(ss, "out of memory");
      return;
    }
    in += take;
    len -= take;
    /* also refuses an oversized frame as soon as its header is complete */
    size_t used = parse_frames(ss, (const unsigned char *)ss->pend.p, ss->pend.len);
    if (used >= ss->pend.len) {
      if (ss->pend.cap > PEND_KEEP)
        tw_buf_free(&ss->pend); /* a big frame's buffer is not kept */
      else
        ss->pend.len = 0; /* the memory stays for the next split frame (the watchdog frees it) */
    } else if (used) {
      memmove(ss->pend.p, ss->pend.p + used, ss->pend.len - used);
      ss->pend.len -= used;
    }
  }
  if (len == 0 || ss->gone || !READING(ss)) return;
  size_t used = parse_frames(ss, in, len);
  if (used >= len || ss->gone || !READING(ss)) return;
  /* room for the whole frame at once when its header is here (one allocation), for
   * frames up to PEND_KEEP; a bigger one grows as its bytes arrive, so a header alone
   * cannot make the client allocate much */
  size_t want = frame_size(in + used, len - used);
  if ((want && want < PEND_KEEP && tw_buf_reserve(&ss->pend, want) != 0) ||
      tw_buf_append(&ss->pend, in + used, len - used) != 0)
    kill_wsi(ss, "out of memory");
}

static void b64(const unsigned char *in, int n, char *out) { EVP_EncodeBlock((unsigned char *)out, in, n); }

static bool accept_ok(const tw_session *ss, const char *v, size_t vn) {
  char buf[128];
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdn = 0;
  int k = snprintf(buf, sizeof buf, "%s%s", ss->key, WS_GUID);
  if (!EVP_Digest(buf, (size_t)k, md, &mdn, EVP_sha1(), NULL)) return false;
  char want[64];
  b64(md, (int)mdn, want);
  return strlen(want) == vn && memcmp(want, v, vn) == 0;
}

/* Handshake bytes; once the response is complete, the rest goes to the framer. */
static void on_handshake_rx(tw_session *ss, const unsigned char *in, size_t len) {
  size_t from = ss->hs.len > 3 ? ss->hs.len - 3 : 0; /* a trickled answer is searched once, not per read */
  if (tw_buf_append(&ss->hs, in, len) != 0) {
    kill_wsi(ss, "out of memory");
    return;
  }
  /* the answer's head is limited, not what follows it in the same read (the first frames) */
  char *end = memmem(ss->hs.p + from, ss->hs.len - from, "\r\n\r\n", 4);
  if (!end || (size_t)(end - ss->hs.p) > 16384) {
    if (ss->hs.len > 16384) kill_wsi(ss, "websocket handshake response too large");
    return;
  }
  size_t head = (size_t)(end - ss->hs.p) + 4;
  end[2] = 0; /* the searches below stay inside the head (the frames after it are not text) */
  int status = 0;
  if (sscanf(ss->hs.p, "HTTP/1.%*d %d", &status) != 1 || status != 101) {
    snprintf(ss->why, sizeof ss->why, "websocket upgrade refused (HTTP %d)", status);
    ss->close_code = 0;
    kill_wsi(ss, NULL);
    return;
  }
  bool accepted = false, upgrade = false;
  for (char *line = strstr(ss->hs.p, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
    char *l = line + 2, *colon = strchr(l, ':'), *eol = strstr(l, "\r\n");
    if (!colon || !eol || colon > eol) continue;
    char *v = colon + 1;
    while (*v == ' ' || *v == '\t') v++;
    size_t vn = (size_t)(eol - v);
    while (vn && (v[vn - 1] == ' ' || v[vn - 1] == '\t')) vn--;
    if ((size_t)(colon - l) == 20 && strncasecmp(l, "Sec-WebSocket-Accept", 20) == 0) accepted = accept_ok(ss, v, vn);
    if ((size_t)(colon - l) == 7 && strncasecmp(l, "Upgrade", 7) == 0) upgrade = vn == 9 && strncasecmp(v, "websocket", 9) == 0;
  }
  if (!accepted || !upgrade) {
    snprintf(ss->why, sizeof ss->why, "websocket handshake answer is invalid (%s)",
             accepted ? "no Upgrade: websocket" : "bad Sec-WebSocket-Accept");
    kill_wsi(ss, NULL);
    return;
  }
  ss->st = ST_OPEN;
  ss->last_rx = uv_now(ss->c->loop);
  size_t rest = ss->hs.len - head;
  tw_buf hs = ss->hs;
  ss->hs = (tw_buf){0};
  if (rest) on_rx(ss, (const unsigned char *)hs.p + head, rest);
  tw_buf_free(&hs);
}

static void on_plain(tw_session *ss, const unsigned char *in, size_t len) {
  if (ss->st == ST_HANDSHAKE) on_handshake_rx(ss, in, len);
  else if (READING(ss)) on_rx(ss, in, len);
}

static void build_request(tw_session *ss) {
  unsigned char raw[16];
  RAND_bytes(raw, sizeof raw);
  b64(raw, sizeof raw, ss->key);
  char req[3072];
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nUser-Agent: twconduit/" TWCONDUIT_VERSION
                   "\r\n\r\n",
                   ss->path, ss->host, ss->key);
  free(ss->req);
  ss->req = n > 0 && (size_t)n < sizeof req ? tw_strndup(req, (size_t)n) : NULL;
}

/* ---- TLS over memory BIOs ---- */

static SSL_CTX *client_ssl_ctx(tw_client *c) {
  if (c->ssl_ctx) return c->ssl_ctx;
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) return NULL;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_default_verify_paths(ctx); /* the system's CAs (SSL_CERT_FILE / SSL_CERT_DIR apply) */
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* idle sessions hold no TLS buffers */
  SSL_CTX_set_read_ahead(ctx, 1); /* records taken from a read in large pieces, not header then body */
  /* TLS 1.3: AES-128-GCM first, as browsers offer it (a third cheaper to decrypt than AES-256) */
  SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
  /* TLS 1.2: OpenSSL's DEFAULT set ("ALL:!COMPLEMENTOFDEFAULT:!eNULL"), AES-128-GCM first */
  SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM+AES128:ALL:!COMPLEMENTOFDEFAULT:!eNULL");
  tw_tls13_ctx_init(ctx); /* the traffic secrets, for the takeover after the handshake */
  c->ssl_ctx = ctx;
  return ctx;
}

static void tls_error(tw_session *ss, const char *what) {
  char e[160];
  unsigned long code = ERR_get_error();
  long vr = ss->ssl ? SSL_get_verify_result(ss->ssl) : X509_V_OK;
  if (vr != X509_V_OK) snprintf(e, sizeof e, "%s: certificate: %s", what, X509_verify_cert_error_string(vr));
  else if (code) snprintf(e, sizeof e, "%s: %s", what, ERR_reason_error_string(code) ? ERR_reason_error_string(code) : "error");
  else snprintf(e, sizeof e, "%s", what);
  ERR_clear_error();
  kill_wsi(ss, e);
}

/* Handshakes in flight, at most tls_handshakes at once: the others' sockets are connected
 * and wait in a queue. A handshake's peak (buffers, key exchange, certificate
 * verification: ~30 KB) is short-lived, but a thousand of them at once (a bring-up) leave
 * ~35 MB of free memory scattered between the sessions' live allocations, which the
 * allocator keeps; a few dozen at a time leave none, and go as fast (the handshakes' CPU,
 * ours and the server's, is the limit). */

static void tls_hs_begin(tw_session *ss) {
  if (ss->tls_hs) return;
  ss->tls_hs = true;
  tw_client *c = ss->c;
  c->tls_handshaking++;
  if ((uint64_t)c->tls_handshaking > c->stats.tls_handshakes_max) c->stats.tls_handshakes_max = (uint64_t)c->tls_handshaking;
}

/* into the client's queue for a handshake slot; its welcome deadline waits too (the
 * ones ahead have theirs) */
static void tls_enqueue(tw_session *ss) {
  tw_client *c = ss->c;
  ss->tls_waiting = true;
  uv_timer_stop(&ss->timer);
  ss->tls_wprev = c->tls_wait_tail;
  if (c->tls_wait_tail) c->tls_wait_tail->tls_wnext = ss;
  else c->tls_wait = ss;
  c->tls_wait_tail = ss;
}

static void tls_unwait(tw_session *ss) {
  if (!ss->tls_waiting) return;
  ss->tls_waiting = false;
  tw_client *c = ss->c;
  if (ss->tls_wprev) ss->tls_wprev->tls_wnext = ss->tls_wnext;
  else c->tls_wait = ss->tls_wnext;
  if (ss->tls_wnext) ss->tls_wnext->tls_wprev = ss->tls_wprev;
  else c->tls_wait_tail = ss->tls_wprev;
  ss->tls_wnext = ss->tls_wprev = NULL;
}

static void tls_connected(tw_session *ss);

static void tls_hs_end(tw_session *ss) {
  if (!ss->tls_hs) return;
  ss->tls_hs = false;
  tw_client *c = ss->c;
  c->tls_handshaking--;
  /* the next connection waiting for a slot starts its handshake */
  while (c->tls_wait && (!c->tls_handshakes || c->tls_handshaking < c->tls_handshakes)) {
    tw_session *w = c->tls_wait;
    tls_unwait(w);
    /* the wait for a slot is ours, not the server's: the welcome deadline starts now */
    uv_timer_start(&w->timer, on_watchdog, w->welcome_ms, 0);
    tls_connected(w);
  }
}

static bool tls_start(tw_session *ss) {
  SSL_CTX *ctx = client_ssl_ctx(ss->c);
  BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
  ss->ssl = ctx ? SSL_new(ctx) : NULL;
  if (!ss->ssl || !rb || !wb) {
    BIO_free(rb);
    BIO_free(wb);
    return false;
  }
  SSL_set_bio(ss->ssl, rb, wb);
  SSL_set_connect_state(ss->ssl);
  tls_hs_begin(ss);
  ss->t13 = calloc(1, sizeof *ss->t13);
  if (ss->t13) tw_tls13_watch(ss->t13, ss->ssl); /* without it OpenSSL keeps the connection */
  X509_VERIFY_PARAM *vp = SSL_get0_param(ss->ssl);
  if (X509_VERIFY_PARAM_set1_ip_asc(vp, ss->sni) != 1) { /* a name, not an address */
    SSL_set_tlsext_host_name(ss->ssl, ss->sni);
    SSL_set1_host(ss->ssl, ss->sni);
  }
  return true;
}

/* Runs the handshake on; true once it is done. */
static bool tls_handshake(tw_session *ss) {
  if (ss->tls_up) return true;
  int r = SSL_do_handshake(ss->ssl);
  if (r == 1) {
    ss->tls_up = true;
    tls_hs_end(ss);
    return true;
  }
  int e = SSL_get_error(ss->ssl, r);
  if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) tls_error(ss, "TLS handshake failed");
  return false;
}

static bool tls_pending_out(const tw_session *ss) { return ss->ssl && BIO_ctrl_pending(SSL_get_wbio(ss->ssl)) > 0; }

static void on_plain(tw_session *ss, const unsigned char *in, size_t len);

#define TLS_BUF 262144 /* plaintext per pass: as much as one read of lws's (pt_serv_buf_size) */

/* The plaintext buffer of a read pass: the client's, or (a read nested inside a handler
 * while the client's is being parsed) one of its own. */
static unsigned char *tls_buf_get(tw_client *c, bool *own) {
  *own = c->tls_buf_busy;
  unsigned char *buf = *own ? malloc(TLS_BUF) : c->tls_buf ? c->tls_buf : malloc(TLS_BUF);
  if (buf && !*own) {
    c->tls_buf = buf;
    c->tls_buf_busy = true;
  }
  return buf;
}

static void tls_buf_put(tw_client *c, unsigned char *buf, bool own) {
  if (own) free(buf);
  else c->tls_buf_busy = false;
}

/* OpenSSL is done with the connection once it is TLS 1.3 and at a record boundary: the
 * record layer goes on in tls13.c and the SSL object (~20 KB) is freed. Connections
 * OpenSSL keeps (TLS 1.2) stop trying. */
static void tls_takeover(tw_session *ss) {
  int r = tw_tls13_take(ss->t13, ss->ssl);
  if (r == 1) {
    SSL_free(ss->ssl);
    ss->ssl = NULL;
    ss->c->stats.tls_takeovers++;
  } else if (ss->t13->never) {
    SSL_set_msg_callback(ss->ssl, NULL);
    SSL_set_app_data(ss->ssl, NULL);
    tw_tls13_free(ss->t13);
    free(ss->t13);
    ss->t13 = NULL;
  }
}

/* ciphertext in, once tls13.c runs the connection: records decrypted straight from lws's
 * buffer into the plaintext buffer */
static void tls13_rx(tw_session *ss, const unsigned char *in, size_t len) {
  tw_client *c = ss->c;
  bool own;
  unsigned char *buf = tls_buf_get(c, &own);
  if (!buf) {
    kill_wsi(ss, "out of memory");
    return;
  }
  while (!ss->gone && READING(ss)) {
    size_t used = 0, n = 0;
    char why[128];
    int r = tw_tls13_open(ss->t13, in, len, &used, buf, TLS_BUF, &n, why, sizeof why);
    in += used;
    len -= used;
    if (n) on_plain(ss, buf, n);
    if (r != TW_TLS13_OK) {
      kill_wsi(ss, why);
      break;
    }
    if (!len || (!used && !n)) break;
  }
  tls_buf_put(c, buf, own);
  if (ss->wsi && (ss->t13->ku_reply || ss->req || ss->out_len)) lws_callback_on_writable(ss->wsi);
}

/* ciphertext in: decrypt everything available and hand it on in large pieces */
static void tls_rx(tw_session *ss, const unsigned char *in, size_t len) {
  if (ss->t13 && ss->t13->active) {
    tls13_rx(ss, in, len);
    return;
  }
  /* OpenSSL reads the ciphertext where lws put it (a read-only memory BIO over this read,
   * at most pt_serv_buf_size): no copy into a growing memory BIO, which would also keep
   * its largest size for the life of the session. Every read is consumed before this
   * returns (a partial record waits in OpenSSL's own buffer). */
  BIO *rb = BIO_new_mem_buf(in, (int)len);
  if (!rb) {
    kill_wsi(ss, "out of memory");
    return;
  }
  BIO_set_mem_eof_return(rb, -1); /* an empty read means "more later", not end of stream */
  SSL_set0_rbio(ss->ssl, rb);
  if (!tls_handshake(ss)) {
    if (tls_pending_out(ss) && ss->wsi) lws_callback_on_writable(ss->wsi);
    return;
  }
  /* Plaintext goes into one buffer per client, allocated once: every read of every
   * session decrypts into it and is parsed in place from it. OpenSSL's own record
   * buffers are released between reads (SSL_MODE_RELEASE_BUFFERS), so an idle session
   * holds none. Only a read nested inside a handler (a loop run from inside a
   * callback) while the shared buffer is being parsed gets a buffer of its own. */
  tw_client *c = ss->c;
  bool own;
  unsigned char *buf = tls_buf_get(c, &own);
  if (!buf) {
    kill_wsi(ss, "out of memory");
    return;
  }
  for (;;) {
    size_t n = 0;
    int r = 0;
    while (n < TLS_BUF && (r = SSL_read(ss->ssl, buf + n, (int)(TLS_BUF - n))) > 0) n += (size_t)r;
    if (n) on_plain(ss, buf, n);
    if (ss->gone || ss->st == ST_CLOSING) break;
    if (r > 0) continue; /* buffer full: more to read */
    int e = SSL_get_error(ss->ssl, r);
    if (e == SSL_ERROR_ZERO_RETURN) kill_wsi(ss, "TLS connection closed by the server");
    else if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) tls_error(ss, "TLS read failed");
    break;
  }
  tls_buf_put(c, buf, own);
  /* The SSL_read that found nothing more left OpenSSL's read buffer (~16 KB) allocated:
   * SSL_MODE_RELEASE_BUFFERS releases it only after a record, so an idle session would
   * keep it. Freed here unless a partial record waits in it (then this is a no-op). */
  if (ss->ssl && !ss->gone) SSL_free_buffers(ss->ssl);
  if (ss->t13 && ss->ssl && ss->tls_up && !ss->gone && READING(ss) && !ss->req) tls_takeover(ss);
  if (ss->wsi && (tls_pending_out(ss) || ss->req || ss->out_len)) lws_callback_on_writable(ss->wsi);
}

/* the socket is connected (and, for wss, a handshake slot free): TLS starts, or the
 * upgrade request goes out */
static void tls_connected(tw_session *ss) {
  if (ss->gone || !ss->wsi || ss->st != ST_HANDSHAKE || ss->c->freeing) return;
  if (ss->tls && (!tls_start(ss) || (tls_handshake(ss), ss->gone))) {
    if (!ss->gone) kill_wsi(ss, "TLS could not start");
    return;
  }
  lws_callback_on_writable(ss->wsi);
}

static int ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
  tw_session *ss = wsi ? lws_get_opaque_user_data(wsi) : NULL;
  (void)user;
  switch (reason) {
  case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
    if (ss) {
      snprintf(ss->why, sizeof ss->why, "connection failed: %.*s", in ? (int)strnlen(in, 100) : 7,
               in ? (const char *)in : "unknown");
      ss->close_code = 0;
      session_gone(ss);
    }
    break;
  case LWS_CALLBACK_RAW_CONNECTED:
    if (ss) {
      ss->st = ST_HANDSHAKE;
      build_request(ss);
      tw_client *c = ss->c;
      if (ss->tls && c->tls_handshakes && c->tls_handshaking >= c->tls_handshakes) {
        tls_enqueue(ss); /* its handshake starts when one in flight is done */
        break;
      }
      tls_connected(ss);
    }
    break;
  case LWS_CALLBACK_RAW_RX:
    if (!ss || ss->gone || !in) break;
    if (ss->tls) tls_rx(ss, in, len);
    else on_plain(ss, in, len);
    break;
  case LWS_CALLBACK_RAW_WRITEABLE: {
    if (!ss || (ss->tls && !ss->ssl && !(ss->t13 && ss->t13->active))) break; /* TLS not started yet */
    unsigned char buf[LWS_PRE + 4096];
    unsigned char *p = buf + LWS_PRE;
    size_t n = 0, cap = sizeof buf - LWS_PRE;
    bool can_send = !ss->tls || ss->tls_up;
    if (ss->req && can_send) { /* the upgrade request, once (after the TLS handshake) */
      size_t rn = strlen(ss->req);
      if (rn <= cap) {
        memcpy(p, ss->req, rn);
        n = rn;
      }
      free(ss->req);
      ss->req = NULL;
    }
    if (ss->out_len && can_send && n + ss->out_len <= cap) { /* control frames */
      memcpy(p + n, ss->out, ss->out_len);
      n += ss->out_len;
      ss->out_len = 0;
    }
    if (ss->t13 && ss->t13->active) { /* tls13.c: one record (the buffer holds at most 4096) */
      unsigned char rec[LWS_PRE + 4096 + 2 * TW_TLS13_REC_OVERHEAD + 5];
      size_t rn = n || ss->t13->ku_reply ? tw_tls13_seal(ss->t13, p, n, rec + LWS_PRE) : 0;
      if ((n || ss->t13->ku_reply) && !rn) {
        kill_wsi(ss, "TLS write failed");
        break;
      }
      if (rn && lws_write(wsi, rec + LWS_PRE, rn, LWS_WRITE_RAW) < (int)rn) return -1;
      if (ss->out_len && can_send) lws_callback_on_writable(wsi);
      break;
    }
    if (ss->tls) {
      if (n && SSL_write(ss->ssl, p, (int)n) <= 0) {
        tls_error(ss, "TLS write failed");
        break;
      }
      int r = BIO_read(SSL_get_wbio(ss->ssl), p, (int)cap);
      n = r > 0 ? (size_t)r : 0;
    }
    if (n && lws_write(wsi, p, n, LWS_WRITE_RAW) < (int)n) return -1;
    if (tls_pending_out(ss) || (ss->out_len && can_send)) lws_callback_on_writable(wsi);
    break;
  }
  case LWS_CALLBACK_RAW_CLOSE:
    if (ss) {
      if (!ss->close_code && !ss->want_close && !ss->why[0]) snprintf(ss->why, sizeof ss->why, "connection lost");
      session_gone(ss);
    }
    break;
  case LWS_CALLBACK_WSI_DESTROY:
    if (ss) {
      lws_set_opaque_user_data(wsi, NULL);
      ss->wsi_alive = false;
      if (!ss->opening) {
        session_gone(ss);
        maybe_free(ss);
      } else {
        ss->gone = true;
        ss->wsi = NULL;
      }
    }
    break;
  default:
    break;
  }
  return 0;
}

static const struct lws_protocols protocols[] = {
    {"twconduit-eventsub", ws_callback, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

int tw_ws_init(tw_client *c, tw_error *err) {
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  void *loops[1] = {c->loop};
  info.port = CONTEXT_PORT_NO_LISTEN;
  info.protocols = protocols;
  info.options = LWS_SERVER_OPTION_LIBUV;
  info.foreign_loops = loops;
  info.pcontext = &c->lws;
  info.user = c;
  info.timeout_secs = 15;
  info.pt_serv_buf_size = 262144; /* one read takes many notifications (a buffer per loop, not per
                                   * socket): 64 KB reads cost 0.6 us of system time per 1.7 KB
                                   * notification on one busy shard, 256 KB reads 0.4 us */
  c->lws = lws_create_context(&info);
  /* with a foreign loop a failed creation may hand back a context already tearing down */
  if (!c->lws || !lws_get_vhost_by_name(c->lws, "default")) {
    tw_err_set(err, "websocket_init", 0,
               "libwebsockets could not start on libuv (is the package libwebsockets-evlib-uv installed?)");
    if (c->lws) {
      tw_ws_destroy_begin(c);
      for (int i = 0; i < 100 && uv_loop_alive(c->loop); i++) uv_run(c->loop, UV_RUN_NOWAIT);
      tw_ws_destroy_end(c);
    }
    return -1;
  }
  return 0;
}

void tw_ws_destroy_begin(tw_client *c) {
  if (c->lws) lws_context_destroy(c->lws);
}

void tw_ws_destroy_end(tw_client *c) {
  if (c->lws) lws_context_destroy(c->lws); /* the second call completes it (and NULLs c->lws) */
  c->lws = NULL;
  if (c->ssl_ctx) SSL_CTX_free(c->ssl_ctx);
  c->ssl_ctx = NULL;
  free(c->tls_buf);
  c->tls_buf = NULL;
}

tw_session *tw_ws_open(tw_client *c, const char *url, const tw_session_ops *ops, void *owner, uint64_t *bytes) {
  if (!c->lws || c->freeing) return NULL;
  char buf[2048];
  if (url && strlen(url) >= sizeof buf) return NULL; /* never cut a URL */
  if (url) {
    snprintf(buf, sizeof buf, "%s", url);
  } else if (c->keepalive_s) {
    snprintf(buf, sizeof buf, "%s%ckeepalive_timeout_seconds=%d", c->eventsub_ws, strchr(c->eventsub_ws, '?') ? '&' : '?',
             c->keepalive_s);
  } else {
    snprintf(buf, sizeof buf, "%s", c->eventsub_ws);
  }
  const char *prot = NULL, *addr = NULL, *path = NULL;
  int port = 0;
  char parsed[2048];
  snprintf(parsed, sizeof parsed, "%s", buf);
  if (lws_parse_uri(parsed, &prot, &addr, &port, &path) || !addr || !*addr) return NULL;
  bool tls = strcmp(prot, "wss") == 0 || strcmp(prot, "https") == 0;
  if (!tls && strcmp(prot, "ws") != 0 && strcmp(prot, "http") != 0) return NULL;
  tw_session *ss = calloc(1, sizeof *ss);
  if (!ss) return NULL;
  char tmp[2100];
  snprintf(tmp, sizeof tmp, "/%s", path ? path : "");
  ss->path = tw_strdup(tmp);
  if ((tls && port == 443) || (!tls && port == 80)) snprintf(tmp, sizeof tmp, "%s", addr);
  else snprintf(tmp, sizeof tmp, "%s:%d", addr, port);
  ss->host = tw_strdup(tmp);
  ss->tls = tls;
  ss->sni = tw_strdup(addr);
  if (!ss->path || !ss->host || !ss->sni) {
    free(ss->sni);
    free(ss->path);
    free(ss->host);
    free(ss);
    return NULL;
  }
  ss->c = c;
  ss->ops = ops;
  ss->owner = owner;
  ss->bytes = bytes;
  ss->lnext = c->sessions;
  if (c->sessions) c->sessions->lprev = ss;
  c->sessions = ss;
  c->nsessions++;
  uv_timer_init(c->loop, &ss->timer);
  ss->timer.data = ss;
  ss->last_rx = uv_now(c->loop);
  /* a welcome must come soon after connecting (a reconnect target's: tw_ws_reconnect_target) */
  ss->welcome_ms = (uint64_t)(c->welcome_timeout_s * 1000);
  uv_timer_start(&ss->timer, on_watchdog, ss->welcome_ms, 0);

  struct lws_client_connect_info i;
  memset(&i, 0, sizeof i);
  i.context = c->lws;
  i.address = addr;
  i.port = port;
  i.path = ss->path;
  i.host = addr;
  i.origin = addr;
  i.method = "RAW"; /* lws carries bytes; TLS and the websocket protocol are ours */
  i.ssl_connection = 0;
  i.local_protocol_name = protocols[0].name;
  i.pwsi = &ss->wsi;
  i.opaque_user_data = ss;
  i.retry_and_idle_policy = NULL;
  c->stats.ws_connects++;
  ss->opening = true;
  ss->wsi_alive = true;
  struct lws *w = lws_client_connect_via_info(&i);
  ss->opening = false;
  if (!w) ss->wsi_alive = false; /* no wsi left behind (destroyed already, or never made) */
  if (!w || ss->gone) {
    /* failed before returning: report asynchronously like any other end */
    ss->wsi = NULL;
    ss->gone = false;
    if (!ss->why[0]) snprintf(ss->why, sizeof ss->why, "could not start the connection");
    session_gone(ss);
  }
  return ss;
}

void tw_ws_reconnect_target(tw_session *ss) {
  if (!ss || ss->gone || !ss->wsi || ss->welcomed || ss->st == ST_CLOSING) return;
  ss->welcome_ms = (uint64_t)(ss->c->reconnect_welcome_timeout_s * 1000);
  if (!ss->tls_waiting) uv_timer_start(&ss->timer, on_watchdog, ss->welcome_ms, 0);
}

void tw_ws_close(tw_session *ss, int code) {
  if (!ss || ss->gone || !ss->wsi || ss->want_close) return;
  ss->want_close = code ? code : 1000;
  if (ss->st == ST_OPEN) send_close(ss, ss->want_close);
  else kill_wsi(ss, NULL); /* not open yet: nothing to say, just go */
}

void tw_ws_set_owner(tw_session *ss, const tw_session_ops *ops, void *owner, uint64_t *bytes) {
  if (!ss || ss->reported) return;
  ss->ops = ops;
  ss->owner = owner;
  ss->bytes = bytes;
}

const char *tw_ws_session_id(const tw_session *ss) { return ss ? ss->session_id : NULL; }
bool tw_ws_welcomed(const tw_session *ss) { return ss && ss->welcomed; }

void tw_ws_close_all(tw_client *c, int code) {
  for (tw_session *ss = c->sessions; ss; ss = ss->lnext) tw_ws_close(ss, code);
}

size_t tw_ws_live(const tw_client *c) { return c->nsessions; }

/* ---- a session without a socket, fed by hand (the frame-reader fuzzer) ---- */

tw_session *tw_ws_detached(tw_client *c, const tw_session_ops *ops, void *owner, bool handshake) {
  tw_session *ss = calloc(1, sizeof *ss);
  if (!ss) return NULL;
  ss->c = c;
  ss->ops = ops;
  ss->owner = owner;
  ss->lnext = c->sessions;
  if (c->sessions) c->sessions->lprev = ss;
  c->sessions = ss;
  c->nsessions++;
  uv_timer_init(c->loop, &ss->timer);
  ss->timer.data = ss;
  ss->last_rx = uv_now(c->loop);
  ss->st = handshake ? ST_HANDSHAKE : ST_OPEN;
  snprintf(ss->key, sizeof ss->key, "dGhlIHNhbXBsZSBub25jZQ=="); /* RFC 6455's example key */
  return ss;
}

void tw_ws_feed(tw_session *ss, const void *p, size_t n) { on_plain(ss, p, n); }

void tw_ws_detached_free(tw_session *ss) {
  ss->reported = true;
  ss->ops = NULL;
  maybe_free(ss); /* the timer's close callback frees it: run the loop once */
}
