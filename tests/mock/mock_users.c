/* Users and user tokens of twconduit-mock: POST /_mock/users, the authorization code
 * and refresh token grants, /oauth2/validate, and Twitch's token rules for Create
 * EventSub Subscription (each rule: the accepted and the refused side), listing by
 * token kind, the websocket limits and the cost rule. */
#include "mocktest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mock_t m;

static int msg_is(const resp_t *r, const char *msg)
{
    const char *v = js(r->json, "message");
    return v && !strcmp(v, msg);
}

static cJSON *ctl_json(const char *method, const char *path, const char *body, long *status)
{
    return control_json(&m, method, path, body, status);
}

static void token_req(resp_t *r, const char *form)
{
    char url[256];
    snprintf(url, sizeof url, "%s/oauth2/token", m.base);
    http(r, "POST", url, form, NULL);
}

static void validate(resp_t *r, const char *tok)
{
    char url[256], auth[256];
    snprintf(url, sizeof url, "%s/oauth2/validate", m.base);
    snprintf(auth, sizeof auth, "Authorization: OAuth %s", tok);
    const char *h[] = {auth, NULL};
    http(r, "GET", url, NULL, h);
}

/* Create EventSub Subscription with token tok; returns the status, *out keeps the response */
static long sub(const char *tok, const char *type, const char *ver, const char *cond,
                const char *tr, resp_t *out)
{
    char b[2048];
    snprintf(b, sizeof b, "{\"type\":\"%s\",\"version\":\"%s\",\"condition\":%s,\"transport\":%s}",
             type, ver, cond, tr);
    resp_t r;
    helix_as(&m, tok, &r, "POST", "/eventsub/subscriptions", b);
    long st = r.status;
    if (out)
        *out = r;
    else
        resp_free(&r);
    return st;
}

static void ws_tr(char *out, size_t n, const wsc_t *w)
{
    snprintf(out, n, "{\"method\":\"websocket\",\"session_id\":\"%s\"}", w->session_id);
}

static char alice[128], bob[128], alice_refresh[128], alice_code[128];
static char conduit_id[64];

