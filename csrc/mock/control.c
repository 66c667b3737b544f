/* The control API under /_mock: triggers, streams, blasts, sessions, faults,
 * clock, state and ledger. */
#include "mock.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PRODUCE 5000000ull

static void cerr(hreq_t *r, int status, const char *msg)
{
    json_error(r, status, status == 404 ? "Not Found" : "Bad Request", msg);
}

static void ok_obj(hreq_t *r, cJSON *o) { set_json(r, 200, o ? o : cJSON_CreateObject()); }

/* The channel a subscription listens to: to_broadcaster for raids, else broadcaster. */
const char *match_value(sub_t *s)
{
    const char *v = NULL;
    if (!strcmp(s->type, "channel.raid")) {
        v = jstr(s->condition, "to_broadcaster_user_id");
        if (!v || !*v)
            v = jstr(s->condition, "from_broadcaster_user_id");
    } else
        v = jstr(s->condition, "broadcaster_user_id");
    return v && *v ? v : NULL;
}

static int sub_matches(sub_t *s, const char *type, const char *version, const char *channel)
{
    if (strcmp(s->status, "enabled") || strcmp(s->type, type))
        return 0;
    if (version && strcmp(s->version, version))
        return 0;
    const char *mv = match_value(s);
    return !mv || !channel || !strcmp(mv, channel);
}

/* channels: array of strings or numbers. Returns a new array of strings or NULL. */
static cJSON *parse_channels(const cJSON *body, const char **err)
{
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(body, "channels");
    cJSON *out = cJSON_CreateArray();
    if (!ch) {
        const char *one = jstr(body, "channel");
        if (one)
            cJSON_AddItemToArray(out, cJSON_CreateString(one));
        return out;
    }
    if (!cJSON_IsArray(ch)) {
        *err = "channels must be an array of strings";
        cJSON_Delete(out);
        return NULL;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, ch)
    {
        char b[64];
        if (cJSON_IsString(it))
            cJSON_AddItemToArray(out, cJSON_CreateString(it->valuestring));
        else if (cJSON_IsNumber(it) && it->valuedouble == floor(it->valuedouble)) {
            snprintf(b, sizeof b, "%.0f", it->valuedouble);
            cJSON_AddItemToArray(out, cJSON_CreateString(b));
        } else {
            *err = "channels must be an array of strings";
            cJSON_Delete(out);
            return NULL;
        }
    }
    return out;
}

static int get_count(const cJSON *body, const char *k, uint64_t def, uint64_t *out,
                     const char **err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, k);
    if (!v) {
        *out = def;
        return 1;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > 1e9 ||
        v->valuedouble != floor(v->valuedouble)) {
        *err = "count must be a positive integer";
        return 0;
    }
    *out = (uint64_t)v->valuedouble;
    return 1;
}

/* One trigger for one channel: a notification per matching subscription. */
static uint64_t trigger_one(const char *type, const char *version, const char *channel,
                            uint64_t n, const cJSON *merge, cJSON *ids)
{
    uint64_t produced = 0;
    /* snapshot matching subscriptions: producing can change statuses */
    size_t cap = 16, cnt = 0;
    sub_t **list = xmalloc(cap * sizeof *list);
    for (sub_t *s = M->subs; s; s = s->next)
        if (sub_matches(s, type, version, channel)) {
            if (cnt == cap) {
                cap *= 2;
                sub_t **nl = realloc(list, cap * sizeof *nl);
                if (!nl)
                    abort();
                list = nl;
            }
            list[cnt++] = s;
        }
    for (size_t i = 0; i < cnt; i++) {
        sub_t *s = list[i];
        const char *ch = channel ? channel : match_value(s);
        cJSON *ev = gen_event_for(type, s->version, ch, n, merge);
        char mid[ID_LEN];
        produce(s, ch, ev, 0, NULL, mid);
        cJSON_Delete(ev);
        if (ids)
            cJSON_AddItemToArray(ids, cJSON_CreateString(mid));
        produced++;
    }
    free(list);
    return produced;
}

static void c_trigger(hreq_t *r, cJSON *body)
{
    const char *err = NULL;
    const char *type = jstr(body, "type");
    if (!type || !*type) {
        cerr(r, 400, "type is required");
        return;
    }
    const cJSON *jv = cJSON_GetObjectItemCaseSensitive(body, "version");
    if (jv && !cJSON_IsString(jv)) {
        cerr(r, 400, "version must be a string");
        return;
    }
    const char *version = jv ? jv->valuestring : NULL;
    uint64_t count;
    if (!get_count(body, "count", 1, &count, &err)) {
        cerr(r, 400, err);
        return;
    }
    const cJSON *merge = cJSON_GetObjectItemCaseSensitive(body, "event");
    if (merge && !cJSON_IsObject(merge)) {
        cerr(r, 400, "event must be an object");
        return;
    }
    cJSON *chans = parse_channels(body, &err);
    if (!chans) {
        cerr(r, 400, err);
        return;
    }
    int nch = cJSON_GetArraySize(chans);
    if ((uint64_t)(nch ? nch : 1) * count > MAX_PRODUCE) {
        cJSON_Delete(chans);
        cerr(r, 400, "too many notifications for one trigger; use /_mock/blast");
        return;
    }
    cJSON *ids = cJSON_CreateArray();
    uint64_t produced = 0;
    for (uint64_t k = 0; k < count; k++) {
        if (nch == 0)
            produced += trigger_one(type, version, NULL, k, merge, ids);
        else {
            const cJSON *c;
            cJSON_ArrayForEach(c, chans)
            produced += trigger_one(type, version, c->valuestring, k, merge, ids);
        }
    }
    cJSON_Delete(chans);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "produced", (double)produced);
    if (produced <= 10000)
        cJSON_AddItemToObject(o, "message_ids", ids);
    else
        cJSON_Delete(ids);
    ok_obj(r, o);
}

/* ---------------- streams ---------------- */

static void stream_free(stream_t *s)
{
    lws_sul_cancel(&s->sul);
    free(s->type);
    free(s->version);
    cJSON_Delete(s->channels);
    cJSON_Delete(s->event);
    free(s);
}

static void stream_cb(lws_sorted_usec_list_t *sul)
{
    stream_t *st = lws_container_of(sul, stream_t, sul);
    if (!st->active)
        return;
    double el = (double)(mono_us() - st->start_us) / 1e6;
    uint64_t due = (uint64_t)(el * st->rate);
    if (due > st->total)
        due = st->total;
    int nch = cJSON_GetArraySize(st->channels);
    while (st->emitted < due) {
        const char *ch = NULL;
        if (nch) {
            cJSON *c = cJSON_GetArrayItem(st->channels, (int)(st->emitted % (uint64_t)nch));
            ch = c->valuestring;
        }
        trigger_one(st->type, st->version, ch, st->emitted, st->event, NULL);
        st->emitted++;
    }
    if (st->emitted >= st->total) {
        st->active = 0;
        return;
    }
    double next = (double)(st->emitted + 1) / st->rate - el;
    if (next < 0.001)
        next = 0.001;
    lws_sul_schedule(M->ctx, 0, &st->sul, stream_cb, (lws_usec_t)(next * 1e6));
}

static void c_stream(hreq_t *r, cJSON *body)
{
    const char *err = NULL;
    const char *type = jstr(body, "type");
    if (!type || !*type) {
        cerr(r, 400, "type is required");
        return;
    }
    const cJSON *rate = cJSON_GetObjectItemCaseSensitive(body, "rate");
    if (!cJSON_IsNumber(rate) || rate->valuedouble <= 0 || rate->valuedouble > 1e6) {
        cerr(r, 400, "rate must be a positive number (per second)");
        return;
    }
    uint64_t count;
    if (!get_count(body, "count", 1000000000ull, &count, &err)) {
        cerr(r, 400, err);
        return;
    }
    const cJSON *merge = cJSON_GetObjectItemCaseSensitive(body, "event");
    if (merge && !cJSON_IsObject(merge)) {
        cerr(r, 400, "event must be an object");
        return;
    }
    cJSON *chans = parse_channels(body, &err);
    if (!chans) {
        cerr(r, 400, err);
        return;
    }
    stream_t *st = xcalloc(1, sizeof *st);
    gen_uuid(st->id);
    st->type = xstrdup(type);
    st->version = jstr(body, "version") ? xstrdup(jstr(body, "version")) : NULL;
    st->channels = chans;
    st->event = merge ? cJSON_Duplicate(merge, 1) : NULL;
    st->rate = rate->valuedouble;
    st->total = count;
    st->start_us = mono_us();
    st->active = 1;
    st->next = M->streams;
    M->streams = st;
    lws_sul_schedule(M->ctx, 0, &st->sul, stream_cb, (lws_usec_t)(1e6 / st->rate));
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "stream_id", st->id);
    ok_obj(r, o);
}

