/* Every subscription type twconduit-mock knows: a valid subscription (conduit
 * transport, app token) is accepted, the same without one required condition field and
 * with an unknown version is refused, a websocket subscription with the authorising
 * user's token is accepted (or refused where Twitch has no websocket support), and a
 * trigger delivers a well-formed event of that type. The list is Twitch's subscription
 * type reference, written out here independently of the emulator's table. */
#include "mocktest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mock_t m;

#define U "31337" /* the user in every condition; authorised the app with every scope */
#define BC "{\"broadcaster_user_id\":\"" U "\"}"
#define BCMOD "{\"broadcaster_user_id\":\"" U "\",\"moderator_user_id\":\"" U "\"}"

static const struct {
    const char *type, *version, *cond;
    int ws; /* websocket transport allowed */
    const char *keys[4]; /* event fields that must be present */
} types[] = {
    {"channel.chat.message", "1", "{\"broadcaster_user_id\":\"" U "\",\"user_id\":\"" U "\"}", 1,
     {"message.text", "chatter_user_id", "message_id", "badges"}},
    {"channel.follow", "2", BCMOD, 1, {"user_id", "user_login", "followed_at"}},
    {"channel.subscribe", "1", BC, 1, {"user_id", "tier", "is_gift"}},
    {"channel.subscription.end", "1", BC, 1, {"user_id", "tier", "is_gift"}},
    {"channel.subscription.gift", "1", BC, 1, {"user_id", "total", "tier", "is_anonymous"}},
    {"channel.subscription.message", "1", BC, 1, {"user_id", "message.text", "cumulative_months"}},
    {"channel.cheer", "1", BC, 1, {"user_id", "bits", "message", "is_anonymous"}},
    {"channel.raid", "1", "{\"to_broadcaster_user_id\":\"" U "\"}", 1,
     {"from_broadcaster_user_id", "to_broadcaster_user_id", "viewers"}},
    {"channel.ban", "1", BC, 1, {"user_id", "moderator_user_id", "banned_at", "is_permanent"}},
    {"channel.unban", "1", BC, 1, {"user_id", "moderator_user_id"}},
    {"channel.moderator.add", "1", BC, 1, {"user_id", "user_login"}},
    {"channel.moderator.remove", "1", BC, 1, {"user_id", "user_login"}},
    {"stream.online", "1", BC, 1, {"id", "type", "started_at"}},
    {"stream.offline", "1", BC, 1, {"broadcaster_user_login", "broadcaster_user_name"}},
    {"channel.update", "2", BC, 1, {"title", "language", "category_id", "content_classification_labels"}},
    {"channel.channel_points_custom_reward_redemption.add", "1", BC, 1,
     {"id", "reward.id", "status", "redeemed_at"}},
    {"channel.poll.begin", "1", BC, 1, {"id", "title", "choices.0.id", "ends_at"}},
    {"channel.poll.progress", "1", BC, 1, {"id", "choices.0.votes", "ends_at"}},
    {"channel.poll.end", "1", BC, 1, {"id", "choices.0.votes", "status", "ended_at"}},
    {"channel.prediction.begin", "1", BC, 1, {"id", "outcomes.0.id", "locks_at"}},
    {"channel.prediction.progress", "1", BC, 1, {"id", "outcomes.0.users", "locks_at"}},
    {"channel.prediction.lock", "1", BC, 1, {"id", "outcomes.1.channel_points", "locked_at"}},
    {"channel.prediction.end", "1", BC, 1, {"id", "winning_outcome_id", "status", "ended_at"}},
    {"channel.hype_train.begin", "1", BC, 1, {"id", "level", "top_contributions.0.user_id", "started_at"}},
    {"channel.hype_train.begin", "2", BC, 1, {"id", "level", "top_contributions.0.user_id", "started_at"}},
    {"channel.hype_train.end", "1", BC, 1, {"id", "level", "ended_at", "cooldown_ends_at"}},
    {"channel.hype_train.end", "2", BC, 1, {"id", "level", "ended_at", "cooldown_ends_at"}},
    {"channel.shoutout.create", "1", BCMOD, 1, {"to_broadcaster_user_id", "moderator_user_id", "viewer_count"}},
    {"channel.shoutout.receive", "1", BCMOD, 1, {"from_broadcaster_user_id", "viewer_count", "started_at"}},
    {"channel.ad_break.begin", "1", BC, 1, {"duration_seconds", "started_at", "requester_user_id"}},
    {"user.update", "1", "{\"user_id\":\"" U "\"}", 1, {"user_id", "user_login", "email"}},
    {"conduit.shard.disabled", "1", "{\"client_id\":\"%CID%\"}", 1, {"conduit_id", "shard_id", "status", "transport.method"}},
    {"user.authorization.grant", "1", "{\"client_id\":\"%CID%\"}", 0, {"client_id", "user_id", "user_login"}},
    {"user.authorization.revoke", "1", "{\"client_id\":\"%CID%\"}", 0, {"client_id", "user_id", "user_login"}},
};
#define NTYPES (sizeof types / sizeof types[0])

