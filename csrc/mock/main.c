/* twconduit-mock entry point: command line, the libwebsockets server and the
 * HTTP plumbing shared by OAuth, Helix and the control API. */
#include "mock.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

mock_t *M;

#define MAX_BODY (1024 * 1024)

static void on_signal(int sig)
{
    (void)sig;
    if (M) {
        M->stop = 1;
        if (M->ctx)
            lws_cancel_service(M->ctx);
    }
}

static void hreq_free(hreq_t *r)
{
    if (!r)
        return;
    lws_sul_cancel(&r->sul);
    shard_patch_detach(r); /* a held request outlives its connection */
    buf_free(&r->body);
    buf_free(&r->resp);
    free(r->query);
    free(r);
}

static void resp_ready_cb(lws_sorted_usec_list_t *sul)
{
    hreq_t *r = lws_container_of(sul, hreq_t, sul);
    r->ready = 1;
    lws_callback_on_writable(r->wsi);
}

static void process_request(hreq_t *r)
{
    if (r->processed)
        return;
    r->processed = 1;
    if (r->too_big) {
        json_error(r, 413, "Payload Too Large", "request body exceeds 1 MB");
        r->ready = 1;
        lws_callback_on_writable(r->wsi);
        return;
    }
    handle_request(r);
    if (r->deferred)
        return; /* answered when applied (held or delayed Update Conduit Shards) */
    if (r->status == 0)
        json_error(r, 500, "Internal Server Error", "no response");
    int delay = 0;
    if (!strncmp(r->path, "/helix/", 7) && M->latency_ms > 0)
        delay = M->latency_ms;
    if (delay) {
        lws_sul_schedule(M->ctx, 0, &r->sul, resp_ready_cb, (lws_usec_t)delay * 1000);
    } else {
        r->ready = 1;
        lws_callback_on_writable(r->wsi);
    }
}

/* raw: the connection is in raw mode (pss_t): the transaction is not handed back to
 * libwebsockets, which would wait for the rest of a 100 MB body it expects. */
