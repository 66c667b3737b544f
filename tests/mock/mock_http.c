/* twconduit-mock's HTTP/1.1 plumbing, spoken byte for byte over a raw socket: a
 * body-less POST with Content-Length: 0 is handled once, chunked bodies are read, and
 * the keep-alive connection answers the requests that follow them. */
#include "mocktest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mock_t m;

static int count_conduits(void)
{
    resp_t r;
    helix(&m, &r, "GET", "/eventsub/conduits", NULL);
    int n = r.status == 200 ? cJSON_GetArraySize(jget(r.json, "data")) : -1;
    resp_free(&r);
    return n;
}

static int count_tokens(void)
{
    resp_t r;
    control(&m, &r, "GET", "/state", NULL);
    int n = r.status == 200 ? (int)jn(r.json, "tokens") : -1;
    resp_free(&r);
    return n;
}

static void delete_conduits(void)
{
    resp_t r;
    helix(&m, &r, "GET", "/eventsub/conduits", NULL);
    const cJSON *it;
    cJSON_ArrayForEach(it, jget(r.json, "data"))
    {
        char p[256];
        snprintf(p, sizeof p, "/eventsub/conduits?id=%s", js(it, "id"));
        resp_t d;
        helix(&m, &d, "DELETE", p, NULL);
        resp_free(&d);
    }
    resp_free(&r);
}

/* "GET /helix/eventsub/conduits" as raw bytes, with the mock's credentials */
static void get_conduits_req(char *out, size_t n)
{
    snprintf(out, n,
             "GET /helix/eventsub/conduits HTTP/1.1\r\nHost: x\r\nClient-Id: %s\r\n"
             "Authorization: Bearer %s\r\n\r\n",
             m.client_id, m.token);
}

static void test_content_length_zero(void)
{
    rawc_t c;
    resp_t r;
    char req[4096], get[1024];
    get_conduits_req(get, sizeof get);
    int before = count_conduits();
    t_ok(raw_open(&c, m.port) == 0, "raw connection opened");
    snprintf(req, sizeof req,
             "POST /helix/eventsub/conduits?shard_count=2 HTTP/1.1\r\nHost: x\r\nClient-Id: %s\r\n"
             "Authorization: Bearer %s\r\nContent-Length: 0\r\n\r\n%s",
             m.client_id, m.token, get);
    raw_send(&c, req); /* the POST and, pipelined after it, a GET */
    int rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 200 && jn(r.json, "data.0.shard_count") == 2,
         "Content-Length: 0 POST (query form): 200 with the conduit");
    resp_free(&r);
    rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 200 && cJSON_IsArray(jget(r.json, "data")) &&
             cJSON_GetArraySize(jget(r.json, "data")) == before + 1,
         "the next response on the connection answers the GET: one conduit was created");
    resp_free(&r);
    t_ok(count_conduits() == before + 1, "Create Conduits with Content-Length: 0 made one conduit");

    int tokens = count_tokens();
    snprintf(req, sizeof req,
             "POST /oauth2/token?client_id=%s&client_secret=%s&grant_type=client_credentials "
             "HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
             "GET /oauth2/validate HTTP/1.1\r\nHost: x\r\nAuthorization: OAuth nope\r\n\r\n",
             m.client_id, m.client_secret);
    raw_send(&c, req);
    rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 200 && js(r.json, "access_token"),
         "Content-Length: 0 token request: 200 with a token");
    resp_free(&r);
    rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 401 && js(r.json, "message") &&
             !strcmp(js(r.json, "message"), "invalid access token"),
         "the next response answers the validate call, not a second token");
    resp_free(&r);
    t_ok(count_tokens() == tokens + 1, "one token issued (state: %d -> %d)", tokens, count_tokens());

    /* a control call that acts: the stream is stopped once and answered once */
    resp_t s;
    control(&m, &s, "POST", "/stream", "{\"type\":\"stream.online\",\"channels\":[\"1\"],\"rate\":1}");
    char sid[64];
    snprintf(sid, sizeof sid, "%s", js(s.json, "stream_id") ? js(s.json, "stream_id") : "");
    resp_free(&s);
    snprintf(req, sizeof req,
             "POST /_mock/stream/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
             "GET /_mock/config HTTP/1.1\r\nHost: x\r\n\r\n");
    raw_send(&c, req);
    rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 200 && sid[0] && jn(r.json, "stopped") == 1,
         "Content-Length: 0 control call: 200, one stream stopped");
    resp_free(&r);
    rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 200 && jn(r.json, "rate_limit") == 800 && !jget(r.json, "stopped"),
         "the next response answers the following GET (no second answer to the stop)");
    resp_free(&r);
    raw_close(&c);
    delete_conduits();
}

