/* Update Conduit Shards faults (hold, reorder, delay, reject), the repoint control
 * call, shards pointing at closed sessions, and how sessions end (close records). */
#include "mocktest.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static mock_t m;

/* ---------------- helpers ---------------- */

static const char *S(const char *s) { return s ? s : ""; }

static cJSON *ctl(const char *method, const char *path, const char *body, long *status)
{
    return control_json(&m, method, path, body, status);
}

static char *new_conduit(int shards)
{
    resp_t r;
    char b[64];
    snprintf(b, sizeof b, "{\"shard_count\":%d}", shards);
    helix(&m, &r, "POST", "/eventsub/conduits", b);
    char *id = strdup(js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "none");
    resp_free(&r);
    return id;
}

static void patch_body(char *b, size_t n, const char *cid, int shard, const char *session)
{
    snprintf(b, n,
             "{\"conduit_id\":\"%s\",\"shards\":[{\"id\":\"%d\",\"transport\":{\"method\":"
             "\"websocket\",\"session_id\":\"%s\"}}]}",
             cid, shard, session);
}

static long assign(const char *cid, int shard, const char *session)
{
    char b[512];
    patch_body(b, sizeof b, cid, shard, session);
    resp_t r;
    helix(&m, &r, "PATCH", "/eventsub/conduits/shards", b);
    long st = r.status;
    if (st == 202 && cJSON_GetArraySize(jget(r.json, "errors")) > 0)
        st = -1;
    resp_free(&r);
    return st;
}

/* GET shards: shard i's field ("status", "transport.session_id", ...) */
static char *shard_field(const char *cid, int shard, const char *field)
{
    char p[256], k[96];
    snprintf(p, sizeof p, "/eventsub/conduits/shards?conduit_id=%s", cid);
    resp_t r;
    helix(&m, &r, "GET", p, NULL);
    snprintf(k, sizeof k, "data.%d.%s", shard, field);
    char *v = strdup(js(r.json, k) ? js(r.json, k) : "");
    resp_free(&r);
    return v;
}

static int shard_is(const char *cid, int shard, const char *field, const char *want)
{
    char *v = shard_field(cid, shard, field);
    int ok = !strcmp(v, want);
    free(v);
    return ok;
}

/* /_mock/state: the shard object of conduit cid (a copy) */
static cJSON *state_shard(const char *cid, int shard)
{
    cJSON *st = ctl("GET", "/state", NULL, NULL);
    cJSON *out = NULL;
    const cJSON *c;
    cJSON_ArrayForEach(c, jget(st, "conduits"))
    {
        if (js(c, "id") && !strcmp(js(c, "id"), cid)) {
            const cJSON *s = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(c, "shards"), shard);
            out = s ? cJSON_Duplicate(s, 1) : NULL;
        }
    }
    cJSON_Delete(st);
    return out;
}

static cJSON *session_rec(const char *id)
{
    cJSON *l = ctl("GET", "/sessions", NULL, NULL);
    cJSON *out = NULL;
    const cJSON *s;
    cJSON_ArrayForEach(s, jget(l, "sessions"))
    {
        if (js(s, "id") && !strcmp(js(s, "id"), id))
            out = cJSON_Duplicate(s, 1);
    }
    cJSON_Delete(l);
    return out;
}

/* number of kept requests in the given state (NULL: any) */
static int kept(const char *state)
{
    cJSON *l = ctl("GET", "/shard_patches", NULL, NULL);
    int n = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, jget(l, "requests"))
    {
        if (!state || (js(x, "state") && !strcmp(js(x, "state"), state)))
            n++;
    }
    cJSON_Delete(l);
    return n;
}

struct kept_wait {
    const char *state;
    int n;
};
static int kept_is(void *a)
{
    struct kept_wait *w = a;
    return kept(w->state) == w->n;
}

static int ok_fault(const char *body)
{
    long st;
    cJSON_Delete(ctl("POST", "/faults", body, &st));
    return st == 200;
}

/* an Update Conduit Shards request on its own thread (its answer may be held) */
typedef struct {
    pthread_t th;
    char body[512];
    resp_t r;
    int rc;
    int done;
} areq_t;

