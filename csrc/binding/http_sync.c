/* http_sync.c - core.http_sync(method, url, body, timeout): one blocking HTTP request.
 *
 * A small convenience for scripts and for the emulator's launcher (its control API is
 * plain HTTP + JSON). It uses a libcurl easy handle and never touches a client's loop.
 * Returns status, body  or  nil, message.
 */
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "twl.h"

typedef struct {
  char *p;
  size_t len, cap;
  int oom;
} sync_buf;

static size_t sync_write(char *data, size_t size, size_t n, void *user) {
  sync_buf *b = user;
  size_t add = size * n;
  if (b->len + add + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + add + 1) cap *= 2;
    char *np = realloc(b->p, cap);
    if (np == NULL) {
      b->oom = 1;
      return 0;
    }
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, add);
  b->len += add;
  b->p[b->len] = '\0';
  return add;
}

int twl_http_sync(lua_State *L) {
  const char *method = luaL_checkstring(L, 1);
  const char *url = luaL_checkstring(L, 2);
  size_t body_len = 0;
  const char *body = luaL_optlstring(L, 3, NULL, &body_len);
  lua_Number timeout = luaL_optnumber(L, 4, 30);
  luaL_argcheck(L, timeout > 0, 4, "timeout must be positive");

  curl_global_init(CURL_GLOBAL_DEFAULT); /* reference counted; a no-op after the first */
  CURL *h = curl_easy_init();
  if (h == NULL) {
    luaL_pushfail(L);
    lua_pushliteral(L, "curl_easy_init failed");
    return 2;
  }
  sync_buf b = {0};
  char errbuf[CURL_ERROR_SIZE] = {0};
  struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sync_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000.0 + 0.5));
  if (strcmp(method, "HEAD") == 0) curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  if (body != NULL) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
  }
  CURLcode rc = curl_easy_perform(h);
  long status = 0;
  if (rc == CURLE_OK) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(h);

  if (rc != CURLE_OK || b.oom) {
    luaL_pushfail(L);
    if (b.oom)
      lua_pushliteral(L, "out of memory reading the response");
    else
      lua_pushfstring(L, "%s %s: %s", method, url, errbuf[0] ? errbuf : curl_easy_strerror(rc));
    free(b.p);
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)status);
  lua_pushlstring(L, b.p ? b.p : "", b.len);
  free(b.p);
  return 2;
}