static void test_users_and_oauth(void)
{
    resp_t r;
    control(&m, &r, "POST", "/users",
            "{\"login\":\"alice\",\"user_id\":\"4242\",\"scopes\":[\"user:read:chat\",\"bits:read\"]}");
    t_ok(r.status == 200 && js(r.json, "user_id") && !strcmp(js(r.json, "user_id"), "4242") &&
             !strcmp(js(r.json, "login"), "alice") && js(r.json, "access_token") &&
             js(r.json, "refresh_token") && js(r.json, "code"),
         "POST /_mock/users -> user_id, login, access_token, refresh_token, code");
    if (r.status == 200) {
        snprintf(alice, sizeof alice, "%s", js(r.json, "access_token"));
        snprintf(alice_refresh, sizeof alice_refresh, "%s", js(r.json, "refresh_token"));
        snprintf(alice_code, sizeof alice_code, "%s", js(r.json, "code"));
    }
    resp_free(&r);
    control(&m, &r, "POST", "/users", "{\"login\":\"bob\"}");
    t_ok(r.status == 200 && js(r.json, "user_id") && strlen(js(r.json, "user_id")) > 0 &&
             cJSON_GetArraySize(jget(r.json, "scopes")) == 0,
         "POST /_mock/users without user_id or scopes: an id is assigned, scopes []");
    if (r.status == 200)
        snprintf(bob, sizeof bob, "%s", js(r.json, "access_token"));
    resp_free(&r);
    long stc;
    cJSON_Delete(ctl_json("POST", "/users", "{\"scopes\":[]}", &stc));
    t_ok(stc == 400, "users: login missing -> 400");
    cJSON_Delete(ctl_json("POST", "/users", "{\"login\":\"x\",\"scopes\":\"chat\"}", &stc));
    t_ok(stc == 400, "users: scopes not an array -> 400");
    cJSON_Delete(ctl_json("POST", "/users", "{\"login\":\"x\",\"user_id\":\"12ab\"}", &stc));
    t_ok(stc == 400, "users: user_id not digits -> 400");
    cJSON_Delete(ctl_json("POST", "/users", "{\"login\":\"mallory\",\"user_id\":\"4242\"}", &stc));
    t_ok(stc == 400, "users: user_id of another login -> 400");
    cJSON *o = ctl_json("GET", "/users", NULL, &stc);
    t_ok(stc == 200 && cJSON_GetArraySize(jget(o, "users")) == 2 &&
             !strcmp(js(o, "users.0.login"), "alice"),
         "GET /_mock/users lists the users");
    cJSON_Delete(o);

    validate(&r, alice);
    t_ok(r.status == 200 && !strcmp(js(r.json, "client_id"), m.client_id) &&
             !strcmp(js(r.json, "login"), "alice") && !strcmp(js(r.json, "user_id"), "4242") &&
             cJSON_GetArraySize(jget(r.json, "scopes")) == 2 &&
             !strcmp(js(r.json, "scopes.0"), "user:read:chat") && jn(r.json, "expires_in") > 14000,
         "validate user token: client_id, login, user_id, scopes, expires_in");
    resp_free(&r);
    validate(&r, m.token);
    t_ok(r.status == 200 && !jget(r.json, "login") && !jget(r.json, "user_id") &&
             cJSON_GetArraySize(jget(r.json, "scopes")) == 0,
         "validate app token: no login or user_id, scopes []");
    resp_free(&r);

    char form[1024];
    snprintf(form, sizeof form,
             "client_id=%s&client_secret=%s&grant_type=authorization_code&code=%s"
             "&redirect_uri=http%%3A%%2F%%2Flocalhost%%2Fcb",
             m.client_id, "wrong", alice_code);
    token_req(&r, form);
    t_ok(r.status == 403, "authorization_code with a wrong secret -> 403");
    resp_free(&r);
    snprintf(form, sizeof form,
             "client_id=%s&client_secret=%s&grant_type=authorization_code&code=%s"
             "&redirect_uri=http%%3A%%2F%%2Flocalhost%%2Fcb",
             m.client_id, m.client_secret, alice_code);
    token_req(&r, form);
    char exch[128] = "";
    t_ok(r.status == 200 && js(r.json, "access_token") && js(r.json, "refresh_token") &&
             jn(r.json, "expires_in") > 14000 && cJSON_IsArray(jget(r.json, "scope")) &&
             !strcmp(js(r.json, "scope.1"), "bits:read") && !strcmp(js(r.json, "token_type"), "bearer"),
         "authorization_code -> access_token, refresh_token, expires_in, scope [...], bearer");
    if (js(r.json, "access_token"))
        snprintf(exch, sizeof exch, "%s", js(r.json, "access_token"));
    resp_free(&r);
    validate(&r, exch);
    t_ok(r.status == 200 && js(r.json, "user_id") && !strcmp(js(r.json, "user_id"), "4242"),
         "the exchanged token is alice's");
    resp_free(&r);
    token_req(&r, form);
    t_ok(r.status == 400 && msg_is(&r, "Invalid authorization code"),
         "the same code a second time -> 400 Invalid authorization code");
    resp_free(&r);

    snprintf(form, sizeof form, "client_id=%s&client_secret=%s&grant_type=refresh_token&refresh_token=%s",
             m.client_id, m.client_secret, alice_refresh);
    token_req(&r, form);
    char refreshed[128] = "", next_refresh[128] = "";
    t_ok(r.status == 200 && js(r.json, "access_token") && js(r.json, "refresh_token") &&
             strcmp(js(r.json, "refresh_token"), alice_refresh) &&
             cJSON_GetArraySize(jget(r.json, "scope")) == 2,
         "refresh_token -> a new access token and a new refresh token");
    if (r.status == 200) {
        snprintf(refreshed, sizeof refreshed, "%s", js(r.json, "access_token"));
        snprintf(next_refresh, sizeof next_refresh, "%s", js(r.json, "refresh_token"));
    }
    resp_free(&r);
    token_req(&r, form);
    t_ok(r.status == 400 && msg_is(&r, "Invalid refresh token"),
         "the old refresh token after use -> 400 Invalid refresh token (rotated)");
    resp_free(&r);
    snprintf(form, sizeof form, "client_id=%s&client_secret=%s&grant_type=refresh_token&refresh_token=%s",
             m.client_id, m.client_secret, next_refresh);
    token_req(&r, form);
    t_ok(r.status == 200, "the new refresh token works");
    resp_free(&r);
    validate(&r, refreshed);
    t_ok(r.status == 200 && !strcmp(js(r.json, "login"), "alice"), "the refreshed token validates");
    resp_free(&r);

    /* Helix with a user token */
    helix_as(&m, alice, &r, "GET", "/eventsub/subscriptions", NULL);
    char v[32] = "";
    t_ok(r.status == 200 && resp_header(&r, "Ratelimit-Remaining", v, sizeof v) && atoi(v) == 799,
         "Helix accepts the user token; its bucket is its own (remaining %s)", v);
    resp_free(&r);
    char url[256], auth[200];
    snprintf(url, sizeof url, "%s/helix/eventsub/subscriptions", m.base);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", alice);
    const char *h[] = {"Client-Id: someone-else", auth, NULL};
    http(&r, "GET", url, NULL, h);
    t_ok(r.status == 401 && msg_is(&r, "Client ID and OAuth token do not match"),
         "user token with another Client-Id -> 401");
    resp_free(&r);
    helix_as(&m, alice, &r, "GET", "/eventsub/conduits", NULL);
    t_ok(r.status == 401 && msg_is(&r, "Must provide valid app token."),
         "conduit endpoints refuse a user token -> 401");
    resp_free(&r);
    helix(&m, &r, "POST", "/eventsub/conduits", "{\"shard_count\":1}");
    if (js(r.json, "data.0.id"))
        snprintf(conduit_id, sizeof conduit_id, "%s", js(r.json, "data.0.id"));
    t_ok(r.status == 200 && conduit_id[0], "an app token creates a conduit");
    resp_free(&r);
}

