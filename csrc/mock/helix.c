/* OAuth, Helix conduit and subscription endpoints, request dispatch. */
#include "mock.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------- responses ---------------- */

static void add_header(hreq_t *r, const char *name, const char *value)
{
    size_t l = strlen(r->extra_headers);
    snprintf(r->extra_headers + l, sizeof r->extra_headers - l, "%s: %s\n", name, value);
}

void set_json(hreq_t *r, int status, cJSON *o)
{
    r->status = status;
    r->resp.len = 0;
    if (o) {
        char *t = cJSON_PrintUnformatted(o);
        buf_adds(&r->resp, t ? t : "{}");
        free(t);
        cJSON_Delete(o);
    }
}

void json_error(hreq_t *r, int status, const char *err, const char *msg)
{
    cJSON *o = cJSON_CreateObject();
    if (err)
        cJSON_AddStringToObject(o, "error", err);
    cJSON_AddNumberToObject(o, "status", status);
    cJSON_AddStringToObject(o, "message", msg);
    set_json(r, status, o);
}

static const char *status_text(int st)
{
    switch (st) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

static void herr(hreq_t *r, int status, const char *msg)
{
    json_error(r, status, status_text(status), msg);
}

/* ---------------- state lookup ---------------- */

conduit_t *find_conduit(const char *id)
{
    if (!id)
        return NULL;
    for (conduit_t *c = M->conduits; c; c = c->next)
        if (!strcmp(c->id, id))
            return c;
    return NULL;
}

sub_t *find_sub(const char *id)
{
    if (!id)
        return NULL;
    for (sub_t *s = M->subs; s; s = s->next)
        if (!strcmp(s->id, id))
            return s;
    return NULL;
}

static client_t *find_client(const char *id)
{
    for (int i = 0; i < M->nclients; i++)
        if (!strcmp(M->clients[i].id, id))
            return &M->clients[i];
    return NULL;
}

static token_t *find_token(const char *tok)
{
    for (token_t *t = M->tokens; t; t = t->next)
        if (!strcmp(t->tok, tok))
            return t;
    return NULL;
}

static int token_valid(token_t *t) { return t && !t->revoked && emu_now() < t->expires_at; }

static void free_shard(shard_t *sh)
{
    free(sh->callback);
    free(sh->secret);
    sh->callback = sh->secret = NULL;
}

static void init_shard(shard_t *sh)
{
    memset(sh, 0, sizeof *sh);
    strcpy(sh->status, "websocket_disconnected");
    sh->method = T_NONE;
}

static void free_sub(sub_t *s)
{
    free(s->type);
    free(s->version);
    cJSON_Delete(s->condition);
    free(s->callback);
    free(s->secret);
    free(s);
}

void delete_conduit(conduit_t *c, const char *sub_status)
{
    for (sub_t *s = M->subs; s; s = s->next)
        if (s->method == M_CONDUIT && !strcmp(s->conduit_id, c->id))
            snprintf(s->status, sizeof s->status, "%s", sub_status);
    for (conduit_t **pp = &M->conduits; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    for (int i = 0; i < c->shard_count; i++)
        free_shard(&c->shards[i]);
    free(c->shards);
    free(c);
}

void reset_helix_state(void)
{
    while (M->conduits)
        delete_conduit(M->conduits, "conduit_deleted");
    while (M->subs) {
        sub_t *s = M->subs;
        M->subs = s->next;
        free_sub(s);
    }
    while (M->hfaults) {
        hfault_t *f = M->hfaults;
        M->hfaults = f->next;
        free(f->path);
        free(f->message);
        free(f);
    }
    M->latency_ms = 0;
    M->duplicate_next = M->stale_next = 0;
    shard_patches_free();
    for (user_t *u = M->users; u; u = u->next)
        u->bucket = -1;
}

void free_route_counters(void)
{
    while (M->routes) {
        route_ctr_t *r = M->routes;
        M->routes = r->next;
        free(r->name);
        free(r);
    }
    M->helix_total = 0;
}

void free_tokens(void);
void free_tokens(void)
{
    while (M->tokens) {
        token_t *t = M->tokens;
        M->tokens = t->next;
        cJSON_Delete(t->scopes);
        free(t);
    }
}

/* 72 h deletion and other clock driven state */
void housekeeping(void)
{
    double now = emu_now();
    conduit_t *c = M->conduits;
    while (c) {
        conduit_t *next = c->next;
        int any = 0;
        for (int i = 0; i < c->shard_count; i++)
            if (!strcmp(c->shards[i].status, "enabled")) {
                any = 1;
                break;
            }
        if (any)
            c->all_disabled_since = 0;
        else {
            if (c->all_disabled_since == 0)
                c->all_disabled_since = now;
            else if (now - c->all_disabled_since >= 72.0 * 3600)
                delete_conduit(c, "conduit_deleted");
        }
        c = next;
    }
}

/* ---------------- JSON views ---------------- */

cJSON *shard_json(conduit_t *c, int i)
{
    shard_t *sh = &c->shards[i];
    cJSON *o = cJSON_CreateObject();
    char id[16];
    snprintf(id, sizeof id, "%d", i);
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "status", sh->status);
    cJSON *t = cJSON_AddObjectToObject(o, "transport");
    if (sh->method == T_WEBHOOK) {
        cJSON_AddStringToObject(t, "method", "webhook");
        cJSON_AddStringToObject(t, "callback", sh->callback ? sh->callback : "");
    } else {
        cJSON_AddStringToObject(t, "method", "websocket");
        cJSON_AddStringToObject(t, "session_id", sh->session_id);
        if (sh->connected_at[0])
            cJSON_AddStringToObject(t, "connected_at", sh->connected_at);
        if (sh->disconnected_at[0])
            cJSON_AddStringToObject(t, "disconnected_at", sh->disconnected_at);
    }
    return o;
}

cJSON *sub_json(sub_t *s)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", s->id);
    cJSON_AddStringToObject(o, "status", s->status);
    cJSON_AddStringToObject(o, "type", s->type);
    cJSON_AddStringToObject(o, "version", s->version);
    cJSON_AddItemToObject(o, "condition", cJSON_Duplicate(s->condition, 1));
    cJSON *t = cJSON_AddObjectToObject(o, "transport");
    if (s->method == M_CONDUIT) {
        cJSON_AddStringToObject(t, "method", "conduit");
        cJSON_AddStringToObject(t, "conduit_id", s->conduit_id);
    } else if (s->method == T_WEBHOOK) {
        cJSON_AddStringToObject(t, "method", "webhook");
        cJSON_AddStringToObject(t, "callback", s->callback ? s->callback : "");
    } else {
        cJSON_AddStringToObject(t, "method", "websocket");
        cJSON_AddStringToObject(t, "session_id", s->session_id);
        if (s->connected_at[0])
            cJSON_AddStringToObject(t, "connected_at", s->connected_at);
        if (s->disconnected_at[0])
            cJSON_AddStringToObject(t, "disconnected_at", s->disconnected_at);
    }
    cJSON_AddStringToObject(o, "created_at", s->created_at);
    cJSON_AddNumberToObject(o, "cost", s->cost);
    return o;
}

