/* ws.c - EventSub websocket sessions on libwebsockets (libuv event-lib, foreign loop).
 *
 * A session is one socket. It parses every message once (tw_json), answers nothing but
 * pongs (lws does that), watches the keepalive, and reports to its shard: welcome,
 * session_reconnect, notifications/revocations (through tw_shard_deliver), and its end
 * (tw_shard_on_closed, deferred to a timer so the shard never re-enters itself). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct tw_session {
  tw_client *c;
  tw_shard *shard; /* NULL once detached */
  struct lws *wsi;
  uv_timer_t timer; /* welcome deadline, then keepalive watchdog, then deferred report */
  tw_buf rx;
  bool rx_overflow;
  char *session_id;
  uint64_t last_rx;
  uint64_t limit_ms; /* silence tolerated */
  int close_code;
  char why[128];
  bool welcomed, gone, reported, opening, closing_sent;
  bool wsi_alive; /* lws still holds a wsi pointing at us: free only after WSI_DESTROY */
  bool freeing;
  int want_close; /* close code to send when writeable */
};

static void session_free_cb(uv_handle_t *h) {
  tw_session *ss = h->data;
  tw_buf_free(&ss->rx);
  free(ss->session_id);
  free(ss);
}

static void maybe_free(tw_session *ss) {
  if (!ss->reported || ss->wsi_alive || ss->freeing) return;
  ss->freeing = true;
  uv_close((uv_handle_t *)&ss->timer, session_free_cb);
}

static void on_report(uv_timer_t *t) {
  tw_session *ss = t->data;
  if (ss->reported) return;
  ss->reported = true;
  uv_timer_stop(&ss->timer);
  tw_shard *s = ss->shard;
  ss->shard = NULL;
  if (s) tw_shard_on_closed(s, ss, ss->close_code, ss->why);
  maybe_free(ss);
}

/* the socket is gone: report to the shard from a fresh timer callback */
static void session_gone(tw_session *ss) {
  if (ss->gone) return;
  ss->gone = true;
  ss->wsi = NULL;
  uv_timer_stop(&ss->timer);
  uv_timer_start(&ss->timer, on_report, 0, 0);
}

