/* Fault modes for the soak: a session that stops writing (pause), an oversized frame,
 * and blasts that cycle through event variants. */
#include "mocktest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mock_t m;

static cJSON *ctl(const char *method, const char *path, const char *body, long *status)
{
    return control_json(&m, method, path, body, status);
}

/* a conduit with one shard on a fresh session; fills cid */
static int conduit_on(wsc_t *w, char *cid, size_t n)
{
    resp_t r;
    cJSON_Delete(ctl("POST", "/reset", "{}", NULL));
    helix(&m, &r, "POST", "/eventsub/conduits", "{\"shard_count\":1}");
    snprintf(cid, n, "%s", js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "");
    resp_free(&r);
    if (ws_open_session(w, m.port, "keepalive_timeout_seconds=2") != 0)
        return -1;
    w->auto_pong = 1;
    char b[512];
    snprintf(b, sizeof b,
             "{\"conduit_id\":\"%s\",\"shards\":[{\"id\":\"0\",\"transport\":{\"method\":\"websocket\","
             "\"session_id\":\"%s\"}}]}",
             cid, w->session_id);
    helix(&m, &r, "PATCH", "/eventsub/conduits/shards", b);
    long st = r.status;
    resp_free(&r);
    snprintf(b, sizeof b,
             "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"77\"},"
             "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
             cid);
    helix(&m, &r, "POST", "/eventsub/subscriptions", b);
    long st2 = r.status;
    resp_free(&r);
    return st == 202 && st2 == 202 ? 0 : -1;
}

static void test_pause(void)
{
    wsc_t w;
    char cid[64], path[160];
    t_ok(conduit_on(&w, cid, sizeof cid) == 0, "pause: a conduit shard on a session (keepalive 2 s, pings 1 s)");
    snprintf(path, sizeof path, "/sessions/%s/pause", w.session_id);
    long st = 0;
    cJSON_Delete(ctl("POST", path, "{\"ms\":3500}", &st));
    t_ok(st == 200, "pause: accepted (%ld)", st);
    int pings0 = w.pings;
    cJSON_Delete(ctl("POST", "/trigger", "{\"type\":\"stream.online\",\"channels\":[\"77\"]}", NULL));
    int op = 0;
    int64_t t0 = now_ms();
    char *msg = ws_recv(&w, 2500, &op);
    t_ok(msg == NULL && !w.closed && w.pings == pings0,
         "pause: nothing written for 2.5 s, past the 2 s keepalive: no notification, keepalive or ping (%s)",
         msg ? msg : "nothing");
    free(msg);
    cJSON *n = NULL;
    for (int i = 0; i < 5 && !n; i++) {
        char *x = ws_recv(&w, 3000, &op);
        if (x && strstr(x, "\"notification\"")) n = cJSON_Parse(x);
        free(x);
    }
    t_ok(n != NULL && now_ms() - t0 >= 3400, "pause: the queued notification is written when the pause ends (%lld ms)",
         (long long)(now_ms() - t0));
    cJSON_Delete(n);
    char *k = ws_recv(&w, 6000, &op); /* within 2 × keepalive: the emulator counts from its last write */
    t_ok(k && strstr(k, "session_keepalive") && !w.closed && w.pings > pings0,
         "pause: keepalives and pings resume, the session lives (pings %d, %s, close %d)", w.pings, k ? k : "closed", w.close_code);
    free(k);
    cJSON_Delete(ctl("POST", path, "{\"ms\":0}", &st));
    t_ok(st == 400, "pause: ms 0 is refused (%ld)", st);
    ws_free(&w);
}

static void test_oversized(void)
{
    wsc_t w;
    char cid[64], path[160];
    t_ok(conduit_on(&w, cid, sizeof cid) == 0, "oversized: a conduit shard on a session");
    cJSON *l0 = ctl("GET", "/ledger", NULL, NULL);
    double d0 = jn(l0, "delivered");
    cJSON_Delete(l0);
    snprintf(path, sizeof path, "/sessions/%s/oversized", w.session_id);
    long st = 0;
    cJSON_Delete(ctl("POST", path, "{\"bytes\":3000000}", &st));
    int op = 0;
    char *msg = ws_recv(&w, 5000, &op);
    while (msg && strlen(msg) < 1000) { /* a keepalive first, perhaps */
        free(msg);
        msg = ws_recv(&w, 5000, &op);
    }
    t_ok(st == 200 && msg && op == 1 && strlen(msg) == 3000000 && msg[0] == '{' && msg[2999999] == '}',
         "oversized: one 3,000,000-byte text frame (%zu bytes)", msg ? strlen(msg) : 0);
    free(msg);
    cJSON *l1 = ctl("GET", "/ledger", NULL, NULL);
    t_ok(jn(l1, "delivered") == d0, "oversized: not a notification, not in the ledger");
    cJSON_Delete(l1);
    cJSON_Delete(ctl("POST", path, "{\"bytes\":10}", &st));
    t_ok(st == 400, "oversized: under 64 bytes is refused (%ld)", st);
    ws_free(&w);
}

static void test_variants(void)
{
    wsc_t w;
    char cid[64];
    t_ok(conduit_on(&w, cid, sizeof cid) == 0, "variants: a conduit shard on a session");
    long st = 0;
    cJSON *b = ctl("POST", "/blast",
                   "{\"type\":\"stream.online\",\"channels\":[\"77\"],\"count\":2,\"event\":{\"type\":\"live\"},"
                   "\"variants\":[{\"v\":\"a\"},{\"v\":\"b\"},{\"v\":\"c\",\"type\":\"rerun\"}]}",
                   &st);
    t_ok(st == 200 && jn(b, "total") == 6, "variants: 2 per variant and route, 6 in all (%g)", jn(b, "total"));
    cJSON_Delete(b);
    char seq[16] = "";
    int types_ok = 1;
    for (int i = 0; i < 6; i++) {
        cJSON *n = ws_wait_type(&w, "notification", 3000);
        const char *v = js(n, "payload.event.v"), *t = js(n, "payload.event.type");
        size_t k = strlen(seq);
        seq[k] = v ? v[0] : '?';
        seq[k + 1] = 0;
        if (!t || strcmp(t, v && v[0] == 'c' ? "rerun" : "live") != 0) types_ok = 0;
        cJSON_Delete(n);
    }
    t_ok(strcmp(seq, "abcabc") == 0 && types_ok,
         "variants: frames cycle through the variants, each merged over event (%s)", seq);
    cJSON_Delete(ctl("POST", "/blast", "{\"type\":\"stream.online\",\"channels\":[\"77\"],\"variants\":[1]}", &st));
    t_ok(st == 400, "variants: not an array of objects → 400 (%ld)", st);
    ws_free(&w);
}

int main(void)
{
    if (mock_start(&m, "{\"keepalive_min\":1,\"ping_interval_s\":1,\"assign_window_s\":30}") || get_token(&m)) {
        printf("not ok 1 - emulator starts\n1..1\n");
        return 1;
    }
    test_pause();
    test_oversized();
    test_variants();
    t_ok(mock_stop(&m) == 0, "clean exit");
    return t_done();
}
