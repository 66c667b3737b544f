/* util.c - errors, strings, buffers, backoff, time. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

void tw_err_set(tw_error *e, const char *code, int status, const char *fmt, ...) {
  if (!e) return;
  snprintf(e->code, sizeof e->code, "%s", code);
  e->status = status;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->message, sizeof e->message, fmt, ap);
  va_end(ap);
}

void tw_err_clear(tw_error *e) {
  if (!e) return;
  e->code[0] = 0;
  e->status = 0;
  e->message[0] = 0;
}

char *tw_strdup(const char *s) { return s ? strdup(s) : NULL; }

char *tw_strndup(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (!p) return NULL;
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

uint64_t tw_rand(uint64_t *rng) { /* xorshift64* */
  uint64_t x = *rng ? *rng : 0x9E3779B97F4A7C15ull;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *rng = x;
  return x * 0x2545F4914F6CDD1Dull;
}

uint64_t tw_backoff_ms(uint64_t *rng, double min_s, double max_s, unsigned attempt) {
  double hi = min_s;
  for (unsigned i = 0; i < attempt && hi < max_s; i++) hi *= 2;
  if (hi > max_s) hi = max_s;
  double lo = min_s < hi ? min_s : hi;
  double r = (double)(tw_rand(rng) >> 11) / (double)(1ull << 53);
  return (uint64_t)((lo + (hi - lo) * r) * 1000.0);
}

const char *tw_http_code(int status) {
  switch (status) {
  case 400: return "bad_request";
  case 401: return "unauthorized";
  case 403: return "forbidden";
  case 404: return "not_found";
  case 409: return "conflict";
  case 413: return "too_large";
  case 429: return "rate_limited";
  default: break;
  }
  if (status >= 500) return "server_error";
  if (status == 0) return "network";
  return "http_error"; /* any other 4xx, and a 1xx/3xx where an answer was expected */
}

const char *tw_close_status(int code) {
  switch (code) {
  case 4000: return "websocket_internal_error";
  case 4001: return "websocket_received_inbound_traffic";
  case 4002: return "websocket_failed_ping_pong";
  case 4003: return "websocket_connection_unused";
  case 4004: return "websocket_failed_to_reconnect";
  case 4005: return "websocket_network_timeout";
  case 4006: return "websocket_network_error";
  case 4007: return "websocket_invalid_reconnect";
  default: return "websocket_disconnected";
  }
}

int tw_buf_reserve(tw_buf *b, size_t n) {
  if (n + 1 <= b->cap) return 0;
  char *q = realloc(b->p, n + 1);
  if (!q) return TW_ENOMEM;
  b->p = q;
  b->cap = n + 1;
  return 0;
}

int tw_buf_append(tw_buf *b, const void *p, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    if (tw_buf_reserve(b, cap - 1) != 0) return TW_ENOMEM;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  b->p[b->len] = 0;
  return 0;
}

void tw_buf_free(tw_buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

double tw_wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int digits(const char *s, int n, int *out) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return 0;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return 1;
}

/* days since 1970-01-01 for a civil date (Howard Hinnant's algorithm) */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = (unsigned)(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

bool tw_parse_rfc3339(const char *s, double *out) {
  int Y, M, D, h, m, sec;
  if (!s || strlen(s) < 20) return false;
  if (!digits(s, 4, &Y) || s[4] != '-' || !digits(s + 5, 2, &M) || s[7] != '-' || !digits(s + 8, 2, &D) ||
      (s[10] != 'T' && s[10] != 't') || !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &m) ||
      s[16] != ':' || !digits(s + 17, 2, &sec))
    return false;
  if (M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60) return false;
  const char *p = s + 19;
  double frac = 0;
  if (*p == '.') {
    p++;
    if (*p < '0' || *p > '9') return false;
    uint64_t f = 0, scale = 1; /* nanoseconds and beyond: the first 18 digits count */
    for (; *p >= '0' && *p <= '9'; p++) {
      if (scale < 1000000000000000000ull) {
        f = f * 10 + (uint64_t)(*p - '0');
        scale *= 10;
      }
    }
    frac = (double)f / (double)scale;
  }
  double off = 0;
  if (*p == 'Z' || *p == 'z') {
    p++;
  } else if (*p == '+' || *p == '-') {
    int oh, om;
    if (!digits(p + 1, 2, &oh) || p[3] != ':' || !digits(p + 4, 2, &om)) return false;
    off = (oh * 3600 + om * 60) * (*p == '+' ? 1 : -1);
    p += 6;
  } else {
    return false;
  }
  if (*p) return false;
  *out = (double)(days_from_civil(Y, (unsigned)M, (unsigned)D) * 86400 + h * 3600 + m * 60 + sec) + frac - off;
  return true;
}
