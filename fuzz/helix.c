/* fuzz/helix.c - what the client reads from a Helix or OAuth answer: its header lines
 * (the rate-limit headers, status lines that reset them) and its body (the error
 * message of a failure, the JSON of a success).
 * Input: header lines separated by '\n', then an empty line, then the body. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = (const char *)data, *end = p + size;
  int limit = -1, remaining = -1;
  int64_t reset = -1;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
    if (n == 1 || (n == 2 && p[0] == '\r')) { /* the end of the head */
      p += n;
      break;
    }
    char *line = malloc(n); /* exactly the line: reads past it are caught */
    memcpy(line, p, n);
    tw_http_header_line(line, n, &limit, &remaining, &reset);
    free(line);
    p += n;
  }
  if (limit < -1 || remaining < -1 || reset < -1) abort(); /* -1 absent, else a count or a time */
  size_t blen = (size_t)(end - p);
  char *body = malloc(blen ? blen : 1);
  memcpy(body, p, blen);
  char msg[200];
  tw_helix_error_message(body, blen, msg, sizeof msg, "request failed");
  if (strlen(msg) >= sizeof msg) abort();
  tw_json *d = tw_json_parse(body, blen, NULL, 0);
  if (d) {
    (void)tw_json_str(d, tw_json_get(d, 0, "access_token", 12), NULL);
    (void)tw_json_num(d, tw_json_get(d, 0, "expires_in", 10));
    tw_jnode data0 = tw_json_at(d, tw_json_get(d, 0, "data", 4), 0);
    (void)tw_json_str(d, tw_json_get(d, data0, "id", 2), NULL);
    tw_json_unref(d);
  }
  free(body);
  return 0;
}
