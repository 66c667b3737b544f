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

static void chat_message(cJSON *ev, const char *ch, uint64_t n)
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

cJSON *gen_event(const char *type, const char *channel, uint64_t n, const cJSON *merge)
{
    cJSON *ev = cJSON_CreateObject();
    const char *ch = channel ? channel : "0";
    char ts[40], v[64];
    fmt_time(wall_now(), ts);
    if (!strcmp(type, "stream.online")) {
        snprintf(v, sizeof v, "%llu", (unsigned long long)(rnd64() % 100000000000ull));
        cJSON_AddStringToObject(ev, "id", v);
        add_broadcaster(ev, ch, "");
        cJSON_AddStringToObject(ev, "type", "live");
        cJSON_AddStringToObject(ev, "started_at", ts);
    } else if (!strcmp(type, "stream.offline")) {
        add_broadcaster(ev, ch, "");
    } else if (!strcmp(type, "channel.follow")) {
        add_user(ev, "", 700000 + rnd64() % 100000);
        add_broadcaster(ev, ch, "");
        cJSON_AddStringToObject(ev, "followed_at", ts);
    } else if (!strcmp(type, "channel.chat.message")) {
        chat_message(ev, ch, n);
    } else if (!strcmp(type, "channel.subscribe")) {
        add_user(ev, "", 700000 + rnd64() % 100000);
        add_broadcaster(ev, ch, "");
        cJSON_AddStringToObject(ev, "tier", "1000");
        cJSON_AddBoolToObject(ev, "is_gift", 0);
    } else if (!strcmp(type, "channel.cheer")) {
        cJSON_AddBoolToObject(ev, "is_anonymous", 0);
        add_user(ev, "", 700000 + rnd64() % 100000);
        add_broadcaster(ev, ch, "");
        cJSON_AddStringToObject(ev, "message", "Cheer100 great stream");
        cJSON_AddNumberToObject(ev, "bits", 100);
    } else if (!strcmp(type, "channel.raid")) {
        snprintf(v, sizeof v, "%llu", (unsigned long long)(800000 + rnd64() % 100000));
        add_broadcaster(ev, v, "from_");
        add_broadcaster(ev, ch, "to_");
        cJSON_AddNumberToObject(ev, "viewers", (double)(rnd64() % 5000));
    } else {
        cJSON_AddStringToObject(ev, "broadcaster_user_id", ch);
    }
    merge_into(ev, merge);
    return ev;
}