static void kill_wsi(tw_session *ss, const char *why) {
  if (!ss->wsi) return;
  if (why && !ss->why[0]) snprintf(ss->why, sizeof ss->why, "%s", why);
  lws_set_timeout(ss->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
}

static void on_watchdog(uv_timer_t *t) {
  tw_session *ss = t->data;
  if (ss->gone) return;
  uint64_t now = uv_now(ss->c->loop);
  if (!ss->welcomed) {
    ss->close_code = 0;
    kill_wsi(ss, "no welcome message in time");
    return;
  }
  uint64_t silent = now - ss->last_rx;
  if (silent >= ss->limit_ms) {
    char why[96];
    snprintf(why, sizeof why, "no message for %.1f s (keepalive watchdog)", (double)silent / 1000.0);
    kill_wsi(ss, why);
    return;
  }
  uv_timer_start(&ss->timer, on_watchdog, ss->limit_ms - silent, 0);
}

static void bad_message(tw_session *ss, const char *code, const char *fmt, const char *detail) {
  tw_client *c = ss->c;
  c->stats.bad_messages++;
  tw_error e;
  tw_err_set(&e, code, 0, fmt, detail);
  tw_shard *s = ss->shard;
  tw_emit_error(c, s ? tw_shard_conduit(s) : NULL, s, &e);
}

static void handle_message(tw_session *ss, const char *p, size_t n) {
  tw_client *c = ss->c;
  char perr[128];
  tw_json *d = tw_json_parse(p, n, perr, sizeof perr);
  if (!d) {
    bad_message(ss, "bad_message", "malformed message from EventSub: %s", perr);
    return;
  }
  tw_jnode md = tw_json_get(d, 0, "metadata", 8);
  tw_jnode pl = tw_json_get(d, 0, "payload", 7);
  const char *type = tw_json_str(d, tw_json_get(d, md, "message_type", 12), NULL);
  if (!type || pl == TW_JNONE) {
    bad_message(ss, "bad_message", "%s", "EventSub message without metadata.message_type or payload");
    tw_json_unref(d);
    return;
  }
  tw_shard *s = ss->shard;
  if (strcmp(type, "notification") == 0 || strcmp(type, "revocation") == 0) {
    bool notif = type[0] == 'n';
    tw_event ev = {.type = notif ? TW_EV_NOTIFICATION : TW_EV_REVOCATION,
                   .doc = d,
                   .metadata = md,
                   .subscription = tw_json_get(d, pl, "subscription", 12),
                   .event = TW_JNONE};
    if (notif) {
      ev.event = tw_json_get(d, pl, "event", 5);
      if (ev.event == TW_JNONE) ev.event = tw_json_get(d, pl, "events", 6);
    }
    ev.message_id = tw_json_str(d, tw_json_get(d, md, "message_id", 10), NULL);
    ev.subscription_type = tw_json_str(d, tw_json_get(d, md, "subscription_type", 17), NULL);
    if (!ev.subscription_type) ev.subscription_type = tw_json_str(d, tw_json_get(d, ev.subscription, "type", 4), NULL);
    ev.status = tw_json_str(d, tw_json_get(d, ev.subscription, "status", 6), NULL);
    if (!ev.message_id || !ev.subscription_type || ev.subscription == TW_JNONE || (notif && ev.event == TW_JNONE)) {
      bad_message(ss, "bad_message", "%s", "notification without message_id, subscription type or event");
    } else if (s) {
      tw_shard_deliver(s, &ev);
    } else {
      /* a detached session (its conduit closed): delivered without a shard */
      tw_client_deliver(c, &ev, NULL);
    }
  } else if (strcmp(type, "session_keepalive") == 0) {
    if (s) tw_shard_count_keepalive(s);
  } else if (strcmp(type, "session_welcome") == 0) {
    tw_jnode sess = tw_json_get(d, pl, "session", 7);
    size_t idn = 0;
    const char *id = tw_json_str(d, tw_json_get(d, sess, "id", 2), &idn);
    tw_jnode ka = tw_json_get(d, sess, "keepalive_timeout_seconds", 25);
    if (!id || !idn) {
      bad_message(ss, "bad_message", "%s", "session_welcome without a session id");
    } else {
      free(ss->session_id);
      ss->session_id = tw_strndup(id, idn);
      ss->welcomed = true;
      double k = ka != TW_JNONE && tw_json_type(d, ka) == TW_JSON_INT ? tw_json_num(d, ka) : 10;
      if (k < 1) k = 10;
      ss->limit_ms = (uint64_t)((k + c->keepalive_slack_s) * 1000);
      uv_timer_start(&ss->timer, on_watchdog, ss->limit_ms, 0);
      if (s) tw_shard_on_welcome(s, ss, ss->session_id);
    }
  } else if (strcmp(type, "session_reconnect") == 0) {
    const char *url = tw_json_str(d, tw_json_getp(d, pl, "session.reconnect_url"), NULL);
    if (!url || !*url) bad_message(ss, "bad_message", "%s", "session_reconnect without reconnect_url");
    else if (s) tw_shard_on_reconnect_request(s, ss, url);
  } else {
    bad_message(ss, "unknown_message", "unknown EventSub message type '%s' (ignored)", type);
  }
  tw_json_unref(d);
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
  case LWS_CALLBACK_CLIENT_ESTABLISHED:
    if (ss) ss->last_rx = uv_now(ss->c->loop);
    break;
  case LWS_CALLBACK_CLIENT_RECEIVE: {
    if (!ss || ss->gone) break;
    tw_client *c = ss->c;
    ss->last_rx = uv_now(c->loop);
    int first = lws_is_first_fragment(wsi), fin = lws_is_final_fragment(wsi);
    if (lws_frame_is_binary(wsi)) {
      if (fin) bad_message(ss, "bad_message", "%s", "binary websocket message (ignored)");
      break;
    }
    if (first && fin && ss->rx.len == 0 && !ss->rx_overflow) { /* the common case: no copy */
      if (len > c->max_message_bytes) bad_message(ss, "message_too_large", "%s", "websocket message over max_message_bytes");
      else handle_message(ss, in, len);
      break;
    }
    if (first) {
      ss->rx.len = 0;
      ss->rx_overflow = false;
    }
    if (!ss->rx_overflow) {
      if (ss->rx.len + len > c->max_message_bytes) {
        ss->rx_overflow = true;
        tw_buf_free(&ss->rx);
      } else if (tw_buf_append(&ss->rx, in, len) != 0) {
        ss->rx_overflow = true;
        tw_buf_free(&ss->rx);
      }
    }
    if (fin) {
      if (ss->rx_overflow) bad_message(ss, "message_too_large", "%s", "websocket message over max_message_bytes");
      else handle_message(ss, ss->rx.p, ss->rx.len);
      ss->rx_overflow = false;
      tw_buf_free(&ss->rx); /* idle sessions hold no buffer */
    }
    break;
  }
  case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    if (ss && in && len >= 2) {
      const unsigned char *b = in;
      ss->close_code = (b[0] << 8) | b[1];
      size_t rl = len - 2 < sizeof ss->why - 1 ? len - 2 : sizeof ss->why - 1;
      if (rl) {
        memcpy(ss->why, b + 2, rl);
        ss->why[rl] = 0;
      }
    } else if (ss) {
      ss->close_code = 1005;
    }
    break;
  case LWS_CALLBACK_CLIENT_WRITEABLE:
    if (ss && ss->want_close) {
      lws_close_reason(wsi, (enum lws_close_status)ss->want_close, NULL, 0);
      return -1;
    }
    break;
  case LWS_CALLBACK_CLIENT_CLOSED:
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
  if (strncmp(c->eventsub_ws, "wss://", 6) == 0) info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
  info.foreign_loops = loops;
  info.pcontext = &c->lws;
  info.user = c;
  info.timeout_secs = 15;
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
  c->lws_ok = true;
  return 0;
}

void tw_ws_destroy_begin(tw_client *c) {
  if (c->lws) lws_context_destroy(c->lws);
}

void tw_ws_destroy_end(tw_client *c) {
  if (c->lws) lws_context_destroy(c->lws); /* the second call completes it (and NULLs c->lws) */
  c->lws = NULL;
}

tw_session *tw_ws_open(tw_shard *s, const char *url, bool is_reconnect) {
  tw_client *c = tw_shard_client(s);
  if (!c->lws) return NULL;
  char buf[2048];
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
  char fullpath[2048];
  snprintf(fullpath, sizeof fullpath, "/%s", path ? path : "");

  tw_session *ss = calloc(1, sizeof *ss);
  if (!ss) return NULL;
  ss->c = c;
  ss->shard = s;
  uv_timer_init(c->loop, &ss->timer);
  ss->timer.data = ss;
  ss->last_rx = uv_now(c->loop);
  /* a welcome must come soon after connecting */
  uv_timer_start(&ss->timer, on_watchdog, 15000, 0);

  struct lws_client_connect_info i;
  memset(&i, 0, sizeof i);
  i.context = c->lws;
  i.address = addr;
  i.port = port;
  i.path = fullpath;
  i.host = addr;
  i.origin = addr;
  i.ssl_connection = tls ? LCCSCF_USE_SSL : 0;
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
  (void)is_reconnect;
  if (!w || ss->gone) {
    /* failed before returning: report asynchronously like any other end */
    ss->wsi = NULL;
    ss->gone = false;
    if (!ss->why[0]) snprintf(ss->why, sizeof ss->why, "could not start the connection");
    session_gone(ss);
  }
  return ss;
}

void tw_ws_close(tw_session *ss, int code) {
  if (!ss || ss->gone || !ss->wsi) return;
  if (ss->want_close) return;
  ss->want_close = code ? code : 1000;
  lws_callback_on_writable(ss->wsi);
}

void tw_ws_detach(tw_session *ss) {
  if (ss) ss->shard = NULL;
}

const char *tw_ws_session_id(const tw_session *ss) { return ss ? ss->session_id : NULL; }
