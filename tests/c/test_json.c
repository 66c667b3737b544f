/* Unit tests for the tw_json parser (csrc/core/json.c). Output is TAP. */
#include "tw_json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ntest, nfail;

static void ok(int cond, const char *fmt, ...) {
  va_list ap;
  ntest++;
  if (!cond) nfail++;
  printf("%s %d - ", cond ? "ok" : "not ok", ntest);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
}

static tw_json *parse(const char *s) { return tw_json_parse(s, strlen(s), NULL, 0); }

/* ---- valid documents: text and the type of the root ---------------------- */
static const struct {
  const char *text;
  int type;
} valid[] = {
    {"null", TW_JSON_NULL},
    {"true", TW_JSON_TRUE},
    {"false", TW_JSON_FALSE},
    {"0", TW_JSON_INT},
    {"-0", TW_JSON_INT},
    {"7", TW_JSON_INT},
    {"-12", TW_JSON_INT},
    {"9223372036854775807", TW_JSON_INT},
    {"-9223372036854775808", TW_JSON_INT},
    {"9223372036854775808", TW_JSON_NUM},
    {"-9223372036854775809", TW_JSON_NUM},
    {"18446744073709551615", TW_JSON_NUM},
    {"18446744073709551616", TW_JSON_NUM},
    {"123456789012345678901234567890", TW_JSON_NUM},
    {"1.0", TW_JSON_NUM},
    {"1e2", TW_JSON_NUM},
    {"1E+2", TW_JSON_NUM},
    {"1e-2", TW_JSON_NUM},
    {"-0.5e-300", TW_JSON_NUM},
    {"0.000001", TW_JSON_NUM},
    {"\"\"", TW_JSON_STR},
    {"\"abc\"", TW_JSON_STR},
    {"\"\\u0000\"", TW_JSON_STR},
    {"\"\\ud83d\\ude00\"", TW_JSON_STR},
    {"\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\"", TW_JSON_STR},
    {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", TW_JSON_STR},
    {"[]", TW_JSON_ARR},
    {"{}", TW_JSON_OBJ},
    {" \t\r\n[ ] \t\r\n", TW_JSON_ARR},
    {"[1,2,3]", TW_JSON_ARR},
    {"[[[]]]", TW_JSON_ARR},
    {"{\"a\":{\"b\":[{}]}}", TW_JSON_OBJ},
    {"{\"\":0}", TW_JSON_OBJ},
    {"{\"a\":1,\"a\":2}", TW_JSON_OBJ},
    {"[null,true,false,\"x\",1,1.5,[],{}]", TW_JSON_ARR},
    {"{ \"k\" : \"v\" , \"n\" : [ 1 , 2 ] }", TW_JSON_OBJ},
    {"\"a long string that spans more than sixteen bytes, twice over to be sure\"", TW_JSON_STR},
    {"\"0123456789abcde\"", TW_JSON_STR},
    {"\"0123456789abcdef\"", TW_JSON_STR},
    {"\"0123456789abcd\xc3\xa9\"", TW_JSON_STR},
    {"\"\xef\xbf\xbf\xf4\x8f\xbf\xbf\"", TW_JSON_STR},
    {"\"\x7f\"", TW_JSON_STR},
    {"\"\\uDBFF\\uDFFF\"", TW_JSON_STR},
};

/* ---- invalid documents: text and a fragment of the expected message ------- */
static const struct {
  const char *text;
  const char *msg;
} invalid[] = {
    {"", "end of input"},
    {"   ", "end of input"},
    {"nul", "value expected"},
    {"nulll", "trailing"},
    {"tru", "value expected"},
    {"True", "value expected"},
    {"falsey", "trailing"},
    {"[1,]", "value expected"},
    {"[,1]", "value expected"},
    {"[1,,2]", "value expected"},
    {"{\"a\":1,}", "string key expected"},
    {"{,}", "string key expected"},
    {"{\"a\"}", "':' expected"},
    {"{\"a\" 1}", "':' expected"},
    {"{\"a\":}", "value expected"},
    {"{a:1}", "string key expected"},
    {"{1:1}", "string key expected"},
    {"[1 2]", "',' or ']' expected"},
    {"{\"a\":1 \"b\":2}", "',' or '}' expected"},
    {"[1}", "',' or ']' expected"},
    {"{\"a\":1]", "',' or '}' expected"},
    {"[", "end of input"},
    {"{", "end of input"},
    {"[1", "end of input"},
    {"{\"a\":1", "end of input"},
    {"]", "value expected"},
    {"}", "value expected"},
    {"01", "leading zero"},
    {"-01", "leading zero"},
    {"00", "leading zero"},
    {"+1", "value expected"},
    {".5", "value expected"},
    {"1.", "digit expected"},
    {"1.e5", "digit expected"},
    {"1e", "digit expected"},
    {"1e+", "digit expected"},
    {"-", "digit expected"},
    {"-a", "digit expected"},
    {"0x10", "trailing"},
    {"1 2", "trailing"},
    {"[] []", "trailing"},
    {"{}x", "trailing"},
    {"NaN", "value expected"},
    {"Infinity", "value expected"},
    {"-Infinity", "digit expected"},
    {"\"abc", "unterminated"},
    {"\"", "unterminated"},
    {"\"a\nb\"", "control character"},
    {"\"a\tb\"", "control character"},
    {"\"\x01\"", "control character"},
    {"\"\\x\"", "invalid escape"},
    {"\"\\'\"", "invalid escape"},
    {"\"\\u12\"", "invalid \\u"},
    {"\"\\u12g4\"", "invalid \\u"},
    {"\"\\", "escape"},
    {"\"\\ud800\"", "lone high surrogate"},
    {"\"\\ud800x\"", "lone high surrogate"},
    {"\"\\ud800\\u0041\"", "lone high surrogate"},
    {"\"\\ud800\\ud800\"", "lone high surrogate"},
    {"\"\\udc00\"", "lone low surrogate"},
    {"\"\\udfff\\ud800\"", "lone low surrogate"},
    {"\"\xff\"", "UTF-8"},
    {"\"\x80\"", "UTF-8"},
    {"\"\xc0\xaf\"", "UTF-8"},
    {"\"\xc1\xbf\"", "UTF-8"},
    {"\"\xe0\x80\xaf\"", "UTF-8"},
    {"\"\xed\xa0\x80\"", "UTF-8"},
    {"\"\xf0\x80\x80\xaf\"", "UTF-8"},
    {"\"\xf4\x90\x80\x80\"", "UTF-8"},
    {"\"\xf5\x80\x80\x80\"", "UTF-8"},
    {"\"\xc3\"", "UTF-8"},
    {"\"0123456789abcd\xc3\"", "UTF-8"},
    {"\"0123456789\xc3\xa9" "abc\x01xyz\"", "control character"},
    {"\"\xc3\xa9" "0123456789abcdef\xff\"", "UTF-8"},
    {"\"\xe2\x82\"", "UTF-8"},
    {"\xef\xbb\xbf{}", "value expected"},
    {"'a'", "value expected"},
    {"/* c */ 1", "value expected"},
    {"[1]\x00", "trailing"},
};

static void test_valid(void) {
  for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++) {
    char err[128] = "";
    tw_json *d = tw_json_parse(valid[i].text, strlen(valid[i].text), err, sizeof err);
    ok(d && tw_json_type(d, 0) == valid[i].type, "valid #%zu parses with root type %d %s", i,
       valid[i].type, err);
    if (d) {
      size_t l;
      const char *raw = tw_json_raw(d, 0, &l);
      const char *t = valid[i].text;
      while (*t == ' ' || *t == '\t' || *t == '\r' || *t == '\n') t++;
      size_t tl = strlen(t);
      while (tl && (t[tl - 1] == ' ' || t[tl - 1] == '\t' || t[tl - 1] == '\r' || t[tl - 1] == '\n'))
        tl--;
      ok(raw && l == tl && memcmp(raw, t, l) == 0, "valid #%zu raw root is the trimmed text", i);
    }
    tw_json_unref(d);
  }
}

