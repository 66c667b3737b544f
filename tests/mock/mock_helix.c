/* OAuth and Helix endpoints of twconduit-mock. */
#include "mocktest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static mock_t m;

static long st(const char *method, const char *path, const char *body, resp_t *out)
{
    resp_t r;
    helix(&m, &r, method, path, body);
    long s = r.status;
    if (out)
        *out = r;
    else
        resp_free(&r);
    return s;
}

static void test_oauth(void)
{
    char url[256];
    resp_t r;
    snprintf(url, sizeof url, "%s/oauth2/token", m.base);
    http(&r, "POST", url, "client_id=nope&client_secret=x&grant_type=client_credentials", NULL);
    t_ok(r.status == 400 && jn(r.json, "status") == 400 && js(r.json, "message") &&
             !strcmp(js(r.json, "message"), "invalid client"),
         "token: unknown client -> 400 invalid client");
    resp_free(&r);
    http(&r, "POST", url,
         "client_id=twconduit-mock-client&client_secret=bad&grant_type=client_credentials", NULL);
    t_ok(r.status == 403 && js(r.json, "message") &&
             !strcmp(js(r.json, "message"), "invalid client secret"),
         "token: wrong secret -> 403 invalid client secret");
    resp_free(&r);
    char qurl[512];
    snprintf(qurl, sizeof qurl,
             "%s/oauth2/token?client_id=twconduit-mock-client&client_secret=twconduit-mock-secret"
             "&grant_type=client_credentials",
             m.base);
    http(&r, "POST", qurl, NULL, NULL);
    t_ok(r.status == 200 && js(r.json, "access_token") && jn(r.json, "expires_in") == 5011271 &&
             js(r.json, "token_type") && !strcmp(js(r.json, "token_type"), "bearer"),
         "token: query form -> 200 with access_token, expires_in, token_type bearer");
    resp_free(&r);
    t_ok(get_token(&m) == 0, "token: form body -> 200");

    snprintf(url, sizeof url, "%s/oauth2/validate", m.base);
    char auth[256];
    snprintf(auth, sizeof auth, "Authorization: OAuth %s", m.token);
    const char *h[] = {auth, NULL};
    http(&r, "GET", url, NULL, h);
    t_ok(r.status == 200 && js(r.json, "client_id") &&
             !strcmp(js(r.json, "client_id"), m.client_id) && cJSON_IsArray(jget(r.json, "scopes")) &&
             jn(r.json, "expires_in") > 5000000,
         "validate: OAuth prefix -> 200 client_id, scopes [], expires_in");
    resp_free(&r);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", m.token);
    http(&r, "GET", url, NULL, h);
    t_ok(r.status == 200, "validate: Bearer prefix accepted");
    resp_free(&r);
    const char *h2[] = {"Authorization: OAuth nonsense", NULL};
    http(&r, "GET", url, NULL, h2);
    t_ok(r.status == 401 && js(r.json, "message") &&
             !strcmp(js(r.json, "message"), "invalid access token"),
         "validate: bad token -> 401 invalid access token");
    resp_free(&r);
}

static void test_auth(void)
{
    char url[256];
    resp_t r;
    snprintf(url, sizeof url, "%s/helix/eventsub/conduits", m.base);
    char cid[200], auth[200];
    snprintf(cid, sizeof cid, "Client-Id: %s", m.client_id);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", m.token);
    const char *no_auth[] = {cid, NULL};
    http(&r, "GET", url, NULL, no_auth);
    t_ok(r.status == 401 && js(r.json, "error") && !strcmp(js(r.json, "error"), "Unauthorized"),
         "helix: missing token -> 401 Unauthorized");
    resp_free(&r);
    const char *no_cid[] = {auth, NULL};
    http(&r, "GET", url, NULL, no_cid);
    t_ok(r.status == 401 && js(r.json, "message") &&
             strstr(js(r.json, "message"), "Client-Id"),
         "helix: missing Client-Id -> 401 Client-Id header is missing");
    resp_free(&r);
    const char *bad[] = {cid, "Authorization: Bearer abcdef", NULL};
    http(&r, "GET", url, NULL, bad);
    t_ok(r.status == 401 && js(r.json, "message") &&
             !strcmp(js(r.json, "message"), "Invalid OAuth token"),
         "helix: unknown token -> 401 Invalid OAuth token");
    resp_free(&r);
    const char *wrongcid[] = {"Client-Id: other", auth, NULL};
    http(&r, "GET", url, NULL, wrongcid);
    t_ok(r.status == 401, "helix: Client-Id not matching the token -> 401");
    resp_free(&r);
    char v[64];
    helix(&m, &r, "GET", "/eventsub/conduits", NULL);
    t_ok(r.status == 200 && resp_header(&r, "Ratelimit-Limit", v, sizeof v) && !strcmp(v, "800") &&
             resp_header(&r, "Ratelimit-Remaining", v, sizeof v) &&
             resp_header(&r, "Ratelimit-Reset", v, sizeof v) && atol(v) > 1600000000,
         "helix: Ratelimit-Limit/Remaining/Reset headers");
    resp_free(&r);
    helix(&m, &r, "GET", "/nope", NULL);
    t_ok(r.status == 404, "helix: unknown path -> 404");
    resp_free(&r);
    snprintf(url, sizeof url, "%s/whatever", m.base);
    http(&r, "GET", url, NULL, NULL);
    t_ok(r.status == 404, "unknown top-level path -> 404");
    resp_free(&r);
}