/* ---------------- config ---------------- */

static int num(const cJSON *o, const char *k, double *out, double lo, double hi, char *err,
               size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble < lo || v->valuedouble > hi) {
        snprintf(err, errlen, "%s must be a number in [%g, %g]", k, lo, hi);
        return 0;
    }
    *out = v->valuedouble;
    return 1;
}

void apply_config(const cJSON *o, char *err, size_t errlen)
{
    config_t *c = &M->cfg;
    double d;
    err[0] = 0;
    if (!cJSON_IsObject(o)) {
        snprintf(err, errlen, "config must be a JSON object");
        return;
    }
    const cJSON *ka = cJSON_GetObjectItemCaseSensitive(o, "keepalive");
    if (cJSON_IsObject(ka)) {
        if (num(ka, "default", &d, 1, 3600, err, errlen))
            c->keepalive_default = (int)d;
        if (num(ka, "min", &d, 1, 3600, err, errlen))
            c->keepalive_min = (int)d;
        if (num(ka, "max", &d, 1, 3600, err, errlen))
            c->keepalive_max = (int)d;
    }
    if (num(o, "keepalive_default", &d, 1, 3600, err, errlen))
        c->keepalive_default = (int)d;
    if (num(o, "keepalive_min", &d, 1, 3600, err, errlen))
        c->keepalive_min = (int)d;
    if (num(o, "keepalive_max", &d, 1, 3600, err, errlen))
        c->keepalive_max = (int)d;
    if (num(o, "assign_window_s", &d, 0.01, 86400, err, errlen))
        c->assign_window_s = d;
    if (num(o, "reconnect_grace_s", &d, 0.01, 86400, err, errlen))
        c->reconnect_grace_s = d;
    if (num(o, "ping_interval_s", &d, 0.01, 86400, err, errlen))
        c->ping_interval_s = d;
    if (num(o, "token_ttl_s", &d, 1, 1e10, err, errlen))
        c->token_ttl_s = d;
    if (num(o, "rate_limit", &d, 1, 1e9, err, errlen))
        c->rate_limit = (int)d;
    if (num(o, "max_conduits", &d, 0, 1e6, err, errlen))
        c->max_conduits = (int)d;
    if (num(o, "max_shards", &d, 1, 1e6, err, errlen))
        c->max_shards = (int)d;
    if (num(o, "shard_page_size", &d, 1, 1e6, err, errlen))
        c->shard_page_size = (int)d;
    if (num(o, "sub_page_size", &d, 1, 1e6, err, errlen))
        c->sub_page_size = (int)d;
    if (num(o, "max_frame_bytes", &d, 64, 1e9, err, errlen))
        c->max_frame_bytes = (size_t)d;
    if (num(o, "webhook_max_attempts", &d, 1, 100, err, errlen))
        c->webhook_max_attempts = (int)d;
    if (num(o, "webhook_retry_base_s", &d, 0, 3600, err, errlen))
        c->webhook_retry_base_s = d;
    if (num(o, "webhook_timeout_s", &d, 0.05, 600, err, errlen))
        c->webhook_timeout_s = d;
    if (num(o, "webhook_failures_limit", &d, 1, 1e6, err, errlen))
        c->webhook_failures_limit = (int)d;
    if (num(o, "max_total_cost", &d, 1, 1e9, err, errlen))
        c->sub_max_cost = (int)d;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "routing_key");
    if (v) {
        if (cJSON_IsString(v) && *v->valuestring && strlen(v->valuestring) < sizeof c->routing_key)
            strcpy(c->routing_key, v->valuestring);
        else
            snprintf(err, errlen, "routing_key must be a non-empty string");
    }
    v = cJSON_GetObjectItemCaseSensitive(o, "strict_webhook_urls");
    if (v) {
        if (cJSON_IsBool(v))
            c->strict_webhook_urls = cJSON_IsTrue(v);
        else
            snprintf(err, errlen, "strict_webhook_urls must be a boolean");
    }
    v = cJSON_GetObjectItemCaseSensitive(o, "clients");
    if (cJSON_IsArray(v)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, v)
        {
            const char *id = jstr(it, "client_id"), *sec = jstr(it, "client_secret");
            if (!id || !sec || find_client(id) || M->nclients >= 8)
                continue;
            client_t *cl = &M->clients[M->nclients++];
            memset(cl, 0, sizeof *cl);
            snprintf(cl->id, sizeof cl->id, "%s", id);
            snprintf(cl->secret, sizeof cl->secret, "%s", sec);
            cl->bucket = -1;
        }
    }
    if (c->keepalive_min > c->keepalive_max)
        c->keepalive_max = c->keepalive_min;
}

/* ---------------- OAuth ---------------- */

/* a parameter of the token request: query, form body or JSON body */
static void oauth_param(hreq_t *r, const cJSON *json, const char *k, char *out, size_t n)
{
    out[0] = 0;
    if (r->query && qparam(r->query, k, out, n, 0) && out[0])
        return;
    if (r->body.p && r->body.p[0] != '{' && qparam(r->body.p, k, out, n, 0) && out[0])
        return;
    if (json && jstr(json, k))
        snprintf(out, n, "%s", jstr(json, k));
}

static void user_token_response(hreq_t *r, token_t *t)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "access_token", t->tok);
    double left = t->expires_at - emu_now();
    cJSON_AddNumberToObject(o, "expires_in", left > 0 ? floor(left) : 0);
    cJSON_AddStringToObject(o, "refresh_token", t->refresh);
    cJSON_AddItemToObject(o, "scope", cJSON_Duplicate(t->scopes, 1));
    cJSON_AddStringToObject(o, "token_type", "bearer");
    set_json(r, 200, o);
}