static void test_rules(void)
{
    wsc_t w1;
    t_ok(ws_open_session(&w1, m.port, NULL) == 0, "websocket session");
    char tr[256], ctr[256], wh[256], cond[512];
    ws_tr(tr, sizeof tr, &w1);
    snprintf(ctr, sizeof ctr, "{\"method\":\"conduit\",\"conduit_id\":\"%s\"}", conduit_id);
    snprintf(wh, sizeof wh, "{\"method\":\"webhook\",\"callback\":\"http://127.0.0.1:9/cb\","
                            "\"secret\":\"0123456789abc\"}");
    const char *chat = "{\"broadcaster_user_id\":\"1\",\"user_id\":\"4242\"}";
    resp_t r;

    /* websocket transport needs a user token */
    t_ok(sub(m.token, "channel.chat.message", "1", chat, tr, &r) == 400 &&
             msg_is(&r, "invalid transport and auth combination"),
         "websocket transport with an app token -> 400 invalid transport and auth combination");
    resp_free(&r);
    t_ok(sub(alice, "channel.chat.message", "1", chat, tr, &r) == 202 &&
             jn(&*r.json, "data.0.cost") == 0 && !strcmp(js(r.json, "data.0.transport.method"), "websocket"),
         "websocket transport with the condition user's token and scope -> 202, cost 0");
    char chat_sub[64] = "";
    if (js(r.json, "data.0.id"))
        snprintf(chat_sub, sizeof chat_sub, "%s", js(r.json, "data.0.id"));
    t_ok(jn(r.json, "max_total_cost") == 10 && jn(r.json, "total") == 1,
         "websocket response: total and max_total_cost 10 of the user");
    resp_free(&r);
    t_ok(sub(alice, "channel.chat.message", "1", "{\"broadcaster_user_id\":\"1\",\"user_id\":\"999\"}",
             tr, &r) == 403 &&
             msg_is(&r, "subscription missing proper authorization"),
         "websocket: the token's user is not the condition's user -> 403");
    resp_free(&r);
    const char *bobchat;
    char bc[256], bob_id[32] = "";
    {
        resp_t v;
        validate(&v, bob);
        snprintf(bob_id, sizeof bob_id, "%s", js(v.json, "user_id") ? js(v.json, "user_id") : "");
        resp_free(&v);
    }
    snprintf(bc, sizeof bc, "{\"broadcaster_user_id\":\"1\",\"user_id\":\"%s\"}", bob_id);
    bobchat = bc;
    t_ok(sub(bob, "channel.chat.message", "1", bobchat, tr, &r) == 403 &&
             msg_is(&r, "subscription missing proper authorization"),
         "websocket: the condition's user without the type's scope -> 403");
    resp_free(&r);
    t_ok(sub(alice, "stream.online", "1", "{\"broadcaster_user_id\":\"555\"}", tr, &r) == 202 &&
             jn(r.json, "data.0.cost") == 1,
         "websocket: a type without scope for a user who did not authorise -> 202, cost 1");
    resp_free(&r);
    t_ok(sub(alice, "stream.online", "1", "{\"broadcaster_user_id\":\"4242\"}", tr, &r) == 202 &&
             jn(r.json, "data.0.cost") == 0,
         "websocket: the same type for the authorised user -> cost 0");
    resp_free(&r);

    /* conduit and webhook transports need an app token */
    t_ok(sub(alice, "stream.online", "1", "{\"broadcaster_user_id\":\"7\"}", ctr, &r) == 400 &&
             msg_is(&r, "auth must use app access token to create conduit subscription"),
         "conduit transport with a user token -> 400");
    resp_free(&r);
    t_ok(sub(alice, "stream.online", "1", "{\"broadcaster_user_id\":\"7\"}", wh, &r) == 400 &&
             msg_is(&r, "auth must use app access token to create webhook subscription"),
         "webhook transport with a user token -> 400");
    resp_free(&r);
    t_ok(sub(m.token, "stream.online", "1", "{\"broadcaster_user_id\":\"7\"}", ctr, &r) == 202 &&
             jn(r.json, "data.0.cost") == 1,
         "conduit transport with an app token -> 202, cost 1 (user 7 did not authorise)");
    resp_free(&r);
    t_ok(sub(m.token, "channel.chat.message", "1", chat, ctr, &r) == 202 && jn(r.json, "data.0.cost") == 0,
         "conduit subscription whose condition user authorised the app -> cost 0");
    resp_free(&r);
    t_ok(sub(m.token, "stream.online", "1", "{\"broadcaster_user_id\":\"7\"}", wh, &r) == 202,
         "webhook transport with an app token -> 202");
    resp_free(&r);

    /* conduit.shard.disabled: the token's own client only */
    snprintf(cond, sizeof cond, "{\"client_id\":\"%s\"}", m.client_id);
    t_ok(sub(m.token, "conduit.shard.disabled", "1", "{\"client_id\":\"other\"}", ctr, &r) == 403,
         "conduit.shard.disabled for another client_id (app token) -> 403");
    resp_free(&r);
    t_ok(sub(m.token, "conduit.shard.disabled", "1", cond, ctr, &r) == 202,
         "conduit.shard.disabled for the token's client (app token) -> 202");
    resp_free(&r);
    t_ok(sub(alice, "conduit.shard.disabled", "1", "{\"client_id\":\"other\"}", tr, &r) == 403,
         "conduit.shard.disabled for another client_id (user token, websocket) -> 403");
    resp_free(&r);
    t_ok(sub(alice, "conduit.shard.disabled", "1", cond, tr, &r) == 202,
         "conduit.shard.disabled for the token's client (user token, websocket) -> 202");
    resp_free(&r);
    t_ok(sub(alice, "user.authorization.revoke", "1", cond, tr, &r) == 400,
         "user.authorization.revoke over websocket -> 400 (webhook and conduit only)");
    resp_free(&r);
    t_ok(sub(m.token, "user.authorization.revoke", "1", cond, ctr, &r) == 202,
         "user.authorization.revoke over a conduit (app token) -> 202");
    resp_free(&r);

    /* listing and deleting by token kind */
    helix(&m, &r, "GET", "/eventsub/subscriptions", NULL);
    int app_ws = 0, app_n = cJSON_GetArraySize(jget(r.json, "data"));
    const cJSON *it;
    cJSON_ArrayForEach(it, jget(r.json, "data")) app_ws += !strcmp(js(it, "transport.method"), "websocket");
    t_ok(r.status == 200 && app_n == 5 && app_ws == 0 && jn(r.json, "total") == 5,
         "app token lists the conduit and webhook subscriptions only (%d, %d websocket)", app_n, app_ws);
    resp_free(&r);
    helix_as(&m, alice, &r, "GET", "/eventsub/subscriptions", NULL);
    int u_ws = 0, u_n = cJSON_GetArraySize(jget(r.json, "data"));
    cJSON_ArrayForEach(it, jget(r.json, "data")) u_ws += !strcmp(js(it, "transport.method"), "websocket");
    t_ok(r.status == 200 && u_n == 4 && u_ws == 4 && jn(r.json, "total_cost") == 2 &&
             jn(r.json, "max_total_cost") == 10,
         "alice's token lists her websocket subscriptions only (%d), total_cost 2 of 10", u_n);
    resp_free(&r);
    helix_as(&m, bob, &r, "GET", "/eventsub/subscriptions", NULL);
    t_ok(r.status == 200 && cJSON_GetArraySize(jget(r.json, "data")) == 0,
         "bob's token lists none of them");
    resp_free(&r);
    char p[256];
    snprintf(p, sizeof p, "/eventsub/subscriptions?id=%s", chat_sub);
    helix(&m, &r, "DELETE", p, NULL);
    t_ok(r.status == 404, "app token cannot delete a websocket subscription -> 404");
    resp_free(&r);
    helix_as(&m, alice, &r, "DELETE", p, NULL);
    t_ok(r.status == 204, "its user's token deletes it -> 204");
    resp_free(&r);

    /* at most 3 websocket connections with enabled subscriptions per user */
    wsc_t w[4];
    char trs[4][256];
    int opened = 1;
    for (int i = 0; i < 4; i++) {
        opened &= ws_open_session(&w[i], m.port, NULL) == 0;
        ws_tr(trs[i], sizeof trs[i], &w[i]);
    }
    t_ok(opened, "four more websocket sessions");
    /* alice holds w1 already: two more are allowed, a fourth connection is not */
    t_ok(sub(alice, "channel.cheer", "1", "{\"broadcaster_user_id\":\"4242\"}", trs[0], NULL) == 202 &&
             sub(alice, "channel.cheer", "1", "{\"broadcaster_user_id\":\"4242\"}", trs[1], NULL) == 202,
         "a user's second and third websocket connections -> 202");
    t_ok(sub(alice, "channel.cheer", "1", "{\"broadcaster_user_id\":\"4242\"}", trs[2], &r) == 429 &&
             msg_is(&r, "number of websocket transports limit exceeded"),
         "a fourth connection -> 429 number of websocket transports limit exceeded");
    resp_free(&r);
    t_ok(sub(alice, "channel.chat.message", "1", "{\"broadcaster_user_id\":\"2\",\"user_id\":\"4242\"}",
             trs[0], NULL) == 202,
         "more subscriptions on one of the three connections -> 202");
    t_ok(sub(bob, "stream.online", "1", "{\"broadcaster_user_id\":\"9\"}", trs[2], NULL) == 202,
         "another user's connections are counted apart -> 202");
    /* once w1 holds no enabled subscription of alice, a new connection is allowed */
    helix_as(&m, alice, &r, "GET", "/eventsub/subscriptions", NULL);
    cJSON_ArrayForEach(it, jget(r.json, "data"))
    {
        if (strcmp(js(it, "transport.session_id"), w1.session_id))
            continue;
        resp_t d;
        snprintf(p, sizeof p, "/eventsub/subscriptions?id=%s", js(it, "id"));
        helix_as(&m, alice, &d, "DELETE", p, NULL);
        resp_free(&d);
    }
    resp_free(&r);
    t_ok(sub(alice, "channel.cheer", "1", "{\"broadcaster_user_id\":\"4242\"}", trs[2], NULL) == 202,
         "after the first connection's subscriptions are gone, a new connection -> 202");

    /* 300 enabled subscriptions per connection (cost 0: carol authorised the app) */
    char carol[128], carol_id[32];
    mock_user(&m, "carol", NULL, "[\"user:read:chat\"]", carol, sizeof carol, carol_id, sizeof carol_id);
    int okn = 0;
    for (int i = 0; i < 299; i++) {
        snprintf(cond, sizeof cond, "{\"broadcaster_user_id\":\"%d\",\"user_id\":\"%s\"}", 20000 + i,
                 carol_id);
        okn += sub(carol, "channel.chat.message", "1", cond, trs[3], NULL) == 202;
    }
    /* bob's one on trs[3] makes 300 */
    t_ok(sub(bob, "stream.online", "1", "{\"broadcaster_user_id\":\"10\"}", trs[3], NULL) == 202,
         "300th subscription on one connection (another user's) -> 202");
    snprintf(cond, sizeof cond, "{\"broadcaster_user_id\":\"30000\",\"user_id\":\"%s\"}", carol_id);
    t_ok(okn == 299 && sub(carol, "channel.chat.message", "1", cond, trs[3], &r) == 429 &&
             msg_is(&r, "number of subscriptions per websocket transport limit exceeded"),
         "the 301st on that connection -> 429 (%d accepted before)", okn);
    resp_free(&r);

    /* websocket max_total_cost 10 per user: subscriptions of cost 1 */
    char dave[128];
    mock_user(&m, "dave", NULL, "[]", dave, sizeof dave, NULL, 0);
    okn = 0;
    for (int i = 0; i < 10; i++) {
        snprintf(cond, sizeof cond, "{\"broadcaster_user_id\":\"%d\"}", 40000 + i);
        okn += sub(dave, "stream.online", "1", cond, trs[1], NULL) == 202;
    }
    t_ok(okn == 10 && sub(dave, "stream.online", "1", "{\"broadcaster_user_id\":\"50000\"}", trs[1], &r) == 429 &&
             msg_is(&r, "The maximum total cost has been reached"),
         "websocket: the 11th subscription of cost 1 -> 429 maximum total cost (10 accepted)");
    resp_free(&r);

    for (int i = 0; i < 4; i++)
        ws_free(&w[i]);
    ws_free(&w1);
}

int main(void)
{
    if (mock_start(&m, "{\"assign_window_s\":600,\"ping_interval_s\":600}") || get_token(&m)) {
        t_ok(0, "emulator started");
        return t_done();
    }
    test_users_and_oauth();
    test_rules();
    t_ok(mock_stop(&m) == 0, "emulator exits 0");
    return t_done();
}
