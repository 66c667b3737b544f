/* Small helpers: buffers, clock, ids, hashing, HMAC, query strings. */
#include "mock.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "twconduit-mock: out of memory\n");
        abort();
    }
    return p;
}

void *xcalloc(size_t a, size_t b)
{
    void *p = calloc(a ? a : 1, b ? b : 1);
    if (!p) {
        fprintf(stderr, "twconduit-mock: out of memory\n");
        abort();
    }
    return p;
}

void *xgrow(void *arr, size_t n, size_t *cap, size_t first, size_t elem)
{
    if (n < *cap)
        return arr;
    size_t nc = *cap ? *cap * 2 : first;
    void *p = realloc(arr, nc * elem);
    if (!p) {
        fprintf(stderr, "twconduit-mock: out of memory\n");
        abort();
    }
    *cap = nc;
    return p;
}

char *xstrdup(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s);
    char *d = xmalloc(n + 1);
    memcpy(d, s, n + 1);
    return d;
}

void buf_reserve(buf_t *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t nc = b->cap ? b->cap * 2 : 256;
    while (nc < b->len + extra + 1)
        nc *= 2;
    char *np = realloc(b->p, nc);
    if (!np) {
        fprintf(stderr, "twconduit-mock: out of memory\n");
        abort();
    }
    b->p = np;
    b->cap = nc;
}

void buf_add(buf_t *b, const void *d, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = 0;
}

void buf_adds(buf_t *b, const char *s) { buf_add(b, s, strlen(s)); }

void buf_printf(buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        buf_add(b, tmp, (size_t)n);
        return;
    }
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void buf_free(buf_t *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double emu_now(void)
{
    return M->emu_base + (double)(mono_us() - M->mono_base) / 1e6 * M->speed;
}

/* RFC3339 with nanoseconds, UTC. */
void fmt_time(double t, char out[40])
{
    time_t secs = (time_t)t;
    double frac = t - (double)secs;
    if (frac < 0)
        frac = 0;
    long ns = (long)(frac * 1e9);
    if (ns > 999999999)
        ns = 999999999;
    struct tm tm;
    gmtime_r(&secs, &tm);
    char d[24];
    if (strftime(d, sizeof d, "%Y-%m-%dT%H:%M:%S", &tm) == 0)
        strcpy(d, "1970-01-01T00:00:00");
    d[19] = 0;
    snprintf(out, 40, "%.19s.%09dZ", d, (int)(ns % 1000000000));
}

uint64_t rnd64(void)
{
    /* xorshift128+ */
    uint64_t s1 = M->rng[0];
    const uint64_t s0 = M->rng[1];
    M->rng[0] = s0;
    s1 ^= s1 << 23;
    M->rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return M->rng[1] + s0;
}

void gen_uuid(char out[ID_LEN])
{
    static const char hx[] = "0123456789abcdef";
    uint64_t a = rnd64(), b = rnd64();
    unsigned char by[16];
    memcpy(by, &a, 8);
    memcpy(by + 8, &b, 8);
    by[6] = (unsigned char)((by[6] & 0x0f) | 0x40);
    by[8] = (unsigned char)((by[8] & 0x3f) | 0x80);
    int o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hx[by[i] >> 4];
        out[o++] = hx[by[i] & 15];
    }
    out[o] = 0;
}

void gen_token(char *out, size_t n)
{
    static const char al[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    for (size_t i = 0; i + 1 < n; i++)
        out[i] = al[rnd64() % 36];
    out[n - 1] = 0;
}

uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

void hmac_sha256_hex(const char *key, const char *a, const char *b, const char *c, size_t clen,
                     char out[80])
{
    size_t al = strlen(a), bl = strlen(b);
    size_t n = al + bl + clen;
    unsigned char *msg = xmalloc(n);
    memcpy(msg, a, al);
    memcpy(msg + al, b, bl);
    memcpy(msg + al + bl, c, clen);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int ml = 0;
    HMAC(EVP_sha256(), key, (int)strlen(key), msg, n, mac, &ml);
    free(msg);
    static const char hx[] = "0123456789abcdef";
    strcpy(out, "sha256=");
    size_t o = 7;
    for (unsigned i = 0; i < ml && o + 2 < 80; i++) {
        out[o++] = hx[mac[i] >> 4];
        out[o++] = hx[mac[i] & 15];
    }
    out[o] = 0;
}

const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int hexv(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void url_decode(char *s)
{
    char *o = s;
    for (; *s; s++) {
        if (*s == '+')
            *o++ = ' ';
        else if (*s == '%' && hexv(s[1]) >= 0 && hexv(s[2]) >= 0) {
            *o++ = (char)(hexv(s[1]) * 16 + hexv(s[2]));
            s += 2;
        } else
            *o++ = *s;
    }
    *o = 0;
}

/* nth (0-based) value of key in a query string; returns 1 if found. */
int qparam(const char *query, const char *key, char *out, size_t outlen, int nth)
{
    if (!query)
        return 0;
    size_t kl = strlen(key);
    const char *p = query;
    int seen = 0;
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t seg = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', seg);
        size_t nl = eq ? (size_t)(eq - p) : seg;
        char name[128];
        if (nl < sizeof name) {
            memcpy(name, p, nl);
            name[nl] = 0;
            url_decode(name);
            if (strlen(name) == kl && !memcmp(name, key, kl)) {
                if (seen == nth) {
                    size_t vl = eq ? seg - nl - 1 : 0;
                    if (vl >= outlen)
                        vl = outlen - 1;
                    if (eq)
                        memcpy(out, eq + 1, vl);
                    out[vl] = 0;
                    url_decode(out);
                    return 1;
                }
                seen++;
            }
        }
        p += seg;
        if (*p == '&')
            p++;
    }
    return 0;
}

int qparam_count(const char *query, const char *key)
{
    char tmp[8];
    int n = 0;
    while (qparam(query, key, tmp, sizeof tmp, n))
        n++;
    return n;
}