static void oauth_token(hreq_t *r)
{
    char cid[128], sec[128], gt[64];
    cJSON *json = NULL;
    if (r->body.p && r->body.p[0] == '{') /* tolerate a JSON body too */
        json = cJSON_ParseWithLength(r->body.p, r->body.len);
    oauth_param(r, json, "client_id", cid, sizeof cid);
    oauth_param(r, json, "client_secret", sec, sizeof sec);
    oauth_param(r, json, "grant_type", gt, sizeof gt);
    client_t *cl = find_client(cid);
    if (!cid[0] || !cl) {
        json_error(r, 400, NULL, "invalid client");
        goto out;
    }
    if (strcmp(sec, cl->secret)) {
        json_error(r, 403, NULL, "invalid client secret");
        goto out;
    }
    if (!strcmp(gt, "authorization_code")) {
        /* redirect_uri is accepted and not checked: no browser was redirected */
        char code[64];
        oauth_param(r, json, "code", code, sizeof code);
        token_t *g = NULL;
        for (token_t *t = M->tokens; t && code[0]; t = t->next)
            if (t->user && t->code[0] && !strcmp(t->code, code) && !strcmp(t->client_id, cl->id))
                g = t;
        if (!g) {
            json_error(r, 400, NULL, "Invalid authorization code");
            goto out;
        }
        g->code[0] = 0; /* a code is exchanged once */
        user_token_response(r, user_token_issue(g->user, g->scopes));
        goto out;
    }
    if (!strcmp(gt, "refresh_token")) {
        char rt[128];
        oauth_param(r, json, "refresh_token", rt, sizeof rt);
        token_t *g = NULL;
        for (token_t *t = M->tokens; t && rt[0]; t = t->next)
            if (t->user && t->refresh[0] && !strcmp(t->refresh, rt) && !strcmp(t->client_id, cl->id))
                g = t;
        if (!g) {
            json_error(r, 400, "Bad Request", "Invalid refresh token");
            goto out;
        }
        g->refresh[0] = 0; /* rotated: the old refresh token is spent */
        user_token_response(r, user_token_issue(g->user, g->scopes));
        goto out;
    }
    if (strcmp(gt, "client_credentials")) {
        json_error(r, 400, NULL, "unsupported grant type");
        goto out;
    }
    token_t *t = xcalloc(1, sizeof *t);
    gen_token(t->tok, 31);
    snprintf(t->client_id, sizeof t->client_id, "%s", cl->id);
    t->expires_at = emu_now() + M->cfg.token_ttl_s;
    t->next = M->tokens;
    M->tokens = t;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "access_token", t->tok);
    cJSON_AddNumberToObject(o, "expires_in", floor(M->cfg.token_ttl_s));
    cJSON_AddStringToObject(o, "token_type", "bearer");
    set_json(r, 200, o);
out:
    cJSON_Delete(json);
}

static const char *auth_token(const char *hdr)
{
    if (!strncasecmp(hdr, "OAuth ", 6))
        return hdr + 6;
    if (!strncasecmp(hdr, "Bearer ", 7))
        return hdr + 7;
    return NULL;
}

static void oauth_validate(hreq_t *r)
{
    const char *tok = auth_token(r->auth_hdr);
    token_t *t = tok ? find_token(tok) : NULL;
    if (!token_valid(t)) {
        json_error(r, 401, NULL, "invalid access token");
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "client_id", t->client_id);
    if (t->user) {
        cJSON_AddStringToObject(o, "login", t->user->login);
        cJSON_AddItemToObject(o, "scopes", cJSON_Duplicate(t->scopes, 1));
        cJSON_AddStringToObject(o, "user_id", t->user->id);
    } else
        cJSON_AddArrayToObject(o, "scopes");
    double left = t->expires_at - emu_now();
    cJSON_AddNumberToObject(o, "expires_in", left > 0 ? floor(left) : 0);
    set_json(r, 200, o);
}

static void oauth_revoke(hreq_t *r)
{
    char tok[128] = "";
    if (!qparam(r->query, "token", tok, sizeof tok, 0) && r->body.p)
        qparam(r->body.p, "token", tok, sizeof tok, 0);
    token_t *t = find_token(tok);
    if (!t) {
        json_error(r, 400, NULL, "Invalid token");
        return;
    }
    t->revoked = 1;
    r->status = 200;
}

/* ---------------- Helix plumbing ---------------- */

static void count_route(const char *method, const char *path)
{
    char name[600];
    snprintf(name, sizeof name, "%s %s", method, path);
    M->helix_total++;
    for (route_ctr_t *rc = M->routes; rc; rc = rc->next)
        if (!strcmp(rc->name, name)) {
            rc->n++;
            return;
        }
    route_ctr_t *rc = xcalloc(1, sizeof *rc);
    rc->name = xstrdup(name);
    rc->n = 1;
    rc->next = M->routes;
    M->routes = rc;
}

/* A rate-limit bucket: a client's (app tokens) or a user's (user tokens of that
 * client and user). level < 0: not used yet (full). */
typedef struct {
    double *level;
    int64_t *us;
} bucket_ref;

static bucket_ref client_bucket(client_t *cl)
{
    bucket_ref k = {NULL, NULL};
    if (cl) {
        k.level = &cl->bucket;
        k.us = &cl->bucket_us;
    }
    return k;
}

static void bucket_refill(bucket_ref k)
{
    int64_t now = mono_us();
    double lim = M->cfg.rate_limit;
    if (*k.level < 0) {
        *k.level = lim;
        *k.us = now;
        return;
    }
    *k.level += (double)(now - *k.us) / 1e6 * lim / 60.0;
    if (*k.level > lim)
        *k.level = lim;
    *k.us = now;
}

/* Sets a client's app-token bucket to level points (< 0: full); returns the limit, or -1
 * for an unknown client (control API). */
int mock_bucket_set(const char *client_id, double level)
{
    client_t *cl = find_client(client_id);
    if (!cl)
        return -1;
    cl->bucket = level < 0 || level > M->cfg.rate_limit ? M->cfg.rate_limit : level;
    cl->bucket_us = mono_us();
    return M->cfg.rate_limit;
}

static void rl_headers(hreq_t *r, bucket_ref k, int force_empty)
{
    double lim = M->cfg.rate_limit;
    double b = lim;
    if (k.level) {
        bucket_refill(k);
        b = *k.level;
    }
    if (force_empty)
        b = 0;
    char v[32];
    snprintf(v, sizeof v, "%d", M->cfg.rate_limit);
    add_header(r, "Ratelimit-Limit", v);
    snprintf(v, sizeof v, "%d", (int)floor(b < 0 ? 0 : b));
    add_header(r, "Ratelimit-Remaining", v);
    double secs = force_empty ? 1 : ceil((lim - b) / (lim / 60.0));
    if (secs < 0)
        secs = 0;
    snprintf(v, sizeof v, "%lld", (long long)(floor(wall_now()) + secs));
    add_header(r, "Ratelimit-Reset", v);
}

static int strict_int(const char *s, long *out)
{
    if (!s || !*s)
        return 0;
    char *e = NULL;
    long v = strtol(s, &e, 10);
    if (*e)
        return 0;
    *out = v;
    return 1;
}

/* shard_count from body (number or numeric string) or query */
static int get_int_param(hreq_t *r, cJSON *body, const char *k, long *out, int *present)
{
    *present = 0;
    const cJSON *v = body ? cJSON_GetObjectItemCaseSensitive(body, k) : NULL;
    if (v) {
        *present = 1;
        if (cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) &&
            fabs(v->valuedouble) < 1e9) {
            *out = (long)v->valuedouble;
            return 1;
        }
        if (cJSON_IsString(v))
            return strict_int(v->valuestring, out);
        return 0;
    }
    char q[64];
    if (qparam(r->query, k, q, sizeof q, 0)) {
        *present = 1;
        return strict_int(q, out);
    }
    return 0;
}

static const char *get_str_param(hreq_t *r, cJSON *body, const char *k, char *buf, size_t n)
{
    const char *s = body ? jstr(body, k) : NULL;
    if (s) {
        snprintf(buf, n, "%s", s);
        return buf;
    }
    if (qparam(r->query, k, buf, n, 0))
        return buf;
    return NULL;
}

