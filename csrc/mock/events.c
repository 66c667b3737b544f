/* Realistic event payloads for the trigger, stream and blast control calls. */
#include "mock.h"

#include <stdio.h>
#include <string.h>

static const char *words[] = {"hello", "chat",   "pog",   "gg",     "nice",  "play",
                              "that",  "was",    "clean", "lets",   "go",    "stream",
                              "today", "again",  "what",  "a",      "clutch", "LUL",
                              "wow",   "insane", "hype",  "train",  "emote", "check"};

static void add_broadcaster(cJSON *ev, const char *ch, const char *prefix)
{
    char k[64], v[64];
    snprintf(k, sizeof k, "%sbroadcaster_user_id", prefix);
    cJSON_AddStringToObject(ev, k, ch);
    snprintf(k, sizeof k, "%sbroadcaster_user_login", prefix);
    snprintf(v, sizeof v, "channel_%s", ch);
    cJSON_AddStringToObject(ev, k, v);
    snprintf(k, sizeof k, "%sbroadcaster_user_name", prefix);
    snprintf(v, sizeof v, "Channel_%s", ch);
    cJSON_AddStringToObject(ev, k, v);
}

static void add_user(cJSON *ev, const char *prefix, uint64_t uid)
{
    char k[64], v[64];
    snprintf(k, sizeof k, "%suser_id", prefix);
    snprintf(v, sizeof v, "%llu", (unsigned long long)uid);
    cJSON_AddStringToObject(ev, k, v);
    snprintf(k, sizeof k, "%suser_login", prefix);
    snprintf(v, sizeof v, "viewer_%llu", (unsigned long long)uid);
    cJSON_AddStringToObject(ev, k, v);
    snprintf(k, sizeof k, "%suser_name", prefix);
    snprintf(v, sizeof v, "Viewer_%llu", (unsigned long long)uid);
    cJSON_AddStringToObject(ev, k, v);
}

void ev_chat_message(cJSON *ev, const char *ch, uint64_t n)
{
    uint64_t uid = 500000 + rnd64() % 400000;
    add_broadcaster(ev, ch, "");
    add_user(ev, "chatter_", uid);
    char mid[ID_LEN];
    gen_uuid(mid);
    cJSON_AddStringToObject(ev, "message_id", mid);
    /* text: a few words, a mention and an emote */
    char text[512];
    size_t o = 0;
    int nw = 4 + (int)(rnd64() % 8);
    o += (size_t)snprintf(text + o, sizeof text - o, "msg %llu:", (unsigned long long)n);
    for (int i = 0; i < nw && o < 300; i++)
        o += (size_t)snprintf(text + o, sizeof text - o, " %s",
                              words[rnd64() % (sizeof words / sizeof words[0])]);
    char first[600];
    snprintf(first, sizeof first, "%s ", text);
    char mention[64];
    snprintf(mention, sizeof mention, "@viewer_%llu", (unsigned long long)(uid + 1));
    char full[800];
    snprintf(full, sizeof full, "%s%s Kappa", first, mention);
    cJSON *msg = cJSON_AddObjectToObject(ev, "message");
    cJSON_AddStringToObject(msg, "text", full);
    cJSON *frags = cJSON_AddArrayToObject(msg, "fragments");
    cJSON *f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "type", "text");
    cJSON_AddStringToObject(f, "text", first);
    cJSON_AddNullToObject(f, "cheermote");
    cJSON_AddNullToObject(f, "emote");
    cJSON_AddNullToObject(f, "mention");
    cJSON_AddItemToArray(frags, f);
    f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "type", "mention");
    cJSON_AddStringToObject(f, "text", mention);
    cJSON_AddNullToObject(f, "cheermote");
    cJSON_AddNullToObject(f, "emote");
    cJSON *m = cJSON_AddObjectToObject(f, "mention");
    char v[64];
    snprintf(v, sizeof v, "%llu", (unsigned long long)(uid + 1));
    cJSON_AddStringToObject(m, "user_id", v);
    snprintf(v, sizeof v, "Viewer_%llu", (unsigned long long)(uid + 1));
    cJSON_AddStringToObject(m, "user_name", v);
    snprintf(v, sizeof v, "viewer_%llu", (unsigned long long)(uid + 1));
    cJSON_AddStringToObject(m, "user_login", v);
    cJSON_AddItemToArray(frags, f);
    f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "type", "emote");
    cJSON_AddStringToObject(f, "text", " Kappa");
    cJSON_AddNullToObject(f, "cheermote");
    cJSON *e = cJSON_AddObjectToObject(f, "emote");
    cJSON_AddStringToObject(e, "id", "25");
    cJSON_AddStringToObject(e, "emote_set_id", "0");
    cJSON_AddStringToObject(e, "owner_id", "0");
    cJSON *fmt = cJSON_AddArrayToObject(e, "format");
    cJSON_AddItemToArray(fmt, cJSON_CreateString("static"));
    cJSON_AddNullToObject(f, "mention");
    cJSON_AddItemToArray(frags, f);
    cJSON_AddStringToObject(ev, "message_type", "text");
    cJSON *badges = cJSON_AddArrayToObject(ev, "badges");
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "set_id", "subscriber");
    cJSON_AddStringToObject(b, "id", "12");
    cJSON_AddStringToObject(b, "info", "14");
    cJSON_AddItemToArray(badges, b);
    b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "set_id", "premium");
    cJSON_AddStringToObject(b, "id", "1");
    cJSON_AddStringToObject(b, "info", "");
    cJSON_AddItemToArray(badges, b);
    cJSON_AddNullToObject(ev, "cheer");
    char color[8];
    snprintf(color, sizeof color, "#%06X", (unsigned)(rnd64() & 0xFFFFFF));
    cJSON_AddStringToObject(ev, "color", color);
    cJSON_AddNullToObject(ev, "reply");
    cJSON_AddNullToObject(ev, "channel_points_custom_reward_id");
    cJSON_AddNullToObject(ev, "source_broadcaster_user_id");
    cJSON_AddNullToObject(ev, "source_broadcaster_user_login");
    cJSON_AddNullToObject(ev, "source_broadcaster_user_name");
    cJSON_AddNullToObject(ev, "source_message_id");
    cJSON_AddNullToObject(ev, "source_badges");
}