void streams_stop_all(void)
{
    while (M->streams) {
        stream_t *s = M->streams;
        M->streams = s->next;
        stream_free(s);
    }
}

static void c_stream_stop(hreq_t *r, cJSON *body)
{
    const char *id = body ? jstr(body, "stream_id") : NULL;
    int stopped = 0;
    for (stream_t **pp = &M->streams; *pp;) {
        stream_t *s = *pp;
        if (!id || !strcmp(s->id, id)) {
            *pp = s->next;
            if (s->active)
                stopped++;
            stream_free(s);
        } else
            pp = &s->next;
    }
    if (id && !stopped) {
        cerr(r, 404, "stream not found");
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "stopped", stopped);
    ok_obj(r, o);
}

static void c_stream_get(hreq_t *r, const char *id)
{
    for (stream_t *s = M->streams; s; s = s->next)
        if (!strcmp(s->id, id)) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "stream_id", s->id);
            cJSON_AddNumberToObject(o, "emitted", (double)s->emitted);
            cJSON_AddNumberToObject(o, "total", (double)s->total);
            cJSON_AddBoolToObject(o, "done", !s->active);
            ok_obj(r, o);
            return;
        }
    cerr(r, 404, "stream not found");
}

/* ---------------- blasts ---------------- */

static void blast_release(blast_t *b)
{
    if (b->refs > 0 || !b->routes)
        return;
    for (int i = 0; i < b->nroutes; i++)
        free(b->routes[i].tmpl);
    free(b->routes);
    b->routes = NULL;
}

static void blast_check(blast_t *b)
{
    if (!b->done && b->sent + b->dropped >= b->total) {
        b->done = 1;
        b->end_us = mono_us();
    }
}

void blast_delivered(blast_t *b, uint64_t n)
{
    b->sent += n;
    M->blast_delivered += n;
    blast_check(b);
}

void blast_dropped(blast_t *b, uint64_t n)
{
    b->dropped += n;
    M->blast_dropped += n;
    blast_check(b);
}

void blasts_free_all(void)
{
    while (M->blasts) {
        blast_t *b = M->blasts;
        M->blasts = b->next;
        b->refs = 0;
        blast_release(b);
        free(b);
    }
}

static void c_blast(hreq_t *r, cJSON *body)
{
    const char *err = NULL;
    const char *type = jstr(body, "type");
    if (!type || !*type) {
        cerr(r, 400, "type is required");
        return;
    }
    uint64_t count;
    if (!get_count(body, "count", 1, &count, &err)) {
        cerr(r, 400, err);
        return;
    }
    const cJSON *merge = cJSON_GetObjectItemCaseSensitive(body, "event");
    if (merge && !cJSON_IsObject(merge)) {
        cerr(r, 400, "event must be an object");
        return;
    }
    /* variants: one template per variant and route, merged over `event` (then over the
     * generated payload); consecutive frames of a connection cycle through them */
    const cJSON *variants = cJSON_GetObjectItemCaseSensitive(body, "variants");
    int nvar = 1;
    if (variants) {
        const cJSON *v;
        int okv = cJSON_IsArray(variants) && cJSON_GetArraySize(variants) > 0 && cJSON_GetArraySize(variants) <= 64;
        cJSON_ArrayForEach(v, variants) okv = okv && cJSON_IsObject(v);
        if (!okv) {
            cerr(r, 400, "variants must be an array of 1 to 64 objects");
            return;
        }
        nvar = cJSON_GetArraySize(variants);
    }
    cJSON *chans = parse_channels(body, &err);
    if (!chans) {
        cerr(r, 400, err);
        return;
    }
    const char *version = jstr(body, "version");
    blast_t *b = xcalloc(1, sizeof *b);
    gen_uuid(b->id);
    b->start_us = mono_us();
    int cap = 16;
    b->routes = xcalloc((size_t)cap, sizeof *b->routes);
    uint64_t dropped = 0;
    int nch = cJSON_GetArraySize(chans);
    for (int ci = 0; ci < (nch ? nch : 1); ci++) {
        const char *ch = nch ? cJSON_GetArrayItem(chans, ci)->valuestring : NULL;
        for (sub_t *s = M->subs; s; s = s->next) {
            if (!sub_matches(s, type, version, ch))
                continue;
            const char *chv = ch ? ch : match_value(s);
            /* resolve the target once: conduit routing or the plain websocket session */
            conn_t *target = NULL;
            if (s->method == M_CONDUIT) {
                conduit_t *c = find_conduit(s->conduit_id);
                if (c) {
                    char kb[256];
                    const char *key = routing_value(s, kb, sizeof kb);
                    int whs;
                    target = route_conduit(c, key ? key : s->id, NULL, &whs);
                }
            } else if (s->method == T_WS) {
                session_t *ss = find_session(s->session_id);
                if (session_live(ss))
                    target = ss->cur;
            }
            if (!target) {
                dropped += count * (uint64_t)nvar;
                continue;
            }
            for (int vi = 0; vi < nvar; vi++) {
                if (b->nroutes == cap) {
                    cap *= 2;
                    broute_t *nr = realloc(b->routes, (size_t)cap * sizeof *nr);
                    if (!nr)
                        abort();
                    b->routes = nr;
                }
                broute_t *rt = &b->routes[b->nroutes++];
                memset(rt, 0, sizeof *rt);
                rt->target = target;
                cJSON *vmerge = NULL;
                if (variants) { /* the variant over `event` */
                    vmerge = merge ? cJSON_Duplicate(merge, 1) : cJSON_CreateObject();
                    for (const cJSON *it = cJSON_GetArrayItem(variants, vi)->child; it; it = it->next) {
                        cJSON_DeleteItemFromObjectCaseSensitive(vmerge, it->string);
                        cJSON_AddItemToObject(vmerge, it->string, cJSON_Duplicate(it, 1));
                    }
                }
                cJSON *ev = gen_event_for(type, s->version, chv, 0, vmerge ? vmerge : merge);
                cJSON_Delete(vmerge);
                cJSON *sj = sub_json(s);
                char *evt = cJSON_PrintUnformatted(ev);
                char *sjt = cJSON_PrintUnformatted(sj);
                cJSON_Delete(ev);
                cJSON_Delete(sj);
                buf_t m = {0};
                buf_adds(&m, "{\"metadata\":{\"message_id\":\"");
                rt->id_off = m.len;
                buf_adds(&m, "00000000-0000-4000-8000-000000000000\",\"message_type\":\"notification\","
                             "\"message_timestamp\":\"");
                rt->ts_off = m.len;
                buf_adds(&m, "2000-01-01T00:00:00.000000000Z");
                buf_printf(&m, "\",\"subscription_type\":\"%s\",\"subscription_version\":\"%s\"},"
                               "\"payload\":{\"subscription\":",
                           s->type, s->version);
                buf_adds(&m, sjt);
                buf_adds(&m, ",\"event\":");
                buf_adds(&m, evt);
                buf_adds(&m, "}}");
                free(evt);
                free(sjt);
                rt->tmpl = m.p;
                rt->len = m.len;
            }
        }
    }
    cJSON_Delete(chans);
    b->total = count * (uint64_t)b->nroutes + dropped;
    /* one generator per target connection */
    for (int i = 0; i < b->nroutes; i++) {
        conn_t *c = b->routes[i].target;
        bgen_t *g = NULL;
        for (bgen_t *x = c->gens; x; x = x->next)
            if (x->b == b)
                g = x;
        if (!g) {
            g = xcalloc(1, sizeof *g);
            g->b = b;
            g->routes = xcalloc((size_t)b->nroutes, sizeof(int));
            bgen_t **pp = &c->gens;
            while (*pp)
                pp = &(*pp)->next;
            *pp = g;
            b->refs++;
            if (c->wsi)
                lws_callback_on_writable(c->wsi);
        }
        g->routes[g->nroutes++] = i;
        g->remaining += count;
    }
    b->next = M->blasts;
    M->blasts = b;
    if (dropped)
        blast_dropped(b, dropped);
    blast_check(b);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "blast_id", b->id);
    cJSON_AddNumberToObject(o, "total", (double)b->total);
    ok_obj(r, o);
}