static int write_response(struct lws *wsi, hreq_t *r, int raw)
{
    unsigned char hb[LWS_PRE + 4096];
    unsigned char *start = hb + LWS_PRE, *p = start, *end = hb + sizeof hb - 1;
    size_t blen = r->status == 204 ? 0 : r->resp.len;
    const char *ctype = r->status == 204 ? NULL : "application/json";
    if (lws_add_http_common_headers(wsi, (unsigned int)r->status, ctype, blen, &p, end))
        return -1;
    /* extra headers: "name: value\n" lines */
    char *eh = r->extra_headers;
    while (*eh) {
        char *nl = strchr(eh, '\n');
        if (!nl)
            break;
        char *colon = memchr(eh, ':', (size_t)(nl - eh));
        if (colon) {
            char name[64];
            size_t nlen = (size_t)(colon - eh) + 1;
            if (nlen < sizeof name) {
                memcpy(name, eh, nlen);
                name[nlen] = 0;
                const char *v = colon + 1;
                while (*v == ' ')
                    v++;
                if (lws_add_http_header_by_name(wsi, (const unsigned char *)name,
                                                (const unsigned char *)v, (int)(nl - v), &p, end))
                    return -1;
            }
        }
        eh = nl + 1;
    }
    if (raw && r->close_after &&
        lws_add_http_header_by_name(wsi, (const unsigned char *)"connection:",
                                    (const unsigned char *)"close", 5, &p, end))
        return -1;
    if (lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    if (blen) {
        unsigned char *b = xmalloc(LWS_PRE + blen);
        memcpy(b + LWS_PRE, r->resp.p, blen);
        int n = lws_write(wsi, b + LWS_PRE, blen, LWS_WRITE_HTTP_FINAL);
        free(b);
        if (n < 0)
            return -1;
    }
    r->written = 1;
    if (raw)
        return 0;
    if (lws_http_transaction_completed(wsi))
        return -1;
    return 0;
}

static void read_header(struct lws *wsi, enum lws_token_indexes t, char *out, size_t n)
{
    out[0] = 0;
    if (lws_hdr_total_length(wsi, t) > 0 && lws_hdr_total_length(wsi, t) < (int)n)
        lws_hdr_copy(wsi, out, (int)n, t);
}

/* "chunked" as the last transfer coding */
static int te_chunked(const char *v)
{
    size_t n = strlen(v);
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    return n >= 7 && !strncasecmp(v + n - 7, "chunked", 7);
}

static int parse_length(const char *s, size_t *out)
{
    char *e = NULL;
    errno = 0;
    if (!*s || *s == '-')
        return 0;
    unsigned long long v = strtoull(s, &e, 10);
    while (e && (*e == ' ' || *e == '\t'))
        e++;
    if (errno || e == s || *e)
        return 0;
    *out = (size_t)v;
    return 1;
}

static hreq_t *hreq_new(struct lws *wsi)
{
    hreq_t *r = xcalloc(1, sizeof *r);
    r->wsi = wsi;
    return r;
}

/* ---------------- raw mode (see pss_t) ---------------- */

static void raw_consume(buf_t *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

static void raw_fail(hreq_t *r, int status, const char *msg)
{
    r->close_after = 1;
    r->processed = 1;
    json_error(r, status, status == 431 ? "Request Header Fields Too Large" : "Bad Request", msg);
    r->ready = 1;
    lws_callback_on_writable(r->wsi);
}

/* De-chunks what p->in holds into r->body: 1 body complete, 0 more bytes needed,
 * -1 malformed. */
static int dechunk(hreq_t *r, buf_t *in)
{
    for (;;) {
        if (r->ck_state == 1) {
            size_t take = r->ck_left < in->len ? r->ck_left : in->len;
            if (!take)
                return 0;
            if (r->body.len + take > MAX_BODY)
                r->too_big = 1;
            else
                buf_add(&r->body, in->p, take);
            raw_consume(in, take);
            r->ck_left -= take;
            if (!r->ck_left)
                r->ck_state = 2;
            continue;
        }
        if (r->ck_state == 2) {
            if (in->len < 2)
                return 0;
            if (in->p[0] != '\r' || in->p[1] != '\n')
                return -1;
            raw_consume(in, 2);
            r->ck_state = 0;
            continue;
        }
        char *nl = in->len ? memchr(in->p, '\n', in->len) : NULL;
        if (!nl)
            return in->len > 4096 ? -1 : 0;
        size_t ll = (size_t)(nl - in->p) + 1;
        if (ll < 2 || nl[-1] != '\r')
            return -1;
        if (r->ck_state == 3) { /* trailer fields, up to the empty line */
            raw_consume(in, ll);
            if (ll == 2)
                return 1;
            continue;
        }
        char line[64];
        size_t cl = ll - 2 < sizeof line - 1 ? ll - 2 : sizeof line - 1;
        memcpy(line, in->p, cl);
        line[cl] = 0;
        char *e = NULL;
        errno = 0;
        unsigned long long sz = strtoull(line, &e, 16);
        if (errno || e == line || (*e && *e != ';' && *e != ' ' && *e != '\t') ||
            sz > 0x7fffffffull)
            return -1;
        raw_consume(in, ll);
        if (sz == 0)
            r->ck_state = 3;
        else {
            r->ck_state = 1;
            r->ck_left = (size_t)sz;
        }
    }
}

/* Parses one request head from p->in into a new p->req: 1 parsed, 0 more bytes needed. */
static int raw_head(pss_t *p, struct lws *wsi)
{
    buf_t *in = &p->in;
    while (in->len >= 2 && in->p[0] == '\r' && in->p[1] == '\n')
        raw_consume(in, 2);
    char *end = in->len >= 4 ? memmem(in->p, in->len, "\r\n\r\n", 4) : NULL;
    hreq_t *r;
    if (!end) {
        if (in->len <= 16384)
            return 0;
        r = p->req = hreq_new(wsi);
        raw_fail(r, 431, "request header block exceeds 16 KB");
        return 1;
    }
    size_t hl = (size_t)(end - in->p) + 4;
    r = p->req = hreq_new(wsi);
    end[2] = 0; /* the head as one string; the two bytes after it are consumed below */
    char *line = in->p, *nl = strstr(line, "\r\n");
    *nl = 0;
    char *sp1 = strchr(line, ' '), *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp1 || !sp2 || (size_t)(sp1 - line) >= sizeof r->method || strncmp(sp2 + 1, "HTTP/1.", 7)) {
        raw_consume(in, in->len);
        raw_fail(r, 400, "malformed request line");
        return 1;
    }
    memcpy(r->method, line, (size_t)(sp1 - line));
    r->method[sp1 - line] = 0;
    *sp2 = 0;
    char *target = sp1 + 1, *q = strchr(target, '?');
    if (q)
        *q = 0;
    snprintf(r->path, sizeof r->path, "%s", target);
    r->query = xstrdup(q ? q + 1 : "");
    int chunked = 0, has_cl = 0, upgrade = 0;
    size_t cl = 0;
    for (char *h = nl + 2; *h;) {
        char *e = strstr(h, "\r\n");
        if (e)
            *e = 0;
        char *colon = strchr(h, ':');
        if (colon) {
            *colon = 0;
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            if (!strcasecmp(h, "content-length")) {
                has_cl = 1;
                if (!parse_length(v, &cl)) {
                    raw_consume(in, in->len);
                    raw_fail(r, 400, "malformed Content-Length");
                    return 1;
                }
            } else if (!strcasecmp(h, "transfer-encoding"))
                chunked = te_chunked(v);
            else if (!strcasecmp(h, "authorization"))
                snprintf(r->auth_hdr, sizeof r->auth_hdr, "%s", v);
            else if (!strcasecmp(h, "client-id"))
                snprintf(r->client_id_hdr, sizeof r->client_id_hdr, "%s", v);
            else if (!strcasecmp(h, "upgrade"))
                upgrade = 1;
            else if (!strcasecmp(h, "connection") && strcasestr(v, "close"))
                r->close_after = 1;
            else if (!strcasecmp(h, "expect") && !strcasecmp(v, "100-continue")) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                unsigned char cb[LWS_PRE + sizeof cont];
                memcpy(cb + LWS_PRE, cont, sizeof cont - 1);
                if (lws_write(wsi, cb + LWS_PRE, sizeof cont - 1, LWS_WRITE_HTTP) < 0)
                    r->close_after = 1;
            }
        }
        if (!e)
            break;
        h = e + 2;
    }
    raw_consume(in, hl);
    if (upgrade) {
        raw_fail(r, 400, "upgrade after a request without Content-Length on this connection");
        return 1;
    }
    if (chunked)
        r->chunked = 1;
    else if (has_cl && cl > MAX_BODY) {
        r->too_big = 1;
        r->close_after = 1; /* the body is not read */
    } else
        r->body_left = cl;
    return 1;
}