static void test_invalid(void) {
  for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
    char err[128] = "";
    size_t len = strlen(invalid[i].text);
    if (strcmp(invalid[i].text, "[1]") == 0) len = 4; /* with the embedded NUL */
    tw_json *d = tw_json_parse(invalid[i].text, len, err, sizeof err);
    ok(!d && strstr(err, invalid[i].msg) && strstr(err, " at byte "),
       "invalid #%zu rejected: want '%s', got '%s'", i, invalid[i].msg, err);
    tw_json_unref(d);
  }
}

static void test_error_offsets(void) {
  static const struct {
    const char *text;
    size_t at;
  } cases[] = {
      {"[1,]", 3}, {"{\"a\":1,}", 7}, {"  x", 2}, {"[01]", 1}, {"\"ab\\q\"", 3},
      {"[1] 2", 4}, {"\"a\x01\"", 2}, {"[\"\\ud800\"]", 2}, {"[1", 2}, {"\"\xff\"", 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char err[128] = "", want[32];
    tw_json *d = tw_json_parse(cases[i].text, strlen(cases[i].text), err, sizeof err);
    snprintf(want, sizeof want, "at byte %zu", cases[i].at);
    size_t el = strlen(err), wl = strlen(want);
    ok(!d && el >= wl && strcmp(err + el - wl, want) == 0, "error offset %zu for case %zu: %s",
       cases[i].at, i, err);
  }
  /* a small error buffer truncates but stays terminated; NULL buffer is fine */
  char tiny[8];
  memset(tiny, 'x', sizeof tiny);
  tw_json *d = tw_json_parse("[", 1, tiny, sizeof tiny);
  ok(!d && memchr(tiny, '\0', sizeof tiny) != NULL, "short error buffer stays NUL-terminated");
  ok(tw_json_parse("[", 1, NULL, 0) == NULL, "NULL error buffer accepted");
}

static void test_depth(void) {
  char buf[300];
  for (int depth = 63; depth <= 66; depth++) {
    int n = 0;
    for (int i = 0; i < depth; i++) buf[n++] = '[';
    for (int i = 0; i < depth; i++) buf[n++] = ']';
    char err[128] = "";
    tw_json *d = tw_json_parse(buf, (size_t)n, err, sizeof err);
    if (depth <= TW_JSON_MAX_DEPTH)
      ok(d != NULL, "depth %d accepted", depth);
    else
      ok(!d && strstr(err, "nesting deeper than 64 at byte 64"), "depth %d rejected: %s", depth,
         err);
    tw_json_unref(d);
  }
  /* objects count toward depth too */
  int n = 0;
  for (int i = 0; i < 65; i++) n += snprintf(buf + n, sizeof buf - (size_t)n, "{\"\":");
  ok(tw_json_parse(buf, (size_t)n, NULL, 0) == NULL, "65 nested objects rejected");
}

static void test_strings(void) {
  static const struct {
    const char *json, *want;
    size_t wlen;
  } cases[] = {
      {"\"abc\"", "abc", 3},
      {"\"\"", "", 0},
      {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t", 8},
      {"\"\\u0041\\u00e9\\u20AC\"", "A\xc3\xa9\xe2\x82\xac", 6},
      {"\"\\u0000x\"", "\0x", 2},
      {"\"\\ud83d\\ude00!\"", "\xf0\x9f\x98\x80!", 5},
      {"\"\\uDBFF\\uDFFF\"", "\xf4\x8f\xbf\xbf", 4},
      {"\"\\u07ff\\u0800\\uffff\"", "\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf", 8},
      {"\"plain text that is longer than one vector width\\n\"",
       "plain text that is longer than one vector width\n", 48},
      {"\"\xf0\x9f\x98\x80 emoji then \\\"quote\\\"\"", "\xf0\x9f\x98\x80 emoji then \"quote\"", 23},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    tw_json *d = parse(cases[i].json);
    size_t l = 99;
    const char *s = d ? tw_json_str(d, 0, &l) : NULL;
    ok(s && l == cases[i].wlen && memcmp(s, cases[i].want, l) == 0 && s[l] == '\0',
       "string #%zu unescapes and is NUL-terminated", i);
    size_t rl;
    const char *raw = d ? tw_json_raw(d, 0, &rl) : NULL;
    ok(raw && rl == strlen(cases[i].json) && memcmp(raw, cases[i].json, rl) == 0,
       "string #%zu raw is verbatim", i);
    tw_json_unref(d);
  }
  /* escaped strings inside a document do not disturb their neighbours */
  tw_json *d = parse("[\"a\\nb\",\"c\",\"\\u00e9\\u00e9\\u00e9\",\"dd\"]");
  const char *want[] = {"a\nb", "c", "\xc3\xa9\xc3\xa9\xc3\xa9", "dd"};
  for (size_t i = 0; i < 4; i++)
    ok(tw_json_streq(d, tw_json_at(d, 0, i), want[i]), "neighbour string %zu intact", i);
  size_t rl;
  const char *raw = tw_json_raw(d, 0, &rl);
  ok(rl == 38 && memcmp(raw, "[\"a\\nb\",\"c\",\"\\u00e9\\u00e9\\u00e9\",\"dd\"]", rl) == 0,
     "raw array keeps escapes");
  ok(tw_json_str(d, 0, NULL) == NULL, "tw_json_str on an array is NULL");
  ok(!tw_json_streq(d, tw_json_at(d, 0, 1), "cc") && !tw_json_streq(d, tw_json_at(d, 0, 1), ""),
     "streq rejects different strings");
  ok(!tw_json_streq(d, 0, "x"), "streq on a non-string is 0");
  tw_json_unref(d);
  d = parse("\"\\u0000\"");
  ok(!tw_json_streq(d, 0, ""), "streq sees the embedded NUL");
  tw_json_unref(d);
}

static void test_numbers(void) {
  static const struct {
    const char *json;
    int64_t i;
  } ints[] = {
      {"0", 0},
      {"-0", 0},
      {"42", 42},
      {"-42", -42},
      {"1234567890123", 1234567890123},
      {"9223372036854775807", INT64_MAX},
      {"-9223372036854775808", INT64_MIN},
      {"-9223372036854775807", -INT64_MAX},
  };
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
    tw_json *d = parse(ints[i].json);
    ok(d && tw_json_type(d, 0) == TW_JSON_INT && tw_json_int(d, 0) == ints[i].i &&
           tw_json_num(d, 0) == (double)ints[i].i,
       "integer %s", ints[i].json);
    tw_json_unref(d);
  }
  static const struct {
    const char *json;
    double v;
  } nums[] = {
      {"1.5", 1.5},
      {"-1.5", -1.5},
      {"0.1", 0.1},
      {"1e2", 100.0},
      {"1E-2", 0.01},
      {"2.5e+3", 2500.0},
      {"3.14159", 3.14159},
      {"0.30000000000000004", 0.30000000000000004},
      {"1.7976931348623157e308", 1.7976931348623157e308},
      {"5e-324", 5e-324},
      {"9223372036854775808", 9223372036854775808.0},
      {"123456789012345678901234567890", 123456789012345678901234567890.0},
      {"0.000000000000000000000000000001", 1e-30},
      {"-0.0", -0.0},
      {"1.0", 1.0},
      {"12345678901234567.5", 12345678901234567.5},
      {"4.9406564584124654e-324", 4.9406564584124654e-324},
      {"2.2250738585072011e-308", 2.2250738585072011e-308},
  };
  for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
    tw_json *d = parse(nums[i].json);
    double v = d ? tw_json_num(d, 0) : NAN;
    ok(d && tw_json_type(d, 0) == TW_JSON_NUM && v == nums[i].v &&
           signbit(v) == signbit(nums[i].v),
       "number %s = %.17g", nums[i].json, v);
    ok(d && tw_json_int(d, 0) == 0, "tw_json_int of NUM %s is 0", nums[i].json);
    tw_json_unref(d);
  }
  tw_json *d = parse("1e400");
  ok(d && isinf(tw_json_num(d, 0)), "1e400 is a valid number that overflows to inf");
  tw_json_unref(d);
  d = parse("\"5\"");
  ok(tw_json_int(d, 0) == 0 && tw_json_num(d, 0) == 0.0, "int/num of a string are 0");
  tw_json_unref(d);
  /* numbers inside containers end at the delimiter */
  d = parse("[1,-2,3.5e1,4]");
  ok(tw_json_int(d, tw_json_at(d, 0, 1)) == -2 && tw_json_num(d, tw_json_at(d, 0, 2)) == 35.0 &&
         tw_json_int(d, tw_json_at(d, 0, 3)) == 4,
     "numbers in an array");
  size_t l;
  const char *raw = tw_json_raw(d, tw_json_at(d, 0, 2), &l);
  ok(l == 5 && memcmp(raw, "3.5e1", 5) == 0, "raw number slice");
  tw_json_unref(d);
}

