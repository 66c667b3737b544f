/* Users who authorised an app, and their tokens. No browser exists here: the control
 * call POST /_mock/users stands for the user completing Twitch's authorization code
 * flow and returns what the app would hold afterwards (tokens and the code). */
#include "mock.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define USER_TOKEN_TTL_S 14400.0 /* user access tokens: about 4 hours */

static void cerr(hreq_t *r, int status, const char *msg) { json_error(r, status, "Bad Request", msg); }

user_t *user_find(const char *client_id, const char *user_id)
{
    for (user_t *u = M->users; u; u = u->next)
        if (!strcmp(u->id, user_id) && !strcmp(u->client_id, client_id))
            return u;
    return NULL;
}

token_t *user_token_issue(user_t *u, const cJSON *scopes)
{
    token_t *t = xcalloc(1, sizeof *t);
    gen_token(t->tok, 31);
    gen_token(t->refresh, 51);
    snprintf(t->client_id, sizeof t->client_id, "%s", u->client_id);
    t->expires_at = emu_now() + USER_TOKEN_TTL_S;
    t->user = u;
    t->scopes = cJSON_Duplicate(scopes, 1);
    t->next = M->tokens;
    M->tokens = t;
    return t;
}

static int valid_id(const char *s)
{
    if (!*s || strlen(s) >= sizeof ((user_t *)0)->id)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

static cJSON *user_json(const user_t *u)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "user_id", u->id);
    cJSON_AddStringToObject(o, "login", u->login);
    cJSON_AddStringToObject(o, "client_id", u->client_id);
    cJSON_AddItemToObject(o, "scopes", cJSON_Duplicate(u->scopes, 1));
    return o;
}

static void users_create(hreq_t *r, cJSON *body)
{
    const char *login = jstr(body, "login");
    if (!login || !*login || strlen(login) >= sizeof ((user_t *)0)->login) {
        cerr(r, 400, "login is required: a string of 1 to 63 characters");
        return;
    }
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(body, "scopes");
    if (sc && !cJSON_IsArray(sc)) {
        cerr(r, 400, "scopes must be an array of strings");
        return;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, sc)
    {
        if (!cJSON_IsString(it) || !*it->valuestring) {
            cerr(r, 400, "scopes must be an array of strings");
            return;
        }
    }
    char uid[32] = "";
    const cJSON *ju = cJSON_GetObjectItemCaseSensitive(body, "user_id");
    if (cJSON_IsString(ju))
        snprintf(uid, sizeof uid, "%s", ju->valuestring);
    else if (cJSON_IsNumber(ju) && ju->valuedouble >= 1 && ju->valuedouble < 1e15 &&
             ju->valuedouble == floor(ju->valuedouble))
        snprintf(uid, sizeof uid, "%.0f", ju->valuedouble);
    else if (ju) {
        cerr(r, 400, "user_id must be a string of digits");
        return;
    }
    if (ju && !valid_id(uid)) {
        cerr(r, 400, "user_id must be a string of digits");
        return;
    }
    const char *cid = jstr(body, "client_id");
    const client_t *cl = NULL;
    for (int i = 0; i < M->nclients; i++)
        if (!cid || !strcmp(M->clients[i].id, cid)) {
            cl = &M->clients[i];
            break;
        }
    if (!cl) {
        cerr(r, 400, "unknown client_id");
        return;
    }
    /* a user id and a login name one person */
    for (user_t *u = M->users; u; u = u->next) {
        if (uid[0] && !strcmp(u->id, uid) && strcmp(u->login, login)) {
            cerr(r, 400, "user_id belongs to another login");
            return;
        }
        if (!strcmp(u->login, login)) {
            if (uid[0] && strcmp(u->id, uid)) {
                cerr(r, 400, "login belongs to another user_id");
                return;
            }
            snprintf(uid, sizeof uid, "%s", u->id);
        }
    }
    if (!uid[0]) {
        static unsigned long long next_id = 90000001ull;
        for (;;) {
            snprintf(uid, sizeof uid, "%llu", next_id++);
            int used = 0;
            for (user_t *u = M->users; u && !used; u = u->next)
                used = !strcmp(u->id, uid);
            if (!used)
                break;
        }
    }
    user_t *u = user_find(cl->id, uid);
    if (!u) {
        u = xcalloc(1, sizeof *u);
        snprintf(u->id, sizeof u->id, "%s", uid);
        snprintf(u->login, sizeof u->login, "%s", login);
        snprintf(u->client_id, sizeof u->client_id, "%s", cl->id);
        u->bucket = -1;
        user_t **pp = &M->users;
        while (*pp)
            pp = &(*pp)->next;
        *pp = u;
    }
    cJSON_Delete(u->scopes);
    u->scopes = sc ? cJSON_Duplicate(sc, 1) : cJSON_CreateArray();
    token_t *t = user_token_issue(u, u->scopes);
    gen_token(t->code, 31);
    cJSON *o = user_json(u);
    cJSON_AddStringToObject(o, "access_token", t->tok);
    cJSON_AddStringToObject(o, "refresh_token", t->refresh);
    cJSON_AddStringToObject(o, "code", t->code);
    cJSON_AddNumberToObject(o, "expires_in", USER_TOKEN_TTL_S);
    set_json(r, 200, o);
}

void c_users(hreq_t *r, cJSON *body)
{
    if (!strcmp(r->method, "GET")) {
        cJSON *o = cJSON_CreateObject();
        cJSON *a = cJSON_AddArrayToObject(o, "users");
        for (user_t *u = M->users; u; u = u->next)
            cJSON_AddItemToArray(a, user_json(u));
        set_json(r, 200, o);
        return;
    }
    if (strcmp(r->method, "POST")) {
        json_error(r, 404, "Not Found", "unknown control path");
        return;
    }
    if (!cJSON_IsObject(body)) {
        cerr(r, 400, "body must be a JSON object");
        return;
    }
    users_create(r, body);
}

void users_free_all(void)
{
    while (M->users) {
        user_t *u = M->users;
        M->users = u->next;
        cJSON_Delete(u->scopes);
        free(u);
    }
}
