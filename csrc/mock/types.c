/* The EventSub subscription types the emulator knows: version, condition fields,
 * authorisation (scope and whose), the condition field naming the channel, and a
 * generator of a realistic event per type (events.c). Values follow Twitch's
 * subscription type reference. */
#include "mock.h"

#include <string.h>

#define BC "broadcaster_user_id"
#define MOD "moderator_user_id"
#define SUBS "channel:read:subscriptions"
#define POLLS "channel:read:polls|channel:manage:polls"
#define PREDS "channel:read:predictions|channel:manage:predictions"
#define SHOUT "moderator:read:shoutouts|moderator:manage:shoutouts"
#define RAID_KEYS "to_broadcaster_user_id|from_broadcaster_user_id"

static const evtype_t types[] = {
    {"channel.chat.message", "1", {BC, "user_id"}, {NULL}, "user:read:chat", "user_id", BC, 0, ev_chat_message},
    {"channel.follow", "2", {BC, MOD}, {NULL}, "moderator:read:followers", MOD, BC, 0, ev_follow},
    {"channel.subscribe", "1", {BC}, {NULL}, SUBS, BC, BC, 0, ev_subscribe},
    {"channel.subscription.end", "1", {BC}, {NULL}, SUBS, BC, BC, 0, ev_subscribe},
    {"channel.subscription.gift", "1", {BC}, {NULL}, SUBS, BC, BC, 0, ev_sub_gift},
    {"channel.subscription.message", "1", {BC}, {NULL}, SUBS, BC, BC, 0, ev_sub_message},
    {"channel.cheer", "1", {BC}, {NULL}, "bits:read", BC, BC, 0, ev_cheer},
    {"channel.raid", "1", {RAID_KEYS}, {NULL}, NULL, NULL, RAID_KEYS, 0, ev_raid},
    {"channel.ban", "1", {BC}, {NULL}, "channel:moderate", BC, BC, 0, ev_ban},
    {"channel.unban", "1", {BC}, {NULL}, "channel:moderate", BC, BC, 0, ev_unban},
    {"channel.moderator.add", "1", {BC}, {NULL}, "moderation:read", BC, BC, 0, ev_moderator},
    {"channel.moderator.remove", "1", {BC}, {NULL}, "moderation:read", BC, BC, 0, ev_moderator},
    {"stream.online", "1", {BC}, {NULL}, NULL, NULL, BC, 0, ev_stream_online},
    {"stream.offline", "1", {BC}, {NULL}, NULL, NULL, BC, 0, ev_stream_offline},
    {"channel.update", "2", {BC}, {NULL}, NULL, NULL, BC, 0, ev_channel_update},
    {"channel.channel_points_custom_reward_redemption.add", "1", {BC}, {"reward_id"},
     "channel:read:redemptions|channel:manage:redemptions", BC, BC, 0, ev_redemption},
    {"channel.poll.begin", "1", {BC}, {NULL}, POLLS, BC, BC, 0, ev_poll_begin},
    {"channel.poll.progress", "1", {BC}, {NULL}, POLLS, BC, BC, 0, ev_poll_progress},
    {"channel.poll.end", "1", {BC}, {NULL}, POLLS, BC, BC, 0, ev_poll_end},
    {"channel.prediction.begin", "1", {BC}, {NULL}, PREDS, BC, BC, 0, ev_prediction_begin},
    {"channel.prediction.progress", "1", {BC}, {NULL}, PREDS, BC, BC, 0, ev_prediction_progress},
    {"channel.prediction.lock", "1", {BC}, {NULL}, PREDS, BC, BC, 0, ev_prediction_lock},
    {"channel.prediction.end", "1", {BC}, {NULL}, PREDS, BC, BC, 0, ev_prediction_end},
    {"channel.hype_train.begin", "1", {BC}, {NULL}, "channel:read:hype_train", BC, BC, 0, ev_hype_begin_v1},
    {"channel.hype_train.begin", "2", {BC}, {NULL}, "channel:read:hype_train", BC, BC, 0, ev_hype_begin},
    {"channel.hype_train.end", "1", {BC}, {NULL}, "channel:read:hype_train", BC, BC, 0, ev_hype_end_v1},
    {"channel.hype_train.end", "2", {BC}, {NULL}, "channel:read:hype_train", BC, BC, 0, ev_hype_end},
    {"channel.shoutout.create", "1", {BC, MOD}, {NULL}, SHOUT, MOD, BC, 0, ev_shoutout_create},
    {"channel.shoutout.receive", "1", {BC, MOD}, {NULL}, SHOUT, MOD, BC, 0, ev_shoutout_receive},
    {"channel.ad_break.begin", "1", {BC}, {NULL}, "channel:read:ads", BC, BC, 0, ev_ad_break},
    {"user.update", "1", {"user_id"}, {NULL}, NULL, NULL, "user_id", 0, ev_user_update},
    {"conduit.shard.disabled", "1", {"client_id"}, {"conduit_id"}, NULL, NULL, "client_id", TY_CLIENT,
     ev_shard_disabled},
    {"user.authorization.grant", "1", {"client_id"}, {NULL}, NULL, NULL, "client_id",
     TY_CLIENT | TY_NO_WS, ev_authorization},
    {"user.authorization.revoke", "1", {"client_id"}, {NULL}, NULL, NULL, "client_id",
     TY_CLIENT | TY_NO_WS, ev_authorization},
};

