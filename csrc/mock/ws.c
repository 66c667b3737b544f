/* EventSub websocket sessions, conduit routing, the ledger and delivery. */
#include "mock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH_BYTES (256 * 1024)

static void conn_end(conn_t *c);

/* ---------------- ledger ---------------- */

lent_t *ledger_get(uint64_t seq)
{
    if (seq <= M->ledger_base || seq > M->ledger_base + M->nledger)
        return NULL;
    return M->ledger[seq - M->ledger_base - 1];
}

static lent_t *ledger_new(void)
{
    M->ledger = xgrow(M->ledger, M->nledger, &M->capledger, 1024, sizeof *M->ledger);
    lent_t *e = xcalloc(1, sizeof *e);
    M->ledger[M->nledger++] = e;
    e->seq = M->ledger_base + M->nledger;
    e->shard = -1;
    return e;
}

void ledger_set(uint64_t seq, int status, const char *reason)
{
    lent_t *e = ledger_get(seq);
    if (!e || e->status != L_PENDING)
        return;
    e->status = status;
    if (reason)
        e->reason = reason;
    if (e->nattempts > 0) {
        attempt_t *a = &e->att[e->nattempts - 1];
        if (a->result && !strcmp(a->result, "queued"))
            a->result = status == L_DELIVERED ? "delivered" : "dropped";
    }
    if (status == L_DELIVERED)
        M->n_delivered++;
    else if (status == L_DROPPED)
        M->n_dropped++;
}

static void ledger_attempt(lent_t *e, int shard, const char *sid, const char *result)
{
    if (!e)
        return;
    if (e->nattempts >= MAX_ATTEMPTS) {
        /* keep the last slot current */
        e->nattempts = MAX_ATTEMPTS - 1;
    }
    attempt_t *a = &e->att[e->nattempts++];
    a->shard = shard;
    snprintf(a->session_id, sizeof a->session_id, "%s", sid ? sid : "");
    a->result = result;
    e->shard = shard;
    snprintf(e->session_id, sizeof e->session_id, "%s", sid ? sid : "");
}

void ledger_free_all(void)
{
    for (size_t i = 0; i < M->nledger; i++) {
        free(M->ledger[i]->type);
        free(M->ledger[i]->channel);
        free(M->ledger[i]);
    }
    free(M->ledger);
    M->ledger = NULL;
    M->ledger_base += M->nledger;
    M->nledger = M->capledger = 0;
    M->n_delivered = M->n_dropped = 0;
    M->blast_delivered = M->blast_dropped = 0;
}

/* ---------------- sessions ---------------- */

session_t *find_session(const char *id)
{
    if (!id || !M->sess_hash)
        return NULL;
    for (session_t *s = M->sess_hash[fnv1a(id) & (M->sess_hash_cap - 1)]; s; s = s->hnext)
        if (!strcmp(s->id, id))
            return s;
    return NULL;
}

/* adds a session already linked into M->sessions to the id index */
static void session_index(session_t *s)
{
    M->nsessions++;
    if (M->nsessions > M->sess_hash_cap / 2) {
        size_t nc = M->sess_hash_cap ? M->sess_hash_cap * 2 : 1024;
        free(M->sess_hash);
        M->sess_hash = xcalloc(nc, sizeof *M->sess_hash);
        M->sess_hash_cap = nc;
        for (session_t *x = M->sessions; x; x = x->next) {
            size_t b = fnv1a(x->id) & (nc - 1);
            x->hnext = M->sess_hash[b];
            M->sess_hash[b] = x;
        }
        return;
    }
    size_t b = fnv1a(s->id) & (M->sess_hash_cap - 1);
    s->hnext = M->sess_hash[b];
    M->sess_hash[b] = s;
}

int session_live(session_t *s)
{
    return s && s->connected && s->cur && s->cur->welcomed && !s->cur->closing;
}

