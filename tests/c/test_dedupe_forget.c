/* tw_dedupe_forget: a forgotten id is new again, also after the table grew (the ring is
 * re-indexed then) and after its ring entry expired or was evicted; the other ids are
 * still remembered. */
#include "support.h"
#include "internal.h"

int main(void) {
  tw_dedupe *d = tw_dedupe_new(1000, 60000);
  char id[64];
  ok(!tw_dedupe_seen(d, "a-1", 3, 1) && tw_dedupe_seen(d, "a-1", 3, 2), "an id is seen once");
  tw_dedupe_forget(d, "a-1", 3);
  ok(!tw_dedupe_seen(d, "a-1", 3, 3), "forgotten, it is new again");
  ok(tw_dedupe_seen(d, "a-1", 3, 4), "and remembered from then on");
  tw_dedupe_forget(d, "a-2", 3); /* never seen: nothing happens */
  ok(!tw_dedupe_seen(d, "a-2", 3, 5), "forgetting an unknown id is harmless");
  tw_dedupe_forget(d, "a-2", 3);
  /* grow the table past its first sizes: the forgotten entry must not come back */
  for (int i = 0; i < 900; i++) {
    int n = snprintf(id, sizeof id, "g-%d", i);
    tw_dedupe_seen(d, id, (size_t)n, 10);
  }
  ok(!tw_dedupe_seen(d, "a-2", 3, 11), "a forgotten id stays forgotten when the table grows");
  int all = 1;
  for (int i = 0; i < 900; i++) {
    int n = snprintf(id, sizeof id, "g-%d", i);
    if (!tw_dedupe_seen(d, id, (size_t)n, 12)) all = 0;
  }
  ok(all && tw_dedupe_seen(d, "a-1", 3, 12), "every other id is still remembered");
  /* evictions run over forgotten entries without disturbing the rest */
  for (int i = 0; i < 50; i++) {
    int n = snprintf(id, sizeof id, "f-%d", i);
    tw_dedupe_seen(d, id, (size_t)n, 13);
    if (i % 2) tw_dedupe_forget(d, id, (size_t)n);
  }
  for (int i = 0; i < 2000; i++) {
    int n = snprintf(id, sizeof id, "e-%d", i);
    tw_dedupe_seen(d, id, (size_t)n, 14);
  }
  all = 1;
  for (int i = 1000; i < 2000; i++) {
    int n = snprintf(id, sizeof id, "e-%d", i);
    if (!tw_dedupe_seen(d, id, (size_t)n, 15)) all = 0;
  }
  ok(all, "after evicting forgotten entries the newest 1000 are all remembered");
  tw_dedupe_free(d);
  return done_testing();
}
