/* Minimal test client for twconduit-mock: process control, HTTP (libcurl easy),
 * a raw-socket websocket client and TAP output. Independent of the product. */
#ifndef MOCKTEST_H
#define MOCKTEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <cjson/cJSON.h>

/* ---- TAP ---- */
void t_ok(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int t_done(void); /* prints the plan, returns exit status */
void t_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- emulator process ---- */
typedef struct {
    pid_t pid;
    int port;
    char base[64];   /* http://127.0.0.1:P */
    char ws[64];     /* ws path host:port */
    char client_id[128], client_secret[128];
    char token[128];
    cJSON *hello;
} mock_t;
int mock_start(mock_t *m, const char *config_json); /* 0 on success */
int mock_stop(mock_t *m);                            /* returns exit status */

/* ---- HTTP ---- */
typedef struct {
    long status;
    char *body;
    size_t len;
    char headers[4096];
    cJSON *json;
} resp_t;
/* hdrs: NULL-terminated array of "Name: value" */
int http(resp_t *r, const char *method, const char *url, const char *body, const char **hdrs);
void resp_free(resp_t *r);
const char *resp_header(resp_t *r, const char *name, char *out, size_t n);
/* helix call with the mock's token and client id; path like "/eventsub/conduits" */
int helix(mock_t *m, resp_t *r, const char *method, const char *path, const char *body);
int control(mock_t *m, resp_t *r, const char *method, const char *path, const char *body);
/* a control call's parsed answer (caller frees; NULL when not JSON), its status in *status */
cJSON *control_json(mock_t *m, const char *method, const char *path, const char *body, long *status);
int get_token(mock_t *m);
/* helix call with another token (a user token) and the mock's client id */
int helix_as(mock_t *m, const char *token, resp_t *r, const char *method, const char *path,
             const char *body);
/* POST /_mock/users: a user who authorised the app; user_id may be NULL, scopes a JSON
 * array. Writes the user's access token (and user id when uid_out is given). */
int mock_user(mock_t *m, const char *login, const char *user_id, const char *scopes_json,
              char *token_out, size_t n, char *uid_out, size_t un);
const char *js(const cJSON *o, const char *path); /* "a.b.0.c" string lookup */
double jn(const cJSON *o, const char *path);
const cJSON *jget(const cJSON *o, const char *path);

/* ---- websocket client ---- */
typedef struct {
    int fd;
    unsigned char *buf;
    size_t len, cap;
    int closed;       /* close frame or EOF seen */
    int close_code;   /* from the close frame, 0 = none (EOF) */
    int got_close_frame;
    int auto_pong;
    int pings;
    char session_id[64];
} wsc_t;
int ws_connect(wsc_t *w, int port, const char *path_and_query);
/* next text message, waits up to timeout_ms; returns malloc'd string or NULL on close/timeout */
char *ws_recv(wsc_t *w, int timeout_ms, int *opcode);
/* next JSON message (skips nothing) */
cJSON *ws_recv_json(wsc_t *w, int timeout_ms);
/* waits for a message whose metadata.message_type equals type; other messages are dropped */
cJSON *ws_wait_type(wsc_t *w, const char *type, int timeout_ms);
int ws_send_text(wsc_t *w, const char *s);
int ws_send_close(wsc_t *w, int code);
/* waits for the server to close; returns close code (0 if EOF w/o frame, -1 timeout) */
int ws_wait_close(wsc_t *w, int timeout_ms);
void ws_free(wsc_t *w);
/* connect + read welcome; fills session_id */
int ws_open_session(wsc_t *w, int port, const char *query);

/* ---- raw HTTP/1.1 connection: requests written byte for byte ---- */
typedef struct {
    int fd;
    char *buf; /* received, not yet returned */
    size_t len, cap;
    int eof;
} rawc_t;
int raw_open(rawc_t *c, int port);
int raw_send(rawc_t *c, const char *bytes);
/* next response on the connection (Content-Length bodies); 0 ok, -1 timeout or EOF */
int raw_resp(rawc_t *c, resp_t *r, int timeout_ms);
/* waits for the server to close the connection: 1 closed, 0 timeout or data */
int raw_wait_eof(rawc_t *c, int timeout_ms);
void raw_close(rawc_t *c);

int64_t now_ms(void);
/* waits until fn(arg) returns nonzero, polling every 20 ms */
int wait_until(int (*fn)(void *), void *arg, int timeout_ms);

#endif