static cJSON *conduit_obj(conduit_t *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", c->id);
    cJSON_AddNumberToObject(o, "shard_count", c->shard_count);
    return o;
}

static void resize_conduit(conduit_t *c, int n)
{
    if (n > c->shard_count) {
        shard_t *ns = realloc(c->shards, (size_t)n * sizeof *ns);
        if (!ns)
            abort();
        c->shards = ns;
        for (int i = c->shard_count; i < n; i++)
            init_shard(&c->shards[i]);
    } else {
        for (int i = n; i < c->shard_count; i++)
            free_shard(&c->shards[i]);
    }
    c->shard_count = n;
}

static void h_conduits(hreq_t *r, const char *cid, cJSON *body)
{
    if (!strcmp(r->method, "GET")) {
        cJSON *o = cJSON_CreateObject();
        cJSON *d = cJSON_AddArrayToObject(o, "data");
        for (conduit_t *c = M->conduits; c; c = c->next)
            if (!strcmp(c->client_id, cid))
                cJSON_AddItemToArray(d, conduit_obj(c));
        set_json(r, 200, o);
        return;
    }
    if (!strcmp(r->method, "POST")) {
        long n;
        int present;
        if (!get_int_param(r, body, "shard_count", &n, &present) || n < 1 ||
            n > M->cfg.max_shards) {
            herr(r, 400, present ? "Invalid shard_count" : "Missing required parameter shard_count");
            return;
        }
        int have = 0;
        for (conduit_t *c = M->conduits; c; c = c->next)
            if (!strcmp(c->client_id, cid))
                have++;
        if (have >= M->cfg.max_conduits) {
            herr(r, 429, "conduit limit reached");
            return;
        }
        conduit_t *c = xcalloc(1, sizeof *c);
        gen_uuid(c->id);
        snprintf(c->client_id, sizeof c->client_id, "%s", cid);
        c->shards = NULL;
        c->shard_count = 0;
        resize_conduit(c, (int)n);
        c->all_disabled_since = emu_now();
        /* append to keep creation order */
        conduit_t **pp = &M->conduits;
        while (*pp)
            pp = &(*pp)->next;
        *pp = c;
        cJSON *o = cJSON_CreateObject();
        cJSON *d = cJSON_AddArrayToObject(o, "data");
        cJSON_AddItemToArray(d, conduit_obj(c));
        set_json(r, 200, o);
        return;
    }
    if (!strcmp(r->method, "PATCH")) {
        char idb[128];
        const char *id = get_str_param(r, body, "id", idb, sizeof idb);
        if (!id || !*id) {
            herr(r, 400, "Missing required parameter id");
            return;
        }
        long n;
        int present;
        int ok = get_int_param(r, body, "shard_count", &n, &present);
        if (!present) {
            herr(r, 400, "Missing required parameter shard_count");
            return;
        }
        if (!ok || n < 1 || n > M->cfg.max_shards) {
            herr(r, 400, "Invalid shard_count");
            return;
        }
        conduit_t *c = find_conduit(id);
        if (!c || strcmp(c->client_id, cid)) {
            herr(r, 404, "conduit not found");
            return;
        }
        resize_conduit(c, (int)n);
        cJSON *o = cJSON_CreateObject();
        cJSON *d = cJSON_AddArrayToObject(o, "data");
        cJSON_AddItemToArray(d, conduit_obj(c));
        set_json(r, 200, o);
        return;
    }
    if (!strcmp(r->method, "DELETE")) {
        char idb[128];
        const char *id = get_str_param(r, body, "id", idb, sizeof idb);
        if (!id || !*id) {
            herr(r, 400, "Missing required parameter id");
            return;
        }
        conduit_t *c = find_conduit(id);
        if (!c || strcmp(c->client_id, cid)) {
            herr(r, 404, "conduit not found");
            return;
        }
        delete_conduit(c, "conduit_deleted");
        r->status = 204;
        return;
    }
    herr(r, 405, "method not allowed");
}

static int valid_shard_status(const char *s)
{
    static const char *ok[] = {"enabled",
                               "webhook_callback_verification_pending",
                               "webhook_callback_verification_failed",
                               "notification_failures_exceeded",
                               "websocket_disconnected",
                               "websocket_failed_ping_pong",
                               "websocket_received_inbound_traffic",
                               "websocket_connection_unused",
                               "websocket_internal_error",
                               "websocket_network_timeout",
                               "websocket_network_error",
                               "websocket_failed_to_reconnect"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!strcmp(ok[i], s))
            return 1;
    return 0;
}

static int parse_cursor(const char *s, long *out)
{
    if (!s || s[0] != 'c')
        return 0;
    return strict_int(s + 1, out) && *out >= 0;
}

static int callback_ok(const char *cb)
{
    if (M->cfg.strict_webhook_urls) {
        if (strncmp(cb, "https://", 8))
            return 0;
        const char *host = cb + 8;
        const char *slash = strchr(host, '/');
        const char *colon = strchr(host, ':');
        if (colon && (!slash || colon < slash) && strncmp(colon, ":443", 4))
            return 0;
        return *host && *host != '/';
    }
    if (!strncmp(cb, "https://", 8))
        return cb[8] && cb[8] != '/';
    if (!strncmp(cb, "http://", 7))
        return cb[7] && cb[7] != '/';
    return 0;
}

static int secret_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 10 || n > 100)
        return 0;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            return 0;
    return 1;
}

static void h_shards(hreq_t *r, const char *cid, cJSON *body)
{
    if (!strcmp(r->method, "GET")) {
        char idb[128], st[64] = "", after[64] = "", first[32] = "";
        if (!qparam(r->query, "conduit_id", idb, sizeof idb, 0) || !idb[0]) {
            herr(r, 400, "Missing required parameter conduit_id");
            return;
        }
        int has_status = qparam(r->query, "status", st, sizeof st, 0);
        if (has_status && !valid_shard_status(st)) {
            herr(r, 400, "Invalid status");
            return;
        }
        long start = 0, page = M->cfg.shard_page_size;
        if (qparam(r->query, "after", after, sizeof after, 0) && after[0] &&
            !parse_cursor(after, &start)) {
            herr(r, 400, "Invalid cursor");
            return;
        }
        if (qparam(r->query, "first", first, sizeof first, 0)) {
            long f;
            if (!strict_int(first, &f) || f < 1) {
                herr(r, 400, "Invalid first");
                return;
            }
            if (f < page)
                page = f;
        }
        conduit_t *c = find_conduit(idb);
        if (!c || strcmp(c->client_id, cid)) {
            herr(r, 404, "conduit not found");
            return;
        }
        cJSON *o = cJSON_CreateObject();
        cJSON *d = cJSON_AddArrayToObject(o, "data");
        long n = 0, i = start;
        for (; i < c->shard_count && n < page; i++) {
            if (has_status && strcmp(c->shards[i].status, st))
                continue;
            cJSON_AddItemToArray(d, shard_json(c, (int)i));
            n++;
        }
        /* is there anything left? */
        long j = i;
        if (has_status)
            while (j < c->shard_count && strcmp(c->shards[j].status, st))
                j++;
        cJSON *pg = cJSON_AddObjectToObject(o, "pagination");
        if (j < c->shard_count) {
            char cur[32];
            snprintf(cur, sizeof cur, "c%ld", j);
            cJSON_AddStringToObject(pg, "cursor", cur);
        }
        set_json(r, 200, o);
        return;
    }
    if (strcmp(r->method, "PATCH")) {
        herr(r, 405, "method not allowed");
        return;
    }
    if (!cJSON_IsObject(body)) {
        herr(r, 400, "Request body must be a JSON object");
        return;
    }
    char idb[128];
    const char *conduit_id = get_str_param(r, body, "conduit_id", idb, sizeof idb);
    if (!conduit_id || !*conduit_id) {
        herr(r, 400, "Missing required parameter conduit_id");
        return;
    }
    const cJSON *shards = cJSON_GetObjectItemCaseSensitive(body, "shards");
    if (!cJSON_IsArray(shards) || cJSON_GetArraySize(shards) == 0) {
        herr(r, 400, "Missing required parameter shards");
        return;
    }
    /* a hold or delay fault keeps the request to apply and answer it later */
    if (shard_patch_intercept(r, cid, conduit_id, body))
        return;
    shards_patch_answer(r, cid, conduit_id, body);
}