static void merge_into(cJSON *dst, const cJSON *src)
{
    if (!cJSON_IsObject(src))
        return;
    for (const cJSON *it = src->child; it; it = it->next) {
        if (!it->string)
            continue;
        cJSON_DeleteItemFromObjectCaseSensitive(dst, it->string);
        cJSON_AddItemToObject(dst, it->string, cJSON_Duplicate(it, 1));
    }
}

static uint64_t viewer(void) { return 700000 + rnd64() % 100000; }

static void add_id(cJSON *ev, const char *k)
{
    char id[ID_LEN];
    gen_uuid(id);
    cJSON_AddStringToObject(ev, k, id);
}

static void add_time(cJSON *ev, const char *k, double offset_s)
{
    char ts[40];
    fmt_time(wall_now() + offset_s, ts);
    cJSON_AddStringToObject(ev, k, ts);
}

void ev_follow(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    add_user(ev, "", viewer());
    add_broadcaster(ev, ch, "");
    add_time(ev, "followed_at", 0);
}

void ev_subscribe(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    add_user(ev, "", viewer());
    add_broadcaster(ev, ch, "");
    cJSON_AddStringToObject(ev, "tier", "1000");
    cJSON_AddBoolToObject(ev, "is_gift", 0);
}

void ev_sub_gift(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    add_user(ev, "", viewer());
    add_broadcaster(ev, ch, "");
    cJSON_AddNumberToObject(ev, "total", 5);
    cJSON_AddStringToObject(ev, "tier", "1000");
    cJSON_AddNumberToObject(ev, "cumulative_total", 25);
    cJSON_AddBoolToObject(ev, "is_anonymous", 0);
}

void ev_sub_message(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    add_user(ev, "", viewer());
    add_broadcaster(ev, ch, "");
    cJSON_AddStringToObject(ev, "tier", "1000");
    cJSON *m = cJSON_AddObjectToObject(ev, "message");
    cJSON_AddStringToObject(m, "text", "Love the stream! Kappa");
    cJSON *em = cJSON_AddArrayToObject(m, "emotes");
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "begin", 17);
    cJSON_AddNumberToObject(e, "end", 21);
    cJSON_AddStringToObject(e, "id", "25");
    cJSON_AddItemToArray(em, e);
    cJSON_AddNumberToObject(ev, "cumulative_months", 15);
    cJSON_AddNumberToObject(ev, "streak_months", 1);
    cJSON_AddNumberToObject(ev, "duration_months", 1);
}

void ev_cheer(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    cJSON_AddBoolToObject(ev, "is_anonymous", 0);
    add_user(ev, "", viewer());
    add_broadcaster(ev, ch, "");
    cJSON_AddStringToObject(ev, "message", "Cheer100 great stream");
    cJSON_AddNumberToObject(ev, "bits", 100);
}

