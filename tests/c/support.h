/* support.h - TAP output, the emulator as a child process, and loop waiting for the
 * C tests of the core. Header-only: each test is one translation unit. */
#ifndef TW_TEST_SUPPORT_H
#define TW_TEST_SUPPORT_H

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "twconduit.h"

static int tap_n, tap_failed;

static __attribute__((unused)) void ok(int cond, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("%sok %d - ", cond ? "" : "not ", ++tap_n);
  vprintf(fmt, ap);
  printf("\n");
  fflush(stdout);
  va_end(ap);
  if (!cond) tap_failed++;
}

static __attribute__((unused)) int done_testing(void) {
  printf("1..%d\n", tap_n);
  return tap_failed ? 1 : 0;
}

static __attribute__((unused)) double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct mock {
  pid_t pid;
  FILE *out;
  char api_base[128], auth_base[128], eventsub_ws[128], control[128];
  char eventsub_wss[128]; /* "" unless started with --tls-cert / --tls-key */
  char client_id[128], client_secret[128];
} mock;

static __attribute__((unused)) void copy_field(cJSON *o, const char *k, char *dst, size_t n) {
  cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  snprintf(dst, n, "%s", cJSON_IsString(v) ? v->valuestring : "");
}

/* Starts the emulator (TWCONDUIT_MOCK or build/bin/twconduit-mock) on a free port, with
 * extra command-line arguments: mock_start(&m) or mock_start(&m, "--tls-cert", crt, ...). */
#define mock_start(...) mock_start_args(__VA_ARGS__, (const char *)NULL)
static __attribute__((unused)) int mock_start_args(mock *m, ...) {
  const char *bin = getenv("TWCONDUIT_MOCK");
  if (!bin) bin = "build/bin/twconduit-mock";
  const char *argv[32] = {bin, "--port", "0"};
  int argc = 3;
  va_list ap;
  va_start(ap, m);
  for (const char *a; (a = va_arg(ap, const char *)) != NULL;)
    if (argc < 31) argv[argc++] = a;
  va_end(ap);
  argv[argc] = NULL;
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execv(bin, (char *const *)argv);
    _exit(127);
  }
  close(fds[1]);
  m->pid = pid;
  m->out = fdopen(fds[0], "r");
  char line[2048];
  if (!m->out || !fgets(line, sizeof line, m->out)) return -1;
  cJSON *o = cJSON_Parse(line);
  if (!o) return -1;
  copy_field(o, "api_base", m->api_base, sizeof m->api_base);
  copy_field(o, "auth_base", m->auth_base, sizeof m->auth_base);
  copy_field(o, "eventsub_ws", m->eventsub_ws, sizeof m->eventsub_ws);
  copy_field(o, "eventsub_wss", m->eventsub_wss, sizeof m->eventsub_wss);
  copy_field(o, "control", m->control, sizeof m->control);
  copy_field(o, "client_id", m->client_id, sizeof m->client_id);
  copy_field(o, "client_secret", m->client_secret, sizeof m->client_secret);
  cJSON_Delete(o);
  return 0;
}

static __attribute__((unused)) void mock_stop(mock *m) {
  if (m->pid > 0) {
    kill(m->pid, SIGTERM);
    waitpid(m->pid, NULL, 0);
    m->pid = 0;
  }
  if (m->out) fclose(m->out);
  m->out = NULL;
}

static __attribute__((unused)) size_t collect(char *p, size_t sz, size_t n, void *ud) {
  char **buf = ud;
  size_t old = *buf ? strlen(*buf) : 0;
  char *q = realloc(*buf, old + sz * n + 1);
  if (!q) return 0;
  memcpy(q + old, p, sz * n);
  q[old + sz * n] = 0;
  *buf = q;
  return sz * n;
}

/* Calls the control API; returns the parsed answer (caller frees) or NULL. */
static __attribute__((unused)) cJSON *mock_call(mock *m, const char *method, const char *path, const char *body) {
  CURL *e = curl_easy_init();
  char url[512], *resp = NULL;
  snprintf(url, sizeof url, "%s%s", m->control, path);
  struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
  if (body) curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &resp);
  curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
  CURLcode rc = curl_easy_perform(e);
  curl_slist_free_all(h);
  curl_easy_cleanup(e);
  cJSON *o = rc == CURLE_OK && resp ? cJSON_Parse(resp) : NULL;
  free(resp);
  return o;
}

/* Steps the client until cond(arg) or the deadline; returns cond's last value. */
static __attribute__((unused)) int wait_until(tw_client *c, int (*cond)(void *), void *arg, double seconds) {
  double end = now_s() + seconds;
  while (!cond(arg)) {
    if (now_s() > end) return 0;
    tw_client_step(c, 50);
  }
  return 1;
}

/* ---- a client of the emulator -------------------------------------------------------- */

