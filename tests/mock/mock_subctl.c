/* Subscriptions changed behind a client's back through the control API
 * (POST /_mock/subscriptions, POST /_mock/subscriptions/delete), and the Helix answers
 * counted by status (/_mock/state helix_calls.by_status, GET /_mock/helix_calls). */
#include "mocktest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mock_t m;

static double by_status(const char *st)
{
    long s;
    cJSON *o = control_json(&m, "GET", "/helix_calls", NULL, &s);
    const cJSON *bs = jget(o, "by_status");
    const cJSON *v = bs ? cJSON_GetObjectItemCaseSensitive(bs, st) : NULL;
    double n = cJSON_IsNumber(v) ? v->valuedouble : 0;
    cJSON_Delete(o);
    return n;
}

static double helix_total(void)
{
    long s;
    cJSON *o = control_json(&m, "GET", "/helix_calls", NULL, &s);
    double n = jn(o, "total");
    cJSON_Delete(o);
    return n;
}

static int count_subs(const char *conduit_id)
{
    long s;
    cJSON *o = control_json(&m, "GET", "/state", NULL, &s);
    int n = 0;
    const cJSON *list = jget(o, "subscriptions");
    for (const cJSON *x = list ? list->child : NULL; x; x = x->next)
        n += !strcmp(js(x, "transport.conduit_id") ? js(x, "transport.conduit_id") : "", conduit_id);
    cJSON_Delete(o);
    return n;
}

int main(void)
{
    if (mock_start(&m, "{\"assign_window_s\":600,\"ping_interval_s\":600}") || get_token(&m)) {
        t_ok(0, "emulator started");
        return t_done();
    }
    resp_t r;
    helix(&m, &r, "POST", "/eventsub/conduits", "{\"shard_count\":1}");
    char cid[64];
    snprintf(cid, sizeof cid, "%s", js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "");
    resp_free(&r);
    t_ok(cid[0] != 0, "a conduit");

    double calls0 = helix_total(), ok202 = by_status("202");
    char body[2048];
    snprintf(body, sizeof body,
             "{\"subscriptions\":["
             "{\"type\":\"stream.online\",\"condition\":{\"broadcaster_user_id\":\"11\"},"
             "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}},"
             "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"12\"},"
             "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}},"
             "{\"type\":\"stream.online\",\"condition\":{\"broadcaster_user_id\":\"11\"},"
             "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}},"
             "{\"type\":\"stream.online\",\"condition\":{},"
             "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}},"
             "{\"type\":\"stream.online\",\"condition\":{\"broadcaster_user_id\":\"13\"},"
             "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"nope\"}}]}",
             cid, cid, cid, cid);
    long st;
    cJSON *o = control_json(&m, "POST", "/subscriptions", body, &st);
    const cJSON *ids = jget(o, "ids"), *errs = jget(o, "errors");
    t_ok(st == 200 && cJSON_GetArraySize(ids) == 5, "POST /subscriptions answers one id slot per entry (%ld)", st);
    const char *id0 = js(o, "ids.0"), *id1 = js(o, "ids.1");
    t_ok(id0 && id1 && strcmp(id0, id1) && cJSON_IsNull(cJSON_GetArrayItem(ids, 2)),
         "two created, the duplicate refused");
    t_ok(cJSON_GetArraySize(errs) == 3 && jn(o, "errors.0.index") == 2 && jn(o, "errors.0.status") == 409 &&
             jn(o, "errors.1.status") == 400 && jn(o, "errors.2.status") == 400,
         "errors: 409 for the duplicate, 400 for the missing condition field and the unknown conduit");
    t_ok(count_subs(cid) == 2, "the emulator has the two");
    t_ok(helix_total() == calls0 && by_status("202") == ok202, "control calls are not Helix calls");

    /* the client sees them in Get EventSub Subscriptions */
    helix(&m, &r, "GET", "/eventsub/subscriptions", NULL);
    t_ok(r.status == 200 && jn(r.json, "total") == 2, "Get EventSub Subscriptions lists them (%ld)", r.status);
    resp_free(&r);
    t_ok(by_status("200") >= 1 && by_status("202") == ok202, "the 200 is counted by status");

    /* a create the client makes for an existing one: 409, counted */
    snprintf(body, sizeof body,
             "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"11\"},"
             "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}", cid);
    double c409 = by_status("409");
    helix(&m, &r, "POST", "/eventsub/subscriptions", body);
    t_ok(r.status == 409 && by_status("409") == c409 + 1, "a client's duplicate create: 409, counted (%ld)",
         r.status);
    resp_free(&r);

    snprintf(body, sizeof body, "{\"ids\":[\"%s\",\"unknown-id\"]}", id0);
    cJSON *d = control_json(&m, "POST", "/subscriptions/delete", body, &st);
    t_ok(st == 200 && jn(d, "deleted") == 1 && js(d, "not_found.0") && !strcmp(js(d, "not_found.0"), "unknown-id"),
         "POST /subscriptions/delete deletes one, names the unknown one");
    cJSON_Delete(d);
    t_ok(count_subs(cid) == 1, "one left");
    d = control_json(&m, "POST", "/subscriptions/delete", "{\"ids\":[1]}", &st);
    t_ok(st == 400, "ids must be strings (%ld)", st);
    cJSON_Delete(d);
    d = control_json(&m, "POST", "/subscriptions", "{\"subscriptions\":{}}", &st);
    t_ok(st == 400, "subscriptions must be an array (%ld)", st);
    cJSON_Delete(d);
    d = control_json(&m, "POST", "/subscriptions", "{\"subscriptions\":[],\"client_id\":\"who\"}", &st);
    t_ok(st == 404, "unknown client (%ld)", st);
    cJSON_Delete(d);
    cJSON_Delete(o);

    /* the bucket set by the control API: the next answer's Ratelimit-Remaining */
    cJSON_Delete(control_json(&m, "POST", "/ratelimit", "{\"level\":10}", &st));
    t_ok(st == 200, "POST /ratelimit (%ld)", st);
    helix(&m, &r, "GET", "/eventsub/conduits", NULL);
    char rem[32] = "";
    resp_header(&r, "Ratelimit-Remaining", rem, sizeof rem);
    t_ok(r.status == 200 && atoi(rem) == 9, "the bucket was set to 10: Remaining 9 after one call (%s)", rem);
    resp_free(&r);
    cJSON_Delete(control_json(&m, "POST", "/ratelimit", "{}", &st));
    helix(&m, &r, "GET", "/eventsub/conduits", NULL);
    resp_header(&r, "Ratelimit-Remaining", rem, sizeof rem);
    t_ok(atoi(rem) == 799, "refilled: Remaining 799 (%s)", rem);
    resp_free(&r);
    cJSON_Delete(control_json(&m, "POST", "/ratelimit", "{\"level\":-1}", &st));
    t_ok(st == 400, "a negative level is refused (%ld)", st);
    cJSON_Delete(control_json(&m, "POST", "/ratelimit", "{\"client_id\":\"who\"}", &st));
    t_ok(st == 404, "an unknown client is refused (%ld)", st);

    /* by_status in /_mock/state too */
    cJSON *s = control_json(&m, "GET", "/state", NULL, &st);
    t_ok(jn(s, "helix_calls.by_status.409") == c409 + 1, "/_mock/state helix_calls.by_status");
    cJSON_Delete(s);
    t_ok(mock_stop(&m) == 0, "emulator exits 0");
    return t_done();
}