/* Runs the raw-mode connection as far as its bytes go: one request at a time, the
 * next one parsed once the previous response is written. */
static void raw_pump(pss_t *p, struct lws *wsi)
{
    for (;;) {
        hreq_t *r = p->req;
        if (r && r->processed)
            return; /* its response is not written yet */
        if (!r) {
            if (!raw_head(p, wsi))
                return;
            continue;
        }
        if (r->chunked) {
            int rc = dechunk(r, &p->in);
            if (rc == 0)
                return;
            if (rc < 0) {
                raw_fail(r, 400, "malformed chunked body");
                return;
            }
        } else if (r->body_left && !r->too_big) {
            size_t take = r->body_left < p->in.len ? r->body_left : p->in.len;
            if (!take)
                return;
            buf_add(&r->body, p->in.p, take);
            raw_consume(&p->in, take);
            r->body_left -= take;
            if (r->body_left)
                return;
        }
        process_request(r);
    }
}

static int begin_http(struct lws *wsi, pss_t *p, const char *uri)
{
    hreq_t *r = hreq_new(wsi);
    p->kind = 1;
    p->req = r;
    static const struct {
        enum lws_token_indexes t;
        const char *m;
    } meth[] = {{WSI_TOKEN_GET_URI, "GET"},       {WSI_TOKEN_POST_URI, "POST"},
                {WSI_TOKEN_PATCH_URI, "PATCH"},   {WSI_TOKEN_PUT_URI, "PUT"},
                {WSI_TOKEN_DELETE_URI, "DELETE"}, {WSI_TOKEN_OPTIONS_URI, "OPTIONS"},
                {WSI_TOKEN_HEAD_URI, "HEAD"}};
    strcpy(r->method, "GET");
    for (size_t i = 0; i < sizeof meth / sizeof meth[0]; i++)
        if (lws_hdr_total_length(wsi, meth[i].t) > 0) {
            strcpy(r->method, meth[i].m);
            break;
        }
    snprintf(r->path, sizeof r->path, "%s", uri ? uri : "/");
    /* reassemble the query string */
    buf_t q = {0};
    char frag[2048];
    for (int i = 0; i < 256; i++) {
        int n = lws_hdr_copy_fragment(wsi, frag, sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (n < 0)
            break;
        if (q.len)
            buf_adds(&q, "&");
        buf_add(&q, frag, (size_t)n);
    }
    r->query = q.p ? q.p : xstrdup("");
    read_header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, r->auth_hdr, sizeof r->auth_hdr);
    int cl = lws_hdr_custom_length(wsi, "client-id:", 10);
    if (cl > 0 && cl < (int)sizeof r->client_id_hdr)
        lws_hdr_custom_copy(wsi, r->client_id_hdr, sizeof r->client_id_hdr, "client-id:", 10);
    else {
        cl = lws_hdr_custom_length(wsi, "Client-Id:", 10);
        if (cl > 0 && cl < (int)sizeof r->client_id_hdr)
            lws_hdr_custom_copy(wsi, r->client_id_hdr, sizeof r->client_id_hdr, "Client-Id:", 10);
    }
    char te[128];
    read_header(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING, te, sizeof te);
    char clen[32];
    read_header(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH, clen, sizeof clen);
    int has_cl = clen[0] != 0;
    if (has_cl && parse_length(clen, &r->content_length) && r->content_length > MAX_BODY)
        r->too_big = 1;
    /* libwebsockets expects a body of 100 MB from a POST, PATCH or PUT without
     * Content-Length: from here on the emulator reads the connection itself */
    int lws_body = !strcmp(r->method, "POST") || !strcmp(r->method, "PATCH") ||
                   !strcmp(r->method, "PUT");
    if (te[0] && te_chunked(te)) {
        r->chunked = 1;
        p->raw = 1;
        return 0; /* the chunks come as LWS_CALLBACK_HTTP_BODY */
    }
    if (!has_cl && lws_body)
        p->raw = 1;
    /* A body of 0 bytes (or none) is handled now. A POST with an explicit
     * Content-Length: 0 also gets HTTP_BODY_COMPLETION afterwards, which then finds the
     * request processed. */
    if (r->content_length == 0 || r->too_big)
        process_request(r);
    return 0;
}

