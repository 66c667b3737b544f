/* bench_util.h - shared pieces of the C benchmark clients: the emulator's addresses
 * (from the environment the runner sets), its control API over libcurl, resource
 * readings (getrusage, VmRSS) and the fd limit. Header-only, one translation unit each. */
#ifndef TW_BENCH_UTIL_H
#define TW_BENCH_UTIL_H

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

typedef struct bench_env {
  const char *api, *auth, *ws, *control, *client_id, *client_secret;
} bench_env;

static __attribute__((unused)) int bench_env_load(bench_env *e) {
  e->api = getenv("TWB_API_BASE");
  e->auth = getenv("TWB_AUTH_BASE");
  e->ws = getenv("TWB_EVENTSUB_WS");
  e->control = getenv("TWB_CONTROL");
  e->client_id = getenv("TWB_CLIENT_ID");
  e->client_secret = getenv("TWB_CLIENT_SECRET");
  if (!e->api || !e->auth || !e->ws || !e->control || !e->client_id || !e->client_secret) {
    fprintf(stderr, "bench: TWB_API_BASE, TWB_AUTH_BASE, TWB_EVENTSUB_WS, TWB_CONTROL, TWB_CLIENT_ID and "
                    "TWB_CLIENT_SECRET must be set (bench/run.lua sets them)\n");
    return -1;
  }
  return 0;
}

static __attribute__((unused)) double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* user + system CPU seconds of this process */
static __attribute__((unused)) double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         (double)ru.ru_stime.tv_usec / 1e6;
}

/* VmRSS of this process in KiB, from /proc/self/status */
static __attribute__((unused)) long rss_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "VmRSS:", 6) == 0) {
      kb = strtol(line + 6, NULL, 10);
      break;
    }
  fclose(f);
  return kb;
}

static __attribute__((unused)) void raise_nofile(rlim_t want) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur >= want) return;
  struct rlimit nr = {want, rl.rlim_max > want ? rl.rlim_max : want};
  if (setrlimit(RLIMIT_NOFILE, &nr) != 0) {
    nr.rlim_cur = rl.rlim_max;
    nr.rlim_max = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nr);
  }
}

/* one figure per line: "key=value", read by bench/run.lua */
static __attribute__((unused)) void put(const char *key, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("%s=", key);
  vprintf(fmt, ap);
  printf("\n");
  fflush(stdout);
  va_end(ap);
}

static size_t bench_collect(char *p, size_t sz, size_t n, void *ud) {
  char **buf = ud;
  size_t old = *buf ? strlen(*buf) : 0;
  char *q = realloc(*buf, old + sz * n + 1);
  if (!q) return 0;
  memcpy(q + old, p, sz * n);
  q[old + sz * n] = 0;
  *buf = q;
  return sz * n;
}

/* An HTTP call with a JSON (or form) body; returns the parsed answer or NULL. */
static __attribute__((unused)) cJSON *http_json(const char *method, const char *url, const char *body,
                                                const char *bearer, const char *client_id, int *status) {
  CURL *e = curl_easy_init();
  char *resp = NULL, hb[512];
  struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
  if (bearer) {
    snprintf(hb, sizeof hb, "Authorization: Bearer %s", bearer);
    h = curl_slist_append(h, hb);
  }
  if (client_id) {
    snprintf(hb, sizeof hb, "Client-Id: %s", client_id);
    h = curl_slist_append(h, hb);
  }
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
  if (body) curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, bench_collect);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &resp);
  curl_easy_setopt(e, CURLOPT_TIMEOUT, 60L);
  CURLcode rc = curl_easy_perform(e);
  long st = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
  if (status) *status = rc == CURLE_OK ? (int)st : 0;
  curl_slist_free_all(h);
  curl_easy_cleanup(e);
  cJSON *o = rc == CURLE_OK && resp ? cJSON_Parse(resp) : NULL;
  free(resp);
  return o;
}

static __attribute__((unused)) cJSON *control(const bench_env *e, const char *method, const char *path,
                                              const char *body) {
  char url[512];
  snprintf(url, sizeof url, "%s%s", e->control, path);
  return http_json(method, url, body, NULL, NULL, NULL);
}

/* a dotted path into a JSON object ("helix_calls.total"); numbers only */
static __attribute__((unused)) double jnum(cJSON *o, const char *path) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", path);
  cJSON *cur = o;
  for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, "."))
    cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
  return cJSON_IsNumber(cur) ? cur->valuedouble : -1;
}

static __attribute__((unused)) const char *jstr(cJSON *o, const char *key) {
  cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Helix calls counted by the emulator so far: total and Update Conduit Shards */
static __attribute__((unused)) void helix_calls(const bench_env *e, double *total, double *patches) {
  cJSON *st = control(e, "GET", "/state", NULL);
  *total = jnum(st, "helix_calls.total");
  cJSON *by = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(st, "helix_calls"), "by_route");
  cJSON *p = cJSON_GetObjectItemCaseSensitive(by, "PATCH /eventsub/conduits/shards");
  *patches = cJSON_IsNumber(p) ? p->valuedouble : 0;
  cJSON_Delete(st);
}

#define BENCH_NCHAN 64
#define BENCH_CHAN0 30000

/* the channels as a JSON array: ["30000","30001",...] */
static __attribute__((unused)) void chan_list(char *out, size_t n, int nchan) {
  size_t k = (size_t)snprintf(out, n, "[");
  for (int i = 0; i < nchan && k < n; i++) k += (size_t)snprintf(out + k, n - k, "%s\"%d\"", i ? "," : "", BENCH_CHAN0 + i);
  if (k < n) snprintf(out + k, n - k, "]");
}

#endif