void ev_raid(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    char v[64];
    snprintf(v, sizeof v, "%llu", (unsigned long long)(800000 + rnd64() % 100000));
    add_broadcaster(ev, v, "from_");
    add_broadcaster(ev, ch, "to_");
    cJSON_AddNumberToObject(ev, "viewers", (double)(rnd64() % 5000));
}

static void add_moderator(cJSON *ev)
{
    add_user(ev, "moderator_", 600000 + rnd64() % 1000);
}

void ev_ban(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    add_user(ev, "", viewer());
    add_broadcaster(ev, ch, "");
    add_moderator(ev);
    cJSON_AddStringToObject(ev, "reason", "spam");
    add_time(ev, "banned_at", 0);
    add_time(ev, "ends_at", 600);
    cJSON_AddBoolToObject(ev, "is_permanent", 0);
}

void ev_unban(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    add_user(ev, "", viewer());
    add_broadcaster(ev, ch, "");
    add_moderator(ev);
}

void ev_moderator(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    add_broadcaster(ev, ch, "");
    add_user(ev, "", viewer());
}

void ev_stream_online(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    char v[64];
    snprintf(v, sizeof v, "%llu", (unsigned long long)(rnd64() % 100000000000ull));
    cJSON_AddStringToObject(ev, "id", v);
    add_broadcaster(ev, ch, "");
    cJSON_AddStringToObject(ev, "type", "live");
    add_time(ev, "started_at", 0);
}

void ev_stream_offline(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    add_broadcaster(ev, ch, "");
}

void ev_channel_update(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    add_broadcaster(ev, ch, "");
    cJSON_AddStringToObject(ev, "title", "Best Stream Ever");
    cJSON_AddStringToObject(ev, "language", "en");
    cJSON_AddStringToObject(ev, "category_id", "509658");
    cJSON_AddStringToObject(ev, "category_name", "Just Chatting");
    cJSON_AddArrayToObject(ev, "content_classification_labels");
}

void ev_redemption(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    add_id(ev, "id");
    add_broadcaster(ev, ch, "");
    add_user(ev, "", viewer());
    cJSON_AddStringToObject(ev, "user_input", "pogchamp");
    cJSON_AddStringToObject(ev, "status", "unfulfilled");
    cJSON *rw = cJSON_AddObjectToObject(ev, "reward");
    add_id(rw, "id");
    cJSON_AddStringToObject(rw, "title", "Hydrate");
    cJSON_AddNumberToObject(rw, "cost", 500);
    cJSON_AddStringToObject(rw, "prompt", "Make the streamer drink water");
    add_time(ev, "redeemed_at", 0);
}

static void poll_common(cJSON *ev, const char *ch, int votes)
{
    add_id(ev, "id");
    add_broadcaster(ev, ch, "");
    cJSON_AddStringToObject(ev, "title", "Aren't shoes just really hard socks?");
    cJSON *cs = cJSON_AddArrayToObject(ev, "choices");
    static const char *titles[] = {"Yeah!", "No!", "Maybe!"};
    for (int i = 0; i < 3; i++) {
        cJSON *c = cJSON_CreateObject();
        add_id(c, "id");
        cJSON_AddStringToObject(c, "title", titles[i]);
        if (votes) {
            cJSON_AddNumberToObject(c, "bits_votes", 0);
            cJSON_AddNumberToObject(c, "channel_points_votes", 10 * (i + 1));
            cJSON_AddNumberToObject(c, "votes", 10 * (i + 1));
        }
        cJSON_AddItemToArray(cs, c);
    }
    cJSON *bv = cJSON_AddObjectToObject(ev, "bits_voting");
    cJSON_AddBoolToObject(bv, "is_enabled", 0);
    cJSON_AddNumberToObject(bv, "amount_per_vote", 0);
    cJSON *cv = cJSON_AddObjectToObject(ev, "channel_points_voting");
    cJSON_AddBoolToObject(cv, "is_enabled", 1);
    cJSON_AddNumberToObject(cv, "amount_per_vote", 10);
    add_time(ev, "started_at", -30);
}

void ev_poll_begin(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    poll_common(ev, ch, 0);
    add_time(ev, "ends_at", 270);
}

void ev_poll_progress(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    poll_common(ev, ch, 1);
    add_time(ev, "ends_at", 270);
}

void ev_poll_end(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    poll_common(ev, ch, 1);
    cJSON_AddStringToObject(ev, "status", "completed");
    add_time(ev, "ended_at", 0);
}