static void c_blast_get(hreq_t *r, const char *id)
{
    for (blast_t *b = M->blasts; b; b = b->next)
        if (!strcmp(b->id, id)) {
            if (b->done)
                blast_release(b);
            double secs = (double)((b->done ? b->end_us : mono_us()) - b->start_us) / 1e6;
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "blast_id", b->id);
            cJSON_AddNumberToObject(o, "sent", (double)b->sent);
            cJSON_AddNumberToObject(o, "dropped", (double)b->dropped);
            cJSON_AddNumberToObject(o, "total", (double)b->total);
            cJSON_AddBoolToObject(o, "done", b->done);
            cJSON_AddNumberToObject(o, "seconds", secs);
            cJSON_AddNumberToObject(o, "rate", secs > 0 ? floor((double)b->sent / secs) : 0);
            ok_obj(r, o);
            return;
        }
    cerr(r, 404, "blast not found");
}

/* ---------------- sessions ---------------- */

static cJSON *session_obj(session_t *s)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", s->id);
    cJSON_AddBoolToObject(o, "connected", s->connected);
    cJSON *sh = cJSON_AddArrayToObject(o, "shards");
    for (conduit_t *c = M->conduits; c; c = c->next)
        for (int i = 0; i < c->shard_count; i++)
            if (c->shards[i].method == T_WS && !strcmp(c->shards[i].session_id, s->id) &&
                !strcmp(c->shards[i].status, "enabled")) {
                cJSON *x = cJSON_CreateObject();
                cJSON_AddStringToObject(x, "conduit_id", c->id);
                char sid[16];
                snprintf(sid, sizeof sid, "%d", i);
                cJSON_AddStringToObject(x, "shard", sid);
                cJSON_AddItemToArray(sh, x);
            }
    cJSON_AddNumberToObject(o, "keepalive", s->keepalive);
    cJSON_AddBoolToObject(o, "reconnecting", s->reconnecting || s->old != NULL || s->pending != NULL);
    cJSON_AddBoolToObject(o, "welcome_held", s->pending != NULL); /* reconnect target connected, no welcome yet */
    cJSON_AddBoolToObject(o, "awaiting_reconnect", s->reconnecting); /* reconnect_url not yet used */
    cJSON_AddStringToObject(o, "connected_at", s->connected_at);
    if (s->disconnected_at[0])
        cJSON_AddStringToObject(o, "disconnected_at", s->disconnected_at);
    cJSON_AddNumberToObject(o, "queued", s->cur ? (double)s->cur->qlen : 0);
    if (s->closed_by) {
        cJSON_AddStringToObject(o, "closed_by", s->closed_by == CLOSED_BY_CLIENT ? "client" : "server");
        if (s->close_code)
            cJSON_AddNumberToObject(o, "close_code", s->close_code);
        else
            cJSON_AddNullToObject(o, "close_code");
        cJSON_AddBoolToObject(o, "clean", s->clean);
    } else {
        cJSON_AddNullToObject(o, "closed_by");
        cJSON_AddNullToObject(o, "close_code");
        cJSON_AddNullToObject(o, "clean");
    }
    return o;
}

static cJSON *sessions_arr(void)
{
    /* oldest first */
    cJSON *a = cJSON_CreateArray();
    size_t n = 0;
    for (session_t *s = M->sessions; s; s = s->next)
        n++;
    session_t **v = xmalloc((n ? n : 1) * sizeof *v);
    size_t i = 0;
    for (session_t *s = M->sessions; s; s = s->next)
        v[i++] = s;
    while (i > 0)
        cJSON_AddItemToArray(a, session_obj(v[--i]));
    free(v);
    return a;
}

static void c_session_action(hreq_t *r, const char *rest, cJSON *body)
{
    char id[ID_LEN + 8];
    const char *slash = strchr(rest, '/');
    if (!slash || (size_t)(slash - rest) >= sizeof id) {
        cerr(r, 404, "unknown control path");
        return;
    }
    memcpy(id, rest, (size_t)(slash - rest));
    id[slash - rest] = 0;
    const char *action = slash + 1;
    session_t *s = find_session(id);
    if (!s) {
        cerr(r, 404, "session not found");
        return;
    }
    if (!s->cur) {
        cerr(r, 400, "session is not connected");
        return;
    }
    if (!strcmp(action, "close")) {
        int code = 4000;
        const cJSON *jc = body ? cJSON_GetObjectItemCaseSensitive(body, "code") : NULL;
        if (jc) {
            if (!cJSON_IsNumber(jc)) {
                cerr(r, 400, "code must be a number");
                return;
            }
            code = (int)jc->valuedouble;
        }
        if (!(code == 1000 || (code >= 4000 && code <= 4007))) {
            cerr(r, 400, "code must be 1000 or 4000..4007");
            return;
        }
        const char *reason = body ? jstr(body, "reason") : NULL;
        session_close(s, code, reason);
    } else if (!strcmp(action, "reconnect")) {
        if (s->reconnecting || s->pending) {
            cerr(r, 400, "session is already reconnecting");
            return;
        }
        const cJSON *jd = body ? cJSON_GetObjectItemCaseSensitive(body, "welcome_delay_s") : NULL;
        double delay = 0;
        if (jd) {
            if (!cJSON_IsNumber(jd) || !(jd->valuedouble >= 0 && jd->valuedouble <= 600)) {
                cerr(r, 400, "welcome_delay_s must be a number 0..600");
                return;
            }
            delay = jd->valuedouble;
        }
        s->rc_welcome_delay_s = delay;
        session_reconnect(s);
        cJSON *o = cJSON_CreateObject();
        char url[160];
        session_reconnect_url(s, url, sizeof url);
        cJSON_AddStringToObject(o, "reconnect_url", url);
        ok_obj(r, o);
        return;
    } else if (!strcmp(action, "drop")) {
        session_drop(s);
    } else if (!strcmp(action, "malformed")) {
        session_malformed(s);
    } else if (!strcmp(action, "pause")) {
        cJSON *jm = body ? cJSON_GetObjectItemCaseSensitive(body, "ms") : NULL;
        double ms = cJSON_IsNumber(jm) ? jm->valuedouble : 1000;
        if (!(ms >= 1 && ms <= 600000)) {
            cerr(r, 400, "ms must be 1..600000");
            return;
        }
        session_pause(s, (int64_t)ms);
    } else if (!strcmp(action, "oversized")) {
        cJSON *jb = body ? cJSON_GetObjectItemCaseSensitive(body, "bytes") : NULL;
        double bytes = cJSON_IsNumber(jb) ? jb->valuedouble : 2097152;
        if (!(bytes >= 64 && bytes <= 67108864)) {
            cerr(r, 400, "bytes must be 64..67108864");
            return;
        }
        session_oversized(s, (size_t)bytes);
    } else {
        cerr(r, 404, "unknown session action");
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 1);
    ok_obj(r, o);
}

/* ---------------- misc ---------------- */

/* GET /helix_calls: the Helix counters of /state without the rest */
static void c_helix_calls(hreq_t *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "total", (double)M->helix_total);
    cJSON *br = cJSON_AddObjectToObject(o, "by_route");
    for (route_ctr_t *rc = M->routes; rc; rc = rc->next)
        cJSON_AddNumberToObject(br, rc->name, (double)rc->n);
    cJSON_AddItemToObject(o, "by_status", helix_status_json());
    ok_obj(r, o);
}

/* POST /subscriptions {"client_id"?, "subscriptions":[{type, version?, condition,
 * transport}]}: Create Subscription for each, with the app token of that client (default
 * the first), as another process would; no Helix counter, no rate limit.
 * -> {"ids":[id or null], "errors":[{"index","status","message"}]} */
static void c_sub_create(hreq_t *r, cJSON *body)
{
    const cJSON *list = body ? cJSON_GetObjectItemCaseSensitive(body, "subscriptions") : NULL;
    if (!cJSON_IsArray(list)) {
        cerr(r, 400, "subscriptions must be an array");
        return;
    }
    const char *cid = jstr(body, "client_id");
    if (!cid)
        cid = M->clients[0].id;
    int known = 0;
    for (int i = 0; i < M->nclients; i++)
        known |= !strcmp(M->clients[i].id, cid);
    if (!known) {
        cerr(r, 404, "unknown client_id");
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *ids = cJSON_AddArrayToObject(o, "ids");
    cJSON *errs = cJSON_AddArrayToObject(o, "errors");
    int i = 0;
    for (const cJSON *it = list->child; it; it = it->next, i++) {
        char id[ID_LEN] = "", msg[256] = "";
        cJSON *item = cJSON_Duplicate(it, 1);
        if (cJSON_IsObject(item) && !cJSON_GetObjectItemCaseSensitive(item, "version"))
            cJSON_AddStringToObject(item, "version", "1");
        int st = mock_sub_create(cid, item, id, sizeof id, msg, sizeof msg);
        cJSON_Delete(item);
        if (st == 0) {
            cJSON_AddItemToArray(ids, cJSON_CreateString(id));
        } else {
            cJSON_AddItemToArray(ids, cJSON_CreateNull());
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "index", i);
            cJSON_AddNumberToObject(e, "status", st);
            cJSON_AddStringToObject(e, "message", msg);
            cJSON_AddItemToArray(errs, e);
        }
    }
    ok_obj(r, o);
}