static const char *doc =
    "{\"metadata\":{\"message_id\":\"m-1\",\"message_type\":\"notification\"},"
    "\"payload\":{\"session\":{\"id\":\"s-9\",\"keepalive_timeout_seconds\":10,"
    "\"reconnect_url\":null},"
    "\"list\":[{\"a\":1},[2,3],\"x\",true,false,null,{}],"
    "\"flat\":[10,20,30,40],\"empty\":[],\"eobj\":{}},"
    "\"last\":\"end\"}";

static void test_navigation(void) {
  tw_json *d = parse(doc);
  ok(d != NULL, "navigation document parses");
  if (!d) return;
  ok(tw_json_type(d, 0) == TW_JSON_OBJ && tw_json_len(d, 0) == 3, "root object with 3 members");
  tw_jnode sid = tw_json_getp(d, 0, "payload.session.id");
  ok(tw_json_streq(d, sid, "s-9"), "getp payload.session.id");
  ok(tw_json_int(d, tw_json_getp(d, 0, "payload.session.keepalive_timeout_seconds")) == 10,
     "getp to an integer");
  ok(tw_json_type(d, tw_json_getp(d, 0, "payload.session.reconnect_url")) == TW_JSON_NULL,
     "null member present");
  ok(tw_json_getp(d, 0, "payload.session.nope") == TW_JNONE, "absent member");
  ok(tw_json_getp(d, 0, "payload.session.id.x") == TW_JNONE, "path through a string");
  ok(tw_json_getp(d, 0, "") == 0, "empty path is the node itself");
  ok(tw_json_getp(d, TW_JNONE, "a") == TW_JNONE, "getp from TW_JNONE");
  ok(tw_json_int(d, tw_json_getp(d, 0, "payload.list.0.a")) == 1, "getp indexes arrays");
  ok(tw_json_int(d, tw_json_getp(d, 0, "payload.list.1.1")) == 3, "getp nested arrays");
  ok(tw_json_getp(d, 0, "payload.list.7") == TW_JNONE, "getp index out of range");
  ok(tw_json_getp(d, 0, "payload.list.x") == TW_JNONE, "getp non-numeric index");
  ok(tw_json_streq(d, tw_json_get(d, 0, "last", 4), "end"), "member after nested containers");
  ok(tw_json_get(d, 0, "las", 3) == TW_JNONE && tw_json_get(d, 0, "lastx", 5) == TW_JNONE,
     "prefix keys do not match");
  ok(tw_json_get(d, sid, "a", 1) == TW_JNONE, "get on a string");
  ok(tw_json_get(d, TW_JNONE, "a", 1) == TW_JNONE, "get on TW_JNONE");

  tw_jnode list = tw_json_getp(d, 0, "payload.list");
  ok(tw_json_type(d, list) == TW_JSON_ARR && tw_json_len(d, list) == 7, "array of 7");
  static const int types[] = {TW_JSON_OBJ,  TW_JSON_ARR,   TW_JSON_STR, TW_JSON_TRUE,
                              TW_JSON_FALSE, TW_JSON_NULL, TW_JSON_OBJ};
  size_t i = 0;
  for (tw_jnode e = tw_json_first(d, list); e != TW_JNONE; e = tw_json_next(d, e), i++) {
    ok(i < 7 && tw_json_type(d, e) == types[i], "list element %zu type by first/next", i);
    ok(tw_json_at(d, list, i) == e, "tw_json_at(%zu) agrees with first/next", i);
  }
  ok(i == 7, "first/next visits 7 elements");
  ok(tw_json_at(d, list, 7) == TW_JNONE, "at out of range");
  ok(tw_json_at(d, 0, 0) == TW_JNONE, "at on an object");

  tw_jnode flat = tw_json_getp(d, 0, "payload.flat");
  for (i = 0; i < 4; i++)
    ok(tw_json_int(d, tw_json_at(d, flat, i)) == (int64_t)(10 * (i + 1)), "flat array at %zu", i);
  ok(tw_json_at(d, flat, 4) == TW_JNONE, "flat array out of range");
  ok(tw_json_first(d, tw_json_getp(d, 0, "payload.empty")) == TW_JNONE &&
         tw_json_len(d, tw_json_getp(d, 0, "payload.empty")) == 0,
     "empty array has no first");
  ok(tw_json_first(d, tw_json_getp(d, 0, "payload.eobj")) == TW_JNONE, "empty object has no first");
  ok(tw_json_first(d, sid) == TW_JNONE, "string has no first");

  /* object iteration: key, value, key, value in document order */
  static const char *keys[] = {"metadata", "payload", "last"};
  i = 0;
  for (tw_jnode k = tw_json_first(d, 0); k != TW_JNONE; k = tw_json_next(d, tw_json_next(d, k))) {
    ok(i < 3 && tw_json_streq(d, k, keys[i]), "key %zu in document order", i);
    i++;
  }
  ok(i == 3, "3 keys visited");
  tw_jnode payload = tw_json_get(d, 0, "payload", 7);
  ok(tw_json_next(d, tw_json_first(d, 0)) == tw_json_get(d, 0, "metadata", 8),
     "value follows its key");
  ok(tw_json_len(d, payload) == 5, "payload has 5 members");

  size_t l;
  const char *raw = tw_json_raw(d, tw_json_getp(d, 0, "payload.session"), &l);
  const char *want = "{\"id\":\"s-9\",\"keepalive_timeout_seconds\":10,\"reconnect_url\":null}";
  ok(l == strlen(want) && memcmp(raw, want, l) == 0, "raw slice of a nested object");
  raw = tw_json_raw(d, tw_json_first(d, 0), &l);
  ok(l == 10 && memcmp(raw, "\"metadata\"", l) == 0, "raw slice of a key");
  raw = tw_json_raw(d, 0, &l);
  ok(l == strlen(doc) && memcmp(raw, doc, l) == 0, "raw root is the document");

  ok(tw_json_type(d, TW_JNONE) == -1 && tw_json_len(d, TW_JNONE) == 0 &&
         tw_json_next(d, TW_JNONE) == TW_JNONE && tw_json_str(d, TW_JNONE, NULL) == NULL &&
         tw_json_raw(d, TW_JNONE, NULL) == NULL && tw_json_int(d, TW_JNONE) == 0 &&
         tw_json_num(d, TW_JNONE) == 0.0 && tw_json_type(d, (tw_jnode)tw_json_count(d)) == -1,
     "absent and out-of-range nodes answer absent");
  tw_json_unref(d);
}

