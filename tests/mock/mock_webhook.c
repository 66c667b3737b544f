/* Webhook delivery of twconduit-mock: challenges, HMAC signatures, retries. */
#include "mocktest.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static mock_t m;

/* ---- a tiny HTTP server recording requests ---- */
typedef struct req {
    char headers[4096];
    char *body;
} req_t;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static req_t reqs[256];
static int nreq;
static int fail_mode;      /* 1: answer 500 to notifications */
static int bad_challenge;  /* 1: answer a wrong challenge */
static int srv_fd, srv_port;
static volatile int srv_stop;

static const char *hget(const char *headers, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    for (const char *p = headers; p && *p;) {
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

static void handle(int fd)
{
    char buf[65536];
    size_t len = 0;
    char *body = NULL;
    size_t clen = 0, hlen = 0;
    for (;;) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 3000) <= 0)
            break;
        ssize_t k = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (k <= 0)
            break;
        len += (size_t)k;
        buf[len] = 0;
        char *e = strstr(buf, "\r\n\r\n");
        if (e && !hlen) {
            hlen = (size_t)(e - buf) + 4;
            char cl[32];
            *e = 0;
            if (hget(buf, "Content-Length", cl, sizeof cl))
                clen = (size_t)atol(cl);
            *e = '\r';
        }
        if (hlen && len >= hlen + clen)
            break;
    }
    if (!hlen) {
        close(fd);
        return;
    }
    body = malloc(clen + 1);
    memcpy(body, buf + hlen, clen);
    body[clen] = 0;
    char type[64] = "";
    buf[hlen] = 0;
    hget(buf, "Twitch-Eventsub-Message-Type", type, sizeof type);
    char resp[512];
    if (!strcmp(type, "webhook_callback_verification")) {
        cJSON *o = cJSON_Parse(body);
        const char *ch = js(o, "challenge");
        char c[128];
        snprintf(c, sizeof c, "%s%s", ch ? ch : "", bad_challenge ? "-wrong" : "");
        snprintf(resp, sizeof resp,
                 "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                 "Connection: close\r\n\r\n%s",
                 strlen(c), c);
        cJSON_Delete(o);
    } else if (fail_mode) {
        snprintf(resp, sizeof resp,
                 "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    } else {
        snprintf(resp, sizeof resp, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    }
    pthread_mutex_lock(&mu);
    if (nreq < 256) {
        size_t hl2 = strlen(buf);
        if (hl2 >= sizeof reqs[nreq].headers)
            hl2 = sizeof reqs[nreq].headers - 1;
        memcpy(reqs[nreq].headers, buf, hl2);
        reqs[nreq].headers[hl2] = 0;
        reqs[nreq].body = body;
        nreq++;
        body = NULL;
    }
    pthread_mutex_unlock(&mu);
    free(body);
    if (send(fd, resp, strlen(resp), MSG_NOSIGNAL) < 0) {
        /* ignore */
    }
    close(fd);
}

static void *server(void *arg)
{
    (void)arg;
    while (!srv_stop) {
        struct pollfd pf = {srv_fd, POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        int c = accept(srv_fd, NULL, NULL);
        if (c >= 0)
            handle(c);
    }
    return NULL;
}

static int nreq_get(void)
{
    pthread_mutex_lock(&mu);
    int n = nreq;
    pthread_mutex_unlock(&mu);
    return n;
}

static int want_n;
static int have_n(void *a)
{
    (void)a;
    return nreq_get() >= want_n;
}

static int wait_requests(int n, int ms)
{
    want_n = n;
    return wait_until(have_n, NULL, ms);
}

static void my_hmac(const char *secret, const char *id, const char *ts, const char *body, char out[80])
{
    size_t n = strlen(id) + strlen(ts) + strlen(body);
    char *msg = malloc(n + 1);
    snprintf(msg, n + 1, "%s%s%s", id, ts, body);
    unsigned char mac[64];
    unsigned int ml = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)msg, n, mac, &ml);
    free(msg);
    strcpy(out, "sha256=");
    for (unsigned i = 0; i < ml; i++)
        sprintf(out + 7 + 2 * i, "%02x", mac[i]);
}

static cJSON *ctl(const char *method, const char *path, const char *body, long *status)
{
    return control_json(&m, method, path, body, status);
}

struct stw {
    const char *path, *key, *want;
};
static int status_is(void *a)
{
    struct stw *w = a;
    resp_t r;
    helix(&m, &r, "GET", w->path, NULL);
    const char *v = js(r.json, w->key);
    int ok = v && !strcmp(v, w->want);
    resp_free(&r);
    return ok;
}