/* POST /ratelimit {"client_id"?, "level"?}: the client's app-token bucket set to level
 * points (default: full) -> {"client_id","level","limit"} */
static void c_ratelimit(hreq_t *r, cJSON *body)
{
    const char *cid = body ? jstr(body, "client_id") : NULL;
    if (!cid)
        cid = M->clients[0].id;
    const cJSON *lv = body ? cJSON_GetObjectItemCaseSensitive(body, "level") : NULL;
    if (lv && (!cJSON_IsNumber(lv) || lv->valuedouble < 0)) {
        cerr(r, 400, "level must be a non-negative number");
        return;
    }
    double level = lv ? lv->valuedouble : -1;
    int lim = mock_bucket_set(cid, level);
    if (lim < 0) {
        cerr(r, 404, "unknown client_id");
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "client_id", cid);
    cJSON_AddNumberToObject(o, "level", level < 0 || level > lim ? lim : level);
    cJSON_AddNumberToObject(o, "limit", lim);
    ok_obj(r, o);
}

/* POST /subscriptions/delete {"ids":[...]}: deletes them (any client), as another process
 * would -> {"deleted":N,"not_found":[ids]} */
static void c_sub_delete(hreq_t *r, cJSON *body)
{
    const cJSON *list = body ? cJSON_GetObjectItemCaseSensitive(body, "ids") : NULL;
    if (!cJSON_IsArray(list)) {
        cerr(r, 400, "ids must be an array of strings");
        return;
    }
    for (const cJSON *it = list->child; it; it = it->next)
        if (!cJSON_IsString(it)) {
            cerr(r, 400, "ids must be an array of strings");
            return;
        }
    cJSON *o = cJSON_CreateObject();
    int n = 0;
    cJSON *nf = cJSON_CreateArray();
    for (const cJSON *it = list->child; it; it = it->next) {
        if (mock_sub_delete(it->valuestring) == 0)
            n++;
        else
            cJSON_AddItemToArray(nf, cJSON_CreateString(it->valuestring));
    }
    cJSON_AddNumberToObject(o, "deleted", n);
    cJSON_AddItemToObject(o, "not_found", nf);
    ok_obj(r, o);
}

static void c_revoke(hreq_t *r, const char *rest, cJSON *body)
{
    char id[ID_LEN + 8];
    const char *slash = strchr(rest, '/');
    if (!slash || strcmp(slash, "/revoke") || (size_t)(slash - rest) >= sizeof id) {
        cerr(r, 404, "unknown control path");
        return;
    }
    memcpy(id, rest, (size_t)(slash - rest));
    id[slash - rest] = 0;
    sub_t *s = find_sub(id);
    if (!s) {
        cerr(r, 404, "subscription not found");
        return;
    }
    const cJSON *js = body ? cJSON_GetObjectItemCaseSensitive(body, "status") : NULL;
    if (js && (!cJSON_IsString(js) || !*js->valuestring || strlen(js->valuestring) >= 48)) {
        cerr(r, 400, "status must be a non-empty string");
        return;
    }
    const char *st = js ? js->valuestring : "authorization_revoked";
    char mid[ID_LEN];
    uint64_t seq = produce(s, match_value(s), NULL, 1, st, mid);
    snprintf(s->status, sizeof s->status, "%s", st);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "message_id", mid);
    cJSON_AddNumberToObject(o, "seq", (double)seq);
    ok_obj(r, o);
}

/* ---------------- Update Conduit Shards faults ---------------- */

static void sp_unlink(spatch_t *sp)
{
    for (spatch_t **pp = &M->sp_list; *pp; pp = &(*pp)->next)
        if (*pp == sp) {
            *pp = sp->next;
            break;
        }
    sp->next = NULL;
}

/* Applies a kept request now and answers it if its client is still connected. */
static void sp_apply(spatch_t *sp)
{
    sp_unlink(sp);
    if (M->ctx)
        lws_sul_cancel(&sp->sul);
    hreq_t tmp;
    memset(&tmp, 0, sizeof tmp);
    shards_patch_answer(&tmp, sp->client_id, sp->conduit_id, sp->body);
    hreq_t *r = sp->req;
    if (r) {
        r->held = NULL;
        r->status = tmp.status;
        count_helix_status(tmp.status);
        buf_t t = r->resp;
        r->resp = tmp.resp;
        tmp.resp = t;
        r->ready = 1;
        lws_callback_on_writable(r->wsi);
    }
    buf_free(&tmp.resp);
    cJSON_Delete(sp->body);
    free(sp);
}

static void sp_due_cb(lws_sorted_usec_list_t *sul)
{
    sp_apply(lws_container_of(sul, spatch_t, sul));
}

/* Called for every Update Conduit Shards request that passed the syntax checks:
 * returns 1 when a hold or delay fault keeps it (the answer is written later). */
int shard_patch_intercept(hreq_t *r, const char *cid, const char *conduit_id, const cJSON *body)
{
    uint64_t id = ++M->sp_seq;
    int state;
    if (M->sp_hold > 0) {
        M->sp_hold--;
        state = SP_HELD;
    } else if (M->sp_delay_count > 0) {
        M->sp_delay_count--;
        state = SP_DELAYED;
    } else
        return 0;
    spatch_t *sp = xcalloc(1, sizeof *sp);
    sp->id = id;
    sp->state = state;
    snprintf(sp->client_id, sizeof sp->client_id, "%s", cid);
    snprintf(sp->conduit_id, sizeof sp->conduit_id, "%s", conduit_id);
    sp->body = cJSON_Duplicate(body, 1);
    sp->arrived_at = emu_now();
    sp->req = r;
    r->held = sp;
    r->deferred = 1;
    spatch_t **pp = &M->sp_list;
    while (*pp)
        pp = &(*pp)->next;
    *pp = sp;
    /* the answer may come long after the body: no lws timeout on the wait */
    lws_set_timeout(r->wsi, NO_PENDING_TIMEOUT, 0);
    if (state == SP_DELAYED)
        lws_sul_schedule(M->ctx, 0, &sp->sul, sp_due_cb, (lws_usec_t)M->sp_delay_ms * 1000);
    return 1;
}

/* The client's connection of a kept request is gone: it is still applied later. */
void shard_patch_detach(hreq_t *r)
{
    if (r->held) {
        r->held->req = NULL;
        r->held = NULL;
    }
}

/* A reject fault naming this shard entry of a request being applied: fills the
 * error and uses up one count of the rule. */
int shard_patch_rejected(const char *conduit_id, const char *sid, const cJSON *transport,
                         char *message, size_t mlen, char *code, size_t clen)
{
    const char *ses = cJSON_IsObject(transport) ? jstr(transport, "session_id") : NULL;
    for (sreject_t **pp = &M->sp_rejects; *pp; pp = &(*pp)->next) {
        sreject_t *x = *pp;
        if (strcmp(x->shard, sid) || (x->conduit_id[0] && strcmp(x->conduit_id, conduit_id)) ||
            (x->session_id[0] && (!ses || strcmp(x->session_id, ses))))
            continue;
        snprintf(message, mlen, "%s", x->message);
        snprintf(code, clen, "%s", x->code);
        if (--x->count <= 0) {
            *pp = x->next;
            free(x->message);
            free(x->code);
            free(x);
        }
        return 1;
    }
    return 0;
}

static void sp_rejects_free(void)
{
    while (M->sp_rejects) {
        sreject_t *x = M->sp_rejects;
        M->sp_rejects = x->next;
        free(x->message);
        free(x->code);
        free(x);
    }
}

/* Applies every kept request now, in arrival order (before a reset). */
static void shard_patches_flush(void)
{
    while (M->sp_list)
        sp_apply(M->sp_list);
}

