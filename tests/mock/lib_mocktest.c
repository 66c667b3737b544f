/* Test support for the emulator's tests. */
#include "mocktest.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int t_n, t_fail;

void t_ok(int cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%sok %d - ", cond ? "" : "not ", ++t_n);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (!cond)
        t_fail++;
}

void t_diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("# ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

int t_done(void)
{
    printf("1..%d\n", t_n);
    return t_fail ? 1 : 0;
}

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int wait_until(int (*fn)(void *), void *arg, int timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    for (;;) {
        if (fn(arg))
            return 1;
        if (now_ms() > end)
            return 0;
        usleep(20000);
    }
}

/* ---------------- process ---------------- */

int mock_start(mock_t *m, const char *config_json)
{
    memset(m, 0, sizeof *m);
    const char *bin = getenv("TWCONDUIT_MOCK");
    if (!bin || !*bin)
        bin = "build/bin/twconduit-mock";
    char cfgpath[64] = "";
    if (config_json) {
        snprintf(cfgpath, sizeof cfgpath, "/tmp/mocktest-%d-XXXXXX", (int)getpid());
        int fd = mkstemp(cfgpath);
        if (fd < 0)
            return -1;
        if (write(fd, config_json, strlen(config_json)) < 0) {
            close(fd);
            return -1;
        }
        close(fd);
    }
    int pfd[2];
    if (pipe(pfd))
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        if (cfgpath[0])
            execl(bin, bin, "--port", "0", "--die-with-parent", "--config", cfgpath, (char *)NULL);
        else
            execl(bin, bin, "--port", "0", "--die-with-parent", (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    m->pid = pid;
    char line[2048];
    size_t n = 0;
    int64_t end = now_ms() + 10000;
    while (n < sizeof line - 1) {
        struct pollfd p = {pfd[0], POLLIN, 0};
        int left = (int)(end - now_ms());
        if (left <= 0 || poll(&p, 1, left) <= 0)
            break;
        ssize_t k = read(pfd[0], line + n, 1);
        if (k <= 0)
            break;
        if (line[n] == '\n')
            break;
        n += (size_t)k;
    }
    line[n] = 0;
    close(pfd[0]);
    if (cfgpath[0])
        unlink(cfgpath);
    m->hello = cJSON_Parse(line);
    if (!m->hello)
        return -1;
    m->port = (int)jn(m->hello, "port");
    snprintf(m->base, sizeof m->base, "http://127.0.0.1:%d", m->port);
    snprintf(m->client_id, sizeof m->client_id, "%s", js(m->hello, "client_id"));
    snprintf(m->client_secret, sizeof m->client_secret, "%s", js(m->hello, "client_secret"));
    return m->port > 0 ? 0 : -1;
}

int mock_stop(mock_t *m)
{
    int st = -1;
    if (m->pid > 0) {
        kill(m->pid, SIGTERM);
        int64_t end = now_ms() + 10000;
        for (;;) {
            pid_t r = waitpid(m->pid, &st, WNOHANG);
            if (r == m->pid)
                break;
            if (now_ms() > end) {
                kill(m->pid, SIGKILL);
                waitpid(m->pid, &st, 0);
                st = -1;
                break;
            }
            usleep(10000);
        }
        m->pid = 0;
    }
    cJSON_Delete(m->hello);
    m->hello = NULL;
    if (st >= 0 && WIFEXITED(st))
        return WEXITSTATUS(st);
    return -1;
}

/* ---------------- HTTP ---------------- */

static size_t on_data(char *p, size_t s, size_t n, void *ud)
{
    resp_t *r = ud;
    size_t k = s * n;
    char *nb = realloc(r->body, r->len + k + 1);
    if (!nb)
        return 0;
    r->body = nb;
    memcpy(r->body + r->len, p, k);
    r->len += k;
    r->body[r->len] = 0;
    return k;
}

static size_t on_header(char *p, size_t s, size_t n, void *ud)
{
    resp_t *r = ud;
    size_t k = s * n, l = strlen(r->headers);
    if (l + k < sizeof r->headers) {
        memcpy(r->headers + l, p, k);
        r->headers[l + k] = 0;
    }
    return k;
}

int http(resp_t *r, const char *method, const char *url, const char *body, const char **hdrs)
{
    memset(r, 0, sizeof *r);
    CURL *e = curl_easy_init();
    if (!e)
        return -1;
    struct curl_slist *h = NULL;
    for (int i = 0; hdrs && hdrs[i]; i++)
        h = curl_slist_append(h, hdrs[i]);
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    if (!strcmp(method, "HEAD"))
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(e);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    if (rc != CURLE_OK)
        return -1;
    if (r->body)
        r->json = cJSON_Parse(r->body);
    return 0;
}

void resp_free(resp_t *r)
{
    free(r->body);
    cJSON_Delete(r->json);
    memset(r, 0, sizeof *r);
}

const char *resp_header(resp_t *r, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    const char *p = r->headers;
    while (p && *p) {
        if (!strncasecmp(p, name, nl) && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            size_t k = strcspn(v, "\r\n");
            if (k >= n)
                k = n - 1;
            memcpy(out, v, k);
            out[k] = 0;
            return out;
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return NULL;
}

int get_token(mock_t *m)
{
    char url[256], body[512];
    snprintf(url, sizeof url, "%s/oauth2/token", m->base);
    snprintf(body, sizeof body, "client_id=%s&client_secret=%s&grant_type=client_credentials",
             m->client_id, m->client_secret);
    resp_t r;
    if (http(&r, "POST", url, body, NULL) || r.status != 200 || !js(r.json, "access_token")) {
        resp_free(&r);
        return -1;
    }
    snprintf(m->token, sizeof m->token, "%s", js(r.json, "access_token"));
    resp_free(&r);
    return 0;
}

int helix(mock_t *m, resp_t *r, const char *method, const char *path, const char *body)
{
    char url[1024], cid[200], auth[200];
    snprintf(url, sizeof url, "%s/helix%s", m->base, path);
    snprintf(cid, sizeof cid, "Client-Id: %s", m->client_id);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", m->token);
    const char *h[] = {cid, auth, "Content-Type: application/json", NULL};
    return http(r, method, url, body, h);
}

int helix_as(mock_t *m, const char *token, resp_t *r, const char *method, const char *path,
             const char *body)
{
    char url[1024], cid[200], auth[200];
    snprintf(url, sizeof url, "%s/helix%s", m->base, path);
    snprintf(cid, sizeof cid, "Client-Id: %s", m->client_id);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    const char *h[] = {cid, auth, "Content-Type: application/json", NULL};
    return http(r, method, url, body, h);
}

int mock_user(mock_t *m, const char *login, const char *user_id, const char *scopes_json,
              char *token_out, size_t n, char *uid_out, size_t un)
{
    char body[1024], uid[64] = "";
    if (user_id)
        snprintf(uid, sizeof uid, ",\"user_id\":\"%s\"", user_id);
    snprintf(body, sizeof body, "{\"login\":\"%s\",\"scopes\":%s%s}", login,
             scopes_json ? scopes_json : "[]", uid);
    resp_t r;
    int rc = control(m, &r, "POST", "/users", body);
    if (rc || r.status != 200 || !js(r.json, "access_token")) {
        resp_free(&r);
        return -1;
    }
    snprintf(token_out, n, "%s", js(r.json, "access_token"));
    if (uid_out)
        snprintf(uid_out, un, "%s", js(r.json, "user_id"));
    resp_free(&r);
    return 0;
}

int control(mock_t *m, resp_t *r, const char *method, const char *path, const char *body)
{
    char url[1024];
    snprintf(url, sizeof url, "%s/_mock%s", m->base, path);
    const char *h[] = {"Content-Type: application/json", NULL};
    return http(r, method, url, body, h);
}

cJSON *control_json(mock_t *m, const char *method, const char *path, const char *body, long *status)
{
    resp_t r;
    control(m, &r, method, path, body);
    if (status)
        *status = r.status;
    cJSON *o = r.json;
    r.json = NULL;
    resp_free(&r);
    return o;
}

const cJSON *jget(const cJSON *o, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *cur = o;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ".", &save); tok && cur; tok = strtok_r(NULL, ".", &save)) {
        if (cJSON_IsArray(cur)) {
            char *e = NULL;
            long i = strtol(tok, &e, 10);
            cur = *e ? NULL : cJSON_GetArrayItem(cur, (int)i);
        } else
            cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
    }
    return cur;
}

const char *js(const cJSON *o, const char *path)
{
    const cJSON *v = jget(o, path);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

double jn(const cJSON *o, const char *path)
{
    const cJSON *v = jget(o, path);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* ---------------- websocket client ---------------- */

static int send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct pollfd pf = {fd, POLLOUT, 0};
                poll(&pf, 1, 1000);
                continue;
            }
            return -1;
        }
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

int ws_connect(wsc_t *w, int port, const char *path)
{
    memset(w, 0, sizeof *w);
    w->auto_pong = 1;
    w->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (w->fd < 0)
        return -1;
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(w->fd, (struct sockaddr *)&sa, sizeof sa)) {
        close(w->fd);
        w->fd = -1;
        return -1;
    }
    int one = 1;
    setsockopt(w->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     path, port);
    if (send_all(w->fd, req, (size_t)n))
        return -1;
    /* read the response head */
    char head[4096];
    size_t hl = 0;
    int64_t end = now_ms() + 5000;
    while (hl < sizeof head - 1) {
        struct pollfd pf = {w->fd, POLLIN, 0};
        int left = (int)(end - now_ms());
        if (left <= 0 || poll(&pf, 1, left) <= 0)
            return -1;
        ssize_t k = recv(w->fd, head + hl, 1, 0);
        if (k <= 0)
            return -1;
        hl++;
        head[hl] = 0;
        if (hl >= 4 && !memcmp(head + hl - 4, "\r\n\r\n", 4))
            break;
    }
    if (strncmp(head, "HTTP/1.1 101", 12))
        return -1;
    return 0;
}

static int fill(wsc_t *w, int64_t end)
{
    if (w->cap - w->len < 65536) {
        size_t nc = w->cap ? w->cap * 2 : 131072;
        unsigned char *nb = realloc(w->buf, nc);
        if (!nb)
            return -1;
        w->buf = nb;
        w->cap = nc;
    }
    struct pollfd pf = {w->fd, POLLIN, 0};
    int left = (int)(end - now_ms());
    if (left < 0)
        left = 0;
    int pr = poll(&pf, 1, left);
    if (pr <= 0)
        return 0; /* timeout */
    ssize_t k = recv(w->fd, w->buf + w->len, w->cap - w->len, 0);
    if (k <= 0) {
        w->closed = 1;
        return -1;
    }
    w->len += (size_t)k;
    return 1;
}

static int send_frame(wsc_t *w, int opcode, const void *data, size_t len)
{
    unsigned char h[14];
    size_t hl = 0;
    h[hl++] = (unsigned char)(0x80 | opcode);
    if (len < 126)
        h[hl++] = (unsigned char)(0x80 | len);
    else if (len < 65536) {
        h[hl++] = 0x80 | 126;
        h[hl++] = (unsigned char)(len >> 8);
        h[hl++] = (unsigned char)len;
    } else {
        h[hl++] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            h[hl++] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    }
    unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};
    memcpy(h + hl, mask, 4);
    hl += 4;
    unsigned char *p = malloc(hl + len + 1);
    if (!p)
        return -1;
    memcpy(p, h, hl);
    for (size_t i = 0; i < len; i++)
        p[hl + i] = ((const unsigned char *)data)[i] ^ mask[i & 3];
    int rc = send_all(w->fd, p, hl + len);
    free(p);
    return rc;
}

char *ws_recv(wsc_t *w, int timeout_ms, int *opcode)
{
    int64_t end = now_ms() + timeout_ms;
    for (;;) {
        /* parse one frame if complete */
        if (w->len >= 2) {
            size_t plen = w->buf[1] & 0x7f, hl = 2;
            if (plen == 126) {
                if (w->len < 4)
                    goto more;
                plen = ((size_t)w->buf[2] << 8) | w->buf[3];
                hl = 4;
            } else if (plen == 127) {
                if (w->len < 10)
                    goto more;
                plen = 0;
                for (int i = 0; i < 8; i++)
                    plen = (plen << 8) | w->buf[2 + i];
                hl = 10;
            }
            if (w->len < hl + plen)
                goto more;
            int op = w->buf[0] & 0x0f;
            char *msg = malloc(plen + 1);
            if (!msg)
                return NULL;
            memcpy(msg, w->buf + hl, plen);
            msg[plen] = 0;
            memmove(w->buf, w->buf + hl + plen, w->len - hl - plen);
            w->len -= hl + plen;
            if (op == 9) { /* ping */
                w->pings++;
                if (w->auto_pong)
                    send_frame(w, 10, msg, plen);
                free(msg);
                continue;
            }
            if (op == 10) {
                free(msg);
                continue;
            }
            if (op == 8) {
                w->got_close_frame = 1;
                w->closed = 1;
                w->close_code = plen >= 2 ? ((unsigned char)msg[0] << 8 | (unsigned char)msg[1]) : 1005;
                free(msg);
                return NULL;
            }
            if (opcode)
                *opcode = op;
            return msg;
        }
    more:
        if (w->closed)
            return NULL;
        int f = fill(w, end);
        if (f <= 0)
            return NULL;
    }
}

cJSON *ws_recv_json(wsc_t *w, int timeout_ms)
{
    char *s = ws_recv(w, timeout_ms, NULL);
    if (!s)
        return NULL;
    cJSON *o = cJSON_Parse(s);
    free(s);
    return o;
}

cJSON *ws_wait_type(wsc_t *w, const char *type, int timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    for (;;) {
        int left = (int)(end - now_ms());
        if (left <= 0)
            return NULL;
        char *s = ws_recv(w, left, NULL);
        if (!s)
            return NULL;
        cJSON *o = cJSON_Parse(s);
        free(s);
        const char *t = js(o, "metadata.message_type");
        if (t && !strcmp(t, type))
            return o;
        cJSON_Delete(o);
    }
}

int ws_send_text(wsc_t *w, const char *s) { return send_frame(w, 1, s, strlen(s)); }

int ws_send_close(wsc_t *w, int code)
{
    unsigned char b[2] = {(unsigned char)(code >> 8), (unsigned char)code};
    return send_frame(w, 8, b, 2);
}

int ws_wait_close(wsc_t *w, int timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    while (!w->closed) {
        int left = (int)(end - now_ms());
        if (left <= 0)
            return -1;
        char *s = ws_recv(w, left, NULL);
        free(s);
    }
    return w->got_close_frame ? w->close_code : 0;
}

void ws_free(wsc_t *w)
{
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    free(w->buf);
    w->buf = NULL;
}

int ws_open_session(wsc_t *w, int port, const char *query)
{
    char path[512];
    snprintf(path, sizeof path, "/ws%s%s", query && *query ? "?" : "", query ? query : "");
    if (ws_connect(w, port, path))
        return -1;
    cJSON *o = ws_recv_json(w, 5000);
    const char *t = js(o, "metadata.message_type");
    const char *id = js(o, "payload.session.id");
    int ok = t && !strcmp(t, "session_welcome") && id;
    if (ok)
        snprintf(w->session_id, sizeof w->session_id, "%s", id);
    cJSON_Delete(o);
    return ok ? 0 : -1;
}

/* ---------------- raw HTTP/1.1 ---------------- */

int raw_open(rawc_t *c, int port)
{
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa)) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