static void *areq_run(void *a)
{
    areq_t *q = a;
    q->rc = helix(&m, &q->r, "PATCH", "/eventsub/conduits/shards", q->body);
    __atomic_store_n(&q->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void areq_start(areq_t *q, const char *cid, int shard, const char *session)
{
    memset(q, 0, sizeof *q);
    patch_body(q->body, sizeof q->body, cid, shard, session);
    if (pthread_create(&q->th, NULL, areq_run, q))
        q->rc = -1, q->done = 1;
}

static int areq_done(areq_t *q) { return __atomic_load_n(&q->done, __ATOMIC_SEQ_CST); }

static int areq_done_cb(void *a) { return areq_done(a); }

static void areq_join(areq_t *q)
{
    pthread_join(q->th, NULL);
}

/* a raw HTTP request on its own socket (to close it before the answer) */
static int raw_patch(const char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)m.port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "PATCH /helix/eventsub/conduits/shards HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                     "Authorization: Bearer %s\r\nClient-Id: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     m.port, m.token, m.client_id, strlen(body), body);
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return -1;
    }
    return fd;
}

static int first_kept_disconnected(void *a)
{
    (void)a;
    cJSON *l = ctl("GET", "/shard_patches", NULL, NULL);
    const cJSON *c = jget(l, "requests.0.client_connected");
    int r = c && cJSON_IsFalse(c);
    cJSON_Delete(l);
    return r;
}

/* ---------------- tests ---------------- */

/* Two held PATCHes for one shard released newest first: the older one is applied
 * last and the conduit ends on its session. */