static void test_refcount(void) {
  char text[] = "{\"k\":\"value\"}";
  tw_json *d = tw_json_parse(text, strlen(text), NULL, 0);
  memset(text, 'X', sizeof text - 1); /* the document keeps its own copy */
  ok(tw_json_streq(d, tw_json_get(d, 0, "k", 1), "value"), "document independent of input buffer");
  tw_json_ref(d);
  tw_json_ref(d);
  tw_json_unref(d);
  tw_json_unref(d);
  const char *s = tw_json_str(d, tw_json_get(d, 0, "k", 1), NULL);
  ok(s && strcmp(s, "value") == 0, "still alive after balanced ref/unref");
  tw_json_unref(d); /* frees; leak checkers verify the balance */
  tw_json_unref(NULL);
  ok(1, "unref(NULL) is a no-op");
  /* input that is not NUL-terminated: only len bytes are read */
  char part[] = "[1,2]garbage";
  d = tw_json_parse(part, 5, NULL, 0);
  ok(d && tw_json_len(d, 0) == 2, "parses exactly len bytes");
  tw_json_unref(d);
}

/* A pool recycles memory of released documents; documents may outlive the pool's owner. */
static void test_pool(void) {
  const char *a = "{\"id\":\"one\",\"list\":[1,2,3],\"s\":\"x\\u00e9y\"}";
  const char *b = "{\"id\":\"two\",\"n\":{\"k\":true}}";
  tw_json_pool *p = tw_json_pool_new(1 << 20, 4096);
  tw_json *d1 = tw_json_parse_pooled(p, a, strlen(a), NULL, 0);
  void *mem1 = d1;
  tw_json_unref(d1);
  ok(tw_json_pool_idle(p) == 1, "a released document waits in the pool");
  tw_json *d2 = tw_json_parse_pooled(p, b, strlen(b), NULL, 0);
  ok((void *)d2 == mem1 && tw_json_pool_idle(p) == 0 && tw_json_streq(d2, tw_json_get(d2, 0, "id", 2), "two") &&
         tw_json_type(d2, tw_json_getp(d2, 0, "n.k")) == TW_JSON_TRUE,
     "the next parse reuses its memory");
  tw_json_ref(d2); /* a second holder */
  tw_json_unref(d2);
  ok(tw_json_pool_idle(p) == 0 && tw_json_streq(d2, tw_json_get(d2, 0, "id", 2), "two"),
     "a document still referenced is not recycled");
  char big[8192];
  int n = snprintf(big, sizeof big, "[");
  for (int i = 0; i < 1000; i++) n += snprintf(big + n, sizeof big - (size_t)n, "%s%d", i ? "," : "", i % 10);
  snprintf(big + n, sizeof big - (size_t)n, "]");
  tw_json *d3 = tw_json_parse_pooled(p, big, strlen(big), NULL, 0);
  ok(d3 && tw_json_len(d3, 0) == 1000 && tw_json_int(d3, tw_json_at(d3, 0, 999)) == 9,
     "a document larger than the pooled size parses (1000 elements)");
  tw_json_unref(d3);
  ok(tw_json_pool_idle(p) == 0, "and is freed, not kept (over max_bytes)");
  char err[128];
  tw_json *bad = tw_json_parse_pooled(p, "{bad", 4, err, sizeof err);
  ok(bad == NULL && strstr(err, "at byte") != NULL && tw_json_pool_idle(p) == 1,
     "a failed parse reports and gives its memory back (%s)", err);
  tw_json *e1 = tw_json_parse_pooled(p, a, strlen(a), NULL, 0);
  tw_json *e2 = tw_json_parse_pooled(p, a, strlen(a), NULL, 0);
  tw_json *e3 = tw_json_parse_pooled(p, a, strlen(a), NULL, 0);
  tw_json_unref(e1);
  tw_json_unref(e2);
  tw_json_unref(e3);
  ok(tw_json_pool_idle(p) == 3, "released documents wait while they fit the budget (%zu)", tw_json_pool_idle(p));
  tw_json_pool *tiny = tw_json_pool_new(100, 4096); /* less than one document */
  tw_json *t1 = tw_json_parse_pooled(tiny, a, strlen(a), NULL, 0);
  tw_json_unref(t1);
  ok(t1 != NULL && tw_json_pool_idle(tiny) == 0, "none waits beyond the pool's byte budget");
  tw_json_pool_free(tiny);
  tw_json_pool_free(p); /* d2 is still out: the pool lives until it comes back */
  size_t l = 0;
  const char *sv = tw_json_str(d2, tw_json_get(d2, 0, "id", 2), &l);
  ok(sv && l == 3 && memcmp(sv, "two", 3) == 0, "a document outlives its pool's owner");
  tw_json_unref(d2); /* frees it and the pool: leak checkers verify */
}

