/* Micro benchmark: tw_json_parse vs cJSON_ParseWithLength on one document.
 *
 *   gcc -std=c11 -D_GNU_SOURCE -O2 -Icsrc/core bench/micro/json_bench.c \
 *       csrc/core/json.c -o build/json_bench $(pkg-config --cflags --libs libcjson)
 *   build/json_bench [bench/fixtures/chat_message.json] [iterations]
 */
#include "tw_json.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
    fclose(f);
    free(buf);
    return NULL;
  }
  fclose(f);
  buf[n] = '\0';
  *len = (size_t)n;
  return buf;
}

/* Best of several rounds, each timing iters operations: ns per operation. */
#define ROUNDS 7
#define MEASURE(result, iters, ...)                                                               \
  do {                                                                                             \
    double best_ = 1e30;                                                                           \
    for (int r_ = 0; r_ < ROUNDS; r_++) {                                                          \
      double t0_ = now_ns();                                                                       \
      for (long i_ = 0; i_ < (iters); i_++) {                                                      \
        __VA_ARGS__;                                                                                   \
      }                                                                                            \
      double dt_ = (now_ns() - t0_) / (double)(iters);                                             \
      if (dt_ < best_) best_ = dt_;                                                                \
    }                                                                                              \
    (result) = best_;                                                                              \
  } while (0)

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "bench/fixtures/chat_message.json";
  long iters = argc > 2 ? atol(argv[2]) : 200000;
  size_t len;
  char *text = slurp(path, &len);
  if (!text) {
    fprintf(stderr, "cannot read %s\n", path);
    return 1;
  }
  char err[128];
  tw_json *probe = tw_json_parse(text, len, err, sizeof err);
  if (!probe) {
    fprintf(stderr, "%s: %s\n", path, err);
    return 1;
  }
  size_t nodes = tw_json_count(probe);
  tw_json_unref(probe);

  volatile size_t sink = 0;
  double t_tw, t_tw3, t_cj, t_cj3;
  MEASURE(t_tw, iters, {
    tw_json *d = tw_json_parse(text, len, NULL, 0);
    sink += tw_json_count(d);
    tw_json_unref(d);
  });
  MEASURE(t_tw3, iters, {
    tw_json *d = tw_json_parse(text, len, NULL, 0);
    size_t l1, l2, l3;
    tw_jnode ev = tw_json_getp(d, 0, "payload.event");
    sink += tw_json_str(d, tw_json_getp(d, ev, "message.text"), &l1) != NULL;
    sink += tw_json_str(d, tw_json_get(d, ev, "chatter_user_login", 18), &l2) != NULL;
    sink += tw_json_str(d, tw_json_getp(d, 0, "metadata.message_id"), &l3) != NULL;
    sink += l1 + l2 + l3;
    tw_json_unref(d);
  });
  MEASURE(t_cj, iters, {
    cJSON *j = cJSON_ParseWithLength(text, len);
    sink += j != NULL;
    cJSON_Delete(j);
  });
  MEASURE(t_cj3, iters, {
    cJSON *j = cJSON_ParseWithLength(text, len);
    cJSON *ev = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "payload"),
                                                 "event");
    cJSON *a = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(ev, "message"), "text");
    cJSON *b = cJSON_GetObjectItemCaseSensitive(ev, "chatter_user_login");
    cJSON *c = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(j, "metadata"), "message_id");
    sink += strlen(cJSON_GetStringValue(a)) + strlen(cJSON_GetStringValue(b)) +
            strlen(cJSON_GetStringValue(c));
    cJSON_Delete(j);
  });
  printf("document: %s (%zu bytes, %zu nodes)\n", path, len, nodes);
  printf("tw_json_parse + unref              %8.1f ns  (%.2f GB/s)\n", t_tw, (double)len / t_tw);
  printf("tw_json parse + 3 field reads      %8.1f ns\n", t_tw3);
  printf("cJSON_ParseWithLength + Delete     %8.1f ns  (%.2f GB/s)\n", t_cj, (double)len / t_cj);
  printf("cJSON parse + 3 field reads        %8.1f ns\n", t_cj3);
  printf("speedup (parse)                    %8.1fx\n", t_cj / t_tw);
  free(text);
  return sink == 0;
}