/* o (from TW_CLIENT_OPTS_INIT, with whatever else the test sets) gets the emulator's
 * credentials and URLs where the test left them NULL. */
static __attribute__((unused)) void mock_client_opts(const mock *m, tw_client_opts *o) {
  if (!o->client_id) o->client_id = m->client_id;
  if (!o->client_secret) o->client_secret = m->client_secret;
  if (!o->api_base) o->api_base = m->api_base;
  if (!o->auth_base) o->auth_base = m->auth_base;
  if (!o->eventsub_ws) o->eventsub_ws = m->eventsub_ws;
}

typedef struct emu_conduit {
  tw_client *c;      /* NULL when the client could not be made */
  tw_conduit *cd;    /* NULL when the conduit could not be opened */
  char id[64];       /* the conduit's id ("" before it has one) */
  tw_error err;
} emu_conduit;

/* A client of the emulator (options o, see mock_client_opts; events to fn(user)) with a
 * conduit of `shards` shards; returns whether ready(ready_arg) came true within `seconds`
 * (e->c and e->cd are set whatever it returns). */
static __attribute__((unused)) int emu_conduit_open(emu_conduit *e, const mock *m, tw_client_opts *o, tw_event_fn fn,
                                                    void *user, size_t shards, int (*ready)(void *), void *ready_arg,
                                                    double seconds) {
  memset(e, 0, sizeof *e);
  mock_client_opts(m, o);
  e->c = tw_client_new(o, &e->err);
  if (!e->c) return 0;
  tw_client_on_event(e->c, fn, user);
  tw_conduit_opts co = {.shards = shards};
  e->cd = tw_conduit_open(e->c, &co, &e->err);
  int up = e->cd && wait_until(e->c, ready, ready_arg, seconds);
  const char *id = e->cd ? tw_conduit_id(e->cd) : NULL;
  snprintf(e->id, sizeof e->id, "%s", id ? id : "");
  return up;
}

typedef struct helix_answer {
  int status, done;
} helix_answer;
static __attribute__((unused)) void helix_answered(void *user, const tw_response *r) {
  helix_answer *x = user;
  x->status = r->status;
  x->done = 1;
}
static __attribute__((unused)) int helix_done(void *a) { return ((helix_answer *)a)->done; }

/* Subscribes stream.online of channels first .. first+n-1 over conduit cid, one request
 * at a time; chans gets them as a JSON array of strings. Returns how many Twitch took. */
static __attribute__((unused)) int subscribe_channels(tw_client *c, const char *cid, int first, int n, char *chans,
                                                      size_t cap) {
  int subs = 0;
  size_t len = (size_t)snprintf(chans, cap, "[");
  for (int ch = 0; ch < n; ch++) {
    char body[512];
    snprintf(body, sizeof body,
             "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"%d\"},"
             "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
             first + ch, cid);
    helix_answer x = {0};
    tw_error err;
    if (tw_helix(c, "POST", "/eventsub/subscriptions", body, strlen(body), helix_answered, &x, &err) == 0 &&
        wait_until(c, helix_done, &x, 5) && x.status == 202)
      subs++;
    if (len < cap) len += (size_t)snprintf(chans + len, cap - len, "%s\"%d\"", ch ? "," : "", first + ch);
  }
  if (len < cap) snprintf(chans + len, cap - len, "]");
  return subs;
}

/* ---- a set of message ids ----------------------------------------------------------- */
typedef struct idset {
  char **v;
  size_t cap, n;
} idset;