static cJSON *prediction_common(cJSON *ev, const char *ch, int stats)
{
    add_id(ev, "id");
    add_broadcaster(ev, ch, "");
    cJSON_AddStringToObject(ev, "title", "Aren't shoes just really hard socks?");
    cJSON *os = cJSON_AddArrayToObject(ev, "outcomes");
    static const char *titles[] = {"yes", "no"}, *colors[] = {"blue", "pink"};
    cJSON *first = NULL;
    for (int i = 0; i < 2; i++) {
        cJSON *o = cJSON_CreateObject();
        add_id(o, "id");
        cJSON_AddStringToObject(o, "title", titles[i]);
        cJSON_AddStringToObject(o, "color", colors[i]);
        if (stats) {
            cJSON_AddNumberToObject(o, "users", 10 + i);
            cJSON_AddNumberToObject(o, "channel_points", 15000 + 1000 * i);
            cJSON *tp = cJSON_AddArrayToObject(o, "top_predictors");
            cJSON *p = cJSON_CreateObject();
            add_user(p, "", viewer());
            cJSON_AddNullToObject(p, "channel_points_won");
            cJSON_AddNumberToObject(p, "channel_points_used", 500);
            cJSON_AddItemToArray(tp, p);
        }
        cJSON_AddItemToArray(os, o);
        if (!first)
            first = o;
    }
    add_time(ev, "started_at", -60);
    return first;
}

void ev_prediction_begin(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    prediction_common(ev, ch, 0);
    add_time(ev, "locks_at", 240);
}

void ev_prediction_progress(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    prediction_common(ev, ch, 1);
    add_time(ev, "locks_at", 240);
}

void ev_prediction_lock(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    prediction_common(ev, ch, 1);
    add_time(ev, "locked_at", 0);
}

void ev_prediction_end(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    cJSON *win = prediction_common(ev, ch, 1);
    cJSON_AddStringToObject(ev, "winning_outcome_id", jstr(win, "id"));
    cJSON_AddStringToObject(ev, "status", "resolved");
    add_time(ev, "ended_at", 0);
}

static cJSON *contribution(const char *type, int total)
{
    cJSON *c = cJSON_CreateObject();
    add_user(c, "", viewer());
    cJSON_AddStringToObject(c, "type", type);
    cJSON_AddNumberToObject(c, "total", total);
    return c;
}

static void hype_common(cJSON *ev, const char *ch, int end)
{
    add_id(ev, "id");
    add_broadcaster(ev, ch, "");
    cJSON_AddNumberToObject(ev, "total", 137);
    if (!end) {
        cJSON_AddNumberToObject(ev, "progress", 137);
        cJSON_AddNumberToObject(ev, "goal", 500);
    }
    cJSON *tc = cJSON_AddArrayToObject(ev, "top_contributions");
    cJSON_AddItemToArray(tc, contribution("bits", 50));
    cJSON_AddItemToArray(tc, contribution("subscription", 45));
    cJSON_AddNumberToObject(ev, "level", end ? 2 : 1);
}

void ev_hype_begin_v1(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    hype_common(ev, ch, 0);
    cJSON_AddItemToObject(ev, "last_contribution", contribution("bits", 50));
    add_time(ev, "started_at", 0);
    add_time(ev, "expires_at", 300);
    cJSON_AddBoolToObject(ev, "is_golden_kappa_train", 0);
}

void ev_hype_begin(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    hype_common(ev, ch, 0);
    cJSON_AddNullToObject(ev, "shared_train_participants");
    cJSON_AddNumberToObject(ev, "all_time_high_level", 4);
    cJSON_AddNumberToObject(ev, "all_time_high_total", 2845);
    add_time(ev, "started_at", 0);
    add_time(ev, "expires_at", 300);
    cJSON_AddStringToObject(ev, "type", "regular");
    cJSON_AddBoolToObject(ev, "is_shared_train", 0);
}

void ev_hype_end_v1(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    hype_common(ev, ch, 1);
    add_time(ev, "started_at", -300);
    add_time(ev, "ended_at", 0);
    add_time(ev, "cooldown_ends_at", 3600);
    cJSON_AddBoolToObject(ev, "is_golden_kappa_train", 0);
}

void ev_hype_end(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    hype_common(ev, ch, 1);
    cJSON_AddNullToObject(ev, "shared_train_participants");
    add_time(ev, "started_at", -300);
    add_time(ev, "ended_at", 0);
    add_time(ev, "cooldown_ends_at", 3600);
    cJSON_AddStringToObject(ev, "type", "regular");
    cJSON_AddBoolToObject(ev, "is_shared_train", 0);
}

