/* fuzz/replay/main.c - replays a fuzz target's committed corpus without libFuzzer (any C
 * compiler): every file of fuzz/corpus/<target>/ through LLVMFuzzerTestOneInput, as
 * one TAP test. `make test` runs it for each target, so an input that once crashed stays
 * a regression test. Usage: test_fuzz_<target> [dir...] (default: the target's corpus). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int replay_dir(const char *dir, size_t *count) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      names = realloc(names, cap * sizeof *names);
    }
    names[n++] = strdup(e->d_name);
  }
  closedir(d);
  qsort(names, n, sizeof *names, cmp);
  for (size_t i = 0; i < n; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    FILE *f = fopen(path, "rb");
    if (f) {
      fseek(f, 0, SEEK_END);
      long len = ftell(f);
      fseek(f, 0, SEEK_SET);
      uint8_t *buf = malloc(len > 0 ? (size_t)len : 1);
      size_t got = len > 0 ? fread(buf, 1, (size_t)len, f) : 0;
      fclose(f);
      LLVMFuzzerTestOneInput(buf, got);
      free(buf);
      (*count)++;
    }
    free(names[i]);
  }
  free(names);
  return 0;
}

int main(int argc, char **argv) {
  const char *dflt = "fuzz/corpus/" FUZZ_NAME;
  int fails = 0, t = 0;
  for (int i = 1; i < argc || (i == 1 && argc == 1); i++) {
    const char *dir = argc > 1 ? argv[i] : dflt;
    size_t count = 0;
    int r = replay_dir(dir, &count);
    t++;
    if (r != 0 || count == 0) {
      printf("not ok %d - %s: no corpus to replay\n", t, dir);
      fails++;
    } else {
      printf("ok %d - %s: %zu inputs replayed through fuzz/%s.c\n", t, dir, count, FUZZ_NAME);
    }
  }
  printf("1..%d\n", t);
  return fails ? 1 : 0;
}