const evtype_t *types_table(size_t *n)
{
    *n = sizeof types / sizeof types[0];
    return types;
}

const evtype_t *type_find(const char *type, const char *version)
{
    const evtype_t *last = NULL;
    if (!type)
        return NULL;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        if (strcmp(types[i].type, type))
            continue;
        if (version && !strcmp(types[i].version, version))
            return &types[i];
        last = &types[i];
    }
    return version ? NULL : last;
}

/* Is alternative list "a|b|c" holding name? */
int alt_has(const char *alts, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = alts; p && *p;) {
        const char *bar = strchr(p, '|');
        size_t l = bar ? (size_t)(bar - p) : strlen(p);
        if (l == nl && !memcmp(p, name, l))
            return 1;
        p = bar ? bar + 1 : NULL;
    }
    return 0;
}

/* The condition's value for alternatives "a|b": the first non-empty one. */
const char *cond_alt(const cJSON *cond, const char *alts, char *field, size_t fn)
{
    for (const char *p = alts; p && *p;) {
        const char *bar = strchr(p, '|');
        size_t l = bar ? (size_t)(bar - p) : strlen(p);
        char k[64];
        if (l < sizeof k) {
            memcpy(k, p, l);
            k[l] = 0;
            const char *v = jstr(cond, k);
            if (v && *v) {
                if (field)
                    snprintf(field, fn, "%s", k);
                return v;
            }
        }
        p = bar ? bar + 1 : NULL;
    }
    return NULL;
}

int type_check_condition(const evtype_t *t, const cJSON *cond, char *msg, size_t mn)
{
    for (int i = 0; i < TY_MAX_COND && t->cond[i]; i++) {
        const char *f = t->cond[i];
        if (strchr(f, '|')) {
            int given = 0;
            for (const char *p = f; p && *p;) {
                const char *bar = strchr(p, '|');
                size_t l = bar ? (size_t)(bar - p) : strlen(p);
                char k[64];
                if (l < sizeof k) {
                    memcpy(k, p, l);
                    k[l] = 0;
                    const char *v = jstr(cond, k);
                    given += v && *v;
                }
                p = bar ? bar + 1 : NULL;
            }
            if (given != 1) {
                snprintf(msg, mn,
                         "The condition object must have exactly one of the fields %s", f);
                return 0;
            }
            continue;
        }
        const char *v = jstr(cond, f);
        if (!v || !*v) {
            snprintf(msg, mn, "The condition object is missing one or more required fields: %s", f);
            return 0;
        }
    }
    return 1;
}