int raw_send(rawc_t *c, const char *bytes)
{
    size_t n = strlen(bytes), off = 0;
    while (off < n) {
        ssize_t k = send(c->fd, bytes + off, n - off, MSG_NOSIGNAL);
        if (k <= 0)
            return -1;
        off += (size_t)k;
    }
    return 0;
}

/* reads more bytes: 1 got some, 0 timeout, -1 EOF */
static int raw_more(rawc_t *c, int64_t end)
{
    int left = (int)(end - now_ms());
    if (left <= 0)
        return 0;
    struct pollfd p = {c->fd, POLLIN, 0};
    if (poll(&p, 1, left) <= 0)
        return 0;
    if (c->len + 4096 + 1 > c->cap) {
        c->cap = (c->len + 4096 + 1) * 2;
        c->buf = realloc(c->buf, c->cap);
    }
    ssize_t k = recv(c->fd, c->buf + c->len, 4096, 0);
    if (k <= 0) {
        c->eof = 1;
        return -1;
    }
    c->len += (size_t)k;
    c->buf[c->len] = 0;
    return 1;
}

int raw_resp(rawc_t *c, resp_t *r, int timeout_ms)
{
    memset(r, 0, sizeof *r);
    int64_t end = now_ms() + timeout_ms;
    char *he = NULL;
    while (!c->buf || !(he = memmem(c->buf, c->len, "\r\n\r\n", 4)))
        if (raw_more(c, end) <= 0)
            return -1;
    size_t hl = (size_t)(he - c->buf) + 4;
    size_t cl = 0;
    if (sscanf(c->buf, "HTTP/1.%*d %ld", &r->status) != 1)
        return -1;
    size_t cp = hl - 4 < sizeof r->headers - 1 ? hl - 4 : sizeof r->headers - 1;
    memcpy(r->headers, c->buf, cp);
    r->headers[cp] = 0;
    char *q = strcasestr(r->headers, "\r\ncontent-length:");
    if (q)
        cl = (size_t)strtoul(q + 17, NULL, 10);
    while (c->len < hl + cl)
        if (raw_more(c, end) <= 0)
            return -1;
    r->body = malloc(cl + 1);
    memcpy(r->body, c->buf + hl, cl);
    r->body[cl] = 0;
    r->len = cl;
    r->json = cl ? cJSON_Parse(r->body) : NULL;
    memmove(c->buf, c->buf + hl + cl, c->len - hl - cl);
    c->len -= hl + cl;
    c->buf[c->len] = 0;
    return 0;
}

int raw_wait_eof(rawc_t *c, int timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    for (;;) {
        if (c->eof)
            return 1;
        size_t before = c->len;
        int k = raw_more(c, end);
        if (k == 0)
            return 0;
        if (k > 0 && c->len != before)
            return 0;
    }
}

void raw_close(rawc_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
}
