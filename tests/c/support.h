/* support.h - TAP output, the emulator as a child process, and loop waiting for the
 * C tests of the core. Header-only: each test is one translation unit. */
#ifndef TW_TEST_SUPPORT_H
#define TW_TEST_SUPPORT_H

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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
  char client_id[128], client_secret[128];
} mock;

static __attribute__((unused)) void copy_field(cJSON *o, const char *k, char *dst, size_t n) {
  cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  snprintf(dst, n, "%s", cJSON_IsString(v) ? v->valuestring : "");
}

/* Starts the emulator (TWCONDUIT_MOCK or build/bin/twconduit-mock) on a free port. */
static __attribute__((unused)) int mock_start(mock *m) {
  const char *bin = getenv("TWCONDUIT_MOCK");
  if (!bin) bin = "build/bin/twconduit-mock";
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execl(bin, bin, "--port", "0", (char *)NULL);
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

#endif