/* Forgets the knobs and any kept request without applying it (reset, exit). */
void shard_patches_free(void)
{
    while (M->sp_list) {
        spatch_t *sp = M->sp_list;
        M->sp_list = sp->next;
        if (M->ctx)
            lws_sul_cancel(&sp->sul);
        if (sp->req)
            sp->req->held = NULL;
        cJSON_Delete(sp->body);
        free(sp);
    }
    sp_rejects_free();
    M->sp_hold = M->sp_delay_ms = M->sp_delay_count = 0;
}

static int is_uint(const cJSON *v, double max)
{
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= max &&
           v->valuedouble == floor(v->valuedouble);
}

/* A shard id given as a string or a non-negative integer. */
static int shard_id_of(const cJSON *v, char *out, size_t n)
{
    if (cJSON_IsString(v) && v->valuestring[0] && strlen(v->valuestring) < n) {
        snprintf(out, n, "%s", v->valuestring);
        return 1;
    }
    if (is_uint(v, 1e9)) {
        snprintf(out, n, "%.0f", v->valuedouble);
        return 1;
    }
    return 0;
}

/* Checks the "shard_patch" fault object; returns an error message or NULL. */
static const char *shard_patch_fault_check(const cJSON *sp)
{
    if (!cJSON_IsObject(sp))
        return "shard_patch must be an object";
    const cJSON *hold = cJSON_GetObjectItemCaseSensitive(sp, "hold");
    const cJSON *dl = cJSON_GetObjectItemCaseSensitive(sp, "delay_ms");
    const cJSON *cn = cJSON_GetObjectItemCaseSensitive(sp, "count");
    const cJSON *rj = cJSON_GetObjectItemCaseSensitive(sp, "reject");
    if (hold && !is_uint(hold, 1e6))
        return "shard_patch.hold must be an integer in [0, 1000000]";
    if (dl && (!cJSON_IsNumber(dl) || dl->valuedouble < 0 || dl->valuedouble > 600000))
        return "shard_patch.delay_ms must be a number in [0, 600000]";
    if (cn && (!is_uint(cn, 1e6) || cn->valuedouble < 1))
        return "shard_patch.count must be an integer in [1, 1000000]";
    if (rj && !cJSON_IsArray(rj))
        return "shard_patch.reject must be an array";
    const cJSON *it;
    cJSON_ArrayForEach(it, rj)
    {
        char sid[64];
        const cJSON *ses = cJSON_GetObjectItemCaseSensitive(it, "session_id");
        const cJSON *cid = cJSON_GetObjectItemCaseSensitive(it, "conduit_id");
        const cJSON *msg = cJSON_GetObjectItemCaseSensitive(it, "message");
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(it, "code");
        const cJSON *rc = cJSON_GetObjectItemCaseSensitive(it, "count");
        if (!cJSON_IsObject(it) ||
            !shard_id_of(cJSON_GetObjectItemCaseSensitive(it, "shard"), sid, sizeof sid))
            return "each shard_patch.reject entry needs a shard id (string or integer)";
        if ((ses && (!cJSON_IsString(ses) || strlen(ses->valuestring) >= ID_LEN)) ||
            (cid && (!cJSON_IsString(cid) || strlen(cid->valuestring) >= 128)) ||
            (msg && (!cJSON_IsString(msg) || strlen(msg->valuestring) >= 256)) ||
            (code && (!cJSON_IsString(code) || strlen(code->valuestring) >= 64)))
            return "shard_patch.reject: session_id, conduit_id, message and code must be short strings";
        if (rc && (!is_uint(rc, 1e6) || rc->valuedouble < 1))
            return "shard_patch.reject: count must be an integer in [1, 1000000]";
    }
    return NULL;
}

static void shard_patch_fault_apply(const cJSON *sp)
{
    const cJSON *hold = cJSON_GetObjectItemCaseSensitive(sp, "hold");
    const cJSON *dl = cJSON_GetObjectItemCaseSensitive(sp, "delay_ms");
    const cJSON *cn = cJSON_GetObjectItemCaseSensitive(sp, "count");
    const cJSON *rj = cJSON_GetObjectItemCaseSensitive(sp, "reject");
    int count = cn ? (int)cn->valuedouble : 1;
    if (hold)
        M->sp_hold = (int)hold->valuedouble;
    if (dl) {
        M->sp_delay_ms = (int)dl->valuedouble;
        M->sp_delay_count = M->sp_delay_ms > 0 ? count : 0;
    }
    if (rj) {
        sp_rejects_free();
        sreject_t **tail = &M->sp_rejects;
        const cJSON *it;
        cJSON_ArrayForEach(it, rj)
        {
            sreject_t *x = xcalloc(1, sizeof *x);
            shard_id_of(cJSON_GetObjectItemCaseSensitive(it, "shard"), x->shard, sizeof x->shard);
            const char *v = jstr(it, "session_id");
            snprintf(x->session_id, sizeof x->session_id, "%s", v ? v : "");
            v = jstr(it, "conduit_id");
            snprintf(x->conduit_id, sizeof x->conduit_id, "%s", v ? v : "");
            v = jstr(it, "message");
            x->message = xstrdup(v ? v : "The websocket session is not connected.");
            v = jstr(it, "code");
            x->code = xstrdup(v ? v : "invalid_parameter");
            const cJSON *rc = cJSON_GetObjectItemCaseSensitive(it, "count");
            x->count = rc ? (int)rc->valuedouble : count;
            *tail = x;
            tail = &x->next;
        }
    }
}

static const char *sp_state_name(int st)
{
    return st == SP_HELD ? "held" : st == SP_DELAYED ? "delayed" : "releasing";
}

static void c_shard_patches(hreq_t *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *a = cJSON_AddArrayToObject(o, "requests");
    for (spatch_t *sp = M->sp_list; sp; sp = sp->next) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "id", (double)sp->id);
        cJSON_AddStringToObject(x, "state", sp_state_name(sp->state));
        cJSON_AddStringToObject(x, "conduit_id", sp->conduit_id);
        cJSON_AddStringToObject(x, "client_id", sp->client_id);
        cJSON_AddBoolToObject(x, "client_connected", sp->req != NULL);
        char ts[40];
        fmt_time(sp->arrived_at, ts);
        cJSON_AddStringToObject(x, "arrived_at", ts);
        cJSON *sh = cJSON_AddArrayToObject(x, "shards");
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(sp->body, "shards"))
        {
            cJSON *e = cJSON_CreateObject();
            char sid[64];
            if (shard_id_of(cJSON_GetObjectItemCaseSensitive(it, "id"), sid, sizeof sid))
                cJSON_AddStringToObject(e, "id", sid);
            else
                cJSON_AddNullToObject(e, "id");
            const cJSON *tr = cJSON_GetObjectItemCaseSensitive(it, "transport");
            const char *keys[] = {"method", "session_id", "callback"};
            for (int k = 0; k < 3; k++) {
                const char *v = cJSON_IsObject(tr) ? jstr(tr, keys[k]) : NULL;
                if (v)
                    cJSON_AddStringToObject(e, keys[k], v);
                else if (k == 0)
                    cJSON_AddNullToObject(e, keys[k]);
            }
            cJSON_AddItemToArray(sh, e);
        }
        cJSON_AddItemToArray(a, x);
    }
    cJSON_AddNumberToObject(o, "seen", (double)M->sp_seq);
    cJSON_AddNumberToObject(o, "hold", M->sp_hold);
    cJSON_AddNumberToObject(o, "delay_ms", M->sp_delay_ms);
    cJSON_AddNumberToObject(o, "delay_count", M->sp_delay_count);
    cJSON *rj = cJSON_AddArrayToObject(o, "reject");
    for (sreject_t *x = M->sp_rejects; x; x = x->next) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "shard", x->shard);
        if (x->session_id[0])
            cJSON_AddStringToObject(e, "session_id", x->session_id);
        else
            cJSON_AddNullToObject(e, "session_id");
        if (x->conduit_id[0])
            cJSON_AddStringToObject(e, "conduit_id", x->conduit_id);
        else
            cJSON_AddNullToObject(e, "conduit_id");
        cJSON_AddStringToObject(e, "message", x->message);
        cJSON_AddStringToObject(e, "code", x->code);
        cJSON_AddNumberToObject(e, "count", x->count);
        cJSON_AddItemToArray(rj, e);
    }
    ok_obj(r, o);
}