/* Validates one entry of an Update Conduit Shards request ({"id","transport"}).
 * Returns NULL when it can be applied (*idx, *sess set), else the per-shard error
 * message; sid gets the shard id as given. */
const char *shard_update_check(conduit_t *c, const cJSON *item, char *sid, size_t sidlen,
                               long *idx, session_t **sess)
{
    sid[0] = 0;
    *idx = -1;
    *sess = NULL;
    const cJSON *jid = cJSON_GetObjectItemCaseSensitive(item, "id");
    if (cJSON_IsString(jid)) {
        snprintf(sid, sidlen, "%s", jid->valuestring);
        if (!strict_int(sid, idx))
            *idx = -1;
    } else if (cJSON_IsNumber(jid) && jid->valuedouble == floor(jid->valuedouble) &&
               fabs(jid->valuedouble) < 1e9) {
        *idx = (long)jid->valuedouble;
        snprintf(sid, sidlen, "%ld", *idx);
    }
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(item, "transport");
    const char *method = cJSON_IsObject(tr) ? jstr(tr, "method") : NULL;
    if (!cJSON_IsObject(item))
        return "The shard must be an object";
    if (!sid[0])
        return "The shard id is required";
    if (*idx < 0 || *idx >= c->shard_count)
        return "The shard id is outside of the conduit's range";
    if (!cJSON_IsObject(tr))
        return "The transport is required";
    if (!method || (strcmp(method, "websocket") && strcmp(method, "webhook")))
        return "The transport method is invalid";
    if (!strcmp(method, "websocket")) {
        const char *ses = jstr(tr, "session_id");
        if (!ses || !*ses)
            return "The session_id is required for the websocket transport";
        *sess = find_session(ses);
        if (!session_live(*sess))
            return "The websocket session is not connected.";
        return NULL;
    }
    const char *cb = jstr(tr, "callback"), *sec = jstr(tr, "secret");
    if (!cb || !*cb)
        return "The callback is required for the webhook transport";
    if (!callback_ok(cb))
        return M->cfg.strict_webhook_urls ? "The callback URL is invalid: it must use HTTPS on port 443"
                                          : "The callback URL is invalid";
    if (!sec || !secret_ok(sec))
        return "The secret length is invalid: it must be 10 to 100 ASCII characters";
    return NULL;
}

/* Applies an entry shard_update_check accepted. */
void shard_update_apply(conduit_t *c, long idx, const cJSON *item, session_t *sess)
{
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(item, "transport");
    shard_t *sh = &c->shards[idx];
    free_shard(sh);
    sh->connected_at[0] = sh->disconnected_at[0] = 0;
    sh->session_id[0] = 0;
    sh->wh_failures = 0;
    if (sess) {
        sh->method = T_WS;
        snprintf(sh->session_id, sizeof sh->session_id, "%s", sess->id);
        snprintf(sh->connected_at, sizeof sh->connected_at, "%s", sess->connected_at);
        strcpy(sh->status, "enabled");
        sess->assigned = 1;
    } else {
        sh->method = T_WEBHOOK;
        sh->callback = xstrdup(jstr(tr, "callback"));
        sh->secret = xstrdup(jstr(tr, "secret"));
        strcpy(sh->status, "webhook_callback_verification_pending");
        wh_challenge_shard(c, (int)idx);
    }
}

/* Applies an Update Conduit Shards request (its syntax already checked) and writes
 * the answer into r: on arrival, or when a held or delayed request is applied. Shards
 * a reject fault names get its error and are left as they are. */
void shards_patch_answer(hreq_t *r, const char *cid, const char *conduit_id, const cJSON *body)
{
    const cJSON *shards = cJSON_GetObjectItemCaseSensitive(body, "shards");
    conduit_t *c = find_conduit(conduit_id);
    if (!c || strcmp(c->client_id, cid)) {
        herr(r, 404, "conduit not found");
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *data = cJSON_AddArrayToObject(o, "data");
    cJSON *errs = cJSON_AddArrayToObject(o, "errors");
    const cJSON *it;
    cJSON_ArrayForEach(it, shards)
    {
        char sid[64];
        long idx;
        session_t *sess;
        const char *emsg = shard_update_check(c, it, sid, sizeof sid, &idx, &sess);
        const char *ecode = "invalid_parameter";
        char rmsg[256], rcode[64];
        if (!emsg && shard_patch_rejected(c->id, sid,
                                          cJSON_GetObjectItemCaseSensitive(it, "transport"), rmsg,
                                          sizeof rmsg, rcode, sizeof rcode)) {
            emsg = rmsg;
            ecode = rcode;
        }
        if (emsg) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "id", sid);
            cJSON_AddStringToObject(e, "message", emsg);
            cJSON_AddStringToObject(e, "code", ecode);
            cJSON_AddItemToArray(errs, e);
            continue;
        }
        shard_update_apply(c, idx, it, sess);
        cJSON_AddItemToArray(data, shard_json(c, (int)idx));
    }
    housekeeping();
    set_json(r, 202, o);
}

/* ---------------- subscriptions ---------------- */

static int cond_equal(const cJSON *a, const cJSON *b) { return cJSON_Compare(a, b, 1); }

/* a hash of a condition object that ignores key order: equal conditions hash equal */
static uint32_t cond_hash(const cJSON *cond)
{
    uint32_t h = 0;
    for (const cJSON *f = cond ? cond->child : NULL; f; f = f->next) {
        uint32_t x = 2166136261u;
        for (const char *p = f->string ? f->string : ""; *p; p++)
            x = (x ^ (unsigned char)*p) * 16777619u;
        x = (x ^ 0xff) * 16777619u;
        for (const char *p = cJSON_IsString(f) ? f->valuestring : ""; *p; p++)
            x = (x ^ (unsigned char)*p) * 16777619u;
        h += x * 2654435761u;
    }
    return h;
}

