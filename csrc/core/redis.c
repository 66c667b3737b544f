/* redis.c - one Redis connection on the client's loop: hiredis's async API driven by our
 * own libuv glue (a uv_poll_t per socket; a poll error closes the connection instead of
 * being ignored), a connect timeout, a deadline per command, reconnection with backoff,
 * TCP or unix sockets, AUTH and SELECT from the URL.
 *
 * Replies come back in the order commands were sent, so the commands in flight are a FIFO
 * of our own records: the oldest one's deadline is the one that matters (a later command
 * cannot be answered before it). A missed deadline, a poll error or a lost socket frees
 * the hiredis context: every command in flight is then answered with an error (reply
 * NULL), the owner is told the link is down, and a reconnection is scheduled.
 *
 * Replies are built in an arena of the connection (our reader object functions) instead
 * of one malloc per element: a worker's XREADGROUP of 1,000 entries is ~12,000 elements,
 * and hiredis's own objects (and their frees) were a fifth of the process's time. The
 * reader builds one reply at a time and frees it after its callback; freeing the reply
 * that opened the arena empties it (any other object freed is a no-op, so a reply built
 * while another is still in use can never overwrite it). */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "internal.h"
#include "tw_redis.h"

typedef struct rd_blk {
  struct rd_blk *next;
  size_t cap, used;
  max_align_t data[];
} rd_blk;

typedef struct rd_arena {
  rd_blk *blk;  /* newest first; the newest is the largest */
  void *first;  /* the object that opened the arena: freeing it empties the arena */
} rd_arena;

typedef struct rd_obj {
  rd_arena *a;
  redisReply r;
} rd_obj;

typedef struct rd_cmd {
  struct rd_cmd *next;
  tw_redis *r;
  tw_redis_fn cb;
  void *user;
  uint64_t deadline; /* loop ms */
} rd_cmd;

typedef struct glue {
  uv_poll_t poll;
  redisAsyncContext *ac; /* NULL once hiredis cleaned up */
  tw_redis *r;
  int events;
} glue;

struct tw_redis {
  tw_client *c;
  char *host, *path, *password;
  int port, db;
  double connect_timeout_s, command_timeout_s;
  redisAsyncContext *ac; /* NULL when no connection */
  int connected;         /* the socket is connected (handshake commands sent) */
  int closing;
  unsigned attempt;
  uint64_t connect_deadline; /* loop ms; 0: none */
  uv_timer_t timer;          /* deadlines and reconnection */
  uint64_t reconnect_at;     /* loop ms; 0: none */
  rd_cmd *head, *tail;
  size_t inflight;
  tw_redis_state_fn state;
  void *user;
  char last_error[200];
  tw_buf fmt; /* the command being written */
  rd_arena arena; /* replies */
  redisReplyObjectFunctions fns;
};

static void arm(tw_redis *r);

/* ---- reply objects ---------------------------------------------------------------- */

#define ARENA_MIN ((size_t)64 << 10)
#define ARENA_KEEP ((size_t)8 << 20) /* a larger block is given back once its reply is freed */