static int is_ws_path(struct lws *wsi)
{
    char uri[256];
    uri[0] = 0;
    if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) <= 0 ||
        lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) >= (int)sizeof uri)
        return 0;
    lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI);
    return !strcmp(uri, "/ws") || !strcmp(uri, "/ws/");
}

static int cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    pss_t *p = user;
    switch (reason) {
    case LWS_CALLBACK_HTTP:
        if (!p)
            return -1;
        if (p->req) { /* keep-alive: new transaction on the same connection */
            hreq_free(p->req);
            p->req = NULL;
        }
        return begin_http(wsi, p, in);
    case LWS_CALLBACK_HTTP_BODY:
        if (p && p->raw) {
            if (len)
                buf_add(&p->in, in, len);
            raw_pump(p, wsi);
        } else if (p && p->req && !p->req->processed && len) {
            hreq_t *r = p->req;
            if (r->body.len + len > MAX_BODY)
                r->too_big = 1;
            else
                buf_add(&r->body, in, len);
        }
        return 0;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        if (p && p->raw)
            return -1; /* the 100 MB libwebsockets allowed are used up */
        if (p && p->req)
            process_request(p->req);
        return 0;
    case LWS_CALLBACK_HTTP_WRITEABLE:
        if (p && p->req && p->req->ready && !p->req->written) {
            if (!p->raw)
                return write_response(wsi, p->req, 0);
            if (write_response(wsi, p->req, 1) || p->req->close_after)
                return -1;
            hreq_free(p->req);
            p->req = NULL;
            raw_pump(p, wsi); /* requests that arrived meanwhile */
        }
        return 0;
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        if (p && p->req) {
            hreq_free(p->req);
            p->req = NULL;
        }
        if (p && reason == LWS_CALLBACK_CLOSED_HTTP) {
            buf_free(&p->in);
            p->raw = 0;
        }
        return 0;
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return is_ws_path(wsi) ? 0 : 1;
    case LWS_CALLBACK_ESTABLISHED:
        if (!p)
            return -1;
        p->kind = 2;
        ws_established(wsi, p);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if (p && p->kind == 2 && p->conn)
            return ws_writeable(p->conn);
        return 0;
    case LWS_CALLBACK_RECEIVE:
        if (p && p->conn)
            ws_receive(p->conn, 0);
        return 0;
    case LWS_CALLBACK_RECEIVE_PONG:
        if (p && p->conn)
            ws_pong(p->conn);
        return 0;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        return p && p->conn ? ws_peer_close(p->conn, in, len) : 0;
    case LWS_CALLBACK_CLOSED:
        if (p && p->conn) {
            ws_closed(p->conn);
            p->conn = NULL;
        }
        return 0;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        wh_drain();
        return 0;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static struct lws_protocols protocols[] = {
    {"twconduit-mock", cb, sizeof(pss_t), 65536, 0, NULL, 1 << 20},
    {NULL, NULL, 0, 0, 0, NULL, 0}};

/* The emulator pings and times out its websocket sessions itself (ws.c). Without a
 * policy of its own the vhost would get libwebsockets' default idle policy (its own
 * ping after 300 s without a pong, hangup at 310 s), which also re-inserts a timer
 * into libwebsockets' sorted timer list (O(n)) for every pong: hangup 0 turns it off. */
static const lws_retry_bo_t no_idle_policy = {.secs_since_valid_ping = 0, .secs_since_valid_hangup = 0};

static void house_cb(lws_sorted_usec_list_t *sul)
{
    (void)sul;
    housekeeping();
    lws_sul_schedule(M->ctx, 0, &M->sul_house, house_cb, 1000 * 1000);
}

static void config_defaults(config_t *c)
{
    memset(c, 0, sizeof *c);
    c->keepalive_default = 10;
    c->keepalive_min = 10;
    c->keepalive_max = 600;
    c->assign_window_s = 10;
    c->reconnect_grace_s = 30;
    c->ping_interval_s = 5;
    c->token_ttl_s = 5011271;
    c->rate_limit = 800;
    c->max_conduits = 5;
    c->max_shards = 20000;
    c->shard_page_size = 100;
    c->sub_page_size = 100;
    strcpy(c->routing_key, "broadcaster_user_id");
    c->max_frame_bytes = 1 << 20;
    c->strict_webhook_urls = 0;
    c->webhook_max_attempts = 3;
    c->webhook_retry_base_s = 0.5;
    c->webhook_timeout_s = 5;
    c->webhook_failures_limit = 3;
    c->sub_max_cost = 10000;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    buf_t b = {0};
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        buf_add(&b, tmp, n);
    fclose(f);
    if (!b.p)
        return xstrdup("");
    return b.p;
}

static void usage(void)
{
    fprintf(stderr, "usage: twconduit-mock [--port N] [--config file.json] [--client-id ID "
                    "--client-secret S] [--die-with-parent] [--tls-cert cert.pem --tls-key key.pem [--tls-port N]]\n");
}

int main(int argc, char **argv)
{
    static mock_t mock;
    M = &mock;
    config_defaults(&M->cfg);
    int port = 0, die_with_parent = 0, tls_port = 0;
    const char *tls_cert = NULL, *tls_key = NULL;
    const char *config_path = NULL, *cid = "twconduit-mock-client", *csec = "twconduit-mock-secret";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--port") && i + 1 < argc)
            port = atoi(argv[++i]);
        else if (!strcmp(a, "--config") && i + 1 < argc)
            config_path = argv[++i];
        else if (!strcmp(a, "--client-id") && i + 1 < argc)
            cid = argv[++i];
        else if (!strcmp(a, "--client-secret") && i + 1 < argc)
            csec = argv[++i];
        else if (!strcmp(a, "--tls-cert") && i + 1 < argc)
            tls_cert = argv[++i];
        else if (!strcmp(a, "--tls-key") && i + 1 < argc)
            tls_key = argv[++i];
        else if (!strcmp(a, "--tls-port") && i + 1 < argc)
            tls_port = atoi(argv[++i]);
        else if (!strcmp(a, "--die-with-parent"))
            die_with_parent = 1;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return 0;
        } else {
            usage();
            return 2;
        }
    }
    if (port < 0 || port > 65535 || tls_port < 0 || tls_port > 65535 || !tls_cert != !tls_key) {
        usage();
        return 2;
    }
    if (die_with_parent) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() == 1)
            return 0;
    }
    /* seed */
    {
        int fd = open("/dev/urandom", O_RDONLY);
        if (fd < 0 || read(fd, M->rng, sizeof M->rng) != (ssize_t)sizeof M->rng) {
            M->rng[0] = (uint64_t)mono_us() ^ 0x9E3779B97F4A7C15ull;
            M->rng[1] = (uint64_t)getpid() * 0xBF58476D1CE4E5B9ull;
        }
        if (fd >= 0)
            close(fd);
        if (!M->rng[0] && !M->rng[1])
            M->rng[0] = 1;
    }
    M->speed = 1.0;
    M->mono_base = mono_us();
    M->emu_base = wall_now();
    snprintf(M->clients[0].id, sizeof M->clients[0].id, "%s", cid);
    snprintf(M->clients[0].secret, sizeof M->clients[0].secret, "%s", csec);
    M->clients[0].bucket = -1;
    M->nclients = 1;
    if (config_path) {
        char *txt = read_file(config_path);
        if (!txt) {
            fprintf(stderr, "twconduit-mock: cannot read %s\n", config_path);
            return 2;
        }
        cJSON *o = cJSON_Parse(txt);
        free(txt);
        if (!cJSON_IsObject(o)) {
            fprintf(stderr, "twconduit-mock: %s is not a JSON object\n", config_path);
            cJSON_Delete(o);
            return 2;
        }
        char err[256] = "";
        apply_config(o, err, sizeof err);
        cJSON_Delete(o);
        if (err[0]) {
            fprintf(stderr, "twconduit-mock: config: %s\n", err);
            return 2;
        }
    }

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = port;
    info.iface = "127.0.0.1";
    info.protocols = protocols;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6 | LWS_SERVER_OPTION_EXPLICIT_VHOSTS |
                   (tls_cert ? LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT : 0);
    info.pt_serv_buf_size = 256 * 1024;
    info.max_http_header_data = 8192;
    info.max_http_header_pool = 64;
    info.timeout_secs = 30;
    info.keepalive_timeout = 30;
    info.retry_and_idle_policy = &no_idle_policy;
    M->ctx = lws_create_context(&info);
    if (!M->ctx) {
        fprintf(stderr, "twconduit-mock: cannot create context\n");
        return 1;
    }
    M->vh = lws_create_vhost(M->ctx, &info);
    if (!M->vh) {
        fprintf(stderr, "twconduit-mock: cannot listen on 127.0.0.1:%d\n", port);
        lws_context_destroy(M->ctx);
        return 1;
    }
    M->port = lws_get_vhost_listen_port(M->vh);
    if (tls_cert) {
        /* wss://: a second listener, same protocols and state, TLS by libwebsockets */
        info.vhost_name = "tls";
        info.port = tls_port;
        info.ssl_cert_filepath = tls_cert;
        info.ssl_private_key_filepath = tls_key;
        M->vh_tls = lws_create_vhost(M->ctx, &info);
        if (!M->vh_tls) {
            fprintf(stderr, "twconduit-mock: cannot serve TLS on 127.0.0.1:%d with %s / %s\n", tls_port, tls_cert,
                    tls_key);
            lws_context_destroy(M->ctx);
            return 1;
        }
        M->tls_port = lws_get_vhost_listen_port(M->vh_tls);
    }
    wh_start();
    lws_sul_schedule(M->ctx, 0, &M->sul_house, house_cb, 1000 * 1000);

    cJSON *jcid = cJSON_CreateString(M->clients[0].id);
    cJSON *jsec = cJSON_CreateString(M->clients[0].secret);
    char *ecid = cJSON_PrintUnformatted(jcid);
    char *esec = cJSON_PrintUnformatted(jsec);
    cJSON_Delete(jcid);
    cJSON_Delete(jsec);
    char wss[80] = "";
    if (M->vh_tls)
        snprintf(wss, sizeof wss, ",\"tls_port\":%d,\"eventsub_wss\":\"wss://127.0.0.1:%d/ws\"", M->tls_port,
                 M->tls_port);
    printf("{\"port\":%d,\"pid\":%d,\"api_base\":\"http://127.0.0.1:%d/helix\","
           "\"auth_base\":\"http://127.0.0.1:%d/oauth2\",\"eventsub_ws\":\"ws://127.0.0.1:%d/ws\","
           "\"control\":\"http://127.0.0.1:%d/_mock\",\"client_id\":%s,\"client_secret\":%s%s}\n",
           M->port, (int)getpid(), M->port, M->port, M->port, M->port, ecid ? ecid : "\"\"",
           esec ? esec : "\"\"", wss);
    fflush(stdout);
    free(ecid);
    free(esec);

    while (!M->stop) {
        if (lws_service(M->ctx, 0) < 0)
            break;
    }

    lws_sul_cancel(&M->sul_house);
    streams_stop_all();
    wh_stop();
    for (session_t *s = M->sessions; s; s = s->next)
        wt_cancel(&s->t_rc);
    lws_sul_cancel(&M->wt_sul);
    M->wt_armed = 0;
    lws_context_destroy(M->ctx);
    M->ctx = NULL;
    wt_free_all();
    sessions_free_all();
    free_tokens();
    users_free_all();
    reset_helix_state();
    free_route_counters();
    ledger_free_all();
    blasts_free_all();
    free(M->batch);
    return 0;
}