static int sub_active(const sub_t *s)
{
    return !strcmp(s->status, "enabled") ||
           !strcmp(s->status, "webhook_callback_verification_pending");
}

/* What a token sees: an app token the client's webhook and conduit subscriptions, a
 * user token the websocket subscriptions that user made for the client. */
static int sub_visible(const sub_t *s, const token_t *t)
{
    if (strcmp(s->client_id, t->client_id))
        return 0;
    if (t->user)
        return s->method == T_WS && !strcmp(s->user_id, t->user->id);
    return s->method != T_WS;
}

static int total_cost(const token_t *t)
{
    int n = 0;
    for (sub_t *s = M->subs; s; s = s->next)
        if (sub_visible(s, t) && sub_active(s))
            n += s->cost;
    return n;
}


/* websocket transport: max_total_cost per client and user (Twitch: 10) */
#define WS_MAX_TOTAL_COST 10
#define WS_MAX_SESSIONS 3   /* websocket connections with enabled subscriptions per user */
#define WS_MAX_SESSION_SUBS 300

static int max_total_cost(const token_t *t) { return t->user ? WS_MAX_TOTAL_COST : M->cfg.sub_max_cost; }

/* cost 0 when the user named by the condition authorised the app, 1 otherwise */
static int sub_cost(const evtype_t *ty, const cJSON *cond, const char *cid)
{
    const char *keys = ty->auth_key ? ty->auth_key : ty->route_key;
    if (ty->flags & TY_CLIENT)
        return 1;
    for (const char *p = keys; p && *p;) {
        const char *bar = strchr(p, '|');
        size_t l = bar ? (size_t)(bar - p) : strlen(p);
        char k[64];
        if (l < sizeof k) {
            memcpy(k, p, l);
            k[l] = 0;
            const char *v = jstr(cond, k);
            if (v && user_find(cid, v))
                return 0;
        }
        p = bar ? bar + 1 : NULL;
    }
    return 1;
}

static int token_has_scope(const token_t *t, const char *alts)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, t->scopes)
    {
        if (cJSON_IsString(it) && alt_has(alts, it->valuestring))
            return 1;
    }
    return 0;
}

static void h_sub_create(hreq_t *r, const token_t *tk, cJSON *body)
{
    const char *cid = tk->client_id;
    if (!cJSON_IsObject(body)) {
        herr(r, 400, "Request body must be a JSON object");
        return;
    }
    const char *type = jstr(body, "type"), *version = jstr(body, "version");
    const cJSON *cond = cJSON_GetObjectItemCaseSensitive(body, "condition");
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(body, "transport");
    if (!type || !*type) {
        herr(r, 400, "Missing required parameter type");
        return;
    }
    if (!version || !*version) {
        herr(r, 400, "Missing required parameter version");
        return;
    }
    if (!cJSON_IsObject(cond)) {
        herr(r, 400, "Missing required parameter condition");
        return;
    }
    for (const cJSON *f = cond->child; f; f = f->next)
        if (!cJSON_IsString(f)) {
            herr(r, 400, "condition values must be strings");
            return;
        }
    if (!cJSON_IsObject(tr)) {
        herr(r, 400, "Missing required parameter transport");
        return;
    }
    const evtype_t *ty = type_find(type, version);
    if (!ty) {
        herr(r, 400, "The combination of values in the version and type fields is not valid");
        return;
    }
    char msg[256];
    if (!type_check_condition(ty, cond, msg, sizeof msg)) {
        herr(r, 400, msg);
        return;
    }
    const char *method = jstr(tr, "method");
    if (!method) {
        herr(r, 400, "Missing required parameter transport.method");
        return;
    }
    int m;
    const char *target = NULL;
    session_t *sess = NULL;
    if (!strcmp(method, "conduit")) {
        m = M_CONDUIT;
        target = jstr(tr, "conduit_id");
        if (!target || !*target) {
            herr(r, 400, "Missing required parameter transport.conduit_id");
            return;
        }
    } else if (!strcmp(method, "webhook")) {
        m = T_WEBHOOK;
        target = jstr(tr, "callback");
        const char *sec = jstr(tr, "secret");
        if (!target || !*target) {
            herr(r, 400, "Missing required parameter transport.callback");
            return;
        }
        if (!callback_ok(target)) {
            herr(r, 400, "The callback URL is invalid");
            return;
        }
        if (!sec || !secret_ok(sec)) {
            herr(r, 400, "The secret length is invalid: it must be 10 to 100 ASCII characters");
            return;
        }
    } else if (!strcmp(method, "websocket")) {
        m = T_WS;
        target = jstr(tr, "session_id");
        if (!target || !*target) {
            herr(r, 400, "Missing required parameter transport.session_id");
            return;
        }
        if (ty->flags & TY_NO_WS) {
            herr(r, 400, "The subscription type is not supported by the websocket transport");
            return;
        }
    } else {
        herr(r, 400, "The transport method is invalid");
        return;
    }
    /* the token kind the transport needs (Twitch's servers answer 400 here) */
    if (m == T_WS && !tk->user) {
        herr(r, 400, "invalid transport and auth combination");
        return;
    }
    if (m != T_WS && tk->user) {
        herr(r, 400, m == T_WEBHOOK ? "auth must use app access token to create webhook subscription"
                                    : "auth must use app access token to create conduit subscription");
        return;
    }
    if ((ty->flags & TY_CLIENT) && strcmp(jstr(cond, "client_id"), cid)) {
        herr(r, 403, "The client_id in the condition must match the token's client");
        return;
    }
    /* websocket: the token's user must be the condition's user and hold the scope */
    if (m == T_WS && ty->scopes) {
        const char *who = ty->auth_key ? jstr(cond, ty->auth_key) : NULL;
        if (!who || strcmp(who, tk->user->id) || !token_has_scope(tk, ty->scopes)) {
            herr(r, 403, "subscription missing proper authorization");
            return;
        }
    }
    if (m == M_CONDUIT) {
        conduit_t *c = find_conduit(target);
        if (!c || strcmp(c->client_id, cid)) {
            herr(r, 400, "The conduit does not exist");
            return;
        }
    }
    if (m == T_WS) {
        sess = find_session(target);
        if (!session_live(sess)) {
            herr(r, 400, "The websocket session is not connected.");
            return;
        }
    }
    /* one pass: the duplicate check, what the token sees (total, total_cost), the tail */
    uint32_t ch = cond_hash(cond);
    int seen_total = 0, cost_now = 0;
    sub_t **tailp = &M->subs;
    for (sub_t *s = M->subs; s; s = s->next) {
        tailp = &s->next;
        if (sub_visible(s, tk)) {
            seen_total++;
            if (sub_active(s))
                cost_now += s->cost;
        }
        if (s->method != m || s->cond_hash != ch || strcmp(s->client_id, cid) || !sub_active(s) ||
            strcmp(s->type, type) || strcmp(s->version, version) || !cond_equal(s->condition, cond))
            continue;
        const char *st = m == M_CONDUIT ? s->conduit_id : m == T_WEBHOOK ? s->callback : s->session_id;
        if (st && !strcmp(st, target)) {
            herr(r, 409, "subscription already exists");
            return;
        }
    }
    if (m == T_WS) {
        /* other connections of this user holding enabled subscriptions, and this one's count */
        const char *seen[WS_MAX_SESSIONS];
        int nseen = 0, on_session = 0;
        for (sub_t *s = M->subs; s; s = s->next) {
            if (s->method != T_WS || strcmp(s->status, "enabled"))
                continue;
            if (!strcmp(s->session_id, target)) {
                on_session++;
                continue;
            }
            if (strcmp(s->client_id, cid) || strcmp(s->user_id, tk->user->id))
                continue;
            int known = 0;
            for (int i = 0; i < nseen && !known; i++)
                known = !strcmp(seen[i], s->session_id);
            if (!known) {
                if (nseen == WS_MAX_SESSIONS) {
                    nseen++;
                    break;
                }
                seen[nseen++] = s->session_id;
            }
        }
        if (nseen >= WS_MAX_SESSIONS) {
            herr(r, 429, "number of websocket transports limit exceeded");
            return;
        }
        if (on_session >= WS_MAX_SESSION_SUBS) {
            herr(r, 429, "number of subscriptions per websocket transport limit exceeded");
            return;
        }
    }
    int cost = sub_cost(ty, cond, cid);
    if (cost_now + cost > max_total_cost(tk)) {
        herr(r, 429, "The maximum total cost has been reached");
        return;
    }
    sub_t *s = xcalloc(1, sizeof *s);
    gen_uuid(s->id);
    snprintf(s->client_id, sizeof s->client_id, "%s", cid);
    s->type = xstrdup(type);
    s->version = xstrdup(version);
    s->condition = cJSON_Duplicate(cond, 1);
    s->cond_hash = ch;
    s->method = m;
    s->cost = cost;
    s->order = ++M->sub_order;
    fmt_time(emu_now(), s->created_at);
    if (m == M_CONDUIT) {
        snprintf(s->conduit_id, sizeof s->conduit_id, "%s", target);
        strcpy(s->status, "enabled");
    } else if (m == T_WEBHOOK) {
        s->callback = xstrdup(target);
        s->secret = xstrdup(jstr(tr, "secret"));
        strcpy(s->status, "webhook_callback_verification_pending");
    } else {
        snprintf(s->session_id, sizeof s->session_id, "%s", target);
        snprintf(s->connected_at, sizeof s->connected_at, "%s", sess->connected_at);
        snprintf(s->user_id, sizeof s->user_id, "%s", tk->user->id);
        strcpy(s->status, "enabled");
        sess->assigned = 1;
    }
    *tailp = s;
    if (m == T_WEBHOOK)
        wh_challenge_sub(s);
    cJSON *o = cJSON_CreateObject();
    cJSON *d = cJSON_AddArrayToObject(o, "data");
    cJSON_AddItemToArray(d, sub_json(s));
    cJSON_AddNumberToObject(o, "total", seen_total + sub_visible(s, tk));
    cJSON_AddNumberToObject(o, "total_cost", cost_now + (sub_visible(s, tk) && sub_active(s) ? cost : 0));
    cJSON_AddNumberToObject(o, "max_total_cost", max_total_cost(tk));
    set_json(r, 202, o);
}