void ev_shoutout_create(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    char v[64];
    snprintf(v, sizeof v, "%llu", (unsigned long long)(800000 + rnd64() % 100000));
    add_broadcaster(ev, ch, "");
    add_broadcaster(ev, v, "to_");
    add_moderator(ev);
    cJSON_AddNumberToObject(ev, "viewer_count", 860);
    add_time(ev, "started_at", 0);
    add_time(ev, "cooldown_ends_at", 120);
    add_time(ev, "target_cooldown_ends_at", 3600);
}

void ev_shoutout_receive(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    char v[64];
    snprintf(v, sizeof v, "%llu", (unsigned long long)(800000 + rnd64() % 100000));
    add_broadcaster(ev, ch, "");
    add_broadcaster(ev, v, "from_");
    cJSON_AddNumberToObject(ev, "viewer_count", 860);
    add_time(ev, "started_at", 0);
}

void ev_ad_break(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    cJSON_AddNumberToObject(ev, "duration_seconds", 60);
    add_time(ev, "started_at", 0);
    cJSON_AddBoolToObject(ev, "is_automatic", 0);
    add_broadcaster(ev, ch, "");
    add_user(ev, "requester_", 600000 + rnd64() % 1000);
}

void ev_user_update(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    char v[64];
    cJSON_AddStringToObject(ev, "user_id", ch);
    snprintf(v, sizeof v, "user_%s", ch);
    cJSON_AddStringToObject(ev, "user_login", v);
    snprintf(v, sizeof v, "User_%s", ch);
    cJSON_AddStringToObject(ev, "user_name", v);
    snprintf(v, sizeof v, "user_%s@example.com", ch);
    cJSON_AddStringToObject(ev, "email", v);
    cJSON_AddBoolToObject(ev, "email_verified", 1);
    cJSON_AddStringToObject(ev, "description", "cool description");
}

/* conduit.shard.disabled: the first conduit's shard 0 (the emulator sends real ones
 * itself when a shard goes down; this is the triggered kind) */
void ev_shard_disabled(cJSON *ev, const char *ch, uint64_t n)
{
    (void)ch;
    (void)n;
    const char *cid = NULL;
    for (conduit_t *c = M->conduits; c && !cid; c = c->next)
        cid = c->id;
    if (cid)
        cJSON_AddStringToObject(ev, "conduit_id", cid);
    else
        add_id(ev, "conduit_id");
    cJSON_AddStringToObject(ev, "shard_id", "0");
    cJSON_AddStringToObject(ev, "status", "websocket_disconnected");
    cJSON *t = cJSON_AddObjectToObject(ev, "transport");
    cJSON_AddStringToObject(t, "method", "websocket");
    cJSON_AddStringToObject(t, "session_id", "AgoQAAAAAAAAAAAAAAAAAAAAAAAA");
    add_time(t, "connected_at", -60);
    add_time(t, "disconnected_at", 0);
}

/* user.authorization.grant / revoke: the channel names the client when it is one,
 * else the first client; the user is one who authorised it (POST /_mock/users) */
void ev_authorization(cJSON *ev, const char *ch, uint64_t n)
{
    (void)n;
    const char *cid = M->clients[0].id;
    for (int i = 0; i < M->nclients; i++)
        if (!strcmp(M->clients[i].id, ch))
            cid = M->clients[i].id;
    cJSON_AddStringToObject(ev, "client_id", cid);
    const user_t *u = NULL;
    for (const user_t *x = M->users; x && !u; x = x->next)
        if (!strcmp(x->client_id, cid))
            u = x;
    if (u) {
        cJSON_AddStringToObject(ev, "user_id", u->id);
        cJSON_AddStringToObject(ev, "user_login", u->login);
        cJSON_AddStringToObject(ev, "user_name", u->login);
    } else
        add_user(ev, "", viewer());
}

cJSON *gen_event(const char *type, const char *channel, uint64_t n, const cJSON *merge)
{
    return gen_event_for(type, NULL, channel, n, merge);
}

cJSON *gen_event_for(const char *type, const char *version, const char *channel, uint64_t n,
                     const cJSON *merge)
{
    cJSON *ev = cJSON_CreateObject();
    const char *ch = channel ? channel : "0";
    const evtype_t *t = type_find(type, version);
    if (!t)
        t = type_find(type, NULL);
    if (t)
        t->gen(ev, ch, n);
    else
        cJSON_AddStringToObject(ev, "broadcaster_user_id", ch);
    merge_into(ev, merge);
    return ev;
}