static void test_large(void) {
  /* forces the node array to grow several times */
  size_t n = 20000, cap = n * 12 + 16, o = 0;
  char *buf = malloc(cap);
  buf[o++] = '[';
  for (size_t i = 0; i < n; i++) o += (size_t)snprintf(buf + o, cap - o, "%s[%zu]", i ? "," : "", i);
  buf[o++] = ']';
  tw_json *d = tw_json_parse(buf, o, NULL, 0);
  ok(d && tw_json_len(d, 0) == n, "array of %zu arrays", n);
  ok(d && tw_json_int(d, tw_json_at(d, tw_json_at(d, 0, n - 1), 0)) == (int64_t)(n - 1),
     "last element after growth");
  tw_json_unref(d);
  /* all-scalar arrays: worst-case node density */
  o = 0;
  buf[o++] = '[';
  for (size_t i = 0; i < n; i++) {
    if (i) buf[o++] = ',';
    buf[o++] = '1';
  }
  buf[o++] = ']';
  d = tw_json_parse(buf, o, NULL, 0);
  ok(d && tw_json_count(d) == n + 1 && tw_json_at(d, 0, n - 1) == n, "dense flat array");
  tw_json_unref(d);
  free(buf);
}

/* xorshift: deterministic, no global state */
static uint32_t rnd(uint32_t *s) {
  uint32_t x = *s;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return *s = x;
}