static int cond_has_user(const cJSON *cond, const char *uid)
{
    for (const cJSON *f = cond->child; f; f = f->next)
        if (cJSON_IsString(f) && f->string && strstr(f->string, "user_id") &&
            !strcmp(f->valuestring, uid))
            return 1;
    return 0;
}

static void h_sub_list(hreq_t *r, const token_t *tk)
{
    static const char *filters[] = {"status", "type", "user_id", "subscription_id", "conduit_id"};
    int which = -1, nf = 0;
    char fv[256] = "";
    for (int i = 0; i < 5; i++) {
        char tmp[256];
        if (qparam(r->query, filters[i], tmp, sizeof tmp, 0)) {
            nf++;
            which = i;
            snprintf(fv, sizeof fv, "%s", tmp);
        }
    }
    if (nf > 1) {
        herr(r, 400, "Only one of status, type, user_id, subscription_id or conduit_id may be given");
        return;
    }
    long start = 0;
    char after[64];
    if (qparam(r->query, "after", after, sizeof after, 0) && after[0] &&
        !parse_cursor(after, &start)) {
        herr(r, 400, "Invalid cursor");
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *d = cJSON_AddArrayToObject(o, "data");
    long idx = 0, n = 0, total = 0, next = -1;
    for (sub_t *s = M->subs; s; s = s->next) {
        if (!sub_visible(s, tk))
            continue;
        int match = 1;
        switch (which) {
        case 0: match = !strcmp(s->status, fv); break;
        case 1: match = !strcmp(s->type, fv); break;
        case 2: match = cond_has_user(s->condition, fv); break;
        case 3: match = !strcmp(s->id, fv); break;
        case 4: match = s->method == M_CONDUIT && !strcmp(s->conduit_id, fv); break;
        default: break;
        }
        if (!match)
            continue;
        total++;
        if (idx >= start) {
            if (n < M->cfg.sub_page_size) {
                cJSON_AddItemToArray(d, sub_json(s));
                n++;
            } else if (next < 0)
                next = idx;
        }
        idx++;
    }
    cJSON_AddNumberToObject(o, "total", total);
    cJSON_AddNumberToObject(o, "total_cost", total_cost(tk));
    cJSON_AddNumberToObject(o, "max_total_cost", max_total_cost(tk));
    cJSON *pg = cJSON_AddObjectToObject(o, "pagination");
    if (next >= 0) {
        char cur[32];
        snprintf(cur, sizeof cur, "c%ld", next);
        cJSON_AddStringToObject(pg, "cursor", cur);
    }
    set_json(r, 200, o);
}

static void h_sub_delete(hreq_t *r, const token_t *tk)
{
    char id[128];
    if (!qparam(r->query, "id", id, sizeof id, 0) || !id[0]) {
        herr(r, 400, "Missing required parameter id");
        return;
    }
    for (sub_t **pp = &M->subs; *pp; pp = &(*pp)->next) {
        sub_t *s = *pp;
        if (!strcmp(s->id, id) && sub_visible(s, tk)) {
            *pp = s->next;
            free_sub(s);
            r->status = 204;
            return;
        }
    }
    herr(r, 404, "subscription not found");
}

/* ---------------- dispatch ---------------- */

static hfault_t *take_fault(const char *path)
{
    for (hfault_t **pp = &M->hfaults; *pp; pp = &(*pp)->next) {
        hfault_t *f = *pp;
        if (f->path && strncmp(path, f->path, strlen(f->path)) &&
            strncmp(path + 6, f->path, strlen(f->path)))
            continue;
        return f;
    }
    return NULL;
}

void count_helix_status(int status)
{
    if (status >= 100 && status < 600)
        M->helix_by_status[status]++;
}

cJSON *helix_status_json(void)
{
    cJSON *o = cJSON_CreateObject();
    for (int st = 100; st < 600; st++)
        if (M->helix_by_status[st]) {
            char k[16];
            snprintf(k, sizeof k, "%d", st);
            cJSON_AddNumberToObject(o, k, (double)M->helix_by_status[st]);
        }
    return o;
}

/* Create Subscription for a client's app token, as another process of that app would
 * (control API: not counted, no rate limit). 0 and the id, or the HTTP status and
 * Twitch's message. */
int mock_sub_create(const char *client_id, const cJSON *item, char *id_out, size_t idlen, char *msg,
                    size_t msglen)
{
    token_t tk;
    memset(&tk, 0, sizeof tk);
    snprintf(tk.client_id, sizeof tk.client_id, "%s", client_id);
    hreq_t tmp;
    memset(&tmp, 0, sizeof tmp);
    h_sub_create(&tmp, &tk, (cJSON *)item);
    cJSON *o = tmp.resp.len ? cJSON_ParseWithLength(tmp.resp.p, tmp.resp.len) : NULL;
    int st = tmp.status;
    buf_free(&tmp.resp);
    if (st == 202) {
        const cJSON *d = o ? cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "data"), 0) : NULL;
        snprintf(id_out, idlen, "%s", d ? jstr(d, "id") : "");
        cJSON_Delete(o);
        return 0;
    }
    snprintf(msg, msglen, "%s", o && jstr(o, "message") ? jstr(o, "message") : "rejected");
    cJSON_Delete(o);
    return st ? st : 500;
}

