/* Blast throughput: 1,000,000 ~1 KB channel.chat.message notifications over
 * 8 conduit shards on loopback, drained by a trivial client. Prints the rate. */
#include "mocktest.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NSOCK 8
#define NCHAN 64

static mock_t m;

typedef struct {
    unsigned char *buf;
    size_t len, cap;
    uint64_t frames, bytes;
} drain_t;

/* counts complete text frames, drops their bytes */
static void drain_parse(drain_t *d)
{
    size_t off = 0;
    while (d->len - off >= 2) {
        unsigned char *p = d->buf + off;
        size_t plen = p[1] & 0x7f, hl = 2;
        if (plen == 126) {
            if (d->len - off < 4)
                break;
            plen = ((size_t)p[2] << 8) | p[3];
            hl = 4;
        } else if (plen == 127) {
            if (d->len - off < 10)
                break;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = (plen << 8) | p[2 + i];
            hl = 10;
        }
        if (d->len - off < hl + plen)
            break;
        if ((p[0] & 0x0f) == 1 && plen > 500)
            d->frames++;
        d->bytes += plen;
        off += hl + plen;
    }
    memmove(d->buf, d->buf + off, d->len - off);
    d->len -= off;
}

int main(int argc, char **argv)
{
    uint64_t per_channel = 1000000 / NCHAN; /* 15625 -> 1,000,000 in total */
    if (argc > 1)
        per_channel = strtoull(argv[1], NULL, 10);
    if (mock_start(&m, "{\"ping_interval_s\":600,\"keepalive_max\":600}") || get_token(&m)) {
        printf("not ok 1 - emulator starts\n1..1\n");
        return 1;
    }
    resp_t r;
    helix(&m, &r, "POST", "/eventsub/conduits", "{\"shard_count\":8}");
    char cid[64];
    snprintf(cid, sizeof cid, "%s", js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "");
    resp_free(&r);
    wsc_t w[NSOCK];
    int ok = 1;
    for (int i = 0; i < NSOCK; i++) {
        ok = ok && ws_open_session(&w[i], m.port, "keepalive_timeout_seconds=600") == 0;
        char b[512];
        snprintf(b, sizeof b,
                 "{\"conduit_id\":\"%s\",\"shards\":[{\"id\":\"%d\",\"transport\":{\"method\":"
                 "\"websocket\",\"session_id\":\"%s\"}}]}",
                 cid, i, w[i].session_id);
        helix(&m, &r, "PATCH", "/eventsub/conduits/shards", b);
        ok = ok && r.status == 202 && cJSON_GetArraySize(jget(r.json, "errors")) == 0;
        resp_free(&r);
    }
    char chans[NCHAN * 8 + 16] = "[";
    for (int c = 0; c < NCHAN; c++) {
        char b[512];
        snprintf(b, sizeof b,
                 "{\"type\":\"channel.chat.message\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":"
                 "\"%d\",\"user_id\":\"1\"},\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
                 30000 + c, cid);
        helix(&m, &r, "POST", "/eventsub/subscriptions", b);
        ok = ok && r.status == 202;
        resp_free(&r);
        char one[16];
        snprintf(one, sizeof one, "%s\"%d\"", c ? "," : "", 30000 + c);
        strcat(chans, one);
    }
    strcat(chans, "]");
    t_ok(ok, "8 sessions on 8 shards, %d subscriptions", NCHAN);
    drain_t d[NSOCK];
    memset(d, 0, sizeof d);
    for (int i = 0; i < NSOCK; i++) {
        d[i].cap = 1 << 20;
        d[i].buf = malloc(d[i].cap);
        /* move whatever the websocket client buffered already */
        memcpy(d[i].buf, w[i].buf, w[i].len);
        d[i].len = w[i].len;
    }
    char body[1024];
    snprintf(body, sizeof body, "{\"type\":\"channel.chat.message\",\"channels\":%s,\"count\":%llu}", chans,
             (unsigned long long)per_channel);
    int64_t t0 = now_ms();
    control(&m, &r, "POST", "/blast", body);
    char bid[64];
    snprintf(bid, sizeof bid, "%s", js(r.json, "blast_id") ? js(r.json, "blast_id") : "");
    uint64_t total = (uint64_t)jn(r.json, "total");
    resp_free(&r);
    t_ok(bid[0] && total == per_channel * NCHAN, "blast started: %llu notifications", (unsigned long long)total);
    uint64_t got = 0;
    int64_t deadline = t0 + 50000;
    struct pollfd pf[NSOCK];
    while (got < total && now_ms() < deadline) {
        for (int i = 0; i < NSOCK; i++) {
            pf[i].fd = w[i].fd;
            pf[i].events = POLLIN;
            pf[i].revents = 0;
        }
        if (poll(pf, NSOCK, 1000) <= 0)
            continue;
        got = 0;
        for (int i = 0; i < NSOCK; i++) {
            if (pf[i].revents & POLLIN) {
                ssize_t k = recv(w[i].fd, d[i].buf + d[i].len, d[i].cap - d[i].len, 0);
                if (k > 0) {
                    d[i].len += (size_t)k;
                    drain_parse(&d[i]);
                }
            }
            got += d[i].frames;
        }
    }
    int64_t dt = now_ms() - t0;
    uint64_t bytes = 0;
    int used = 0;
    for (int i = 0; i < NSOCK; i++) {
        bytes += d[i].bytes;
        used += d[i].frames > 0;
    }
    double rate = dt > 0 ? (double)got * 1000.0 / (double)dt : 0;
    t_ok(got == total, "drain client received all %llu notifications (%llu)", (unsigned long long)total,
         (unsigned long long)got);
    t_ok(used == NSOCK, "traffic spread over all %d sockets", used);
    t_diag("received %llu notifications, %.1f MB, in %.3f s: %.0f notifications/s, avg %.0f bytes",
           (unsigned long long)got, (double)bytes / 1e6, (double)dt / 1000.0, rate,
           got ? (double)bytes / (double)got : 0);
    char p[128];
    snprintf(p, sizeof p, "/blast/%s", bid);
    control(&m, &r, "GET", p, NULL);
    t_ok(cJSON_IsTrue(jget(r.json, "done")) && jn(r.json, "sent") == (double)total,
         "blast status done, sent %.0f, emulator rate %.0f/s in %.3f s", jn(r.json, "sent"), jn(r.json, "rate"),
         jn(r.json, "seconds"));
    resp_free(&r);
    control(&m, &r, "GET", "/ledger?since=999999999", NULL);
    t_ok(jn(r.json, "blast_delivered") == (double)total, "ledger counts blast deliveries");
    resp_free(&r);
    t_ok(rate > 20000, "rate above a loose floor of 20,000/s (%.0f)", rate);
    for (int i = 0; i < NSOCK; i++) {
        ws_free(&w[i]);
        free(d[i].buf);
    }
    t_ok(mock_stop(&m) == 0, "clean exit");
    return t_done();
}