static void test_hold_reverse(void)
{
    char *cid = new_conduit(2);
    wsc_t a, b, c;
    int ok = !ws_open_session(&a, m.port, NULL) && !ws_open_session(&b, m.port, NULL) &&
             !ws_open_session(&c, m.port, NULL);
    t_ok(ok && assign(cid, 0, a.session_id) == 202, "hold: three sessions, shard 0 on A");
    t_ok(ok_fault("{\"shard_patch\":{\"hold\":2}}"), "hold: fault set for the next 2 requests");
    areq_t q1, q2;
    areq_start(&q1, cid, 0, b.session_id);
    struct kept_wait kw = {"held", 1};
    wait_until(kept_is, &kw, 10000);
    areq_start(&q2, cid, 0, c.session_id);
    kw.n = 2;
    t_ok(wait_until(kept_is, &kw, 10000), "hold: both requests are held");
    cJSON *l = ctl("GET", "/shard_patches", NULL, NULL);
    double id1 = jn(l, "requests.0.id"), id2 = jn(l, "requests.1.id");
    t_ok(id1 > 0 && id2 > id1 && !strcmp(js(l, "requests.0.conduit_id"), cid) &&
             !strcmp(js(l, "requests.0.shards.0.id"), "0") &&
             !strcmp(js(l, "requests.0.shards.0.method"), "websocket") &&
             !strcmp(js(l, "requests.0.shards.0.session_id"), b.session_id) &&
             !strcmp(js(l, "requests.1.shards.0.session_id"), c.session_id) &&
             cJSON_IsTrue(jget(l, "requests.0.client_connected")) && jn(l, "hold") == 0,
         "hold: listed in arrival order with conduit, shard and session; knob used up");
    cJSON_Delete(l);
    t_ok(!areq_done(&q1) && !areq_done(&q2), "hold: neither client has an answer yet");
    t_ok(shard_is(cid, 0, "transport.session_id", a.session_id) &&
             shard_is(cid, 0, "status", "enabled"),
         "hold: nothing applied on arrival (shard 0 still on A)");
    t_ok(assign(cid, 1, a.session_id) == 202, "hold: a third request is answered at once");

    long st;
    cJSON *rel = ctl("POST", "/shard_patches/release", "{\"order\":\"reverse\"}", &st);
    t_ok(st == 200 && cJSON_GetArraySize(jget(rel, "released")) == 2 &&
             jn(rel, "released.0") == id2 && jn(rel, "released.1") == id1,
         "release reverse: newest first (%.0f, %.0f)", jn(rel, "released.0"), jn(rel, "released.1"));
    cJSON_Delete(rel);
    areq_join(&q1);
    areq_join(&q2);
    t_ok(q1.rc == 0 && q1.r.status == 202 && q2.r.status == 202 &&
             !strcmp(S(js(q1.r.json, "data.0.transport.session_id")), b.session_id) &&
             !strcmp(S(js(q2.r.json, "data.0.transport.session_id")), c.session_id) &&
             cJSON_GetArraySize(jget(q1.r.json, "errors")) == 0,
         "release: both clients get their 202 with the shard as they set it");
    char rl[32];
    t_ok(resp_header(&q1.r, "Ratelimit-Remaining", rl, sizeof rl) != NULL,
         "release: the late answer carries the rate-limit headers");
    resp_free(&q1.r);
    resp_free(&q2.r);
    t_ok(shard_is(cid, 0, "transport.session_id", b.session_id) &&
             shard_is(cid, 0, "status", "enabled"),
         "GET shards: the conduit ends on the last-applied request's session (B)");
    cJSON *s0 = state_shard(cid, 0);
    t_ok(s0 && !strcmp(js(s0, "transport.session_id"), b.session_id) &&
             !strcmp(js(s0, "transport.method"), "websocket") && !strcmp(js(s0, "status"), "enabled") &&
             cJSON_IsTrue(jget(s0, "session_connected")),
         "/_mock/state: shard 0 on B, enabled, session connected");
    cJSON_Delete(s0);
    t_ok(kept(NULL) == 0, "release: nothing left held");

    /* release by ids, the rest stays held */
    ok_fault("{\"shard_patch\":{\"hold\":2}}");
    areq_start(&q1, cid, 1, b.session_id);
    kw.n = 1;
    wait_until(kept_is, &kw, 10000);
    areq_start(&q2, cid, 1, c.session_id);
    kw.n = 2;
    wait_until(kept_is, &kw, 10000);
    l = ctl("GET", "/shard_patches", NULL, NULL);
    char body[96];
    snprintf(body, sizeof body, "{\"ids\":[%.0f]}", jn(l, "requests.1.id"));
    double first = jn(l, "requests.0.id");
    cJSON_Delete(l);
    cJSON_Delete(ctl("POST", "/shard_patches/release", body, &st));
    t_ok(st == 200 && wait_until(areq_done_cb, &q2, 10000) && !areq_done(&q1) && kept("held") == 1 &&
             shard_is(cid, 1, "transport.session_id", c.session_id),
         "release ids: only that request is applied and answered");
    snprintf(body, sizeof body, "{\"ids\":[%.0f,%.0f]}", first, first);
    cJSON_Delete(ctl("POST", "/shard_patches/release", body, &st));
    t_ok(st == 400 && kept("held") == 1, "release ids: a request listed twice -> 400, nothing released");
    cJSON_Delete(ctl("POST", "/shard_patches/release", "{\"ids\":[999999]}", &st));
    t_ok(st == 404, "release ids: unknown id -> 404");
    cJSON_Delete(ctl("POST", "/shard_patches/release", "{\"order\":\"sideways\"}", &st));
    t_ok(st == 400, "release: bad order -> 400");
    cJSON_Delete(ctl("POST", "/shard_patches/release", "{\"order\":\"fifo\",\"ids\":[1]}", &st));
    t_ok(st == 400, "release: order and ids together -> 400");
    /* release with a gap: applied one after the other, answered in that order */
    cJSON_Delete(ctl("POST", "/shard_patches/release", "{\"delay_ms\":1500}", &st));
    t_ok(st == 200 && kept("releasing") == 1 && !areq_done(&q1), "release delay_ms: still pending");
    t_ok(wait_until(areq_done_cb, &q1, 10000) && shard_is(cid, 1, "transport.session_id", b.session_id),
         "release delay_ms: applied and answered later");
    areq_join(&q1);
    areq_join(&q2);
    resp_free(&q1.r);
    resp_free(&q2.r);
    ws_free(&a);
    ws_free(&b);
    ws_free(&c);
    free(cid);
}

