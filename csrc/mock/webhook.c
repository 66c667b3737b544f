/* Webhook delivery: a worker thread runs a curl multi handle; the main thread
 * submits signed requests and handles results after lws_cancel_service(). */
#include "mock.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_RESP 65536

static void job_free(whjob_t *j)
{
    free(j->body);
    free(j->resp);
    free(j);
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    whjob_t *j = ud;
    size_t n = size * nmemb;
    if (j->resp_len + n > MAX_RESP)
        return n; /* ignore the excess, keep reading */
    char *nr = realloc(j->resp, j->resp_len + n + 1);
    if (!nr)
        return 0;
    j->resp = nr;
    memcpy(j->resp + j->resp_len, ptr, n);
    j->resp_len += n;
    j->resp[j->resp_len] = 0;
    return n;
}

static void add_easy(CURLM *multi, whjob_t *j)
{
    CURL *e = curl_easy_init();
    if (!e) {
        j->curl_ok = 0;
        return;
    }
    struct curl_slist *h = NULL;
    char line[1200];
    h = curl_slist_append(h, "Content-Type: application/json");
    snprintf(line, sizeof line, "Twitch-Eventsub-Message-Id: %s", j->msg_id);
    h = curl_slist_append(h, line);
    snprintf(line, sizeof line, "Twitch-Eventsub-Message-Retry: %d", j->retry);
    h = curl_slist_append(h, line);
    snprintf(line, sizeof line, "Twitch-Eventsub-Message-Type: %s", j->mtype);
    h = curl_slist_append(h, line);
    snprintf(line, sizeof line, "Twitch-Eventsub-Message-Signature: %s", j->sig);
    h = curl_slist_append(h, line);
    snprintf(line, sizeof line, "Twitch-Eventsub-Message-Timestamp: %s", j->ts);
    h = curl_slist_append(h, line);
    if (j->sub_type[0]) {
        snprintf(line, sizeof line, "Twitch-Eventsub-Subscription-Type: %s", j->sub_type);
        h = curl_slist_append(h, line);
        snprintf(line, sizeof line, "Twitch-Eventsub-Subscription-Version: %s", j->sub_version);
        h = curl_slist_append(h, line);
    }
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(e, CURLOPT_URL, j->url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, j->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(j->body));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(e, CURLOPT_PRIVATE, j);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(j->timeout_s * 1000));
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_IPRESOLVE, CURL_IPRESOLVE_V4);
    /* keep the header list with the handle: freed after completion */
    j->hdrs = h;
    j->easy = e;
    curl_multi_add_handle(multi, e);
}

static void *worker(void *arg)
{
    (void)arg;
    CURLM *multi = curl_multi_init();
    whjob_t *active = NULL;
    for (;;) {
        pthread_mutex_lock(&M->wh_mu);
        int stop = M->wh_stop;
        whjob_t *in = M->wh_in;
        M->wh_in = NULL;
        pthread_mutex_unlock(&M->wh_mu);
        /* reverse to keep submission order */
        whjob_t *rev = NULL;
        while (in) {
            whjob_t *n = in->next;
            in->next = rev;
            rev = in;
            in = n;
        }
        for (whjob_t *j = rev; j;) {
            whjob_t *n = j->next;
            j->next = NULL;
            add_easy(multi, j);
            j->anext = active;
            active = j;
            j = n;
        }
        if (stop)
            break;
        int running = 0;
        curl_multi_perform(multi, &running);
        CURLMsg *msg;
        int left;
        whjob_t *done = NULL;
        while ((msg = curl_multi_info_read(multi, &left))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            CURL *e = msg->easy_handle;
            whjob_t *j = NULL;
            curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&j);
            if (!j)
                continue;
            j->curl_ok = msg->data.result == CURLE_OK;
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &j->http_status);
            curl_multi_remove_handle(multi, e);
            curl_slist_free_all(j->hdrs);
            j->hdrs = NULL;
            for (whjob_t **pp = &active; *pp; pp = &(*pp)->anext)
                if (*pp == j) {
                    *pp = j->anext;
                    break;
                }
            curl_easy_cleanup(e);
            j->easy = NULL;
            j->next = done;
            done = j;
        }
        if (done) {
            pthread_mutex_lock(&M->wh_mu);
            while (done) {
                whjob_t *n = done->next;
                done->next = M->wh_out;
                M->wh_out = done;
                done = n;
            }
            pthread_mutex_unlock(&M->wh_mu);
            lws_cancel_service(M->ctx);
        }
        struct curl_waitfd wfd = {M->wh_wake[0], CURL_WAIT_POLLIN, 0};
        int numfds = 0;
        curl_multi_wait(multi, &wfd, 1, 200, &numfds);
        if (wfd.revents) {
            char tmp[64];
            while (read(M->wh_wake[0], tmp, sizeof tmp) > 0)
                ;
        }
    }
    /* abandon in-flight transfers */
    while (active) {
        whjob_t *j = active;
        active = j->anext;
        if (j->easy) {
            curl_multi_remove_handle(multi, j->easy);
            curl_easy_cleanup(j->easy);
        }
        curl_slist_free_all(j->hdrs);
        job_free(j);
    }
    curl_multi_cleanup(multi);
    return NULL;
}