int main(void)
{
    srv_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    int one = 1;
    setsockopt(srv_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(srv_fd, (struct sockaddr *)&sa, sizeof sa) || listen(srv_fd, 64) ||
        getsockname(srv_fd, (struct sockaddr *)&sa, &sl)) {
        printf("not ok 1 - test server\n1..1\n");
        return 1;
    }
    srv_port = ntohs(sa.sin_port);
    pthread_t th;
    pthread_create(&th, NULL, server, NULL);
    if (mock_start(&m, "{\"webhook_max_attempts\":3,\"webhook_retry_base_s\":0.2,"
                       "\"webhook_failures_limit\":1,\"webhook_timeout_s\":2}") ||
        get_token(&m)) {
        printf("not ok 1 - emulator starts\n1..1\n");
        return 1;
    }
    /* HMAC vector of the facts */
    long stc;
    cJSON *o = ctl("POST", "/sign",
                   "{\"secret\":\"this-is-my-secret\",\"message_id\":\"e76c6bd4-55c9-4987-8304-da1588d8988b\","
                   "\"timestamp\":\"2019-11-16T10:11:12.634234626Z\","
                   "\"body\":\"{\\\"subscription\\\":{\\\"id\\\":\\\"f1c2a387\\\"},\\\"event\\\":{}}\"}",
                   &stc);
    const char *vec = "sha256=cfa670a6dc9647405c217f3c7c3b6328c265ace80aa4196e941d9e74ab50a49c";
    t_ok(stc == 200 && js(o, "signature") && !strcmp(js(o, "signature"), vec),
         "emulator HMAC reproduces the reference vector");
    cJSON_Delete(o);
    char mine[80];
    my_hmac("this-is-my-secret", "e76c6bd4-55c9-4987-8304-da1588d8988b", "2019-11-16T10:11:12.634234626Z",
            "{\"subscription\":{\"id\":\"f1c2a387\"},\"event\":{}}", mine);
    t_ok(!strcmp(mine, vec), "test verifier reproduces the reference vector");

    /* conduit with a webhook shard */
    resp_t r;
    helix(&m, &r, "POST", "/eventsub/conduits", "{\"shard_count\":1}");
    char cid[64];
    snprintf(cid, sizeof cid, "%s", js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "");
    resp_free(&r);
    char b[1024];
    snprintf(b, sizeof b,
             "{\"conduit_id\":\"%s\",\"shards\":[{\"id\":\"0\",\"transport\":{\"method\":\"webhook\","
             "\"callback\":\"http://127.0.0.1:%d/cb\",\"secret\":\"this-is-my-secret\"}}]}",
             cid, srv_port);
    helix(&m, &r, "PATCH", "/eventsub/conduits/shards", b);
    t_ok(r.status == 202 && js(r.json, "data.0.status") &&
             !strcmp(js(r.json, "data.0.status"), "webhook_callback_verification_pending") &&
             !strcmp(js(r.json, "data.0.transport.method"), "webhook") &&
             !jget(r.json, "data.0.transport.secret"),
         "webhook shard: 202 pending, secret not echoed");
    resp_free(&r);
    t_ok(wait_requests(1, 5000), "challenge request arrives");
    pthread_mutex_lock(&mu);
    cJSON *ch = cJSON_Parse(reqs[0].body);
    char h[256] = "", sig[128] = "", id[128] = "", ts[128] = "";
    hget(reqs[0].headers, "Twitch-Eventsub-Message-Type", h, sizeof h);
    hget(reqs[0].headers, "Twitch-Eventsub-Message-Signature", sig, sizeof sig);
    hget(reqs[0].headers, "Twitch-Eventsub-Message-Id", id, sizeof id);
    hget(reqs[0].headers, "Twitch-Eventsub-Message-Timestamp", ts, sizeof ts);
    my_hmac("this-is-my-secret", id, ts, reqs[0].body, mine);
    pthread_mutex_unlock(&mu);
    t_ok(!strcmp(h, "webhook_callback_verification") && js(ch, "challenge") &&
             js(ch, "conduit_shard.conduit_id") && !strcmp(js(ch, "conduit_shard.conduit_id"), cid) &&
             !strcmp(js(ch, "conduit_shard.shard"), "0") && !strcmp(sig, mine),
         "challenge: conduit_shard form, signed");
    cJSON_Delete(ch);
    char sp[256];
    snprintf(sp, sizeof sp, "/eventsub/conduits/shards?conduit_id=%s", cid);
    struct stw w1 = {sp, "data.0.status", "enabled"};
    t_ok(wait_until(status_is, &w1, 5000), "answered challenge -> shard enabled");

    snprintf(b, sizeof b,
             "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"9\"},"
             "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
             cid);
    helix(&m, &r, "POST", "/eventsub/subscriptions", b);
    resp_free(&r);
    cJSON *res = ctl("POST", "/trigger", "{\"type\":\"stream.online\",\"channels\":[\"9\"]}", NULL);
    char mid[64];
    snprintf(mid, sizeof mid, "%s", js(res, "message_ids.0") ? js(res, "message_ids.0") : "");
    cJSON_Delete(res);
    t_ok(wait_requests(2, 5000), "notification request arrives");
    pthread_mutex_lock(&mu);
    char retry[16] = "", stype[64] = "", sver[16] = "", ctype[64] = "";
    hget(reqs[1].headers, "Twitch-Eventsub-Message-Type", h, sizeof h);
    hget(reqs[1].headers, "Twitch-Eventsub-Message-Signature", sig, sizeof sig);
    hget(reqs[1].headers, "Twitch-Eventsub-Message-Id", id, sizeof id);
    hget(reqs[1].headers, "Twitch-Eventsub-Message-Timestamp", ts, sizeof ts);
    hget(reqs[1].headers, "Twitch-Eventsub-Message-Retry", retry, sizeof retry);
    hget(reqs[1].headers, "Twitch-Eventsub-Subscription-Type", stype, sizeof stype);
    hget(reqs[1].headers, "Twitch-Eventsub-Subscription-Version", sver, sizeof sver);
    hget(reqs[1].headers, "Content-Type", ctype, sizeof ctype);
    my_hmac("this-is-my-secret", id, ts, reqs[1].body, mine);
    cJSON *nb = cJSON_Parse(reqs[1].body);
    pthread_mutex_unlock(&mu);
    t_ok(!strcmp(h, "notification") && !strcmp(sig, mine) && !strcmp(id, mid) && !strcmp(retry, "0") &&
             !strcmp(stype, "stream.online") && !strcmp(sver, "1") && strlen(ts) == 30 &&
             !strcmp(ctype, "application/json"),
         "notification headers: type, id, retry 0, signature, timestamp, subscription type/version");
    t_ok(nb && js(nb, "event.broadcaster_user_id") && !jget(nb, "metadata") &&
             !strcmp(js(nb, "subscription.transport.method"), "conduit"),
         "notification body is {subscription, event}");
    cJSON_Delete(nb);
    usleep(100000);
    cJSON *l = ctl("GET", "/ledger", NULL, NULL);
    t_ok(js(l, "entries.0.status") && !strcmp(js(l, "entries.0.status"), "delivered"),
         "ledger: webhook notification delivered");
    cJSON_Delete(l);

    /* failures: retried on the same shard with the same id, then shard disabled */
    fail_mode = 1;
    int before = nreq_get();
    res = ctl("POST", "/trigger", "{\"type\":\"stream.online\",\"channels\":[\"9\"]}", NULL);
    snprintf(mid, sizeof mid, "%s", js(res, "message_ids.0") ? js(res, "message_ids.0") : "");
    cJSON_Delete(res);
    t_ok(wait_requests(before + 3, 6000), "failed notification is retried twice (3 attempts)");
    pthread_mutex_lock(&mu);
    int same = 1;
    for (int i = 0; i < 3; i++) {
        char rid[64] = "", rr[16] = "";
        hget(reqs[before + i].headers, "Twitch-Eventsub-Message-Id", rid, sizeof rid);
        hget(reqs[before + i].headers, "Twitch-Eventsub-Message-Retry", rr, sizeof rr);
        if (strcmp(rid, mid) || atoi(rr) != i)
            same = 0;
    }
    pthread_mutex_unlock(&mu);
    t_ok(same, "retries keep the message id; Retry header counts 0,1,2");
    struct stw w2 = {sp, "data.0.status", "notification_failures_exceeded"};
    t_ok(wait_until(status_is, &w2, 5000), "shard disabled with notification_failures_exceeded");
    l = ctl("GET", "/ledger", NULL, NULL);
    const cJSON *e;
    int dropped = 0;
    cJSON_ArrayForEach(e, jget(l, "entries")) if (!strcmp(js(e, "message_id"), mid)) dropped =
        !strcmp(js(e, "status"), "dropped") && cJSON_GetArraySize(jget(e, "attempts")) == 3;
    cJSON_Delete(l);
    t_ok(dropped, "ledger: dropped after 3 webhook attempts");
    fail_mode = 0;

    /* webhook subscriptions: failed and successful challenges */
    bad_challenge = 1;
    snprintf(b, sizeof b,
             "{\"type\":\"stream.offline\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"10\"},"
             "\"transport\":{\"method\":\"webhook\",\"callback\":\"http://127.0.0.1:%d/a\","
             "\"secret\":\"0123456789abc\"}}",
             srv_port);
    helix(&m, &r, "POST", "/eventsub/subscriptions", b);
    char subid[64];
    snprintf(subid, sizeof subid, "%s", js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "");
    t_ok(r.status == 202 && !strcmp(js(r.json, "data.0.status"), "webhook_callback_verification_pending") &&
             js(r.json, "data.0.transport.callback") && strstr(js(r.json, "data.0.transport.callback"), "/a") &&
             !jget(r.json, "data.0.transport.secret"),
         "webhook subscription: 202 pending");
    resp_free(&r);
    char gp[128];
    snprintf(gp, sizeof gp, "/eventsub/subscriptions?subscription_id=%s", subid);
    struct stw w3 = {gp, "data.0.status", "webhook_callback_verification_failed"};
    t_ok(wait_until(status_is, &w3, 5000), "wrong challenge answer -> webhook_callback_verification_failed");
    bad_challenge = 0;
    before = nreq_get();
    snprintf(b, sizeof b,
             "{\"type\":\"stream.offline\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"10\"},"
             "\"transport\":{\"method\":\"webhook\",\"callback\":\"http://127.0.0.1:%d/b\","
             "\"secret\":\"0123456789abc\"}}",
             srv_port);
    helix(&m, &r, "POST", "/eventsub/subscriptions", b);
    snprintf(subid, sizeof subid, "%s", js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "");
    resp_free(&r);
    wait_requests(before + 1, 5000);
    pthread_mutex_lock(&mu);
    cJSON *cb = cJSON_Parse(reqs[before].body);
    pthread_mutex_unlock(&mu);
    t_ok(cb && js(cb, "challenge") && js(cb, "subscription.id") && !strcmp(js(cb, "subscription.id"), subid) &&
             !strcmp(js(cb, "subscription.status"), "webhook_callback_verification_pending"),
         "subscription challenge: {challenge, subscription} form");
    cJSON_Delete(cb);
    snprintf(gp, sizeof gp, "/eventsub/subscriptions?subscription_id=%s", subid);
    struct stw w4 = {gp, "data.0.status", "enabled"};
    t_ok(wait_until(status_is, &w4, 5000), "answered challenge -> subscription enabled");
    before = nreq_get();
    cJSON_Delete(ctl("POST", "/trigger", "{\"type\":\"stream.offline\",\"channels\":[\"10\"]}", NULL));
    t_ok(wait_requests(before + 1, 5000), "webhook subscription notification delivered");
    char p[128];
    snprintf(p, sizeof p, "/subscriptions/%s/revoke", subid);
    before = nreq_get();
    cJSON_Delete(ctl("POST", p, "{\"status\":\"user_removed\"}", NULL));
    wait_requests(before + 1, 5000);
    pthread_mutex_lock(&mu);
    hget(reqs[before].headers, "Twitch-Eventsub-Message-Type", h, sizeof h);
    cJSON *rv = cJSON_Parse(reqs[before].body);
    pthread_mutex_unlock(&mu);
    t_ok(!strcmp(h, "revocation") && rv && !strcmp(js(rv, "subscription.status"), "user_removed") &&
             !jget(rv, "event"),
         "revocation over webhook: type revocation, status, no event");
    cJSON_Delete(rv);
    /* strict mode rejects plain http */
    cJSON_Delete(ctl("POST", "/config", "{\"strict_webhook_urls\":true}", NULL));
    snprintf(b, sizeof b,
             "{\"type\":\"stream.offline\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"11\"},"
             "\"transport\":{\"method\":\"webhook\",\"callback\":\"http://127.0.0.1:%d/c\","
             "\"secret\":\"0123456789abc\"}}",
             srv_port);
    helix(&m, &r, "POST", "/eventsub/subscriptions", b);
    t_ok(r.status == 400, "strict_webhook_urls: http callback -> 400");
    resp_free(&r);
    t_ok(mock_stop(&m) == 0, "clean exit");
    srv_stop = 1;
    pthread_join(th, NULL);
    close(srv_fd);
    for (int i = 0; i < nreq; i++)
        free(reqs[i].body);
    return t_done();
}
