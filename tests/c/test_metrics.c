/* test_metrics.c - tw_metrics_render from C: the families of a fresh client, a caller's
 * families with labels that need escaping, cumulative histogram buckets, close codes. */
#include "support.h"

static int count(const char *hay, const char *needle) {
  int n = 0;
  for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) n++;
  return n;
}

int main(void) {
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = "cid";
  o.access_token = "tok-not-used";
  tw_error e;
  tw_client *c = tw_client_new(&o, &e);
  ok(c != NULL, "client made without network");
  if (!c) return done_testing();

  size_t len = 0;
  char *t = tw_metrics_render(c, NULL, 0, &len);
  ok(t && strlen(t) == len, "render returns a NUL-terminated text of the length given");
  ok(t && strstr(t, "twconduit_build_info{version=\"" TWCONDUIT_VERSION "\"} 1\n") != NULL, "build info");
  ok(t && count(t, "# TYPE twconduit_dispatch_seconds histogram\n") == 1, "the dispatch histogram, typed once");
  ok(t && count(t, "twconduit_dispatch_seconds_bucket{") == 24, "24 buckets (23 bounds and +Inf)");
  ok(t && strstr(t, "twconduit_dispatch_seconds_bucket{le=\"+Inf\"} 0\n") != NULL, "+Inf bucket of an empty histogram");
  ok(t && strstr(t, "twconduit_dispatch_seconds_bucket{le=\"1e-06\"} 0\n") != NULL, "first bound 1 microsecond");
  ok(t && strstr(t, "twconduit_helix_ratelimit_remaining -1\n") != NULL, "rate limit unknown before any answer");
  ok(t && strstr(t, "twconduit_shard_up{") == NULL, "no shard samples without shards");
  /* every HELP has its TYPE right after */
  int pairs = 1;
  for (const char *p = t ? strstr(t, "# HELP ") : NULL; p; p = strstr(p + 1, "# HELP ")) {
    const char *nl = strchr(p, '\n');
    if (!nl || strncmp(nl + 1, "# TYPE ", 7) != 0) pairs = 0;
  }
  ok(pairs, "each HELP line is followed by its TYPE line");
  free(t);

  const char *l1[] = {"status", "we\"ird\\va\nlue", NULL};
  const char *l2[] = {"status", "plain", NULL};
  tw_metric_sample smp[] = {{l1, 3}, {l2, 0.5}, {NULL, 7}};
  tw_metric_family fam[] = {{"twconduit_test_things", "Things.\nWith a newline \\ and backslash.", "gauge", smp, 3}};
  t = tw_metrics_render(c, fam, 1, &len);
  ok(t && strstr(t, "twconduit_test_things{status=\"we\\\"ird\\\\va\\nlue\"} 3\n") != NULL, "label value escaped");
  ok(t && strstr(t, "twconduit_test_things{status=\"plain\"} 0.5\n") != NULL, "fractional value");
  ok(t && strstr(t, "\ntwconduit_test_things 7\n") != NULL, "a sample without labels");
  ok(t && strstr(t, "# HELP twconduit_test_things Things.\\nWith a newline \\\\ and backslash.\n") != NULL,
     "HELP escaped");
  free(t);

  ok(tw_close_code_of(tw_close_code_index(4003)) == 4003, "close code 4003 has its own index");
  ok(tw_close_code_of(tw_close_code_index(1006)) == 1006, "close code 1006 has its own index");
  ok(tw_close_code_index(4999) == TW_CLOSE_KINDS - 1 && tw_close_code_of(TW_CLOSE_KINDS - 1) == 0,
     "any other code shares the last index");
  ok(tw_client_free(c) == TW_OK, "client freed");
  return done_testing();
}