static void test_delay(void)
{
    char *cid = new_conduit(1);
    wsc_t a;
    ws_open_session(&a, m.port, NULL);
    t_ok(ok_fault("{\"shard_patch\":{\"delay_ms\":2000}}"), "delay: fault set");
    areq_t q;
    int64_t t0 = now_ms();
    areq_start(&q, cid, 0, a.session_id);
    struct kept_wait kw = {"delayed", 1};
    t_ok(wait_until(kept_is, &kw, 10000), "delay: the request is kept as delayed");
    /* read the shard, then check the request was still waiting after that read */
    int unchanged = shard_is(cid, 0, "status", "websocket_disconnected") &&
                    shard_is(cid, 0, "transport.session_id", "");
    t_ok(unchanged && kept("delayed") == 1 && !areq_done(&q),
         "delay: before the delay the shard is unchanged and no answer came");
    t_ok(wait_until(areq_done_cb, &q, 15000), "delay: the answer arrives");
    int64_t dt = now_ms() - t0;
    areq_join(&q);
    t_ok(q.r.status == 202 && !strcmp(S(js(q.r.json, "data.0.transport.session_id")), a.session_id) &&
             shard_is(cid, 0, "status", "enabled") && kept(NULL) == 0,
         "delay: applied when answered (202, shard 0 enabled on the session)");
    t_diag("delayed answer after %lld ms (delay 2000 ms)", (long long)dt);
    resp_free(&q.r);
    t_ok(assign(cid, 0, a.session_id) == 202 && kept(NULL) == 0,
         "delay: count 1 by default, the next request is answered at once");
    long st;
    cJSON_Delete(ctl("POST", "/faults", "{\"shard_patch\":{\"delay_ms\":-5}}", &st));
    t_ok(st == 400, "delay: negative delay -> 400");
    cJSON_Delete(ctl("POST", "/faults", "{\"shard_patch\":{\"hold\":1.5}}", &st));
    t_ok(st == 400, "hold: non-integer -> 400");
    cJSON_Delete(ctl("POST", "/faults", "{\"shard_patch\":{\"reject\":[{\"session_id\":\"x\"}]}}", &st));
    t_ok(st == 400, "reject: entry without shard -> 400");
    ws_free(&a);
    free(cid);
}

static void test_reject(void)
{
    char *cid = new_conduit(2);
    wsc_t a, b, c;
    ws_open_session(&a, m.port, NULL);
    ws_open_session(&b, m.port, NULL);
    ws_open_session(&c, m.port, NULL);
    assign(cid, 0, a.session_id);
    assign(cid, 1, a.session_id);
    t_ok(ok_fault("{\"shard_patch\":{\"reject\":[{\"shard\":\"1\",\"message\":\"stale session\"}]}}"),
         "reject: fault set for shard 1");
    char body[1024];
    snprintf(body, sizeof body,
             "{\"conduit_id\":\"%s\",\"shards\":[{\"id\":\"0\",\"transport\":{\"method\":\"websocket\","
             "\"session_id\":\"%s\"}},{\"id\":\"1\",\"transport\":{\"method\":\"websocket\","
             "\"session_id\":\"%s\"}}]}",
             cid, b.session_id, b.session_id);
    resp_t r;
    helix(&m, &r, "PATCH", "/eventsub/conduits/shards", body);
    t_ok(r.status == 202 && cJSON_GetArraySize(jget(r.json, "data")) == 1 &&
             !strcmp(js(r.json, "data.0.id"), "0") &&
             cJSON_GetArraySize(jget(r.json, "errors")) == 1 && !strcmp(js(r.json, "errors.0.id"), "1") &&
             !strcmp(js(r.json, "errors.0.message"), "stale session") &&
             !strcmp(js(r.json, "errors.0.code"), "invalid_parameter"),
         "reject: 202 with shard 0 in data and shard 1's error entry");
    resp_free(&r);
    t_ok(shard_is(cid, 0, "transport.session_id", b.session_id) &&
             shard_is(cid, 1, "transport.session_id", a.session_id) &&
             shard_is(cid, 1, "status", "enabled"),
         "reject: shard 0 applied, shard 1 keeps its previous transport");
    t_ok(assign(cid, 1, b.session_id) == 202, "reject: count 1 by default, the next one is applied");

    /* only the named session is rejected */
    snprintf(body, sizeof body,
             "{\"shard_patch\":{\"reject\":[{\"shard\":1,\"session_id\":\"%s\",\"code\":\"x_code\"}]}}",
             c.session_id);
    ok_fault(body);
    t_ok(assign(cid, 1, a.session_id) == 202, "reject session_id: another session is applied");
    snprintf(body, sizeof body,
             "{\"conduit_id\":\"%s\",\"shards\":[{\"id\":\"1\",\"transport\":{\"method\":\"websocket\","
             "\"session_id\":\"%s\"}}]}",
             cid, c.session_id);
    helix(&m, &r, "PATCH", "/eventsub/conduits/shards", body);
    t_ok(r.status == 202 && cJSON_GetArraySize(jget(r.json, "data")) == 0 &&
             !strcmp(S(js(r.json, "errors.0.code")), "x_code") &&
             !strcmp(S(js(r.json, "errors.0.message")), "The websocket session is not connected.") &&
             shard_is(cid, 1, "transport.session_id", a.session_id),
         "reject session_id: that session is rejected (default message, given code), shard kept");
    resp_free(&r);

    /* a late answer about a session the shard no longer uses: held request for A,
     * rejected when applied, while a newer request moved the shard to B */
    snprintf(body, sizeof body,
             "{\"shard_patch\":{\"hold\":1,\"reject\":[{\"shard\":\"0\",\"session_id\":\"%s\"}]}}",
             a.session_id);
    ok_fault(body);
    areq_t q;
    areq_start(&q, cid, 0, a.session_id);
    struct kept_wait kw = {"held", 1};
    wait_until(kept_is, &kw, 10000);
    t_ok(assign(cid, 0, c.session_id) == 202 && shard_is(cid, 0, "transport.session_id", c.session_id),
         "stale: a newer request moves shard 0 to C while the older one is held");
    long st;
    cJSON_Delete(ctl("POST", "/shard_patches/release", "{}", &st));
    areq_join(&q);
    t_ok(st == 200 && q.r.status == 202 && cJSON_GetArraySize(jget(q.r.json, "data")) == 0 &&
             !strcmp(S(js(q.r.json, "errors.0.id")), "0") &&
             shard_is(cid, 0, "transport.session_id", c.session_id) &&
             shard_is(cid, 0, "status", "enabled"),
         "stale: the late answer carries the error for A, shard 0 stays on C");
    resp_free(&q.r);
    ws_free(&a);
    ws_free(&b);
    ws_free(&c);
    free(cid);
}