static char *cond_for(size_t i)
{
    const char *c = types[i].cond;
    const char *p = strstr(c, "%CID%");
    char *out = malloc(strlen(c) + strlen(m.client_id) + 1);
    if (!p) {
        strcpy(out, c);
        return out;
    }
    sprintf(out, "%.*s%s%s", (int)(p - c), c, m.client_id, p + 5);
    return out;
}

static long sub(const char *tok, const char *type, const char *ver, const char *cond,
                const char *tr, char *id_out)
{
    char b[2048];
    snprintf(b, sizeof b, "{\"type\":\"%s\",\"version\":\"%s\",\"condition\":%s,\"transport\":%s}",
             type, ver, cond, tr);
    resp_t r;
    helix_as(&m, tok, &r, "POST", "/eventsub/subscriptions", b);
    long st = r.status;
    if (id_out)
        snprintf(id_out, 64, "%s", js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "");
    if (st != 202 && st != 400 && st != 403)
        t_diag("%s v%s: %ld %s", type, ver, st, r.body ? r.body : "");
    resp_free(&r);
    return st;
}

int main(void)
{
    if (mock_start(&m, "{\"assign_window_s\":600,\"ping_interval_s\":600}") || get_token(&m)) {
        t_ok(0, "emulator started");
        return t_done();
    }
    char omni[128];
    t_ok(mock_user(&m, "omni", U,
                   "[\"user:read:chat\",\"moderator:read:followers\",\"channel:read:subscriptions\","
                   "\"bits:read\",\"channel:moderate\",\"moderation:read\",\"channel:read:redemptions\","
                   "\"channel:read:polls\",\"channel:manage:predictions\",\"channel:read:hype_train\","
                   "\"moderator:read:shoutouts\",\"channel:read:ads\"]",
                   omni, sizeof omni, NULL, 0) == 0,
         "a user with every scope");
    resp_t r;
    helix(&m, &r, "POST", "/eventsub/conduits", "{\"shard_count\":1}");
    char cid[64];
    snprintf(cid, sizeof cid, "%s", js(r.json, "data.0.id") ? js(r.json, "data.0.id") : "");
    resp_free(&r);
    wsc_t shard, plain;
    t_ok(ws_open_session(&shard, m.port, NULL) == 0 && ws_open_session(&plain, m.port, NULL) == 0,
         "a shard session and a plain websocket session");
    char b[512];
    snprintf(b, sizeof b,
             "{\"conduit_id\":\"%s\",\"shards\":[{\"id\":\"0\",\"transport\":{\"method\":\"websocket\","
             "\"session_id\":\"%s\"}}]}",
             cid, shard.session_id);
    helix(&m, &r, "PATCH", "/eventsub/conduits/shards", b);
    t_ok(r.status == 202 && cJSON_GetArraySize(jget(r.json, "errors")) == 0, "shard 0 assigned");
    resp_free(&r);
    char ctr[256], wtr[256];
    snprintf(ctr, sizeof ctr, "{\"method\":\"conduit\",\"conduit_id\":\"%s\"}", cid);
    snprintf(wtr, sizeof wtr, "{\"method\":\"websocket\",\"session_id\":\"%s\"}", plain.session_id);

    for (size_t i = 0; i < NTYPES; i++) {
        const char *ty = types[i].type, *ver = types[i].version;
        char *cond = cond_for(i);
        char sid[64];
        t_ok(sub(m.token, ty, ver, cond, ctr, sid) == 202 && sid[0], "%s v%s: valid conduit subscription -> 202",
             ty, ver);
        /* without its first required field */
        cJSON *c = cJSON_Parse(cond);
        cJSON_DeleteItemFromArray(c, 0);
        char *partial = cJSON_PrintUnformatted(c);
        cJSON_Delete(c);
        t_ok(sub(m.token, ty, ver, partial, ctr, NULL) == 400, "%s v%s: condition without %s -> 400", ty, ver,
             strchr(cond, '"') + 1);
        free(partial);
        t_ok(sub(m.token, ty, "99", cond, ctr, NULL) == 400, "%s: version 99 -> 400", ty);
        long wst = sub(omni, ty, ver, cond, wtr, NULL);
        t_ok(types[i].ws ? wst == 202 : wst == 400, "%s v%s: websocket with the authorising user's token -> %ld",
             ty, ver, wst);

        /* a trigger delivers a well-formed event on the conduit shard */
        snprintf(b, sizeof b, "{\"type\":\"%s\",\"version\":\"%s\",\"channels\":[\"" U "\"]}", ty, ver);
        resp_t tr;
        control(&m, &tr, "POST", "/trigger", b);
        cJSON *n = NULL;
        for (int k = 0; k < 5; k++) { /* the sub of this type is the newest on the shard */
            n = ws_wait_type(&shard, "notification", 3000);
            if (!n || !strcmp(js(n, "payload.subscription.id") ? js(n, "payload.subscription.id") : "", sid))
                break;
            cJSON_Delete(n);
            n = NULL;
        }
        const cJSON *ev = jget(n, "payload.event");
        int ok = tr.status == 200 && n && cJSON_IsObject(ev) &&
                 !strcmp(js(n, "metadata.subscription_type"), ty) &&
                 !strcmp(js(n, "metadata.subscription_version"), ver);
        const char *missing = NULL;
        for (int k = 0; k < 4 && types[i].keys[k] && ok; k++)
            if (!jget(ev, types[i].keys[k])) {
                ok = 0;
                missing = types[i].keys[k];
            }
        if (ok && strstr(cond, "\"broadcaster_user_id\"")) {
            const char *bc = js(ev, "broadcaster_user_id");
            ok = bc && !strcmp(bc, U) && js(ev, "broadcaster_user_login");
        }
        if (ok && !strcmp(ty, "channel.raid"))
            ok = !strcmp(js(ev, "to_broadcaster_user_id"), U);
        if (ok && strstr(cond, "client_id") && jget(ev, "client_id"))
            ok = !strcmp(js(ev, "client_id"), m.client_id);
        t_ok(ok, "%s v%s: trigger -> a notification with a well-formed event%s%s", ty, ver,
             missing ? ", missing " : "", missing ? missing : "");
        cJSON_Delete(n);
        resp_free(&tr);
        free(cond);
    }
    t_ok(sub(m.token, "channel.nonsense", "1", BC, ctr, NULL) == 400, "unknown type -> 400");
    resp_t x;
    helix(&m, &x, "POST", "/eventsub/subscriptions",
          "{\"type\":\"channel.follow\",\"version\":\"1\",\"condition\":" BCMOD ",\"transport\":{\"method\":"
          "\"conduit\",\"conduit_id\":\"x\"}}");
    t_ok(x.status == 400 && js(x.json, "message") &&
             !strcmp(js(x.json, "message"), "The combination of values in the version and type fields is not valid"),
         "channel.follow v1 -> 400 The combination of values in the version and type fields is not valid");
    resp_free(&x);
    t_ok(sub(m.token, "channel.raid", "1",
             "{\"to_broadcaster_user_id\":\"1\",\"from_broadcaster_user_id\":\"2\"}", ctr, NULL) == 400,
         "channel.raid with both from_ and to_broadcaster_user_id -> 400");
    ws_free(&shard);
    ws_free(&plain);
    t_ok(mock_stop(&m) == 0, "emulator exits 0");
    return t_done();
}