static void c_shard_patches_release(hreq_t *r, cJSON *body)
{
    const cJSON *ord = body ? cJSON_GetObjectItemCaseSensitive(body, "order") : NULL;
    const cJSON *ids = body ? cJSON_GetObjectItemCaseSensitive(body, "ids") : NULL;
    const cJSON *dl = body ? cJSON_GetObjectItemCaseSensitive(body, "delay_ms") : NULL;
    if (ord && (!cJSON_IsString(ord) ||
                (strcmp(ord->valuestring, "fifo") && strcmp(ord->valuestring, "reverse")))) {
        cerr(r, 400, "order must be \"fifo\" or \"reverse\"");
        return;
    }
    if (ord && ids) {
        cerr(r, 400, "give order or ids, not both");
        return;
    }
    if (ids && !cJSON_IsArray(ids)) {
        cerr(r, 400, "ids must be an array of request ids");
        return;
    }
    if (dl && (!cJSON_IsNumber(dl) || dl->valuedouble < 0 || dl->valuedouble > 600000)) {
        cerr(r, 400, "delay_ms must be a number in [0, 600000]");
        return;
    }
    size_t n = 0;
    for (spatch_t *sp = M->sp_list; sp; sp = sp->next)
        n++;
    spatch_t **v = xmalloc((n ? n : 1) * sizeof *v);
    size_t k = 0;
    if (ids) {
        const cJSON *it;
        cJSON_ArrayForEach(it, ids)
        {
            spatch_t *hit = NULL;
            if (is_uint(it, 1e15))
                for (spatch_t *sp = M->sp_list; sp; sp = sp->next)
                    if (sp->state == SP_HELD && (double)sp->id == it->valuedouble)
                        hit = sp;
            for (size_t j = 0; hit && j < k; j++)
                if (v[j] == hit) {
                    free(v);
                    cerr(r, 400, "ids lists a request twice");
                    return;
                }
            if (!hit) {
                char m[96];
                if (is_uint(it, 1e15))
                    snprintf(m, sizeof m, "no held request %.0f", it->valuedouble);
                else
                    snprintf(m, sizeof m, "ids must be an array of request ids");
                free(v);
                cerr(r, is_uint(it, 1e15) ? 404 : 400, m);
                return;
            }
            v[k++] = hit;
        }
    } else {
        for (spatch_t *sp = M->sp_list; sp; sp = sp->next)
            if (sp->state == SP_HELD)
                v[k++] = sp;
        if (ord && !strcmp(ord->valuestring, "reverse"))
            for (size_t i = 0; i < k / 2; i++) {
                spatch_t *t = v[i];
                v[i] = v[k - 1 - i];
                v[k - 1 - i] = t;
            }
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *rel = cJSON_AddArrayToObject(o, "released");
    for (size_t i = 0; i < k; i++)
        cJSON_AddItemToArray(rel, cJSON_CreateNumber((double)v[i]->id));
    double gap = dl ? dl->valuedouble : 0;
    for (size_t i = 0; i < k; i++) {
        if (gap > 0) {
            v[i]->state = SP_RELEASING;
            lws_sul_schedule(M->ctx, 0, &v[i]->sul, sp_due_cb,
                             (lws_usec_t)(gap * 1000.0 * (double)(i + 1)));
        } else
            sp_apply(v[i]);
    }
    free(v);
    ok_obj(r, o);
}

/* POST /conduits/<id>/shards/<shard>/disable {"status"?}: Twitch disables the shard
 * while its socket stays open (a silent outage: a half-open connection Twitch gave up
 * on). The status is set, conduit.shard.disabled is sent, nothing is routed to it. */
static void c_disable(hreq_t *r, conduit_t *c, const char *sid, cJSON *body)
{
    char *end;
    long idx = strtol(sid, &end, 10);
    if (*end || !*sid || idx < 0 || idx >= c->shard_count) {
        cerr(r, 400, "The shard id is outside of the conduit's range");
        return;
    }
    const cJSON *st = body ? cJSON_GetObjectItemCaseSensitive(body, "status") : NULL;
    if (st && (!cJSON_IsString(st) || !*st->valuestring || strlen(st->valuestring) >= 48 ||
               !strcmp(st->valuestring, "enabled"))) {
        cerr(r, 400, "status must be a shard status other than enabled");
        return;
    }
    shard_set_disabled(c, (int)idx, st ? st->valuestring : "websocket_network_timeout");
    cJSON *o = cJSON_CreateObject();
    cJSON *d = cJSON_AddArrayToObject(o, "data");
    cJSON_AddItemToArray(d, shard_json(c, (int)idx));
    ok_obj(r, o);
}

/* POST /conduits/<id>/shards/<shard>: what an Update Conduit Shards request for that
 * one shard would do, from outside (another process), at once and without faults. */
static void c_repoint(hreq_t *r, const char *rest, cJSON *body)
{
    char cid[128], sid[64];
    const char *sl = strchr(rest, '/');
    size_t rl = strlen(rest);
    if (sl && rl > 8 && !strcmp(rest + rl - 8, "/disable") && (size_t)(sl - rest) < sizeof cid &&
        !strncmp(sl, "/shards/", 8) && (size_t)(rest + rl - 8 - (sl + 8)) < sizeof sid) {
        memcpy(cid, rest, (size_t)(sl - rest));
        cid[sl - rest] = 0;
        size_t n = (size_t)(rest + rl - 8 - (sl + 8));
        memcpy(sid, sl + 8, n);
        sid[n] = 0;
        conduit_t *dc = find_conduit(cid);
        if (!dc)
            cerr(r, 404, "conduit not found");
        else
            c_disable(r, dc, sid, body);
        return;
    }
    if (!sl || (size_t)(sl - rest) >= sizeof cid || strncmp(sl, "/shards/", 8) || !sl[8] ||
        strlen(sl + 8) >= sizeof sid || strchr(sl + 8, '/')) {
        cerr(r, 404, "unknown control path");
        return;
    }
    memcpy(cid, rest, (size_t)(sl - rest));
    cid[sl - rest] = 0;
    snprintf(sid, sizeof sid, "%s", sl + 8);
    conduit_t *c = find_conduit(cid);
    if (!c) {
        cerr(r, 404, "conduit not found");
        return;
    }
    if (!body) {
        cerr(r, 400, "body must be a JSON object");
        return;
    }
    cJSON *item = cJSON_CreateObject();
    cJSON_AddStringToObject(item, "id", sid);
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(body, "transport");
    if (tr)
        cJSON_AddItemToObject(item, "transport", cJSON_Duplicate(tr, 1));
    else if (cJSON_GetObjectItemCaseSensitive(body, "session_id")) {
        cJSON *t = cJSON_AddObjectToObject(item, "transport");
        cJSON_AddStringToObject(t, "method", "websocket");
        cJSON_AddItemToObject(
            t, "session_id",
            cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(body, "session_id"), 1));
    } else if (cJSON_GetObjectItemCaseSensitive(body, "callback") ||
               cJSON_GetObjectItemCaseSensitive(body, "secret")) {
        cJSON *t = cJSON_AddObjectToObject(item, "transport");
        cJSON_AddStringToObject(t, "method", "webhook");
        const char *keys[] = {"callback", "secret"};
        for (int i = 0; i < 2; i++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, keys[i]);
            if (v)
                cJSON_AddItemToObject(t, keys[i], cJSON_Duplicate(v, 1));
        }
    }
    char got[64];
    long idx;
    session_t *sess;
    const char *emsg = shard_update_check(c, item, got, sizeof got, &idx, &sess);
    if (emsg) {
        cJSON_Delete(item);
        cerr(r, 400, emsg);
        return;
    }
    shard_update_apply(c, idx, item, sess);
    cJSON_Delete(item);
    cJSON *o = cJSON_CreateObject();
    cJSON *d = cJSON_AddArrayToObject(o, "data");
    cJSON_AddItemToArray(d, shard_json(c, (int)idx));
    housekeeping();
    ok_obj(r, o);
}