static void *arena_alloc(rd_arena *a, size_t n) {
  n = (n + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
  rd_blk *b = a->blk;
  if (!b || b->cap - b->used < n) {
    size_t cap = b ? b->cap * 2 : ARENA_MIN;
    while (cap < n) cap *= 2;
    rd_blk *nb = malloc(sizeof *nb + cap);
    if (!nb) return NULL;
    nb->next = b;
    nb->cap = cap;
    nb->used = 0;
    a->blk = b = nb;
  }
  void *p = (char *)b->data + b->used;
  b->used += n;
  return p;
}

static void arena_reset(rd_arena *a) {
  rd_blk *b = a->blk;
  a->first = NULL;
  if (!b) return;
  rd_blk *old = b->next;
  b->next = NULL;
  b->used = 0;
  while (old) {
    rd_blk *n = old->next;
    free(old);
    old = n;
  }
  if (b->cap > ARENA_KEEP) {
    free(b);
    a->blk = NULL;
  }
}

static void arena_free_all(rd_arena *a) {
  arena_reset(a);
  free(a->blk);
  a->blk = NULL;
}

/* type: the reply's (a nil comes from a "$-1" or "*-1" task) */
static redisReply *obj_new(const redisReadTask *t, int type, size_t extra) {
  rd_arena *a = t->privdata;
  rd_obj *o = arena_alloc(a, sizeof *o + extra);
  if (!o) return NULL;
  if (!a->first) a->first = &o->r;
  o->a = a;
  memset(&o->r, 0, sizeof o->r);
  o->r.type = type;
  if (t->parent) {
    redisReply *parent = t->parent->obj;
    parent->element[t->idx] = &o->r;
  }
  return &o->r;
}

static void *obj_string(const redisReadTask *t, char *str, size_t len) {
  redisReply *r = obj_new(t, t->type, len + 1);
  if (!r) return NULL;
  r->str = (char *)(r + 1);
  memcpy(r->str, str, len);
  r->str[len] = 0;
  r->len = len;
  return r;
}

static void *obj_array(const redisReadTask *t, int elements) {
  size_t n = elements > 0 ? (size_t)elements : 0;
  redisReply *r = obj_new(t, REDIS_REPLY_ARRAY, n * sizeof(redisReply *));
  if (!r) return NULL;
  r->elements = n;
  r->element = n ? (redisReply **)(r + 1) : NULL;
  for (size_t i = 0; i < n; i++) r->element[i] = NULL;
  return r;
}

static void *obj_integer(const redisReadTask *t, long long v) {
  redisReply *r = obj_new(t, REDIS_REPLY_INTEGER, 0);
  if (r) r->integer = v;
  return r;
}

static void *obj_nil(const redisReadTask *t) { return obj_new(t, REDIS_REPLY_NIL, 0); }

static void obj_free(void *p) {
  if (!p) return;
  rd_obj *o = (rd_obj *)((char *)p - offsetof(rd_obj, r));
  if (o->a->first == p) arena_reset(o->a);
}


/* ---- the glue ---------------------------------------------------------------------- */

static void glue_closed(uv_handle_t *h) { free(h->data); }

static void on_poll(uv_poll_t *p, int status, int events) {
  glue *g = p->data;
  if (!g->ac) return;
  if (status < 0) {
    tw_redis *r = g->r;
    snprintf(r->last_error, sizeof r->last_error, "poll error: %s", uv_strerror(status));
    tw_redis_drop(r, "redis_io");
    return;
  }
  if (events & UV_READABLE) redisAsyncHandleRead(g->ac);
  if (g->ac && (events & UV_WRITABLE)) redisAsyncHandleWrite(g->ac);
}

static void glue_update(glue *g, int ev) {
  if (!g->ac) return;
  if (ev == g->events) return;
  g->events = ev;
  if (ev)
    uv_poll_start(&g->poll, ev, on_poll);
  else
    uv_poll_stop(&g->poll);
}
static void add_read(void *p) { glue *g = p; glue_update(g, g->events | UV_READABLE); }
static void del_read(void *p) { glue *g = p; glue_update(g, g->events & ~UV_READABLE); }
static void add_write(void *p) { glue *g = p; glue_update(g, g->events | UV_WRITABLE); }
static void del_write(void *p) { glue *g = p; glue_update(g, g->events & ~UV_WRITABLE); }
static void cleanup(void *p) {
  glue *g = p;
  uv_poll_stop(&g->poll);
  g->ac = NULL;
  uv_close((uv_handle_t *)&g->poll, glue_closed);
}

static int attach(tw_redis *r, redisAsyncContext *ac) {
  glue *g = calloc(1, sizeof *g);
  if (!g) return -1;
  if (uv_poll_init(r->c->loop, &g->poll, ac->c.fd) != 0) {
    free(g);
    return -1;
  }
  g->poll.data = g;
  g->ac = ac;
  g->r = r;
  ac->ev.data = g;
  ac->ev.addRead = add_read;
  ac->ev.delRead = del_read;
  ac->ev.addWrite = add_write;
  ac->ev.delWrite = del_write;
  ac->ev.cleanup = cleanup;
  return 0;
}

/* ---- connection state ------------------------------------------------------------- */

/* The link is gone (or an attempt failed): tells the owner, schedules a reconnection. */
static void down(tw_redis *r, const char *code) {
  r->ac = NULL;
  r->connected = 0;
  r->connect_deadline = 0;
  if (r->closing) return;
  if (r->state) {
    tw_error e;
    tw_err_set(&e, code, 0, "redis: %s", r->last_error[0] ? r->last_error : "connection lost");
    r->state(r->user, r, 0, &e);
  }
  if (r->closing) return;
  r->reconnect_at = uv_now(r->c->loop) + tw_backoff_ms(&r->c->rng, 0.05, 2.0, r->attempt++);
  arm(r);
}

static void on_connect(const redisAsyncContext *ac, int status) {
  tw_redis *r = ac->data;
  if (r->ac != ac) return;
  if (status != REDIS_OK) {
    snprintf(r->last_error, sizeof r->last_error, "connect failed: %s", ac->errstr[0] ? ac->errstr : "?");
    r->ac = NULL; /* hiredis frees it after this callback */
    down(r, "redis_unreachable");
    return;
  }
  r->connected = 1;
  r->connect_deadline = 0;
  r->attempt = 0;
  r->last_error[0] = 0;
  arm(r);
  if (r->state) r->state(r->user, r, 1, NULL);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  tw_redis *r = ac->data;
  if (r->ac != ac) return;
  if (status != REDIS_OK && !r->last_error[0])
    snprintf(r->last_error, sizeof r->last_error, "%s", ac->errstr[0] ? ac->errstr : "connection lost");
  down(r, "redis_disconnected");
}

static void on_handshake(tw_redis *r, void *user, redisReply *rep, const tw_error *err) {
  (void)user;
  if (err || !rep || rep->type == REDIS_REPLY_ERROR) {
    snprintf(r->last_error, sizeof r->last_error, "AUTH/SELECT refused: %.120s",
             rep && rep->str ? rep->str : err ? err->message : "?");
    tw_redis_drop(r, "redis_auth");
  }
}

static void start_connect(tw_redis *r) {
  redisAsyncContext *ac = r->path ? redisAsyncConnectUnix(r->path) : redisAsyncConnect(r->host, r->port);
  r->reconnect_at = 0;
  if (!ac || ac->err) {
    snprintf(r->last_error, sizeof r->last_error, "connect failed: %s", ac ? ac->errstr : "out of memory");
    if (ac) redisAsyncFree(ac);
    r->connected = 0;
    down(r, "redis_unreachable");
    return;
  }
  ac->data = r;
  r->fns = (redisReplyObjectFunctions){obj_string, obj_array, obj_integer, obj_nil, obj_free};
  ac->c.reader->fn = &r->fns;
  ac->c.reader->privdata = &r->arena;
  if (attach(r, ac) != 0) {
    redisAsyncFree(ac);
    snprintf(r->last_error, sizeof r->last_error, "cannot watch the socket");
    down(r, "redis_unreachable");
    return;
  }
  r->ac = ac;
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  uv_update_time(r->c->loop);
  r->connect_deadline = uv_now(r->c->loop) + (uint64_t)(r->connect_timeout_s * 1000);
  /* the handshake is pipelined ahead of anything else */
  if (r->password) {
    const char *argv[] = {"AUTH", r->password};
    size_t lens[] = {4, strlen(r->password)};
    tw_redis_cmd_t(r, on_handshake, NULL, 2, argv, lens, 0);
  }
  if (r->db > 0) {
    char db[16];
    snprintf(db, sizeof db, "%d", r->db);
    const char *argv[] = {"SELECT", db};
    size_t lens[] = {6, strlen(db)};
    tw_redis_cmd_t(r, on_handshake, NULL, 2, argv, lens, 0);
  }
  arm(r);
}

static void on_timer(uv_timer_t *t) {
  tw_redis *r = t->data;
  uint64_t now = uv_now(r->c->loop);
  if (r->closing) return;
  if (r->ac && !r->connected && r->connect_deadline && now >= r->connect_deadline) {
    snprintf(r->last_error, sizeof r->last_error, "connect timed out after %.1f s", r->connect_timeout_s);
    tw_redis_drop(r, "redis_timeout");
    return;
  }
  if (r->ac && r->head && now >= r->head->deadline) {
    snprintf(r->last_error, sizeof r->last_error, "no reply within %.1f s", r->command_timeout_s);
    tw_redis_drop(r, "redis_timeout");
    return;
  }
  if (!r->ac && r->reconnect_at && now >= r->reconnect_at) {
    start_connect(r);
    return;
  }
  arm(r);
}

/* (Re)arms the timer for the nearest of the deadlines. */
static void arm(tw_redis *r) {
  if (r->closing) return;
  uint64_t at = 0;
  if (r->ac && !r->connected && r->connect_deadline) at = r->connect_deadline;
  if (r->ac && r->head && (!at || r->head->deadline < at)) at = r->head->deadline;
  if (!r->ac && r->reconnect_at) at = r->reconnect_at;
  if (!at) {
    uv_timer_stop(&r->timer);
    return;
  }
  uint64_t now = uv_now(r->c->loop);
  uv_timer_start(&r->timer, on_timer, at > now ? at - now : 0, 0);
}

void tw_redis_drop(tw_redis *r, const char *code) {
  redisAsyncContext *ac = r->ac;
  if (!ac) return;
  if (!r->last_error[0]) snprintf(r->last_error, sizeof r->last_error, "connection dropped");
  /* report first (commands are refused from now on), then let hiredis answer what is in
   * flight */
  down(r, code);
  redisAsyncFree(ac); /* replies NULL to everything in flight; on_disconnect sees r->ac != ac */
}

/* ---- commands --------------------------------------------------------------------- */

static void on_reply(redisAsyncContext *ac, void *reply, void *priv) {
  (void)ac;
  rd_cmd *k = priv;
  tw_redis *r = k->r;
  if (r->head == k) {
    r->head = k->next;
    if (!r->head) r->tail = NULL;
  } else { /* cannot happen: replies are in order */
    rd_cmd **pp = &r->head;
    while (*pp && *pp != k) pp = &(*pp)->next;
    if (*pp) *pp = k->next;
    r->tail = NULL;
    for (rd_cmd *x = r->head; x; x = x->next) r->tail = x;
  }
  r->inflight--;
  if (reply) {
    if (k->cb) k->cb(r, k->user, reply, NULL);
  } else if (k->cb) {
    tw_error e;
    tw_err_set(&e, r->closing ? "closed" : "redis_disconnected", 0, "redis: %s",
               r->closing ? "queue closed" : r->last_error[0] ? r->last_error : "connection lost");
    k->cb(r, k->user, NULL, &e);
  }
  free(k);
  if (!r->closing && r->ac) arm(r);
}

/* RESP of a command, written here (hiredis's argv formatter costs a formatted append per
 * argument): "*<argc>\r\n" then "$<len>\r\n<bytes>\r\n" per argument. */
static char *put_uint(char *p, size_t v) {
  char tmp[24];
  int n = 0;
  do tmp[n++] = (char)('0' + v % 10), v /= 10;
  while (v);
  while (n) *p++ = tmp[--n];
  return p;
}

static int resp_format(tw_buf *b, int argc, const char **argv, const size_t *lens) {
  size_t need = 16;
  for (int i = 0; i < argc; i++) need += lens[i] + 26;
  b->len = 0;
  if (tw_buf_reserve(b, need) != 0) return -1;
  char *p = b->p;
  *p++ = '*';
  p = put_uint(p, (size_t)argc);
  *p++ = '\r', *p++ = '\n';
  for (int i = 0; i < argc; i++) {
    *p++ = '$';
    p = put_uint(p, lens[i]);
    *p++ = '\r', *p++ = '\n';
    if (lens[i]) memcpy(p, argv[i], lens[i]);
    p += lens[i];
    *p++ = '\r', *p++ = '\n';
  }
  b->len = (size_t)(p - b->p);
  *p = 0; /* hiredis looks one byte past a command of one argument */
  return 0;
}

int tw_redis_cmd_t(tw_redis *r, tw_redis_fn cb, void *user, int argc, const char **argv, const size_t *lens,
                   uint64_t extra_ms) {
  if (!r->ac || r->closing) return -1;
  rd_cmd *k = malloc(sizeof *k);
  if (!k) return -1;
  k->next = NULL;
  k->r = r;
  k->cb = cb;
  k->user = user;
  /* the loop's cached time may be old (a command sent from outside the loop after a
   * blocking call): a deadline from it could pass at once */
  uv_update_time(r->c->loop);
  k->deadline = uv_now(r->c->loop) + (uint64_t)(r->command_timeout_s * 1000) + extra_ms;
  if (resp_format(&r->fmt, argc, argv, lens) != 0 ||
      redisAsyncFormattedCommand(r->ac, on_reply, k, r->fmt.p, r->fmt.len) != REDIS_OK) {
    free(k);
    return -1;
  }
  int was_empty = r->head == NULL;
  if (r->tail) r->tail->next = k;
  else r->head = k;
  r->tail = k;
  r->inflight++;
  if (was_empty) arm(r);
  return 0;
}

int tw_redis_cmd(tw_redis *r, tw_redis_fn cb, void *user, int argc, const char **argv, const size_t *lens) {
  return tw_redis_cmd_t(r, cb, user, argc, argv, lens, 0);
}

int tw_redis_up(const tw_redis *r) { return r->connected && r->ac; }
size_t tw_redis_inflight(const tw_redis *r) { return r->inflight; }

/* ---- URL, construction ------------------------------------------------------------ */

static int parse_url(tw_redis *r, const char *url, tw_error *err) {
  if (strncmp(url, "unix:", 5) == 0) {
    const char *p = url + 5;
    if (strncmp(p, "//", 2) == 0) p += 2;
    if (!*p) goto bad;
    r->path = tw_strdup(p);
    return r->path ? 0 : -1;
  }
  if (strncmp(url, "redis://", 8) != 0) goto bad;
  const char *p = url + 8, *at = strchr(p, '@');
  if (at) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    const char *pw = colon ? colon + 1 : p; /* redis://:pw@ or redis://user:pw@ (user ignored) */
    r->password = tw_strndup(pw, (size_t)(at - pw));
    p = at + 1;
  }
  const char *end = p + strcspn(p, "/");
  const char *colon = memchr(p, ':', (size_t)(end - p));
  const char *hend = colon ? colon : end;
  r->host = hend > p ? tw_strndup(p, (size_t)(hend - p)) : tw_strdup("127.0.0.1");
  r->port = 6379;
  if (colon) {
    char *e;
    long v = strtol(colon + 1, &e, 10);
    if (e != end || v < 1 || v > 65535) goto bad;
    r->port = (int)v;
  }
  if (*end == '/' && end[1]) {
    char *e;
    long v = strtol(end + 1, &e, 10);
    if (*e || v < 0 || v > 10000) goto bad;
    r->db = (int)v;
  }
  return r->host ? 0 : -1;
bad:
  tw_err_set(err, "invalid_argument", 0, "redis must be redis://[:password@]host[:port][/db] or unix:/path");
  return -1;
}