static void test_conduits(void)
{
    resp_t r;
    t_ok(st("POST", "/eventsub/conduits", "{\"shard_count\":0}", NULL) == 400,
         "create conduit: shard_count 0 -> 400");
    t_ok(st("POST", "/eventsub/conduits", "{\"shard_count\":20001}", NULL) == 400,
         "create conduit: shard_count 20001 -> 400");
    t_ok(st("POST", "/eventsub/conduits", "{\"shard_count\":\"x\"}", NULL) == 400,
         "create conduit: wrong type -> 400");
    t_ok(st("POST", "/eventsub/conduits", "{not json", &r) == 400 && js(r.json, "error") &&
             !strcmp(js(r.json, "error"), "Bad Request"),
         "create conduit: malformed JSON -> 400 Bad Request");
    resp_free(&r);
    t_ok(st("POST", "/eventsub/conduits", "{\"shard_count\":20000}", &r) == 200 &&
             jn(r.json, "data.0.shard_count") == 20000,
         "create conduit: 20000 shards -> 200");
    char big[64];
    snprintf(big, sizeof big, "%s", js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "");
    resp_free(&r);
    t_ok(st("POST", "/eventsub/conduits?shard_count=3", NULL, &r) == 200 &&
             jn(r.json, "data.0.shard_count") == 3 && js(r.json, "data.0.id"),
         "create conduit: query form -> 200");
    char id[64];
    snprintf(id, sizeof id, "%s", js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "");
    resp_free(&r);
    t_ok(st("POST", "/eventsub/conduits", "{\"shard_count\":1,\"unknown\":[1,2]}", NULL) == 200,
         "create conduit: unknown fields ignored");
    st("POST", "/eventsub/conduits", "{\"shard_count\":1}", NULL);
    st("POST", "/eventsub/conduits", "{\"shard_count\":1}", NULL);
    t_ok(st("POST", "/eventsub/conduits", "{\"shard_count\":1}", &r) == 429 &&
             jn(r.json, "status") == 429,
         "create conduit: 6th conduit -> 429 conduit limit");
    resp_free(&r);
    t_ok(st("GET", "/eventsub/conduits", NULL, &r) == 200 &&
             cJSON_GetArraySize(jget(r.json, "data")) == 5,
         "get conduits lists 5");
    resp_free(&r);
    char b[256];
    snprintf(b, sizeof b, "{\"id\":\"%s\",\"shard_count\":5}", id);
    t_ok(st("PATCH", "/eventsub/conduits", b, &r) == 200 && jn(r.json, "data.0.shard_count") == 5,
         "update conduit: body form -> 200 shard_count 5");
    resp_free(&r);
    snprintf(b, sizeof b, "/eventsub/conduits?id=%s&shard_count=4", id);
    t_ok(st("PATCH", b, NULL, &r) == 200 && jn(r.json, "data.0.shard_count") == 4,
         "update conduit: query form -> 200");
    resp_free(&r);
    t_ok(st("PATCH", "/eventsub/conduits", "{\"shard_count\":4}", NULL) == 400,
         "update conduit: missing id -> 400");
    t_ok(st("PATCH", "/eventsub/conduits", "{\"id\":\"nope\",\"shard_count\":4}", NULL) == 404,
         "update conduit: unknown id -> 404");
    snprintf(b, sizeof b, "{\"id\":\"%s\",\"shard_count\":0}", id);
    t_ok(st("PATCH", "/eventsub/conduits", b, NULL) == 400, "update conduit: bad count -> 400");

    /* shards */
    snprintf(b, sizeof b, "/eventsub/conduits/shards?conduit_id=%s", id);
    t_ok(st("GET", b, NULL, &r) == 200 && cJSON_GetArraySize(jget(r.json, "data")) == 4 &&
             js(r.json, "data.0.status") &&
             !strcmp(js(r.json, "data.0.status"), "websocket_disconnected") &&
             js(r.json, "data.3.id") && !strcmp(js(r.json, "data.3.id"), "3") &&
             cJSON_IsObject(jget(r.json, "pagination")) && !jget(r.json, "pagination.cursor"),
         "get shards: 4 unassigned shards, empty pagination");
    resp_free(&r);
    t_ok(st("GET", "/eventsub/conduits/shards", NULL, NULL) == 400,
         "get shards: missing conduit_id -> 400");
    t_ok(st("GET", "/eventsub/conduits/shards?conduit_id=nope", NULL, NULL) == 404,
         "get shards: unknown conduit -> 404");
    /* pagination over 20000 shards */
    int total = 0, pages = 0;
    char cursor[64] = "";
    for (;;) {
        char p[256];
        snprintf(p, sizeof p, "/eventsub/conduits/shards?conduit_id=%s%s%s", big,
                 cursor[0] ? "&after=" : "", cursor);
        if (st("GET", p, NULL, &r) != 200)
            break;
        total += cJSON_GetArraySize(jget(r.json, "data"));
        pages++;
        const char *c = js(r.json, "pagination.cursor");
        if (!c) {
            resp_free(&r);
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", c);
        resp_free(&r);
        if (pages > 300)
            break;
    }
    t_ok(total == 20000 && pages == 200, "get shards: paginates 20000 shards in 200 pages of 100 (%d/%d)",
         total, pages);
    snprintf(b, sizeof b, "/eventsub/conduits/shards?conduit_id=%s&first=7", big);
    t_ok(st("GET", b, NULL, &r) == 200 && cJSON_GetArraySize(jget(r.json, "data")) == 7 &&
             js(r.json, "pagination.cursor"),
         "get shards: first=7 honoured");
    resp_free(&r);
    snprintf(b, sizeof b, "/eventsub/conduits/shards?conduit_id=%s&status=enabled", big);
    t_ok(st("GET", b, NULL, &r) == 200 && cJSON_GetArraySize(jget(r.json, "data")) == 0,
         "get shards: status filter");
    resp_free(&r);
    snprintf(b, sizeof b, "/eventsub/conduits/shards?conduit_id=%s&status=bogus", big);
    t_ok(st("GET", b, NULL, NULL) == 400, "get shards: invalid status -> 400");

    /* update shards errors */
    t_ok(st("PATCH", "/eventsub/conduits/shards", "{\"shards\":[]}", NULL) == 400,
         "update shards: missing conduit_id -> 400");
    t_ok(st("PATCH", "/eventsub/conduits/shards", "[1,2", NULL) == 400,
         "update shards: malformed body -> 400");
    t_ok(st("PATCH", "/eventsub/conduits/shards",
            "{\"conduit_id\":\"nope\",\"shards\":[{\"id\":\"0\",\"transport\":{\"method\":\"websocket\","
            "\"session_id\":\"x\"}}]}",
            NULL) == 404,
         "update shards: unknown conduit -> 404");
    char pb[2048];
    snprintf(pb, sizeof pb,
             "{\"conduit_id\":\"%s\",\"shards\":["
             "{\"id\":\"0\",\"transport\":{\"method\":\"websocket\",\"session_id\":\"nosuch\"}},"
             "{\"id\":\"9\",\"transport\":{\"method\":\"websocket\",\"session_id\":\"nosuch\"}},"
             "{\"id\":\"1\",\"transport\":{\"method\":\"carrier-pigeon\"}},"
             "{\"id\":\"2\",\"transport\":{\"method\":\"webhook\",\"callback\":\"http://127.0.0.1:9/x\","
             "\"secret\":\"short\"}},"
             "{\"id\":\"3\",\"transport\":{\"method\":\"websocket\"}}]}",
             id);
    t_ok(st("PATCH", "/eventsub/conduits/shards", pb, &r) == 202 &&
             cJSON_GetArraySize(jget(r.json, "data")) == 0 &&
             cJSON_GetArraySize(jget(r.json, "errors")) == 5,
         "update shards: 202 with 5 per-shard errors");
    t_ok(js(r.json, "errors.0.message") &&
             !strcmp(js(r.json, "errors.0.message"), "The websocket session is not connected.") &&
             js(r.json, "errors.0.code") && !strcmp(js(r.json, "errors.0.code"), "invalid_parameter"),
         "update shards: session not connected message, code invalid_parameter");
    t_ok(js(r.json, "errors.1.message") &&
             !strcmp(js(r.json, "errors.1.message"), "The shard id is outside of the conduit's range") &&
             !strcmp(js(r.json, "errors.1.id"), "9"),
         "update shards: out of range message");
    resp_free(&r);

    /* delete */
    snprintf(b, sizeof b, "/eventsub/conduits?id=%s", big);
    t_ok(st("DELETE", b, NULL, &r) == 204 && r.len == 0, "delete conduit -> 204 no body");
    resp_free(&r);
    t_ok(st("DELETE", b, NULL, NULL) == 404, "delete conduit again -> 404");
    t_ok(st("DELETE", "/eventsub/conduits", NULL, NULL) == 400, "delete conduit without id -> 400");
}

static void test_subs(void)
{
    resp_t r;
    st("POST", "/eventsub/conduits", "{\"shard_count\":2}", &r);
    char cid[64];
    snprintf(cid, sizeof cid, "%s", js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "x");
    resp_free(&r);
    /* find any conduit if limit reached */
    if (!strcmp(cid, "x")) {
        st("GET", "/eventsub/conduits", NULL, &r);
        snprintf(cid, sizeof cid, "%s", js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "x");
        resp_free(&r);
    }
    char b[1024];
    int ok = 1;
    for (int i = 0; i < 250; i++) {
        snprintf(b, sizeof b,
                 "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":"
                 "\"%d\"},\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
                 1000 + i, cid);
        if (st("POST", "/eventsub/subscriptions", b, i == 0 ? &r : NULL) != 202)
            ok = 0;
        if (i == 0) {
            ok = ok && js(r.json, "data.0.id") && strlen(js(r.json, "data.0.id")) == 36 &&
                 !strcmp(js(r.json, "data.0.status"), "enabled") &&
                 !strcmp(js(r.json, "data.0.transport.method"), "conduit") &&
                 !strcmp(js(r.json, "data.0.transport.conduit_id"), cid) &&
                 !strcmp(js(r.json, "data.0.condition.broadcaster_user_id"), "1000") &&
                 jn(r.json, "max_total_cost") == 10000 && jn(r.json, "total_cost") == 1 &&
                 jn(r.json, "data.0.cost") == 1 && js(r.json, "data.0.created_at") &&
                 strlen(js(r.json, "data.0.created_at")) == 30;
            resp_free(&r);
        }
    }
    t_ok(ok, "create 250 conduit subscriptions -> 202 with echo, uuid, cost, nanosecond created_at");
    snprintf(b, sizeof b,
             "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":"
             "\"1000\"},\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
             cid);
    t_ok(st("POST", "/eventsub/subscriptions", b, &r) == 409 && jn(r.json, "status") == 409,
         "duplicate subscription -> 409");
    resp_free(&r);
    t_ok(st("POST", "/eventsub/subscriptions", "{\"type\":\"stream.online\"}", NULL) == 400,
         "subscription without version/condition -> 400");
    t_ok(st("POST", "/eventsub/subscriptions",
            "{\"type\":\"stream.online\",\"version\":\"7\",\"condition\":{\"broadcaster_user_id\":\"1\"},"
            "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"x\"}}",
            NULL) == 400,
         "subscription with a bad version -> 400");
    t_ok(st("POST", "/eventsub/subscriptions",
            "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"1\"},"
            "\"transport\":{\"method\":\"conduit\"}}",
            NULL) == 400,
         "subscription without conduit_id -> 400");
    t_ok(st("POST", "/eventsub/subscriptions",
            "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"1\"},"
            "\"transport\":{\"method\":\"websocket\",\"session_id\":\"nope\"}}",
            NULL) == 400,
         "websocket subscription with an unknown session -> 400");
    t_ok(st("POST", "/eventsub/subscriptions",
            "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"1\"},"
            "\"transport\":{\"method\":\"webhook\",\"callback\":\"ftp://x\",\"secret\":\"0123456789\"}}",
            NULL) == 400,
         "webhook subscription with a bad callback -> 400");
    t_ok(st("POST", "/eventsub/subscriptions", "{\"type\":1}", NULL) == 400,
         "subscription with wrong types -> 400");

    /* list and paginate */
    int total = 0, pages = 0;
    char cursor[64] = "";
    double reported = 0;
    for (;;) {
        char p[256];
        snprintf(p, sizeof p, "/eventsub/subscriptions%s%s", cursor[0] ? "?after=" : "", cursor);
        if (st("GET", p, NULL, &r) != 200)
            break;
        total += cJSON_GetArraySize(jget(r.json, "data"));
        reported = jn(r.json, "total");
        pages++;
        const char *c = js(r.json, "pagination.cursor");
        if (!c) {
            resp_free(&r);
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", c);
        resp_free(&r);
        if (pages > 10)
            break;
    }
    t_ok(total == 250 && pages == 3 && reported == 250, "list subscriptions: 250 in 3 pages, total 250");
    t_ok(st("GET", "/eventsub/subscriptions?type=stream.online&status=enabled", NULL, NULL) == 400,
         "list subscriptions: two filters -> 400");
    t_ok(st("GET", "/eventsub/subscriptions?user_id=1007", NULL, &r) == 200 &&
             jn(r.json, "total") == 1 &&
             !strcmp(js(r.json, "data.0.condition.broadcaster_user_id"), "1007"),
         "list subscriptions: user_id filter");
    char sid[64];
    snprintf(sid, sizeof sid, "%s", js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "");
    resp_free(&r);
    char p[256];
    snprintf(p, sizeof p, "/eventsub/subscriptions?subscription_id=%s", sid);
    t_ok(st("GET", p, NULL, &r) == 200 && jn(r.json, "total") == 1, "list subscriptions: subscription_id filter");
    resp_free(&r);
    snprintf(p, sizeof p, "/eventsub/subscriptions?conduit_id=%s", cid);
    t_ok(st("GET", p, NULL, &r) == 200 && jn(r.json, "total") == 250, "list subscriptions: conduit_id filter");
    resp_free(&r);
    t_ok(st("GET", "/eventsub/subscriptions?type=channel.follow", NULL, &r) == 200 &&
             jn(r.json, "total") == 0,
         "list subscriptions: type filter");
    resp_free(&r);
    t_ok(st("GET", "/eventsub/subscriptions?status=enabled", NULL, &r) == 200 &&
             jn(r.json, "total") == 250,
         "list subscriptions: status filter");
    resp_free(&r);
    snprintf(p, sizeof p, "/eventsub/subscriptions?id=%s", sid);
    t_ok(st("DELETE", p, NULL, &r) == 204, "delete subscription -> 204");
    resp_free(&r);
    t_ok(st("DELETE", p, NULL, NULL) == 404, "delete subscription again -> 404");
    t_ok(st("DELETE", "/eventsub/subscriptions", NULL, NULL) == 400, "delete subscription without id -> 400");
    /* delete the conduit: its subscriptions become conduit_deleted */
    snprintf(p, sizeof p, "/eventsub/conduits?id=%s", cid);
    st("DELETE", p, NULL, NULL);
    t_ok(st("GET", "/eventsub/subscriptions?status=conduit_deleted", NULL, &r) == 200 &&
             jn(r.json, "total") == 249,
         "deleting a conduit marks its subscriptions conduit_deleted");
    resp_free(&r);
}

static void test_body_limits(void)
{
    resp_t r;
    size_t n = 1024 * 1024 + 100;
    char *big = malloc(n + 1);
    memset(big, ' ', n);
    big[0] = '{';
    big[n - 1] = '}';
    big[n] = 0;
    helix(&m, &r, "POST", "/eventsub/conduits", big);
    t_ok(r.status == 413 || r.status == 400, "body over 1 MB -> 413 (%ld)", r.status);
    resp_free(&r);
    free(big);
    helix(&m, &r, "POST", "/eventsub/subscriptions", "\"just a string\"");
    t_ok(r.status == 400, "non-object body -> 400");
    resp_free(&r);
    helix(&m, &r, "PATCH", "/eventsub/conduits/shards", "{\"conduit_id\":5,\"shards\":\"x\"}");
    t_ok(r.status == 400, "wrong types in update shards -> 400");
    resp_free(&r);
}

static void test_rate_limit(void)
{
    resp_t r;
    control(&m, &r, "POST", "/config", "{\"rate_limit\":5}");
    resp_free(&r);
    control(&m, &r, "POST", "/reset", "{}");
    resp_free(&r);
    int got429 = 0, n200 = 0;
    char v[64] = "";
    for (int i = 0; i < 8; i++) {
        helix(&m, &r, "GET", "/eventsub/conduits", NULL);
        if (r.status == 200)
            n200++;
        if (r.status == 429 && !got429) {
            got429 = 1;
            resp_header(&r, "Ratelimit-Remaining", v, sizeof v);
            t_ok(js(r.json, "error") && !strcmp(js(r.json, "error"), "Too Many Requests"),
                 "rate limit: 429 body error Too Many Requests");
        }
        resp_free(&r);
    }
    t_ok(got429 && n200 == 5 && !strcmp(v, "0"), "rate limit: bucket of 5 -> 5 x 200 then 429 (remaining %s)", v);
    /* refill: 5/min = 1 per 12 s; too slow to wait, so raise the limit */
    control(&m, &r, "POST", "/config", "{\"rate_limit\":800}");
    resp_free(&r);
    control(&m, &r, "POST", "/reset", "{}");
    resp_free(&r);
    helix(&m, &r, "GET", "/eventsub/conduits", NULL);
    t_ok(r.status == 200, "rate limit: reset refills the bucket");
    resp_free(&r);
}

static void test_faults_tokens_clock(void)
{
    resp_t r;
    control(&m, &r, "POST", "/faults",
            "{\"helix\":[{\"status\":503,\"count\":2,\"path\":\"/eventsub/conduits\"},"
            "{\"status\":429,\"count\":1}]}");
    t_ok(r.status == 200, "faults accepted");
    resp_free(&r);
    long s1 = st("GET", "/eventsub/conduits", NULL, NULL);
    long s2 = st("GET", "/eventsub/conduits", NULL, NULL);
    helix(&m, &r, "GET", "/eventsub/subscriptions", NULL);
    char rem[32] = "", reset[32] = "";
    resp_header(&r, "Ratelimit-Remaining", rem, sizeof rem);
    resp_header(&r, "Ratelimit-Reset", reset, sizeof reset);
    long s3 = r.status;
    resp_free(&r);
    long s4 = st("GET", "/eventsub/subscriptions", NULL, NULL);
    t_ok(s1 == 503 && s2 == 503 && s3 == 429 && !strcmp(rem, "0") && s4 == 200,
         "injected 503 x2 on a path, then 429 with remaining 0, then 200");
    control(&m, &r, "POST", "/faults", "{\"helix\":[{\"status\":401,\"count\":1}]}");
    resp_free(&r);
    t_ok(st("GET", "/eventsub/conduits", NULL, NULL) == 401, "injected 401");
    control(&m, &r, "POST", "/faults", "{\"latency_ms\":300}");
    resp_free(&r);
    int64_t t0 = now_ms();
    st("GET", "/eventsub/conduits", NULL, NULL);
    int64_t dt = now_ms() - t0;
    t_ok(dt >= 280, "latency fault delays Helix by 300 ms (%lld ms)", (long long)dt);
    control(&m, &r, "POST", "/faults", "{\"latency_ms\":0}");
    resp_free(&r);
    control(&m, &r, "POST", "/faults", "{\"helix\":\"x\"}");
    t_ok(r.status == 400, "bad fault spec -> 400");
    resp_free(&r);

    /* token revocation */
    control(&m, &r, "POST", "/tokens/revoke", "{\"token\":\"nope\"}");
    t_ok(r.status == 404, "revoke unknown token -> 404");
    resp_free(&r);
    char body[256];
    snprintf(body, sizeof body, "{\"token\":\"%s\"}", m.token);
    control(&m, &r, "POST", "/tokens/revoke", body);
    resp_free(&r);
    t_ok(st("GET", "/eventsub/conduits", NULL, NULL) == 401, "revoked token -> 401");
    get_token(&m);
    t_ok(st("GET", "/eventsub/conduits", NULL, NULL) == 200, "new token -> 200");
    control(&m, &r, "POST", "/tokens/revoke", "{\"all\":true}");
    t_ok(r.status == 200 && jn(r.json, "revoked") >= 1, "revoke all tokens");
    resp_free(&r);
    t_ok(st("GET", "/eventsub/conduits", NULL, NULL) == 401, "after revoke all -> 401");
    get_token(&m);
    /* clock: tokens expire */
    control(&m, &r, "POST", "/clock", "{\"advance_s\":5011272}");
    t_ok(r.status == 200, "clock advance");
    resp_free(&r);
    t_ok(st("GET", "/eventsub/conduits", NULL, NULL) == 401, "token expired on the emulator clock -> 401");
    get_token(&m);
    control(&m, &r, "POST", "/clock", "{\"speed\":-1}");
    t_ok(r.status == 400, "clock: negative speed -> 400");
    resp_free(&r);

    /* 72 h deletion */
    control(&m, &r, "POST", "/reset", "{}");
    resp_free(&r);
    st("POST", "/eventsub/conduits", "{\"shard_count\":1}", &r);
    char cid[64];
    snprintf(cid, sizeof cid, "%s", js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "");
    resp_free(&r);
    snprintf(body, sizeof body,
             "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":"
             "\"1\"},\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
             cid);
    st("POST", "/eventsub/subscriptions", body, NULL);
    control(&m, &r, "POST", "/clock", "{\"advance_s\":258200}");
    resp_free(&r);
    st("GET", "/eventsub/conduits", NULL, &r);
    int still = cJSON_GetArraySize(jget(r.json, "data")) == 1;
    resp_free(&r);
    control(&m, &r, "POST", "/clock", "{\"advance_s\":2000}");
    resp_free(&r);
    st("GET", "/eventsub/conduits", NULL, &r);
    int gone = cJSON_GetArraySize(jget(r.json, "data")) == 0;
    resp_free(&r);
    st("GET", "/eventsub/subscriptions", NULL, &r);
    int subdel = js(r.json, "data.0.status") && !strcmp(js(r.json, "data.0.status"), "conduit_deleted");
    resp_free(&r);
    t_ok(still && gone && subdel,
         "conduit with every shard disabled is deleted after 72 h (subscriptions conduit_deleted)");

    control(&m, &r, "GET", "/state", NULL);
    t_ok(r.status == 200 && jn(r.json, "helix_calls.total") > 10 &&
             jn(r.json, "helix_calls.by_route.GET /eventsub/conduits") > 5 &&
             cJSON_IsArray(jget(r.json, "conduits")) && cJSON_IsArray(jget(r.json, "sessions")) &&
             cJSON_IsArray(jget(r.json, "subscriptions")) && jn(r.json, "tokens") >= 1,
         "state: conduits, sessions, subscriptions, tokens, helix_calls by route");
    resp_free(&r);
    control(&m, &r, "POST", "/config", "{\"rate_limit\":\"x\"}");
    t_ok(r.status == 400, "config: wrong type -> 400");
    resp_free(&r);
    control(&m, &r, "GET", "/nope", NULL);
    t_ok(r.status == 404, "unknown control path -> 404");
    resp_free(&r);
    control(&m, &r, "POST", "/trigger", "{oops");
    t_ok(r.status == 400, "control: malformed JSON -> 400");
    resp_free(&r);
}

int main(void)
{
    if (mock_start(&m, NULL)) {
        printf("not ok 1 - emulator starts\n1..1\n");
        return 1;
    }
    t_ok(m.port > 0 && js(m.hello, "api_base") && strstr(js(m.hello, "api_base"), "/helix") &&
             js(m.hello, "eventsub_ws") && js(m.hello, "control") && js(m.hello, "auth_base") &&
             jn(m.hello, "pid") == m.pid && !strcmp(m.client_id, "twconduit-mock-client") &&
             !strcmp(m.client_secret, "twconduit-mock-secret"),
         "first stdout line describes the emulator");
    test_oauth();
    test_auth();
    test_conduits();
    test_subs();
    test_body_limits();
    test_rate_limit();
    test_faults_tokens_clock();
    {
        wsc_t w;
        ws_connect(&w, m.port, "/ws?keepalive_timeout_seconds=5");
        cJSON *o = ws_recv_json(&w, 3000);
        t_ok(jn(o, "payload.session.keepalive_timeout_seconds") == 10,
             "default config: keepalive 5 clamped to 10");
        cJSON_Delete(o);
        ws_free(&w);
    }
    t_ok(mock_stop(&m) == 0, "SIGTERM -> clean exit 0");
    return t_done();
}