/* Held or delayed requests whose client went away are still applied. */
static void test_client_gone(void)
{
    char *cid = new_conduit(2);
    wsc_t a;
    ws_open_session(&a, m.port, NULL);
    ok_fault("{\"shard_patch\":{\"hold\":1}}");
    char body[512];
    patch_body(body, sizeof body, cid, 0, a.session_id);
    int fd = raw_patch(body);
    struct kept_wait kw = {"held", 1};
    t_ok(fd >= 0 && wait_until(kept_is, &kw, 10000), "gone: request held");
    close(fd);
    t_ok(wait_until(first_kept_disconnected, NULL, 10000),
         "gone: the listing shows the client's connection closed");
    long st;
    cJSON *rel = ctl("POST", "/shard_patches/release", "{\"order\":\"fifo\"}", &st);
    t_ok(st == 200 && cJSON_GetArraySize(jget(rel, "released")) == 1 &&
             shard_is(cid, 0, "transport.session_id", a.session_id) && shard_is(cid, 0, "status", "enabled"),
         "gone: still applied on release");
    cJSON_Delete(rel);

    ok_fault("{\"shard_patch\":{\"delay_ms\":2000}}");
    patch_body(body, sizeof body, cid, 1, a.session_id);
    fd = raw_patch(body);
    kw.state = "delayed";
    t_ok(fd >= 0 && wait_until(kept_is, &kw, 10000), "gone: request delayed");
    close(fd);
    kw.state = NULL;
    kw.n = 0;
    t_ok(wait_until(kept_is, &kw, 10000) && shard_is(cid, 1, "transport.session_id", a.session_id),
         "gone: a delayed request whose client left is applied after the delay");

    /* reset answers what is still held */
    ok_fault("{\"shard_patch\":{\"hold\":1}}");
    areq_t q;
    areq_start(&q, cid, 0, a.session_id);
    kw.state = "held";
    kw.n = 1;
    wait_until(kept_is, &kw, 10000);
    cJSON_Delete(ctl("POST", "/reset", "{}", &st));
    int answered = wait_until(areq_done_cb, &q, 10000);
    areq_join(&q);
    t_ok(st == 200 && answered && q.r.status == 202 && kept(NULL) == 0,
         "reset: a held request is applied and answered before the state is cleared");
    resp_free(&q.r);
    cJSON *l = ctl("GET", "/shard_patches", NULL, NULL);
    t_ok(jn(l, "hold") == 0 && cJSON_GetArraySize(jget(l, "reject")) == 0, "reset: knobs cleared");
    cJSON_Delete(l);
    ws_free(&a);
    free(cid);
}