/* Walks every node through every accessor: must not crash on any document. */
static size_t walk(const tw_json *d) {
  size_t acc = 0, n = tw_json_count(d);
  for (tw_jnode i = 0; i < n; i++) {
    size_t l = 0;
    acc += (size_t)tw_json_type(d, i) + tw_json_len(d, i);
    const char *s = tw_json_str(d, i, &l);
    if (s) acc += l + (size_t)(unsigned char)s[l];
    acc += (size_t)tw_json_int(d, i) + (size_t)(tw_json_num(d, i) != 0);
    tw_json_raw(d, i, &l);
    acc += l + tw_json_first(d, i) + tw_json_next(d, i) + tw_json_at(d, i, 1);
    acc += tw_json_get(d, i, "a", 1);
  }
  return acc;
}

static void test_fuzz(void) {
  static const char seed[] =
      "{\"a\":[1,-2.5e3,\"x\\u00e9\\n\",true,false,null,{\"b\":{}}],\"c\":\"\xc3\xa9\","
      "\"d\":{\"e\":[[],[0]],\"f\":\"\\ud83d\\ude00\"},\"g\":9223372036854775807}";
  static const char alphabet[] = "{}[],:\"\\u0123456789abcdefnulltruefalse.-+eE \t\n\x80\xc3\xff";
  uint32_t s = 0x9e3779b9u;
  size_t n = sizeof seed - 1, parsed = 0, rejected = 0, acc = 0;
  char buf[sizeof seed + 16];
  for (int iter = 0; iter < 200000; iter++) {
    memcpy(buf, seed, n);
    size_t len = n;
    int muts = 1 + (int)(rnd(&s) % 4);
    for (int m = 0; m < muts; m++) {
      size_t at = rnd(&s) % len;
      switch (rnd(&s) % 4) {
      case 0: buf[at] = alphabet[rnd(&s) % (sizeof alphabet - 1)]; break;
      case 1: buf[at] = (char)(rnd(&s) & 0xff); break;
      case 2: /* delete */
        memmove(buf + at, buf + at + 1, len - at - 1);
        len--;
        break;
      default: /* truncate */ len = at + 1; break;
      }
      if (len < 2) break;
    }
    char err[128];
    tw_json *d = tw_json_parse(buf, len, err, sizeof err);
    if (d) {
      parsed++;
      acc += walk(d);
      tw_json_unref(d);
    } else {
      rejected++;
      if (!strstr(err, " at byte ")) {
        ok(0, "fuzz error message lacks an offset: %s", err);
        return;
      }
    }
  }
  ok(parsed > 0 && rejected > 0, "200000 mutations: %zu parsed, %zu rejected, no crash", parsed,
     rejected);
  (void)acc;
}

int main(void) {
  test_valid();
  test_invalid();
  test_error_offsets();
  test_depth();
  test_strings();
  test_numbers();
  test_navigation();
  test_refcount();
  test_pool();
  test_large();
  test_fuzz();
  printf("1..%d\n", ntest);
  return nfail ? 1 : 0;
}