static void c_faults(hreq_t *r, cJSON *body)
{
    if (!cJSON_IsObject(body)) {
        cerr(r, 400, "body must be a JSON object");
        return;
    }
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(body, "helix");
    if (h && !cJSON_IsArray(h)) {
        cerr(r, 400, "helix must be an array");
        return;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, h)
    {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "status");
        const cJSON *cn = cJSON_GetObjectItemCaseSensitive(it, "count");
        const cJSON *pa = cJSON_GetObjectItemCaseSensitive(it, "path");
        const cJSON *ms = cJSON_GetObjectItemCaseSensitive(it, "message");
        const cJSON *rh = cJSON_GetObjectItemCaseSensitive(it, "ratelimit_headers");
        if (!cJSON_IsNumber(st) || st->valuedouble < 400 || st->valuedouble > 599 ||
            (cn && (!cJSON_IsNumber(cn) || cn->valuedouble < 1)) || (pa && !cJSON_IsString(pa)) ||
            (ms && !cJSON_IsString(ms)) || (rh && !cJSON_IsBool(rh))) {
            cerr(r, 400, "helix faults need status 400..599, count >= 1, path string, message string, "
                         "ratelimit_headers boolean");
            return;
        }
    }
    const cJSON *lat = cJSON_GetObjectItemCaseSensitive(body, "latency_ms");
    if (lat && (!cJSON_IsNumber(lat) || lat->valuedouble < 0 || lat->valuedouble > 600000)) {
        cerr(r, 400, "latency_ms must be a number in [0, 600000]");
        return;
    }
    const cJSON *dn = cJSON_GetObjectItemCaseSensitive(body, "duplicate_next");
    const cJSON *sn = cJSON_GetObjectItemCaseSensitive(body, "stale_next");
    if ((dn && (!cJSON_IsNumber(dn) || dn->valuedouble < 0)) ||
        (sn && (!cJSON_IsNumber(sn) || sn->valuedouble < 0))) {
        cerr(r, 400, "duplicate_next and stale_next must be non-negative numbers");
        return;
    }
    const cJSON *spf = cJSON_GetObjectItemCaseSensitive(body, "shard_patch");
    const char *sperr = spf ? shard_patch_fault_check(spf) : NULL;
    if (sperr) {
        cerr(r, 400, sperr);
        return;
    }
    const cJSON *mf = cJSON_GetObjectItemCaseSensitive(body, "malformed_frame");
    session_t *mfs = NULL;
    if (mf) {
        if (!cJSON_IsObject(mf) && !cJSON_IsTrue(mf)) {
            cerr(r, 400, "malformed_frame must be an object");
            return;
        }
        const char *sid = cJSON_IsObject(mf) ? jstr(mf, "session_id") : NULL;
        if (sid) {
            mfs = find_session(sid);
            if (!mfs || !mfs->cur) {
                cerr(r, 404, "session not found or not connected");
                return;
            }
        }
    }
    /* all valid: apply */
    cJSON_ArrayForEach(it, h)
    {
        hfault_t *f = xcalloc(1, sizeof *f);
        f->status = (int)cJSON_GetObjectItemCaseSensitive(it, "status")->valuedouble;
        const cJSON *cn = cJSON_GetObjectItemCaseSensitive(it, "count");
        f->count = cn ? (int)cn->valuedouble : 1;
        const char *pa = jstr(it, "path");
        f->path = pa ? xstrdup(pa) : NULL;
        const char *ms = jstr(it, "message");
        f->message = ms ? xstrdup(ms) : NULL;
        f->no_headers = cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(it, "ratelimit_headers"));
        hfault_t **pp = &M->hfaults;
        while (*pp)
            pp = &(*pp)->next;
        *pp = f;
    }
    if (lat)
        M->latency_ms = (int)lat->valuedouble;
    if (dn)
        M->duplicate_next = (int)dn->valuedouble;
    if (sn)
        M->stale_next = (int)sn->valuedouble;
    if (spf)
        shard_patch_fault_apply(spf);
    int nmal = 0;
    if (mf) {
        if (mfs) {
            session_malformed(mfs);
            nmal = 1;
        } else
            for (session_t *s = M->sessions; s; s = s->next)
                if (s->cur) {
                    session_malformed(s);
                    nmal++;
                }
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 1);
    cJSON_AddNumberToObject(o, "malformed_sent", nmal);
    ok_obj(r, o);
}

static void c_tokens_revoke(hreq_t *r, cJSON *body)
{
    if (!cJSON_IsObject(body)) {
        cerr(r, 400, "body must be a JSON object");
        return;
    }
    int n = 0;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "all"))) {
        for (token_t *t = M->tokens; t; t = t->next)
            if (!t->revoked) {
                t->revoked = 1;
                n++;
            }
    } else {
        const char *tok = jstr(body, "token");
        if (!tok) {
            cerr(r, 400, "token or all:true is required");
            return;
        }
        for (token_t *t = M->tokens; t; t = t->next)
            if (!strcmp(t->tok, tok)) {
                t->revoked = 1;
                n++;
            }
        if (!n) {
            cerr(r, 404, "token not found");
            return;
        }
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "revoked", n);
    ok_obj(r, o);
}

static void c_clock(hreq_t *r, cJSON *body)
{
    if (body && !cJSON_IsObject(body)) {
        cerr(r, 400, "body must be a JSON object");
        return;
    }
    const cJSON *sp = body ? cJSON_GetObjectItemCaseSensitive(body, "speed") : NULL;
    const cJSON *adv = body ? cJSON_GetObjectItemCaseSensitive(body, "advance_s") : NULL;
    if ((sp && (!cJSON_IsNumber(sp) || sp->valuedouble < 0 || sp->valuedouble > 1e7)) ||
        (adv && (!cJSON_IsNumber(adv) || adv->valuedouble < 0 || adv->valuedouble > 1e10))) {
        cerr(r, 400, "speed must be in [0, 1e7] and advance_s >= 0");
        return;
    }
    double now = emu_now();
    M->emu_base = now;
    M->mono_base = mono_us();
    if (sp)
        M->speed = sp->valuedouble;
    if (adv)
        M->emu_base += adv->valuedouble;
    housekeeping();
    cJSON *o = cJSON_CreateObject();
    char ts[40];
    fmt_time(emu_now(), ts);
    cJSON_AddStringToObject(o, "now", ts);
    cJSON_AddNumberToObject(o, "speed", M->speed);
    ok_obj(r, o);
}

static cJSON *ledger_entry_json(lent_t *e)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "seq", (double)e->seq);
    cJSON_AddStringToObject(o, "message_id", e->msg_id);
    cJSON_AddStringToObject(o, "message_type", e->kind ? "revocation" : "notification");
    cJSON_AddStringToObject(o, "type", e->type);
    cJSON_AddStringToObject(o, "subscription_id", e->sub_id);
    if (e->conduit_id[0])
        cJSON_AddStringToObject(o, "conduit_id", e->conduit_id);
    else
        cJSON_AddNullToObject(o, "conduit_id");
    if (e->channel)
        cJSON_AddStringToObject(o, "channel", e->channel);
    else
        cJSON_AddNullToObject(o, "channel");
    cJSON_AddStringToObject(o, "status",
                            e->status == L_DELIVERED ? "delivered"
                            : e->status == L_DROPPED ? "dropped"
                                                     : "pending");
    if (e->shard >= 0) {
        char sh[16];
        snprintf(sh, sizeof sh, "%d", e->shard);
        cJSON_AddStringToObject(o, "shard", sh);
    } else
        cJSON_AddNullToObject(o, "shard");
    if (e->session_id[0])
        cJSON_AddStringToObject(o, "session_id", e->session_id);
    else
        cJSON_AddNullToObject(o, "session_id");
    if (e->reason && e->status != L_DELIVERED)
        cJSON_AddStringToObject(o, "reason", e->reason);
    else
        cJSON_AddNullToObject(o, "reason");
    cJSON *at = cJSON_AddArrayToObject(o, "attempts");
    for (int i = 0; i < e->nattempts; i++) {
        cJSON *a = cJSON_CreateObject();
        if (e->att[i].shard >= 0) {
            char sh[16];
            snprintf(sh, sizeof sh, "%d", e->att[i].shard);
            cJSON_AddStringToObject(a, "shard", sh);
        } else
            cJSON_AddNullToObject(a, "shard");
        cJSON_AddStringToObject(a, "session_id", e->att[i].session_id);
        cJSON_AddStringToObject(a, "result", e->att[i].result ? e->att[i].result : "");
        cJSON_AddItemToArray(at, a);
    }
    return o;
}

static void c_ledger(hreq_t *r)
{
    char sv[32];
    uint64_t since = 0;
    if (qparam(r->query, "since", sv, sizeof sv, 0)) {
        char *e = NULL;
        unsigned long long v = strtoull(sv, &e, 10);
        if (!sv[0] || *e) {
            cerr(r, 400, "since must be a sequence number");
            return;
        }
        since = v;
    }
    /* build the text directly: the ledger can be large */
    cJSON *o = cJSON_CreateObject();
    cJSON *ents = cJSON_AddArrayToObject(o, "entries");
    uint64_t pending = 0;
    for (size_t i = 0; i < M->nledger; i++) {
        lent_t *e = M->ledger[i];
        if (e->status == L_PENDING)
            pending++;
        if (e->seq > since)
            cJSON_AddItemToArray(ents, ledger_entry_json(e));
    }
    cJSON_AddNumberToObject(o, "delivered", (double)(M->n_delivered + M->blast_delivered));
    cJSON_AddNumberToObject(o, "dropped", (double)(M->n_dropped + M->blast_dropped));
    cJSON_AddNumberToObject(o, "pending", (double)pending);
    cJSON_AddNumberToObject(o, "last_seq", (double)(M->ledger_base + M->nledger));
    cJSON_AddNumberToObject(o, "blast_delivered", (double)M->blast_delivered);
    cJSON_AddNumberToObject(o, "blast_dropped", (double)M->blast_dropped);
    ok_obj(r, o);
}