struct rec_wait {
    const char *id, *field;
};
static int rec_set(void *a)
{
    struct rec_wait *w = a;
    cJSON *s = session_rec(w->id);
    const cJSON *v = jget(s, w->field);
    int r = v && !cJSON_IsNull(v) && !cJSON_IsFalse(v);
    cJSON_Delete(s);
    return r;
}

static void test_close_records(void)
{
    char *cid = new_conduit(1);
    wsc_t w;
    /* client close frame 1000 */
    ws_open_session(&w, m.port, NULL);
    assign(cid, 0, w.session_id);
    cJSON *s = session_rec(w.session_id);
    t_ok(s && cJSON_IsNull(jget(s, "closed_by")) && cJSON_IsNull(jget(s, "close_code")) &&
             cJSON_IsNull(jget(s, "clean")) && cJSON_IsTrue(jget(s, "connected")),
         "records: a connected session has closed_by, close_code and clean null");
    cJSON_Delete(s);
    char sid[64];
    snprintf(sid, sizeof sid, "%s", w.session_id);
    ws_send_close(&w, 1000);
    int code = ws_wait_close(&w, 5000);
    struct rec_wait rw = {sid, "closed_by"};
    wait_until(rec_set, &rw, 10000);
    s = session_rec(sid);
    t_ok(code == 1000 && s && !strcmp(S(js(s, "closed_by")), "client") && jn(s, "close_code") == 1000 &&
             cJSON_IsTrue(jget(s, "clean")) && cJSON_IsFalse(jget(s, "connected")),
         "records: client close frame 1000 echoed -> closed_by client, 1000, clean (%d)", code);
    cJSON_Delete(s);
    ws_free(&w);

    /* the shard still points at the closed session */
    t_ok(shard_is(cid, 0, "transport.session_id", sid) && shard_is(cid, 0, "status", "websocket_disconnected"),
         "GET shards: the shard lists its closed session, websocket_disconnected");
    char *dis = shard_field(cid, 0, "transport.disconnected_at");
    t_ok(dis[0] != 0, "GET shards: with disconnected_at");
    free(dis);
    cJSON *st = state_shard(cid, 0);
    t_ok(st && !strcmp(S(js(st, "transport.session_id")), sid) &&
             !strcmp(S(js(st, "transport.method")), "websocket") &&
             !strcmp(S(js(st, "status")), "websocket_disconnected") &&
             cJSON_IsFalse(jget(st, "session_connected")),
         "/_mock/state: shard on the closed session, session_connected false");
    cJSON_Delete(st);

    /* server close 4003, the client answers with its close frame */
    ws_open_session(&w, m.port, NULL);
    snprintf(sid, sizeof sid, "%s", w.session_id);
    char p[256];
    snprintf(p, sizeof p, "/sessions/%s/close", sid);
    cJSON_Delete(ctl("POST", p, "{\"code\":4003}", NULL));
    code = ws_wait_close(&w, 5000);
    ws_send_close(&w, 4003);
    rw.field = "clean";
    int clean = wait_until(rec_set, &rw, 10000);
    s = session_rec(sid);
    t_ok(code == 4003 && clean && !strcmp(S(js(s, "closed_by")), "server") && jn(s, "close_code") == 4003,
         "records: server close 4003 answered -> closed_by server, 4003, clean");
    cJSON_Delete(s);
    ws_free(&w);

    /* server close 4000, the client goes away without answering */
    ws_open_session(&w, m.port, NULL);
    snprintf(sid, sizeof sid, "%s", w.session_id);
    snprintf(p, sizeof p, "/sessions/%s/close", sid);
    cJSON_Delete(ctl("POST", p, "{\"code\":4000}", NULL));
    code = ws_wait_close(&w, 5000);
    ws_free(&w);
    rw.field = "closed_by";
    wait_until(rec_set, &rw, 10000);
    s = session_rec(sid);
    t_ok(code == 4000 && !strcmp(S(js(s, "closed_by")), "server") && jn(s, "close_code") == 4000 &&
             cJSON_IsFalse(jget(s, "clean")),
         "records: server close 4000 not answered -> closed_by server, 4000, not clean");
    cJSON_Delete(s);

    /* drop: RST, no close frame */
    ws_open_session(&w, m.port, NULL);
    snprintf(sid, sizeof sid, "%s", w.session_id);
    snprintf(p, sizeof p, "/sessions/%s/drop", sid);
    cJSON_Delete(ctl("POST", p, "{}", NULL));
    code = ws_wait_close(&w, 5000);
    wait_until(rec_set, &rw, 10000);
    s = session_rec(sid);
    t_ok(code == 0 && !strcmp(S(js(s, "closed_by")), "server") && cJSON_IsNull(jget(s, "close_code")) &&
             cJSON_IsFalse(jget(s, "clean")),
         "records: drop -> closed_by server, close_code null, not clean (%d)", code);
    cJSON_Delete(s);
    ws_free(&w);

    /* the client's TCP connection ends without a close frame */
    ws_open_session(&w, m.port, NULL);
    snprintf(sid, sizeof sid, "%s", w.session_id);
    ws_free(&w);
    wait_until(rec_set, &rw, 10000);
    s = session_rec(sid);
    t_ok(!strcmp(S(js(s, "closed_by")), "client") && cJSON_IsNull(jget(s, "close_code")) &&
             cJSON_IsFalse(jget(s, "clean")),
         "records: connection lost without a close frame -> closed_by client, close_code null");
    cJSON_Delete(s);
    free(cid);
}