static void gen_session_id(char out[ID_LEN])
{
    static const char al[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    strcpy(out, "AgoQ");
    for (int i = 4; i < 28; i++)
        out[i] = al[rnd64() & 63];
    out[28] = 0;
}

void enqueue_conn(conn_t *c, const char *data, size_t len, uint64_t seq)
{
    outmsg_t *m = xmalloc(sizeof *m + len + 1);
    m->next = NULL;
    m->seq = seq;
    m->is_close = 0;
    m->len = len;
    memcpy(m->data, data, len);
    m->data[len] = 0;
    if (c->qtail)
        c->qtail->next = m;
    else
        c->qhead = m;
    c->qtail = m;
    c->qlen++;
    if (c->wsi)
        lws_callback_on_writable(c->wsi);
}

static void meta_begin(buf_t *b, const char *type, const char *msg_id, const char *ts)
{
    buf_printf(b, "{\"metadata\":{\"message_id\":\"%s\",\"message_type\":\"%s\","
                  "\"message_timestamp\":\"%s\"",
               msg_id, type, ts);
}

static void send_welcome(conn_t *c)
{
    session_t *s = c->sess;
    char id[ID_LEN], ts[40];
    gen_uuid(id);
    fmt_time(wall_now(), ts);
    buf_t b = {0};
    meta_begin(&b, "session_welcome", id, ts);
    buf_printf(&b, "},\"payload\":{\"session\":{\"id\":\"%s\",\"status\":\"connected\","
                   "\"connected_at\":\"%s\",\"keepalive_timeout_seconds\":%d,"
                   "\"reconnect_url\":null,\"recovery_url\":null}}}",
               s->id, s->connected_at, c->keepalive);
    enqueue_conn(c, b.p, b.len, 0);
    buf_free(&b);
    c->welcomed = 1;
}

static void send_keepalive(conn_t *c)
{
    char id[ID_LEN], ts[40];
    gen_uuid(id);
    fmt_time(wall_now(), ts);
    buf_t b = {0};
    meta_begin(&b, "session_keepalive", id, ts);
    buf_adds(&b, "},\"payload\":{}}");
    enqueue_conn(c, b.p, b.len, 0);
    buf_free(&b);
}

static const char *status_for_code(int code)
{
    switch (code) {
    case 4000: return "websocket_internal_error";
    case 4001: return "websocket_received_inbound_traffic";
    case 4002: return "websocket_failed_ping_pong";
    case 4003: return "websocket_connection_unused";
    case 4004: return "websocket_failed_to_reconnect";
    case 4005: return "websocket_network_timeout";
    case 4006: return "websocket_network_error";
    default: return "websocket_disconnected";
    }
}

static const char *reason_for_code(int code)
{
    switch (code) {
    case 4000: return "internal server error";
    case 4001: return "sent inbound traffic";
    case 4002: return "failed ping pong";
    case 4003: return "connection unused";
    case 4004: return "reconnect grace time expired";
    case 4005: return "network timeout";
    case 4006: return "network error";
    case 4007: return "invalid reconnect";
    default: return "";
    }
}

static void conn_close(conn_t *c, int code, const char *reason)
{
    if (!c || c->closing)
        return;
    c->closing = 1;
    c->close_code = code;
    snprintf(c->close_reason, sizeof c->close_reason, "%s",
             reason && *reason ? reason : reason_for_code(code));
    c->end_status = status_for_code(code);
    if (c->wsi)
        lws_callback_on_writable(c->wsi);
}

static void ka_cb(wtimer_t *t)
{
    conn_t *c = lws_container_of(t, conn_t, t_ka);
    if (c->closing || c->retired)
        return;
    int64_t now = mono_us();
    int64_t ka = (int64_t)c->keepalive * 1000000;
    int64_t idle = now - c->last_tx_us;
    if (idle >= ka - 1000 && c->qlen == 0 && !c->gens) {
        send_keepalive(c);
        c->last_tx_us = now; /* counts from the enqueue; write follows at once */
        wt_schedule(&c->t_ka, ka_cb, ka);
    } else {
        int64_t rem = ka - idle;
        if (rem < 1000)
            rem = ka;
        wt_schedule(&c->t_ka, ka_cb, rem);
    }
}

static void ping_cb(wtimer_t *t)
{
    conn_t *c = lws_container_of(t, conn_t, t_ping);
    if (c->closing)
        return;
    if (c->paused_until_us > mono_us()) { /* a paused server sends no ping and expects no pong */
        wt_schedule(&c->t_ping, ping_cb, (int64_t)(M->cfg.ping_interval_s * 1e6));
        return;
    }
    if (c->awaiting_pong) {
        conn_close(c, 4002, NULL);
        return;
    }
    c->ping_due = 1;
    if (c->wsi)
        lws_callback_on_writable(c->wsi);
    wt_schedule(&c->t_ping, ping_cb, (int64_t)(M->cfg.ping_interval_s * 1e6));
}

static void assign_cb(wtimer_t *t)
{
    conn_t *c = lws_container_of(t, conn_t, t_assign);
    if (c->closing || !c->sess)
        return;
    if (!c->sess->assigned)
        conn_close(c, 4003, NULL);
}

static void grace_cb(wtimer_t *t)
{
    /* old connection not closed by the client within the grace period */
    conn_t *c = lws_container_of(t, conn_t, t_grace);
    conn_close(c, 4004, NULL);
}

static void rc_timeout_cb(wtimer_t *t)
{
    /* the client never connected to reconnect_url */
    session_t *s = lws_container_of(t, session_t, t_rc);
    if (!s->reconnecting)
        return;
    s->reconnecting = 0;
    s->reconnect_id[0] = 0;
    if (s->cur)
        conn_close(s->cur, 4004, NULL);
}

/* The reconnect target c takes over: its welcome, the old socket retired. */
static void reconnect_switch(session_t *s, conn_t *c)
{
    conn_t *old = s->cur;
    old->retired = 1;
    wt_cancel(&old->t_ka);
    wt_cancel(&old->t_assign);
    if (s->old && s->old != old)
        conn_close(s->old, 4004, NULL);
    s->old = old;
    s->cur = c;
    s->keepalive = c->keepalive;
    send_welcome(c);
    wt_schedule(&old->t_grace, grace_cb, (int64_t)(M->cfg.reconnect_grace_s * 1e6));
}

static void held_welcome_cb(wtimer_t *t)
{
    conn_t *c = lws_container_of(t, conn_t, t_welcome);
    session_t *s = c->sess;
    if (s->pending == c)
        s->pending = NULL;
    if (c->closing)
        return;
    if (!s->cur || s->cur->closing) { /* the old socket went meanwhile: the session is over */
        conn_close(c, 4007, NULL);
        return;
    }
    reconnect_switch(s, c);
    wt_schedule(&c->t_ka, ka_cb, (int64_t)c->keepalive * 1000000);
}

static void parse_ws_query(struct lws *wsi, int *ka, char *rcid, size_t rclen)
{
    char frag[512];
    rcid[0] = 0;
    for (int i = 0; i < 64; i++) {
        int n = lws_hdr_copy_fragment(wsi, frag, sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (n < 0)
            break;
        char v[400];
        if (qparam(frag, "keepalive_timeout_seconds", v, sizeof v, 0)) {
            char *e = NULL;
            long x = strtol(v, &e, 10);
            if (e != v && *e == 0) {
                if (x < M->cfg.keepalive_min)
                    x = M->cfg.keepalive_min;
                if (x > M->cfg.keepalive_max)
                    x = M->cfg.keepalive_max;
                *ka = (int)x;
            }
        }
        if (qparam(frag, "reconnect_id", v, sizeof v, 0))
        {
            size_t vl = strlen(v);
            if (!vl || vl >= rclen)
                strcpy(rcid, "-"); /* never matches a real id */
            else
                memcpy(rcid, v, vl + 1);
        }
    }
}

void ws_established(struct lws *wsi, pss_t *p)
{
    conn_t *c = xcalloc(1, sizeof *c);
    c->wsi = wsi;
    p->conn = c;
    c->tls = lws_is_ssl(wsi) ? 1 : 0;
    c->last_tx_us = mono_us();
    int ka = M->cfg.keepalive_default;
    char rcid[ID_LEN + 8];
    parse_ws_query(wsi, &ka, rcid, sizeof rcid);
    c->keepalive = ka;
    if (rcid[0]) {
        session_t *s = NULL;
        for (session_t *x = M->sessions; x; x = x->next)
            if (x->reconnecting && x->reconnect_id[0] && !strcmp(x->reconnect_id, rcid)) {
                s = x;
                break;
            }
        if (!s || !s->cur || s->cur->closing) {
            c->bad_reconnect = 1;
            conn_close(c, 4007, NULL);
            c->end_status = NULL;
            return;
        }
        wt_cancel(&s->t_rc);
        s->reconnecting = 0;
        s->reconnect_id[0] = 0;
        c->sess = s;
        if (s->rc_welcome_delay_s > 0) {
            /* the old socket receives everything until the held welcome is sent */
            s->pending = c;
            wt_schedule(&c->t_welcome, held_welcome_cb, (int64_t)(s->rc_welcome_delay_s * 1e6));
            s->rc_welcome_delay_s = 0;
            wt_schedule(&c->t_ping, ping_cb, (int64_t)(M->cfg.ping_interval_s * 1e6));
            return;
        }
        reconnect_switch(s, c);
    } else {
        session_t *s = xcalloc(1, sizeof *s);
        gen_session_id(s->id);
        s->cur = c;
        s->connected = 1;
        s->keepalive = ka;
        fmt_time(emu_now(), s->connected_at);
        s->next = M->sessions;
        M->sessions = s;
        session_index(s);
        c->sess = s;
        send_welcome(c);
        wt_schedule(&c->t_assign, assign_cb, (int64_t)(M->cfg.assign_window_s * 1e6));
    }
    wt_schedule(&c->t_ka, ka_cb, (int64_t)c->keepalive * 1000000);
    wt_schedule(&c->t_ping, ping_cb, (int64_t)(M->cfg.ping_interval_s * 1e6));
}

void ws_receive(conn_t *c, int is_pong)
{
    (void)is_pong;
    if (!c->closing)
        conn_close(c, 4001, NULL);
}

void ws_pong(conn_t *c) { c->awaiting_pong = 0; }

/* A close frame from the client: the answer to ours (return -1: lws ends the
 * connection without another frame), or the client closing first (return 0: lws
 * echoes the frame, then ends the connection). */
int ws_peer_close(conn_t *c, const unsigned char *payload, size_t len)
{
    if (c->close_frame_sent) {
        c->acked = 1;
        if (c->ended_session && c->sess)
            c->sess->clean = 1;
        return -1;
    }
    if (c->peer_closed)
        return -1;
    c->peer_closed = 1;
    c->peer_code = len >= 2 ? (payload[0] << 8 | payload[1]) : 1005;
    c->closing = 1;       /* no new traffic is routed here */
    c->end_status = NULL; /* a client close: websocket_disconnected */
    return 0;
}

static void confirm_inflight(conn_t *c, int delivered)
{
    for (size_t i = 0; i < c->ninflight; i++)
        ledger_set(c->inflight[i], delivered ? L_DELIVERED : L_DROPPED,
                   delivered ? NULL : "socket closed before the frame was flushed");
    c->ninflight = 0;
}

static size_t frame_header(unsigned char *h, size_t len)
{
    h[0] = 0x81;
    if (len < 126) {
        h[1] = (unsigned char)len;
        return 2;
    }
    if (len < 65536) {
        h[1] = 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

static unsigned char *batch_room(size_t need)
{
    if (M->batch_cap < need + LWS_PRE) {
        size_t nc = need + LWS_PRE + BATCH_BYTES;
        free(M->batch);
        M->batch = xmalloc(nc);
        M->batch_cap = nc;
    }
    return (unsigned char *)M->batch + LWS_PRE;
}

void blast_gen_free(conn_t *c)
{
    while (c->gens) {
        bgen_t *g = c->gens;
        c->gens = g->next;
        if (g->remaining)
            blast_dropped(g->b, g->remaining);
        g->b->refs--;
        free(g->routes);
        free(g);
    }
}

int ws_writeable(conn_t *c)
{
    struct lws *wsi = c->wsi;
    /* everything written by the previous callback has left lws' buffers */
    confirm_inflight(c, 1);
    if (c->blast_inflight) {
        for (int i = 0; i < 8 && c->blast_inflight_b[i]; i++) {
            (void)i;
        }
        c->blast_inflight = 0;
    }
    if (c->peer_closed)
        return 0; /* lws answers the client's close frame and ends the connection */
    if (c->closing) {
        /* our close frame, written here rather than by lws so that the client's
         * answer is seen (ws_peer_close); lws ends the connection when it comes,
         * or when the client goes away, or after 5 s */
        if (c->close_frame_sent)
            return 0;
        if (!c->close_code)
            return -1;
        unsigned char cb[LWS_PRE + 4 + sizeof c->close_reason];
        unsigned char *f = cb + LWS_PRE;
        size_t rl = strlen(c->close_reason); /* < 64: fits a control frame */
        f[0] = 0x88;                          /* FIN + close */
        f[1] = (unsigned char)(2 + rl);
        f[2] = (unsigned char)(c->close_code >> 8);
        f[3] = (unsigned char)c->close_code;
        memcpy(f + 4, c->close_reason, rl);
        if (lws_write(wsi, f, 4 + rl, LWS_WRITE_RAW) < 0)
            return -1;
        c->close_frame_sent = 1;
        lws_set_timeout(wsi, PENDING_TIMEOUT_CLOSE_ACK, 5);
        conn_end(c);
        return 0;
    }
    if (c->paused_until_us > mono_us())
        return 0; /* paused: the pause timer asks for WRITEABLE again */
    if (c->ping_due) {
        /* a non-empty payload: lws does not report empty pongs */
        unsigned char pb[LWS_PRE + 16];
        int pl = snprintf((char *)pb + LWS_PRE, 16, "%08llx",
                          (unsigned long long)(mono_us() & 0xffffffffull));
        c->ping_due = 0;
        c->awaiting_pong = 1;
        if (lws_write(wsi, pb + LWS_PRE, (size_t)pl, LWS_WRITE_PING) < 0)
            return -1;
        if (c->qhead || c->gens)
            lws_callback_on_writable(wsi);
        return 0;
    }
    if (!c->qhead && !c->gens)
        return 0;
    size_t used = 0;
    unsigned char *out = batch_room(BATCH_BYTES);
    size_t cap = M->batch_cap - LWS_PRE;
    int wrote = 0;
    while (c->qhead) {
        outmsg_t *m = c->qhead;
        size_t need = m->len + 10;
        if (used && used + need > cap)
            break;
        if (!used && need > cap) {
            out = batch_room(need);
            cap = M->batch_cap - LWS_PRE;
        }
        used += frame_header(out + used, m->len);
        memcpy(out + used, m->data, m->len);
        used += m->len;
        if (m->seq) {
            c->inflight = xgrow(c->inflight, c->ninflight, &c->capinflight, 64, sizeof *c->inflight);
            c->inflight[c->ninflight++] = m->seq;
        }
        c->qhead = m->next;
        if (!c->qhead)
            c->qtail = NULL;
        c->qlen--;
        free(m);
        wrote++;
        if (used >= BATCH_BYTES)
            break;
    }
    /* blast generators fill the rest of the batch */
    char ts[40];
    int have_ts = 0;
    while (c->gens && used < BATCH_BYTES) {
        bgen_t *g = c->gens;
        if (!g->remaining) {
            c->gens = g->next;
            g->b->refs--;
            free(g->routes);
            free(g);
            continue;
        }
        if (!have_ts) {
            fmt_time(wall_now(), ts);
            have_ts = 1;
        }
        uint64_t n = 0;
        while (g->remaining && used < BATCH_BYTES) {
            broute_t *r = &g->b->routes[g->routes[g->cur]];
            if (used + r->len + 10 > cap)
                break;
            used += frame_header(out + used, r->len);
            unsigned char *d = out + used;
            memcpy(d, r->tmpl, r->len);
            char id[ID_LEN];
            gen_uuid(id);
            memcpy(d + r->id_off, id, 36);
            memcpy(d + r->ts_off, ts, 30);
            used += r->len;
            g->remaining--;
            n++;
            g->cur = (g->cur + 1) % g->nroutes;
        }
        blast_delivered(g->b, n);
        wrote++;
        if (g->remaining)
            break;
    }
    if (used) {
        if (lws_write(wsi, out, used, LWS_WRITE_RAW) < 0)
            return -1;
        c->last_tx_us = mono_us();
    }
    (void)wrote;
    if (c->qhead || c->gens || c->ninflight)
        lws_callback_on_writable(wsi);
    return 0;
}

static void drop_queue(conn_t *c, const char *reason)
{
    while (c->qhead) {
        outmsg_t *m = c->qhead;
        c->qhead = m->next;
        if (m->seq)
            ledger_set(m->seq, L_DROPPED, reason);
        free(m);
    }
    c->qtail = NULL;
    c->qlen = 0;
}

void shard_set_disabled(conduit_t *c, int i, const char *status)
{
    shard_t *sh = &c->shards[i];
    int was_enabled = !strcmp(sh->status, "enabled");
    snprintf(sh->status, sizeof sh->status, "%s", status);
    fmt_time(emu_now(), sh->disconnected_at);
    if (was_enabled)
        fire_shard_disabled(c, i);
}

static void session_lost(session_t *s, const char *status)
{
    s->connected = 0;
    s->cur = NULL;
    fmt_time(emu_now(), s->disconnected_at);
    if (s->reconnecting) {
        s->reconnecting = 0;
        s->reconnect_id[0] = 0;
        wt_cancel(&s->t_rc);
    }
    for (conduit_t *c = M->conduits; c; c = c->next)
        for (int i = 0; i < c->shard_count; i++) {
            shard_t *sh = &c->shards[i];
            if (sh->method == T_WS && !strcmp(sh->session_id, s->id) &&
                !strcmp(sh->status, "enabled"))
                shard_set_disabled(c, i, status);
        }
    for (sub_t *u = M->subs; u; u = u->next)
        if (u->method == T_WS && !strcmp(u->session_id, s->id) && !strcmp(u->status, "enabled")) {
            snprintf(u->status, sizeof u->status, "%s", status);
            fmt_time(emu_now(), u->disconnected_at);
        }
}

/* The connection is over for the session: at its close (ws_closed), or as soon as
 * our close frame is written (the client's answer is still awaited for the record). */
static void conn_end(conn_t *c)
{
    if (c->ended)
        return;
    c->ended = 1;
    wt_cancel(&c->t_ka);
    wt_cancel(&c->t_ping);
    wt_cancel(&c->t_grace);
    wt_cancel(&c->t_assign);
    wt_cancel(&c->t_pause);
    wt_cancel(&c->t_welcome);
    /* frames already handed to the socket: a client that closed with a close frame reads
     * until our answer, which follows them on the wire, so they reached it; otherwise
     * nothing says they did */
    confirm_inflight(c, c->peer_closed && !c->dropped);
    drop_queue(c, "session closed");
    blast_gen_free(c);
    session_t *s = c->sess;
    if (s && s->pending == c)
        s->pending = NULL; /* a reconnect target gone before its held welcome */
    if (s) {
        if (s->old == c) {
            s->old = NULL;
        } else if (s->cur == c) {
            c->ended_session = 1;
            if (c->dropped) {
                s->closed_by = CLOSED_BY_SERVER;
                s->close_code = 0;
            } else if (c->close_frame_sent) {
                s->closed_by = CLOSED_BY_SERVER;
                s->close_code = c->close_code;
                s->clean = c->acked;
            } else if (c->peer_closed) {
                s->closed_by = CLOSED_BY_CLIENT;
                s->close_code = c->peer_code;
                s->clean = 1;
            } else {
                s->closed_by = CLOSED_BY_CLIENT; /* the connection ended without a close frame */
                s->close_code = 0;
            }
            if (s->old) {
                /* the new connection died while the old one is retired: close that too */
                conn_close(s->old, 4004, NULL);
            }
            session_lost(s, c->end_status ? c->end_status : "websocket_disconnected");
        }
    }
}

void ws_closed(conn_t *c)
{
    conn_end(c);
    free(c->inflight);
    free(c);
}

void session_close(session_t *s, int code, const char *reason)
{
    if (s->cur)
        conn_close(s->cur, code, reason);
    if (s->old)
        conn_close(s->old, code, reason);
    if (s->pending)
        conn_close(s->pending, code, reason);
}

void session_drop(session_t *s)
{
    conn_t *cs[3] = {s->cur, s->old, s->pending};
    for (int i = 0; i < 3; i++) {
        conn_t *c = cs[i];
        if (!c || !c->wsi)
            continue;
        c->end_status = "websocket_network_error";
        c->dropped = 1;
        int fd = (int)lws_get_socket_fd(c->wsi);
        if (fd >= 0) {
            struct linger lg = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            shutdown(fd, SHUT_RDWR);
        }
        lws_callback_on_writable(c->wsi);
    }
}

void session_reconnect_url(const session_t *s, char *out, size_t n)
{
    int tls = s->cur && s->cur->tls;
    snprintf(out, n, "%s://127.0.0.1:%d/ws?reconnect_id=%s", tls ? "wss" : "ws", tls ? M->tls_port : M->port,
             s->reconnect_id);
}

void session_reconnect(session_t *s)
{
    conn_t *c = s->cur;
    if (!c || c->closing)
        return;
    gen_uuid(s->reconnect_id);
    s->reconnecting = 1;
    char id[ID_LEN], ts[40];
    gen_uuid(id);
    fmt_time(wall_now(), ts);
    buf_t b = {0};
    meta_begin(&b, "session_reconnect", id, ts);
    char url[160];
    session_reconnect_url(s, url, sizeof url);
    buf_printf(&b, "},\"payload\":{\"session\":{\"id\":\"%s\",\"status\":\"reconnecting\","
                   "\"keepalive_timeout_seconds\":null,"
                   "\"reconnect_url\":\"%s\","
                   "\"connected_at\":\"%s\",\"recovery_url\":null}}}",
               s->id, url, s->connected_at);
    enqueue_conn(c, b.p, b.len, 0);
    buf_free(&b);
    wt_schedule(&s->t_rc, rc_timeout_cb, (int64_t)(M->cfg.reconnect_grace_s * 1e6));
}

static void pause_cb(wtimer_t *t)
{
    conn_t *c = lws_container_of(t, conn_t, t_pause);
    c->paused_until_us = 0;
    c->awaiting_pong = 0;
    if (c->wsi)
        lws_callback_on_writable(c->wsi);
}

void session_pause(session_t *s, int64_t ms)
{
    conn_t *c = s->cur;
    if (!c || c->closing)
        return;
    c->paused_until_us = mono_us() + ms * 1000;
    c->awaiting_pong = 0;
    wt_schedule(&c->t_pause, pause_cb, ms * 1000);
}

void session_oversized(session_t *s, size_t bytes)
{
    if (!s->cur)
        return;
    static const char head[] = "{\"metadata\":{\"message_type\":\"notification\"},\"payload\":\"";
    char *p = xmalloc(bytes);
    memset(p, 'x', bytes);
    memcpy(p, head, sizeof head - 1);
    memcpy(p + bytes - 3, "\"}", 2);
    p[bytes - 1] = '}';
    enqueue_conn(s->cur, p, bytes, 0);
    free(p);
}

void session_malformed(session_t *s)
{
    if (!s->cur)
        return;
    static const char bad[] = "{\"metadata\":{\"message_type\":\"notification\",broken";
    enqueue_conn(s->cur, bad, sizeof bad - 1, 0);
}

/* ---------------- routing ---------------- */

const char *routing_value(sub_t *s, char *buf, size_t n)
{
    const char *key = M->cfg.routing_key;
    const char *v = NULL;
    if (!strcmp(key, "broadcaster_user_id") && s->type && !strcmp(s->type, "channel.raid")) {
        v = jstr(s->condition, "to_broadcaster_user_id");
        if (!v || !*v)
            v = jstr(s->condition, "from_broadcaster_user_id");
    } else
        v = jstr(s->condition, key);
    if (!v || !*v)
        return NULL;
    snprintf(buf, n, "%s", v);
    return buf;
}

static conn_t *shard_conn(conduit_t *c, int i, int *is_webhook)
{
    shard_t *sh = &c->shards[i];
    *is_webhook = 0;
    if (strcmp(sh->status, "enabled"))
        return NULL;
    if (sh->method == T_WEBHOOK) {
        *is_webhook = 1;
        return NULL;
    }
    if (sh->method != T_WS)
        return NULL;
    session_t *s = find_session(sh->session_id);
    if (!session_live(s))
        return NULL;
    return s->cur;
}

/* Picks the connection (or webhook shard) for a conduit notification and records
 * the attempts in the ledger entry. Returns NULL with *webhook_shard = -1 on drop. */
conn_t *route_conduit(conduit_t *c, const char *key, lent_t *le, int *webhook_shard)
{
    *webhook_shard = -1;
    if (!c->shard_count) {
        if (le)
            le->reason = "conduit has no shards";
        return NULL;
    }
    int idx = (int)(fnv1a(key) % (uint32_t)c->shard_count);
    int wh = 0;
    conn_t *cn = shard_conn(c, idx, &wh);
    if (cn || wh) {
        ledger_attempt(le, idx, wh ? "" : cn->sess->id, "queued");
        if (wh)
            *webhook_shard = idx;
        return cn;
    }
    ledger_attempt(le, idx, c->shards[idx].session_id, "shard_disabled");
    for (int k = 1; k < c->shard_count; k++) {
        int j = (idx + k) % c->shard_count;
        cn = shard_conn(c, j, &wh);
        if (cn || wh) {
            ledger_attempt(le, j, wh ? "" : cn->sess->id, "queued");
            if (wh)
                *webhook_shard = j;
            return cn;
        }
    }
    if (le)
        le->reason = "target shard disabled and no other enabled shard";
    return NULL;
}

/* Builds and routes one notification (kind 0) or revocation (kind 1) for a
 * subscription. Returns the ledger seq. */
uint64_t produce(sub_t *s, const char *channel, cJSON *event, int kind, const char *status_override,
                 char *out_msg_id)
{
    lent_t *le = ledger_new();
    gen_uuid(le->msg_id);
    if (out_msg_id)
        memcpy(out_msg_id, le->msg_id, ID_LEN);
    le->type = xstrdup(s->type);
    le->kind = kind;
    snprintf(le->sub_id, sizeof le->sub_id, "%s", s->id);
    if (s->method == M_CONDUIT)
        snprintf(le->conduit_id, sizeof le->conduit_id, "%s", s->conduit_id);
    le->channel = channel ? xstrdup(channel) : NULL;

    char ts[40];
    double t = wall_now();
    if (M->stale_next > 0) {
        M->stale_next--;
        t -= 11 * 60;
    }
    fmt_time(t, ts);
    int dup = 0;
    if (M->duplicate_next > 0) {
        M->duplicate_next--;
        dup = 1;
    }

    /* payload */
    cJSON *sj = sub_json(s);
    if (status_override) {
        cJSON_DeleteItemFromObjectCaseSensitive(sj, "status");
        cJSON_AddStringToObject(sj, "status", status_override);
    }
    char *subtxt = cJSON_PrintUnformatted(sj);
    cJSON_Delete(sj);
    char *evtxt = event ? cJSON_PrintUnformatted(event) : NULL;
    buf_t payload = {0};
    buf_adds(&payload, "{\"subscription\":");
    buf_adds(&payload, subtxt);
    if (kind == 0) {
        buf_adds(&payload, ",\"event\":");
        buf_adds(&payload, evtxt ? evtxt : "{}");
    }
    buf_adds(&payload, "}");
    free(subtxt);
    free(evtxt);

    const char *mtype = kind == 0 ? "notification" : "revocation";
    if (s->method == T_WEBHOOK) {
        wh_deliver_sub(s, le->seq, payload.p, kind, le->msg_id, ts);
        buf_free(&payload);
        return le->seq;
    }
    conn_t *target = NULL;
    if (s->method == M_CONDUIT) {
        conduit_t *c = find_conduit(s->conduit_id);
        if (!c) {
            le->reason = "conduit not found";
        } else {
            char kb[256];
            const char *key = routing_value(s, kb, sizeof kb);
            if (!key)
                key = s->id;
            int whs = -1;
            target = route_conduit(c, key, le, &whs);
            if (whs >= 0) {
                wh_deliver_shard(c, whs, s, le->seq, payload.p, kind, le->msg_id, ts);
                buf_free(&payload);
                return le->seq;
            }
        }
    } else if (s->method == T_WS) {
        session_t *ss = find_session(s->session_id);
        if (session_live(ss)) {
            target = ss->cur;
            ledger_attempt(le, -1, ss->id, "queued");
        } else {
            ledger_attempt(le, -1, s->session_id, "session_disconnected");
            le->reason = "websocket session not connected";
        }
    }
    if (!target) {
        if (!le->reason)
            le->reason = "no target";
        ledger_set(le->seq, L_DROPPED, NULL);
        buf_free(&payload);
        return le->seq;
    }
    buf_t msg = {0};
    meta_begin(&msg, mtype, le->msg_id, ts);
    buf_printf(&msg, ",\"subscription_type\":\"%s\",\"subscription_version\":\"%s\"},\"payload\":",
               s->type, s->version);
    buf_add(&msg, payload.p, payload.len);
    buf_adds(&msg, "}");
    enqueue_conn(target, msg.p, msg.len, le->seq);
    if (dup)
        enqueue_conn(target, msg.p, msg.len, 0);
    buf_free(&msg);
    buf_free(&payload);
    return le->seq;
}

void fire_shard_disabled(conduit_t *c, int i)
{
    shard_t *sh = &c->shards[i];
    /* collect first: producing may not change the subscription list, but stay safe */
    for (sub_t *s = M->subs; s; s = s->next) {
        if (strcmp(s->type, "conduit.shard.disabled") || strcmp(s->status, "enabled"))
            continue;
        const char *cid = jstr(s->condition, "client_id");
        if (!cid || strcmp(cid, c->client_id))
            continue;
        const char *fc = jstr(s->condition, "conduit_id");
        if (fc && *fc && strcmp(fc, c->id))
            continue;
        cJSON *ev = cJSON_CreateObject();
        cJSON_AddStringToObject(ev, "conduit_id", c->id);
        char sid[16];
        snprintf(sid, sizeof sid, "%d", i);
        cJSON_AddStringToObject(ev, "shard_id", sid);
        cJSON_AddStringToObject(ev, "status", sh->status);
        cJSON *tr = cJSON_AddObjectToObject(ev, "transport");
        if (sh->method == T_WEBHOOK) {
            cJSON_AddStringToObject(tr, "method", "webhook");
            cJSON_AddStringToObject(tr, "callback", sh->callback ? sh->callback : "");
        } else {
            cJSON_AddStringToObject(tr, "method", "websocket");
            cJSON_AddStringToObject(tr, "session_id", sh->session_id);
            if (sh->connected_at[0])
                cJSON_AddStringToObject(tr, "connected_at", sh->connected_at);
            if (sh->disconnected_at[0])
                cJSON_AddStringToObject(tr, "disconnected_at", sh->disconnected_at);
        }
        produce(s, NULL, ev, 0, NULL, NULL);
        cJSON_Delete(ev);
    }
}

void sessions_free_all(void)
{
    while (M->sessions) {
        session_t *s = M->sessions;
        M->sessions = s->next;
        wt_cancel(&s->t_rc);
        free(s);
    }
    free(M->sess_hash);
    M->sess_hash = NULL;
    M->sess_hash_cap = M->nsessions = 0;
}