void wh_start(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    pthread_mutex_init(&M->wh_mu, NULL);
    if (pipe(M->wh_wake) == 0) {
        for (int i = 0; i < 2; i++) {
            int fl = fcntl(M->wh_wake[i], F_GETFL);
            fcntl(M->wh_wake[i], F_SETFL, fl | O_NONBLOCK);
        }
    }
    pthread_create(&M->wh_thread, NULL, worker, NULL);
}

static void wake(void)
{
    char c = 1;
    if (write(M->wh_wake[1], &c, 1) < 0) {
        /* pipe full: the worker is awake anyway */
    }
}

void wh_stop(void)
{
    pthread_mutex_lock(&M->wh_mu);
    M->wh_stop = 1;
    pthread_mutex_unlock(&M->wh_mu);
    wake();
    pthread_join(M->wh_thread, NULL);
    /* jobs the worker never picked or completed */
    while (M->wh_in) {
        whjob_t *j = M->wh_in;
        M->wh_in = j->next;
        job_free(j);
    }
    while (M->wh_out) {
        whjob_t *j = M->wh_out;
        M->wh_out = j->next;
        job_free(j);
    }
    while (M->wh_wait) {
        whjob_t *j = M->wh_wait;
        M->wh_wait = j->wnext;
        lws_sul_cancel(&j->sul);
        job_free(j);
    }
    close(M->wh_wake[0]);
    close(M->wh_wake[1]);
    pthread_mutex_destroy(&M->wh_mu);
    curl_global_cleanup();
}

void wh_submit(whjob_t *j)
{
    j->http_status = 0;
    j->curl_ok = 0;
    free(j->resp);
    j->resp = NULL;
    j->resp_len = 0;
    j->timeout_s = M->cfg.webhook_timeout_s;
    pthread_mutex_lock(&M->wh_mu);
    j->next = M->wh_in;
    M->wh_in = j;
    pthread_mutex_unlock(&M->wh_mu);
    wake();
}

static whjob_t *job_new(const char *url, const char *secret, const char *body, const char *mtype,
                        const char *msg_id, const char *ts, const char *stype, const char *sver)
{
    whjob_t *j = xcalloc(1, sizeof *j);
    snprintf(j->url, sizeof j->url, "%s", url);
    j->body = xstrdup(body);
    snprintf(j->mtype, sizeof j->mtype, "%s", mtype);
    if (msg_id)
        snprintf(j->msg_id, sizeof j->msg_id, "%s", msg_id);
    else
        gen_uuid(j->msg_id);
    if (ts)
        snprintf(j->ts, sizeof j->ts, "%s", ts);
    else
        fmt_time(wall_now(), j->ts);
    if (stype) {
        snprintf(j->sub_type, sizeof j->sub_type, "%s", stype);
        snprintf(j->sub_version, sizeof j->sub_version, "%s", sver ? sver : "");
    }
    hmac_sha256_hex(secret ? secret : "", j->msg_id, j->ts, j->body, strlen(j->body), j->sig);
    j->shard = -1;
    return j;
}