static void c_state(hreq_t *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *cs = cJSON_AddArrayToObject(o, "conduits");
    for (conduit_t *c = M->conduits; c; c = c->next) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "id", c->id);
        cJSON_AddStringToObject(x, "client_id", c->client_id);
        cJSON_AddNumberToObject(x, "shard_count", c->shard_count);
        cJSON *sh = cJSON_AddArrayToObject(x, "shards");
        for (int i = 0; i < c->shard_count; i++) {
            cJSON *j = shard_json(c, i);
            if (c->shards[i].method == T_WEBHOOK)
                cJSON_AddNullToObject(j, "session_connected");
            else {
                session_t *s = find_session(c->shards[i].session_id);
                cJSON_AddBoolToObject(j, "session_connected", s && s->connected);
            }
            cJSON_AddItemToArray(sh, j);
        }
        cJSON_AddItemToArray(cs, x);
    }
    cJSON_AddItemToObject(o, "sessions", sessions_arr());
    cJSON *ss = cJSON_AddArrayToObject(o, "subscriptions");
    for (sub_t *s = M->subs; s; s = s->next)
        cJSON_AddItemToArray(ss, sub_json(s));
    int nt = 0;
    for (token_t *t = M->tokens; t; t = t->next)
        nt++;
    cJSON_AddNumberToObject(o, "tokens", nt);
    cJSON *hc = cJSON_AddObjectToObject(o, "helix_calls");
    cJSON_AddNumberToObject(hc, "total", (double)M->helix_total);
    cJSON *br = cJSON_AddObjectToObject(hc, "by_route");
    for (route_ctr_t *rc = M->routes; rc; rc = rc->next)
        cJSON_AddNumberToObject(br, rc->name, (double)rc->n);
    cJSON_AddItemToObject(hc, "by_status", helix_status_json());
    char ts[40];
    fmt_time(emu_now(), ts);
    cJSON_AddStringToObject(o, "clock", ts);
    cJSON_AddNumberToObject(o, "speed", M->speed);
    ok_obj(r, o);
}

cJSON *config_json(void)
{
    config_t *c = &M->cfg;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "keepalive_default", c->keepalive_default);
    cJSON_AddNumberToObject(o, "keepalive_min", c->keepalive_min);
    cJSON_AddNumberToObject(o, "keepalive_max", c->keepalive_max);
    cJSON_AddNumberToObject(o, "assign_window_s", c->assign_window_s);
    cJSON_AddNumberToObject(o, "reconnect_grace_s", c->reconnect_grace_s);
    cJSON_AddNumberToObject(o, "ping_interval_s", c->ping_interval_s);
    cJSON_AddNumberToObject(o, "token_ttl_s", c->token_ttl_s);
    cJSON_AddNumberToObject(o, "rate_limit", c->rate_limit);
    cJSON_AddNumberToObject(o, "max_conduits", c->max_conduits);
    cJSON_AddNumberToObject(o, "max_shards", c->max_shards);
    cJSON_AddNumberToObject(o, "shard_page_size", c->shard_page_size);
    cJSON_AddNumberToObject(o, "sub_page_size", c->sub_page_size);
    cJSON_AddStringToObject(o, "routing_key", c->routing_key);
    cJSON_AddNumberToObject(o, "max_frame_bytes", (double)c->max_frame_bytes);
    cJSON_AddBoolToObject(o, "strict_webhook_urls", c->strict_webhook_urls);
    cJSON_AddNumberToObject(o, "webhook_max_attempts", c->webhook_max_attempts);
    cJSON_AddNumberToObject(o, "webhook_retry_base_s", c->webhook_retry_base_s);
    cJSON_AddNumberToObject(o, "webhook_timeout_s", c->webhook_timeout_s);
    cJSON_AddNumberToObject(o, "webhook_failures_limit", c->webhook_failures_limit);
    cJSON_AddNumberToObject(o, "max_total_cost", c->sub_max_cost);
    return o;
}

static void shutdown_cb(lws_sorted_usec_list_t *sul)
{
    (void)sul;
    M->stop = 1;
    lws_cancel_service(M->ctx);
}

void handle_control(hreq_t *r, const char *p, cJSON *body)
{
    int post = !strcmp(r->method, "POST"), get = !strcmp(r->method, "GET");
    if (body && !cJSON_IsObject(body)) {
        cerr(r, 400, "body must be a JSON object");
        return;
    }
    if (post && !strcmp(p, "/trigger"))
        c_trigger(r, body);
    else if (post && !strcmp(p, "/stream"))
        c_stream(r, body);
    else if (post && !strcmp(p, "/stream/stop"))
        c_stream_stop(r, body);
    else if (get && !strncmp(p, "/stream/", 8))
        c_stream_get(r, p + 8);
    else if (post && !strcmp(p, "/blast"))
        c_blast(r, body);
    else if (get && !strncmp(p, "/blast/", 7))
        c_blast_get(r, p + 7);
    else if (get && !strcmp(p, "/sessions")) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "sessions", sessions_arr());
        ok_obj(r, o);
    } else if (post && !strncmp(p, "/sessions/", 10))
        c_session_action(r, p + 10, body);
    else if (post && !strcmp(p, "/subscriptions"))
        c_sub_create(r, body);
    else if (post && !strcmp(p, "/subscriptions/delete"))
        c_sub_delete(r, body);
    else if (post && !strcmp(p, "/ratelimit"))
        c_ratelimit(r, body);
    else if (get && !strcmp(p, "/helix_calls"))
        c_helix_calls(r);
    else if (post && !strncmp(p, "/subscriptions/", 15))
        c_revoke(r, p + 15, body);
    else if (post && !strcmp(p, "/sign")) {
        const char *sec = jstr(body, "secret"), *id = jstr(body, "message_id"),
                   *ts = jstr(body, "timestamp"), *b = jstr(body, "body");
        if (!sec || !id || !ts || !b) {
            cerr(r, 400, "secret, message_id, timestamp and body are required strings");
            return;
        }
        char sig[80];
        hmac_sha256_hex(sec, id, ts, b, strlen(b), sig);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "signature", sig);
        ok_obj(r, o);
    } else if (post && !strcmp(p, "/faults"))
        c_faults(r, body);
    else if ((post || get) && !strcmp(p, "/users"))
        c_users(r, body);
    else if (post && !strcmp(p, "/tokens/revoke"))
        c_tokens_revoke(r, body);
    else if (post && !strcmp(p, "/clock"))
        c_clock(r, body);
    else if (get && !strcmp(p, "/clock"))
        c_clock(r, NULL);
    else if (get && !strcmp(p, "/state"))
        c_state(r);
    else if (get && !strcmp(p, "/shard_patches"))
        c_shard_patches(r);
    else if (post && !strcmp(p, "/shard_patches/release"))
        c_shard_patches_release(r, body);
    else if (post && !strncmp(p, "/conduits/", 10))
        c_repoint(r, p + 10, body);
    else if (get && !strcmp(p, "/ledger"))
        c_ledger(r);
    else if (post && !strcmp(p, "/config")) {
        char err[256] = "";
        if (!body) {
            cerr(r, 400, "body must be a JSON object");
            return;
        }
        apply_config(body, err, sizeof err);
        if (err[0]) {
            cerr(r, 400, err);
            return;
        }
        ok_obj(r, config_json());
    } else if (get && !strcmp(p, "/config"))
        ok_obj(r, config_json());
    else if (post && !strcmp(p, "/reset")) {
        shard_patches_flush();
        streams_stop_all();
        reset_helix_state();
        ledger_free_all();
        for (int i = 0; i < M->nclients; i++)
            M->clients[i].bucket = -1;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "ok", 1);
        ok_obj(r, o);
    } else if (post && !strcmp(p, "/shutdown")) {
        static lws_sorted_usec_list_t sul;
        lws_sul_schedule(M->ctx, 0, &sul, shutdown_cb, 100 * 1000);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "ok", 1);
        ok_obj(r, o);
    } else
        cerr(r, 404, "unknown control path");
}