static __attribute__((unused)) uint64_t h64(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static __attribute__((unused)) void idset_free(idset *s) {
  for (size_t i = 0; i < s->cap; i++) free(s->v[i]);
  free(s->v);
  memset(s, 0, sizeof *s);
}

/* returns 1 if added, 0 if already there */
static __attribute__((unused)) int idset_add(idset *s, const char *id) {
  if ((s->n + 1) * 2 > s->cap) {
    size_t nc = s->cap ? s->cap * 2 : 1024;
    char **nv = calloc(nc, sizeof *nv);
    for (size_t i = 0; i < s->cap; i++)
      if (s->v[i]) {
        size_t j = h64(s->v[i]) & (nc - 1);
        while (nv[j]) j = (j + 1) & (nc - 1);
        nv[j] = s->v[i];
      }
    free(s->v);
    s->v = nv;
    s->cap = nc;
  }
  size_t j = h64(id) & (s->cap - 1);
  while (s->v[j]) {
    if (strcmp(s->v[j], id) == 0) return 0;
    j = (j + 1) & (s->cap - 1);
  }
  s->v[j] = strdup(id);
  s->n++;
  return 1;
}

static __attribute__((unused)) int idset_has(const idset *s, const char *id) {
  if (!s->cap) return 0;
  size_t j = h64(id) & (s->cap - 1);
  while (s->v[j]) {
    if (strcmp(s->v[j], id) == 0) return 1;
    j = (j + 1) & (s->cap - 1);
  }
  return 0;
}


/* A number field of a JSON object, -1 when absent. */
static __attribute__((unused)) int json_int(cJSON *o, const char *k) {
  cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valueint : -1;
}

/* The session id the emulator (Twitch) has for shard `id` of conduit cid, into out ("" when none). */
static __attribute__((unused)) void mock_shard_session(mock *m, const char *cid, const char *id, char *out, size_t n) {
  out[0] = 0;
  cJSON *st = mock_call(m, "GET", "/state", NULL);
  cJSON *c;
  cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(st, "conduits")) {
    cJSON *cidv = cJSON_GetObjectItemCaseSensitive(c, "id");
    if (!cJSON_IsString(cidv) || strcmp(cidv->valuestring, cid) != 0) continue;
    cJSON *sh;
    cJSON_ArrayForEach(sh, cJSON_GetObjectItemCaseSensitive(c, "shards")) {
      cJSON *sid = cJSON_GetObjectItemCaseSensitive(sh, "id");
      if (!cJSON_IsString(sid) || strcmp(sid->valuestring, id) != 0) continue;
      cJSON *tr = cJSON_GetObjectItemCaseSensitive(sh, "transport");
      cJSON *s = cJSON_GetObjectItemCaseSensitive(tr ? tr : sh, "session_id");
      if (cJSON_IsString(s)) snprintf(out, n, "%s", s->valuestring);
    }
  }
  cJSON_Delete(st);
}

/* The name of an event type, for test logs. */
static __attribute__((unused)) const char *ev_name(tw_event_type t) {
  switch (t) {
  case TW_EV_NOTIFICATION: return "notification";
  case TW_EV_REVOCATION: return "revocation";
  case TW_EV_READY: return "ready";
  case TW_EV_SHARD_ENABLED: return "shard_enabled";
  case TW_EV_SHARD_DISABLED: return "shard_disabled";
  case TW_EV_RECONNECT: return "reconnect";
  case TW_EV_ERROR: return "error";
  case TW_EV_TOKEN: return "token";
  case TW_EV_FREED: return "freed";
  case TW_EV_CONDUIT_STARTED: return "conduit_started";
  case TW_EV_SHARD_RELEASED: return "shard_released";
  case TW_EV_SHARD_LOST: return "shard_lost";
  case TW_EV_WS_CONNECTED: return "ws_connected";
  case TW_EV_WS_RECONNECTED: return "ws_reconnected";
  case TW_EV_WS_DISCONNECTED: return "ws_disconnected";
  case TW_EV_WS_TOKEN: return "ws_token";
  case TW_EV_QUEUED: return "queued";
  }
  return "?";
}

/* ---- scenarios, each in a child process ------------------------------------------- */
/* A scenario reports its checks on stderr and fails its child process; the parent
 * prints one TAP line a scenario, so a sanitizer abort is that scenario's failure and
 * the others still run. */
static int child_failed;

static __attribute__((unused)) void check(int cond, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "#   %s: ", cond ? "pass" : "FAIL");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  if (!cond) child_failed = 1;
}

typedef struct scenario {
  const char *name, *what;
  void (*fn)(void);
} scenario;

static __attribute__((unused)) int passed_line(const scenario *sc, int status) {
  int passed = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  ok(passed, "%s: %s%s", sc->name, sc->what,
     passed ? "" : (WIFEXITED(status) && WEXITSTATUS(status) == 1 ? "" : " [crashed or sanitizer abort]"));
  return passed;
}

/* Runs the n scenarios one after the other, each in a child with the emulator *m started
 * for it (only the one named by the environment variable only_var when that is set). */
static __attribute__((unused)) int run_scenarios(const scenario *scs, size_t n, mock *m, const char *only_var) {
  const char *only = only_var ? getenv(only_var) : NULL;
  for (size_t i = 0; i < n; i++) {
    const scenario *sc = &scs[i];
    if (only && strcmp(only, sc->name) != 0) continue;
    fprintf(stderr, "# %s\n", sc->name);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
      if (mock_start(m) != 0) {
        fprintf(stderr, "# the emulator does not start\n");
        exit(2);
      }
      sc->fn();
      mock_stop(m);
      exit(child_failed); /* exit: LeakSanitizer checks the child */
    }
    int status = 0;
    waitpid(pid, &status, 0);
    passed_line(sc, status);
  }
  return done_testing();
}


/* A listening unix socket at path (replaced if it exists): the fd, or -1. */
static __attribute__((unused)) int listen_unix(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un a;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  snprintf(a.sun_path, sizeof a.sun_path, "%.100s", path);
  unlink(path);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 16) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  return fd;
}

#endif