static void test_repoint(void)
{
    char *cid = new_conduit(2);
    wsc_t a, b;
    ws_open_session(&a, m.port, NULL);
    ws_open_session(&b, m.port, NULL);
    assign(cid, 0, a.session_id);
    ok_fault("{\"shard_patch\":{\"hold\":1}}");
    char p[256], body[256];
    snprintf(p, sizeof p, "/conduits/%s/shards/0", cid);
    snprintf(body, sizeof body, "{\"session_id\":\"%s\"}", b.session_id);
    long st;
    cJSON *o = ctl("POST", p, body, &st);
    t_ok(st == 200 && !strcmp(S(js(o, "data.0.id")), "0") &&
             !strcmp(S(js(o, "data.0.status")), "enabled") &&
             !strcmp(S(js(o, "data.0.transport.session_id")), b.session_id),
         "repoint: shard 0 moved to B at once (200 with the shard)");
    cJSON_Delete(o);
    cJSON *l = ctl("GET", "/shard_patches", NULL, NULL);
    t_ok(shard_is(cid, 0, "transport.session_id", b.session_id) && jn(l, "hold") == 1 &&
             cJSON_GetArraySize(jget(l, "requests")) == 0,
         "repoint: GET shards shows B; the hold fault is not used by it");
    cJSON_Delete(l);
    ok_fault("{\"shard_patch\":{\"hold\":0}}");
    cJSON *sess = session_rec(b.session_id);
    t_ok(cJSON_GetArraySize(jget(sess, "shards")) == 1, "repoint: the session lists the shard");
    cJSON_Delete(sess);

    /* A, no longer on any shard, is closed: repointing at it fails like a PATCH would */
    ws_send_close(&a, 1000);
    ws_wait_close(&a, 5000);
    struct rec_wait rw = {a.session_id, "closed_by"};
    wait_until(rec_set, &rw, 10000);
    snprintf(body, sizeof body, "{\"session_id\":\"%s\"}", a.session_id);
    o = ctl("POST", p, body, &st);
    t_ok(st == 400 && !strcmp(S(js(o, "message")), "The websocket session is not connected.") &&
             shard_is(cid, 0, "transport.session_id", b.session_id),
         "repoint: a closed session -> 400 with the per-shard message, shard unchanged");
    cJSON_Delete(o);
    snprintf(p, sizeof p, "/conduits/%s/shards/7", cid);
    snprintf(body, sizeof body, "{\"session_id\":\"%s\"}", b.session_id);
    o = ctl("POST", p, body, &st);
    t_ok(st == 400 && !strcmp(S(js(o, "message")), "The shard id is outside of the conduit's range"),
         "repoint: shard out of range -> 400");
    cJSON_Delete(o);
    snprintf(p, sizeof p, "/conduits/%s/shards/1", cid);
    o = ctl("POST", p, "{\"callback\":\"http://127.0.0.1:9/cb\",\"secret\":\"short\"}", &st);
    t_ok(st == 400 && !strcmp(S(js(o, "message")),
                              "The secret length is invalid: it must be 10 to 100 ASCII characters"),
         "repoint: webhook with a short secret -> 400");
    cJSON_Delete(o);
    o = ctl("POST", p, "{}", &st);
    t_ok(st == 400 && !strcmp(S(js(o, "message")), "The transport is required"),
         "repoint: no transport -> 400");
    cJSON_Delete(o);
    o = ctl("POST", "/conduits/nope/shards/0", body, &st);
    t_ok(st == 404, "repoint: unknown conduit -> 404");
    cJSON_Delete(o);
    o = ctl("POST", p, "{\"callback\":\"http://127.0.0.1:9/cb\",\"secret\":\"0123456789abc\"}", &st);
    t_ok(st == 200 && !strcmp(S(js(o, "data.0.transport.method")), "webhook") &&
             !strcmp(S(js(o, "data.0.status")), "webhook_callback_verification_pending"),
         "repoint: webhook transport -> verification pending");
    cJSON_Delete(o);
    /* disable: Twitch gives up on shard 0 while B stays connected */
    snprintf(p, sizeof p, "/conduits/%s/shards/0/disable", cid);
    o = ctl("POST", p, "{\"status\":\"enabled\"}", &st);
    t_ok(st == 400, "disable: status enabled -> 400");
    cJSON_Delete(o);
    o = ctl("POST", p, "{\"status\":\"websocket_failed_ping_pong\"}", &st);
    t_ok(st == 200 && !strcmp(S(js(o, "data.0.status")), "websocket_failed_ping_pong") &&
             !strcmp(S(js(o, "data.0.transport.session_id")), b.session_id),
         "disable: shard 0 disabled, still pointing at B");
    cJSON_Delete(o);
    cJSON *sb = session_rec(b.session_id);
    t_ok(cJSON_IsTrue(jget(sb, "connected")) && cJSON_GetArraySize(jget(sb, "shards")) == 0,
         "disable: B stays connected and lists no enabled shard");
    cJSON_Delete(sb);
    snprintf(p, sizeof p, "/conduits/%s/shards/9/disable", cid);
    o = ctl("POST", p, "{}", &st);
    t_ok(st == 400, "disable: shard out of range -> 400");
    cJSON_Delete(o);
    o = ctl("POST", "/conduits/nope/shards/0/disable", "{}", &st);
    t_ok(st == 404, "disable: unknown conduit -> 404");
    cJSON_Delete(o);
    snprintf(p, sizeof p, "/conduits/%s/shards/1", cid);

    cJSON *s1 = state_shard(cid, 1);
    t_ok(s1 && cJSON_IsNull(jget(s1, "session_connected")) &&
             !strcmp(S(js(s1, "transport.method")), "webhook"),
         "/_mock/state: a webhook shard has session_connected null");
    cJSON_Delete(s1);
    ws_free(&a);
    ws_free(&b);
    free(cid);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (mock_start(&m, "{\"ping_interval_s\":30,\"assign_window_s\":60,\"max_conduits\":50,"
                       "\"webhook_max_attempts\":1,\"webhook_timeout_s\":0.5}") ||
        get_token(&m)) {
        printf("not ok 1 - emulator starts\n1..1\n");
        return 1;
    }
    test_hold_reverse();
    test_delay();
    test_reject();
    test_client_gone();
    test_close_records();
    test_repoint();
    t_ok(mock_stop(&m) == 0, "clean exit");
    curl_global_cleanup();
    return t_done();
}