void wh_deliver_sub(sub_t *s, uint64_t seq, const char *body, int kind, const char *msg_id,
                    const char *ts)
{
    whjob_t *j = job_new(s->callback, s->secret, body, kind ? "revocation" : "notification",
                         msg_id, ts, s->type, s->version);
    j->kind = kind;
    j->seq = seq;
    snprintf(j->sub_id, sizeof j->sub_id, "%s", s->id);
    lent_t *le = ledger_get(seq);
    if (le && le->nattempts < MAX_ATTEMPTS) {
        attempt_t *a = &le->att[le->nattempts++];
        a->shard = -1;
        a->session_id[0] = 0;
        a->result = "queued";
    }
    wh_submit(j);
}

void wh_deliver_shard(conduit_t *c, int shard, sub_t *s, uint64_t seq, const char *body,
                      int kind, const char *msg_id, const char *ts)
{
    shard_t *sh = &c->shards[shard];
    whjob_t *j = job_new(sh->callback, sh->secret, body, kind ? "revocation" : "notification",
                         msg_id, ts, s->type, s->version);
    j->kind = kind;
    j->seq = seq;
    snprintf(j->conduit_id, sizeof j->conduit_id, "%s", c->id);
    j->shard = shard;
    snprintf(j->sub_id, sizeof j->sub_id, "%s", s->id);
    wh_submit(j);
}

void wh_challenge_shard(conduit_t *c, int shard)
{
    shard_t *sh = &c->shards[shard];
    char chal[ID_LEN];
    gen_uuid(chal);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "challenge", chal);
    cJSON *cs = cJSON_AddObjectToObject(o, "conduit_shard");
    cJSON_AddStringToObject(cs, "conduit_id", c->id);
    char sid[16];
    snprintf(sid, sizeof sid, "%d", shard);
    cJSON_AddStringToObject(cs, "shard", sid);
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    whjob_t *j = job_new(sh->callback, sh->secret, body, "webhook_callback_verification", NULL,
                         NULL, NULL, NULL);
    free(body);
    j->kind = 2;
    snprintf(j->challenge, sizeof j->challenge, "%s", chal);
    snprintf(j->conduit_id, sizeof j->conduit_id, "%s", c->id);
    j->shard = shard;
    /* remember which callback was challenged */
    wh_submit(j);
}

void wh_challenge_sub(sub_t *s)
{
    char chal[ID_LEN];
    gen_uuid(chal);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "challenge", chal);
    cJSON_AddItemToObject(o, "subscription", sub_json(s));
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    whjob_t *j = job_new(s->callback, s->secret, body, "webhook_callback_verification", NULL, NULL,
                         s->type, s->version);
    free(body);
    j->kind = 2;
    snprintf(j->challenge, sizeof j->challenge, "%s", chal);
    snprintf(j->sub_id, sizeof j->sub_id, "%s", s->id);
    wh_submit(j);
}

static void retry_cb(lws_sorted_usec_list_t *sul)
{
    whjob_t *j = lws_container_of(sul, whjob_t, sul);
    for (whjob_t **pp = &M->wh_wait; *pp; pp = &(*pp)->wnext)
        if (*pp == j) {
            *pp = j->wnext;
            break;
        }
    wh_submit(j);
}