/* Deletes a subscription of any client; 0, or 404 */
int mock_sub_delete(const char *id)
{
    for (sub_t **pp = &M->subs; *pp; pp = &(*pp)->next) {
        sub_t *s = *pp;
        if (!strcmp(s->id, id)) {
            *pp = s->next;
            free_sub(s);
            return 0;
        }
    }
    return 404;
}

static void helix_route(hreq_t *r);

static void helix(hreq_t *r)
{
    helix_route(r);
    if (!r->deferred) /* a kept Update Conduit Shards request is counted when answered */
        count_helix_status(r->status);
}

static void helix_route(hreq_t *r)
{
    const char *sub = r->path + 6; /* after "/helix" */
    count_route(r->method, sub);
    client_t *hdr_client = r->client_id_hdr[0] ? find_client(r->client_id_hdr) : NULL;
    hfault_t *f = take_fault(r->path);
    if (f) {
        int st = f->status, no_headers = f->no_headers;
        char custom[256] = "";
        if (f->message)
            snprintf(custom, sizeof custom, "%s", f->message);
        if (--f->count <= 0) {
            for (hfault_t **pp = &M->hfaults; *pp; pp = &(*pp)->next)
                if (*pp == f) {
                    *pp = f->next;
                    break;
                }
            free(f->path);
            free(f->message);
            free(f);
        }
        if (!no_headers)
            rl_headers(r, client_bucket(hdr_client), st == 429);
        const char *msg = st == 401   ? "Invalid OAuth token"
                          : st == 429 ? "Too Many Requests"
                                      : "injected fault";
        herr(r, st, custom[0] ? custom : msg);
        return;
    }
    const char *tok = NULL;
    if (!r->auth_hdr[0]) {
        rl_headers(r, client_bucket(hdr_client), 0);
        herr(r, 401, "OAuth token is missing");
        return;
    }
    if (strncasecmp(r->auth_hdr, "Bearer ", 7)) {
        rl_headers(r, client_bucket(hdr_client), 0);
        herr(r, 401, "Invalid OAuth token");
        return;
    }
    tok = r->auth_hdr + 7;
    token_t *t = find_token(tok);
    if (!token_valid(t)) {
        rl_headers(r, client_bucket(hdr_client), 0);
        herr(r, 401, "Invalid OAuth token");
        return;
    }
    if (!r->client_id_hdr[0]) {
        rl_headers(r, client_bucket(find_client(t->client_id)), 0);
        herr(r, 401, "Client-Id header is missing");
        return;
    }
    if (strcmp(r->client_id_hdr, t->client_id)) {
        rl_headers(r, client_bucket(hdr_client), 0);
        herr(r, 401, "Client ID and OAuth token do not match");
        return;
    }
    bucket_ref k = client_bucket(find_client(t->client_id));
    if (t->user) {
        k.level = &t->user->bucket;
        k.us = &t->user->bucket_us;
    }
    if (k.level) {
        bucket_refill(k);
        if (*k.level < 1) {
            rl_headers(r, k, 0);
            herr(r, 429, "Too Many Requests");
            return;
        }
        *k.level -= 1;
    }
    rl_headers(r, k, 0);
    cJSON *body = NULL;
    if (r->body.len) {
        body = cJSON_ParseWithLength(r->body.p, r->body.len);
        if (!body) {
            herr(r, 400, "Malformed JSON body");
            return;
        }
    }
    const char *cid = t->client_id;
    if (t->user && !strncmp(sub, "/eventsub/conduits", 18) &&
        (!sub[18] || !strcmp(sub + 18, "/shards")))
        herr(r, 401, "Must provide valid app token."); /* conduits are an app's */
    else if (!strcmp(sub, "/eventsub/conduits"))
        h_conduits(r, cid, body);
    else if (!strcmp(sub, "/eventsub/conduits/shards"))
        h_shards(r, cid, body);
    else if (!strcmp(sub, "/eventsub/subscriptions")) {
        if (!strcmp(r->method, "POST"))
            h_sub_create(r, t, body);
        else if (!strcmp(r->method, "GET"))
            h_sub_list(r, t);
        else if (!strcmp(r->method, "DELETE"))
            h_sub_delete(r, t);
        else
            herr(r, 405, "method not allowed");
    } else
        herr(r, 404, "Not Found");
    cJSON_Delete(body);
}

void handle_request(hreq_t *r)
{
    housekeeping();
    if (!strncmp(r->path, "/helix/", 7)) {
        helix(r);
        return;
    }
    if (!strcmp(r->path, "/oauth2/token")) {
        if (strcmp(r->method, "POST"))
            json_error(r, 405, NULL, "method not allowed");
        else
            oauth_token(r);
        return;
    }
    if (!strcmp(r->path, "/oauth2/validate")) {
        oauth_validate(r);
        return;
    }
    if (!strcmp(r->path, "/oauth2/revoke")) {
        oauth_revoke(r);
        return;
    }
    if (!strncmp(r->path, "/_mock", 6) && (r->path[6] == '/' || r->path[6] == 0)) {
        cJSON *body = NULL;
        if (r->body.len) {
            body = cJSON_ParseWithLength(r->body.p, r->body.len);
            if (!body) {
                json_error(r, 400, "Bad Request", "Malformed JSON body");
                return;
            }
        }
        handle_control(r, r->path + 6, body);
        cJSON_Delete(body);
        return;
    }
    json_error(r, 404, "Not Found", "Not Found");
}