static void test_chunked(void)
{
    rawc_t c;
    resp_t r;
    char req[8192], get[1024];
    get_conduits_req(get, sizeof get);
    t_ok(raw_open(&c, m.port) == 0, "raw connection opened");
    /* {"shard_count":3} in three chunks, one with an extension */
    snprintf(req, sizeof req,
             "POST /helix/eventsub/conduits HTTP/1.1\r\nHost: x\r\nClient-Id: %s\r\n"
             "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
             "Transfer-Encoding: chunked\r\n\r\n",
             m.client_id, m.token);
    raw_send(&c, req);
    raw_send(&c, "5\r\n{\"sha\r\n");
    raw_send(&c, "A;ext=1\r\nrd_count\":\r\n");
    raw_send(&c, "2\r\n3}\r\n0\r\n\r\n");
    int rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 200 && jn(r.json, "data.0.shard_count") == 3,
         "chunked POST body is read: 200, shard_count 3");
    char cid[64] = "";
    if (js(r.json, "data.0.id"))
        snprintf(cid, sizeof cid, "%s", js(r.json, "data.0.id"));
    resp_free(&r);
    raw_send(&c, get);
    rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 200 && js(r.json, "data.0.id") && !strcmp(js(r.json, "data.0.id"), cid),
         "second request on the same connection is answered (lists the new conduit)");
    resp_free(&r);

    /* after raw reading began: a chunked body with a trailer, pipelined with a
     * Content-Length PATCH and a GET, all in one write */
    snprintf(req, sizeof req,
             "PATCH /helix/eventsub/conduits HTTP/1.1\r\nHost: x\r\nClient-Id: %s\r\n"
             "Authorization: Bearer %s\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
             "0\r\n\r\n"
             "PATCH /helix/eventsub/conduits HTTP/1.1\r\nHost: x\r\nClient-Id: %s\r\n"
             "Authorization: Bearer %s\r\nTransfer-Encoding: chunked\r\n\r\n"
             "%x\r\n{\"id\":\"%s\",\"shard_count\":7}\r\n0\r\nX-Trailer: 1\r\n\r\n"
             "PATCH /helix/eventsub/conduits HTTP/1.1\r\nHost: x\r\nClient-Id: %s\r\n"
             "Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n{\"id\":\"%s\",\"shard_count\":9}"
             "%s",
             m.client_id, m.token, m.client_id, m.token,
             (unsigned)strlen(cid) + 25, cid, m.client_id, m.token, (int)strlen(cid) + 25, cid, get);
    raw_send(&c, req);
    rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 400, "empty chunked PATCH body -> 400 (missing id)");
    resp_free(&r);
    rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 200 && jn(r.json, "data.0.shard_count") == 7,
         "chunked PATCH with a trailer -> 200, shard_count 7");
    resp_free(&r);
    rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 200 && jn(r.json, "data.0.shard_count") == 9,
         "Content-Length PATCH on the same connection -> 200, shard_count 9");
    resp_free(&r);
    rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 200 && jn(r.json, "data.0.shard_count") == 9,
         "and the pipelined GET after it -> 200");
    resp_free(&r);
    raw_send(&c, "POST /_mock/sign HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "zz\r\n");
    rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 400 && strstr(r.headers, "onnection: close"),
         "malformed chunk size -> 400 with Connection: close");
    resp_free(&r);
    t_ok(raw_wait_eof(&c, 3000) == 1, "and the connection is closed");
    raw_close(&c);

    /* a POST with neither Content-Length nor Transfer-Encoding has no body */
    t_ok(raw_open(&c, m.port) == 0, "raw connection opened");
    snprintf(req, sizeof req,
             "POST /helix/eventsub/conduits?shard_count=1 HTTP/1.1\r\nHost: x\r\nClient-Id: %s\r\n"
             "Authorization: Bearer %s\r\n\r\n",
             m.client_id, m.token);
    raw_send(&c, req);
    rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 200 && jn(r.json, "data.0.shard_count") == 1,
         "POST without Content-Length: handled as an empty body -> 200");
    resp_free(&r);
    raw_send(&c, get);
    rc = raw_resp(&c, &r, 3000);
    t_ok(rc == 0 && r.status == 200 && cJSON_GetArraySize(jget(r.json, "data")) == 2,
         "the next request on that connection is answered");
    resp_free(&r);
    raw_close(&c);
    delete_conduits();
}

int main(void)
{
    if (mock_start(&m, NULL) || get_token(&m)) {
        t_ok(0, "emulator started");
        return t_done();
    }
    test_content_length_zero();
    test_chunked();
    t_ok(mock_stop(&m) == 0, "emulator exits 0");
    return t_done();
}