static void ledger_wh_attempt(uint64_t seq, int shard, const char *result)
{
    lent_t *le = ledger_get(seq);
    if (!le)
        return;
    if (le->nattempts > 0 && le->att[le->nattempts - 1].result &&
        !strcmp(le->att[le->nattempts - 1].result, "queued")) {
        le->att[le->nattempts - 1].result = result;
        return;
    }
    if (le->nattempts >= MAX_ATTEMPTS)
        le->nattempts = MAX_ATTEMPTS - 1;
    attempt_t *a = &le->att[le->nattempts++];
    a->shard = shard;
    a->session_id[0] = 0;
    a->result = result;
}

static void handle_done(whjob_t *j)
{
    int ok2xx = j->curl_ok && j->http_status >= 200 && j->http_status < 300;
    if (j->kind == 2) {
        int ok = j->curl_ok && j->http_status == 200 && j->resp &&
                 j->resp_len == strlen(j->challenge) && !memcmp(j->resp, j->challenge, j->resp_len);
        if (j->shard >= 0) {
            conduit_t *c = find_conduit(j->conduit_id);
            if (c && j->shard < c->shard_count) {
                shard_t *sh = &c->shards[j->shard];
                if (sh->method == T_WEBHOOK && sh->callback && !strcmp(sh->callback, j->url) &&
                    !strcmp(sh->status, "webhook_callback_verification_pending"))
                    strcpy(sh->status, ok ? "enabled" : "webhook_callback_verification_failed");
            }
        } else {
            sub_t *s = find_sub(j->sub_id);
            if (s && !strcmp(s->status, "webhook_callback_verification_pending"))
                strcpy(s->status, ok ? "enabled" : "webhook_callback_verification_failed");
        }
        job_free(j);
        return;
    }
    char res[48];
    if (ok2xx)
        snprintf(res, sizeof res, "delivered");
    else if (!j->curl_ok)
        snprintf(res, sizeof res, "transport error");
    else
        snprintf(res, sizeof res, "http %ld", j->http_status);
    static const char *results[] = {"delivered", "transport error", "http error"};
    ledger_wh_attempt(j->seq, j->shard, ok2xx ? results[0] : !j->curl_ok ? results[1] : results[2]);
    conduit_t *c = j->shard >= 0 ? find_conduit(j->conduit_id) : NULL;
    shard_t *sh = c && j->shard < c->shard_count ? &c->shards[j->shard] : NULL;
    sub_t *s = find_sub(j->sub_id);
    if (ok2xx) {
        ledger_set(j->seq, L_DELIVERED, NULL);
        if (sh)
            sh->wh_failures = 0;
        else if (s && s->method == T_WEBHOOK)
            s->wh_failures = 0;
        job_free(j);
        return;
    }
    if (j->retry + 1 < M->cfg.webhook_max_attempts) {
        double delay = M->cfg.webhook_retry_base_s;
        for (int i = 0; i < j->retry; i++)
            delay *= 2;
        j->retry++;
        j->wnext = M->wh_wait;
        M->wh_wait = j;
        lws_sul_schedule(M->ctx, 0, &j->sul, retry_cb, (lws_usec_t)(delay * 1e6) + 1);
        return;
    }
    ledger_set(j->seq, L_DROPPED, "webhook delivery failed after all retries");
    if (sh) {
        if (++sh->wh_failures >= M->cfg.webhook_failures_limit &&
            !strcmp(sh->status, "enabled"))
            shard_set_disabled(c, j->shard, "notification_failures_exceeded");
    } else if (s && s->method == T_WEBHOOK) {
        if (++s->wh_failures >= M->cfg.webhook_failures_limit && !strcmp(s->status, "enabled")) {
            strcpy(s->status, "notification_failures_exceeded");
            produce(s, NULL, NULL, 1, "notification_failures_exceeded", NULL);
        }
    }
    job_free(j);
}

void wh_drain(void)
{
    pthread_mutex_lock(&M->wh_mu);
    whjob_t *out = M->wh_out;
    M->wh_out = NULL;
    pthread_mutex_unlock(&M->wh_mu);
    while (out) {
        whjob_t *n = out->next;
        out->next = NULL;
        handle_done(out);
        out = n;
    }
}