tw_redis *tw_redis_new(tw_client *c, const char *url, double connect_timeout_s, double command_timeout_s,
                       tw_redis_state_fn state, void *user, tw_error *err) {
  tw_redis *r = calloc(1, sizeof *r);
  if (!r) {
    tw_err_set(err, "no_memory", 0, "out of memory");
    return NULL;
  }
  r->c = c;
  r->connect_timeout_s = connect_timeout_s;
  r->command_timeout_s = command_timeout_s;
  r->state = state;
  r->user = user;
  if (!url || parse_url(r, url, err) != 0) {
    if (!err->code[0]) tw_err_set(err, "invalid_argument", 0, "redis URL required");
    free(r->host);
    free(r->path);
    free(r->password);
    free(r);
    return NULL;
  }
  uv_timer_init(c->loop, &r->timer);
  r->timer.data = r;
  start_connect(r);
  return r;
}

static void timer_closed(uv_handle_t *h) {
  tw_redis *r = h->data;
  if (r->password) memset(r->password, 0, strlen(r->password));
  if (r->fmt.p) memset(r->fmt.p, 0, r->fmt.cap); /* may hold the AUTH password */
  tw_buf_free(&r->fmt);
  arena_free_all(&r->arena);
  free(r->host);
  free(r->path);
  free(r->password);
  free(r);
}

void tw_redis_free(tw_redis *r) {
  if (!r) return;
  r->closing = 1;
  redisAsyncContext *ac = r->ac;
  r->ac = NULL;
  r->connected = 0;
  if (ac) redisAsyncFree(ac); /* callbacks get "closed" */
  uv_timer_stop(&r->timer);
  uv_close((uv_handle_t *)&r->timer, timer_closed);
}
