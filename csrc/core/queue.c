/* queue.c - the queue transport over Redis Streams.
 *
 * Keys, from the queue's name N: N:s:<k> the partition streams (k < the partition count,
 * stored in N:partitions by the first process), N:dead the dead-letter stream,
 * N:seen:<width>:<bucket> the cross-process de-duplication marks (hashes of message id ->
 * time first seen, one per <width> ms of Redis's clock; see PUBLISH_LUA),
 * N:err:<k>:<entry> the last handler error of a pending entry. The consumer group is N.
 *
 * Gateway. Every delivered message becomes a record (id, message type, timestamp, the
 * transport it came on, the body {subscription, event}) with the hash of its routing key
 * (broadcaster id): partition = hash % count. The records of a loop iteration are sent
 * in EVALSHAs of the publish script, up to 64 a call (the marks of all of them looked
 * up and the new ones set together, then an XADD for each new one), pipelined; each
 * stays in memory (inflight) until
 * Redis answers. When the link is down, records wait
 * in memory (buffer_max), then in the spool file (appended, fsync'd in batches), and are
 * sent again in order once it is back: inflight first (their script may or may not have
 * run: the mark makes a second run a duplicate), then the memory queue, then the spool.
 * Once the spool holds something every new record goes behind it, so order holds.
 *
 * Worker. XREADGROUP of its own pending entries (id 0) first, then new ones (>), with
 * BLOCK on a connection of its own. Each entry is handed to the host (TW_EV_QUEUED); the
 * host calls tw_queue_done when the handlers finished: XACK (batched per loop iteration)
 * or the error recorded and the entry left pending. The janitor, every claim_idle / 2,
 * moves entries delivered max_deliveries times and idle since claim_idle to N:dead (a
 * script: XPENDING IDLE, XRANGE, XADD, XACK), then XAUTOCLAIMs entries idle since
 * claim_idle and hands them out again. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "tw_queue.h"
#include "tw_redis.h"

#define WINDOW 4096   /* records in flight at most */
#define BATCH 64      /* records per publish call */
#define DEDUPE_BUCKETS 4 /* de-duplication buckets per window */
#define NF 5          /* record fields: id, mt, ts, tr, b */
#define SPOOL_HDR (4 * (2 + NF))

/* n messages in one call: KEYS = the stream of each, ARGV = window (ms), trim mode, trim
 * value, the marks' key prefix, the bucket width (ms), then 5 fields of each. One reply
 * per message: its entry id, or false when it was seen within the window (another
 * gateway, an earlier run of this call, or earlier in this call queued it).
 *
 * The marks: a message first seen at Redis time t0 is in the hash <prefix><floor(t0 /
 * width)> as field id = t0 (width = window / DEDUPE_BUCKETS). It is a duplicate at time
 * now iff a mark of it has t0 >= now - window (what SET NX PX <window> at t0 gives: the
 * key lives while now <= t0 + window); such marks are all in the buckets cur - nb .. cur,
 * read with one HMGET each. New marks go in one HSET after the XADDs (an XADD that fails
 * ends the script: the call is retried and must not find its messages marked, or they
 * would be answered as stored and lost; a retry may append one twice instead, which the
 * worker's at-least-once contract covers); the bucket expires one width after
 * its last use, and the bucket that just left the window is UNLINKed (freed off the main
 * thread) as soon as a call sees it. Each stream written is trimmed once per call
 * (XTRIM MAXLEN ~ or MINID ~ after its XADDs: what XADD's own trim option did per entry). */
static const char PUBLISH_LUA[] =
    "local call, n = redis.call, #KEYS\n"
    "local w, mode, tv, pre, bw = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])\n"
    "local t = call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local cur = math.floor(now / bw)\n"
    "local nb = math.ceil(w / bw)\n"
    "local ids, dup, out = {}, {}, {}\n"
    "for i = 1, n do ids[i] = ARGV[6 + (i - 1) * 5] end\n"
    "for k = cur - nb, cur do\n"
    "  local v = call('HMGET', pre .. k, unpack(ids))\n"
    "  for i = 1, n do\n"
    "    local x = v[i]\n"
    "    if x and tonumber(x) >= now - w then dup[i] = true end\n"
    "  end\n"
    "end\n"
    "local marks, fresh, ts = {}, {}, tostring(now)\n"
    "for i = 1, n do\n"
    "  local id = ids[i]\n"
    "  if id ~= '' and not dup[i] then\n"
    "    if fresh[id] then dup[i] = true\n"
    "    else fresh[id] = true; marks[#marks + 1] = id; marks[#marks + 1] = ts end\n"
    "  end\n"
    "end\n"
    "local streams = {}\n"
    "for i = 1, n do\n"
    "  if dup[i] then out[i] = false\n"
    "  else\n"
    "    local b, k = 6 + (i - 1) * 5, KEYS[i]\n"
    "    out[i] = call('XADD', k, '*', 'id', ids[i], 'mt', ARGV[b + 1], 'ts', ARGV[b + 2], 'tr', ARGV[b + 3], 'b', ARGV[b + 4])\n"
    "    streams[k] = true\n"
    "  end\n"
    "end\n"
    "if #marks > 0 then -- after the XADDs: a call that failed half-way marks nothing\n"
    "  local key = pre .. cur\n"
    "  call('HSET', key, unpack(marks))\n"
    "  call('PEXPIREAT', key, (cur + nb + 2) * bw)\n"
    "  call('UNLINK', pre .. (cur - nb - 1))\n"
    "end\n"
    "if mode ~= 'none' then\n"
    "  local how = mode == 'maxlen' and 'MAXLEN' or 'MINID'\n"
    "  for k in pairs(streams) do call('XTRIM', k, how, '~', tv) end\n"
    "end\n"
    "return out\n";

static const char JANITOR_LUA[] =
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', tonumber(ARGV[2]), '-', '+', 100)\n"
    "local n = 0\n"
    "for _, e in ipairs(p) do\n"
    "  if tonumber(e[4]) >= tonumber(ARGV[3]) then\n"
    "    local r = redis.call('XRANGE', KEYS[1], e[1], e[1])\n"
    "    local ek = ARGV[4] .. e[1]\n"
    "    local err = redis.call('GET', ek) or ('delivered ' .. e[4] .. ' times without an acknowledgement')\n"
    "    local f = {'entry', e[1], 'partition', ARGV[5], 'deliveries', tostring(e[4]), 'consumer', e[2], 'error', err}\n"
    "    if r[1] then for _, v in ipairs(r[1][2]) do f[#f + 1] = v end end\n"
    "    redis.call('XADD', KEYS[2], '*', unpack(f))\n"
    "    redis.call('XACK', KEYS[1], ARGV[1], e[1])\n"
    "    redis.call('DEL', ek)\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";

typedef struct rec {
  struct rec *next;
  tw_queue_stored_fn cb;
  void *user;
  uint32_t hash;
  uint8_t from_spool;
  uint16_t batch;       /* first record of a publish call: the records it carries */
  uint32_t len[NF];
  char *f[NF];
  char data[];
} rec;

typedef struct pend_cb { /* spooled, waiting for the fsync */
  struct pend_cb *next;
  tw_queue_stored_fn cb;
  void *user;
} pend_cb;

typedef struct ackbuf {
  char **ids;
  size_t n, cap;
} ackbuf;

struct tw_queue {
  tw_client *c;
  struct tw_queue *next;
  void *user;
  tw_queue_opts o;
  char *name, *consumer, *spool_path, *url;
  int closing, depth;
  tw_redis *pub, *sub;
  int pub_up, sub_up;
  int ready;      /* scripts loaded and the partition count known */
  int groups_ok;  /* consumer groups exist */
  int setup_gen;  /* bumps on every (re)connection: stale set-up replies are ignored */
  int pending_setup;
  int P;
  char **skey;    /* stream keys */
  char sha_pub[48], sha_jan[48];
  char *seen_pre;              /* <name>:seen:<bucket width>: */
  char win_ms[24], width_ms[24];
  /* gateway */
  rec *infl_h, *infl_t, *retry_h, *retry_t, *uns_h, *uns_t;
  size_t n_infl, n_retry, n_uns;
  int spool_fd;
  uint64_t spool_r, spool_w;
  size_t spool_unconfirmed;
  pend_cb *fs_h, *fs_t;
  int spool_dirty;
  /* worker */
  int reading, phase_pending;
  char **last_id;
  ackbuf *acks;
  int acks_dirty;
  uint64_t next_janitor;
  uv_timer_t tick;
  uv_timer_t ackt;
  uv_timer_t flusht;
  int flush_armed;
  int handles;    /* open uv handles */
  tw_queue_stats st;
};

static void flush(tw_queue *q);
static void worker_read(tw_queue *q);
static void start_setup(tw_queue *q);
static void setup_reply(tw_redis *rd, void *user, redisReply *rep, const tw_error *err);

/* ---- errors ------------------------------------------------------------------------ */

static void q_error(tw_queue *q, const char *code, const char *fmt, const char *detail) {
  tw_error e;
  tw_err_set(&e, code, 0, fmt, detail ? detail : "");
  tw_event ev = {.type = TW_EV_QUEUED, .error = &e, .queue = q, .partition = -1};
  q->depth++;
  tw_emit(q->c, &ev);
  q->depth--;
}

/* ---- records ----------------------------------------------------------------------- */

static uint32_t fnv1a(const char *s, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
  return h;
}

static rec *rec_new(const char *const f[NF], const uint32_t len[NF]) {
  size_t total = 0;
  for (int i = 0; i < NF; i++) total += len[i] + 1;
  rec *r = malloc(sizeof *r + total);
  if (!r) return NULL;
  memset(r, 0, sizeof *r);
  char *p = r->data;
  for (int i = 0; i < NF; i++) {
    r->f[i] = p;
    r->len[i] = len[i];
    if (len[i]) memcpy(p, f[i], len[i]);
    p[len[i]] = 0;
    p += len[i] + 1;
  }
  return r;
}

static void list_push(rec **h, rec **t, rec *r) {
  r->next = NULL;
  if (*t) (*t)->next = r;
  else *h = r;
  *t = r;
}

static rec *list_pop(rec **h, rec **t) {
  rec *r = *h;
  if (r) {
    *h = r->next;
    if (!*h) *t = NULL;
    r->next = NULL;
  }
  return r;
}

static void stored(tw_queue *q, rec *r, const tw_error *err) {
  if (r->from_spool && q->spool_unconfirmed > 0) q->spool_unconfirmed--;
  if (r->cb) r->cb(r->user, err);
  free(r);
}

/* ---- the spool --------------------------------------------------------------------- */

static void put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8),
  p[3] = (unsigned char)v;
}
static uint32_t get32(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int spool_open(tw_queue *q, tw_error *err) {
  q->spool_fd = open(q->spool_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (q->spool_fd < 0) {
    tw_err_set(err, "queue_spool", 0, "cannot open the spool %s: %s", q->spool_path, strerror(errno));
    return -1;
  }
  /* what an earlier run left: every whole record is replayed, a torn tail cut off */
  uint64_t off = 0;
  unsigned char h[SPOOL_HDR];
  for (;;) {
    ssize_t n = pread(q->spool_fd, h, sizeof h, (off_t)off);
    if (n != (ssize_t)sizeof h) break;
    uint64_t body = 0;
    for (int i = 0; i < NF; i++) body += get32(h + 8 + 4 * i);
    if (get32(h) != body) break;
    struct stat sb;
    if (fstat(q->spool_fd, &sb) != 0 || (uint64_t)sb.st_size < off + sizeof h + body) break;
    off += sizeof h + body;
  }
  if (ftruncate(q->spool_fd, (off_t)off) != 0) {
    tw_err_set(err, "queue_spool", 0, "cannot truncate the spool: %s", strerror(errno));
    return -1;
  }
  q->spool_w = off;
  q->spool_r = 0;
  q->st.spool_bytes = off;
  return 0;
}

static int spool_append(tw_queue *q, rec *r) {
  unsigned char h[SPOOL_HDR];
  uint32_t body = 0;
  for (int i = 0; i < NF; i++) body += r->len[i];
  if (q->spool_w + sizeof h + body > q->o.spool_max) return -1;
  put32(h, body);
  put32(h + 4, r->hash);
  for (int i = 0; i < NF; i++) put32(h + 8 + 4 * i, r->len[i]);
  if (pwrite(q->spool_fd, h, sizeof h, (off_t)q->spool_w) != (ssize_t)sizeof h) return -2;
  uint64_t off = q->spool_w + sizeof h;
  for (int i = 0; i < NF; i++) {
    if (r->len[i] && pwrite(q->spool_fd, r->f[i], r->len[i], (off_t)off) != (ssize_t)r->len[i]) return -2;
    off += r->len[i];
  }
  q->spool_w = off;
  q->st.spool_bytes = q->spool_w - q->spool_r;
  q->st.spooled++;
  q->spool_dirty = 1;
  if (r->cb) {
    pend_cb *p = malloc(sizeof *p);
    if (!p) return -2;
    p->next = NULL;
    p->cb = r->cb;
    p->user = r->user;
    if (q->fs_t) q->fs_t->next = p;
    else q->fs_h = p;
    q->fs_t = p;
  }
  free(r);
  return 0;
}

static void spool_sync(tw_queue *q) {
  if (!q->spool_dirty) return;
  q->spool_dirty = 0;
  int rc = fdatasync(q->spool_fd);
  tw_error e;
  if (rc != 0) tw_err_set(&e, "queue_spool", 0, "fsync of the spool failed: %s", strerror(errno));
  pend_cb *p = q->fs_h;
  q->fs_h = q->fs_t = NULL;
  while (p) {
    pend_cb *n = p->next;
    p->cb(p->user, rc == 0 ? NULL : &e);
    free(p);
    p = n;
  }
}

/* Reads the spool's next record into memory (NULL at its end). */
static rec *spool_read(tw_queue *q) {
  if (q->spool_r >= q->spool_w) return NULL;
  unsigned char h[SPOOL_HDR];
  if (pread(q->spool_fd, h, sizeof h, (off_t)q->spool_r) != (ssize_t)sizeof h) goto bad;
  uint32_t len[NF];
  size_t total = 0;
  for (int i = 0; i < NF; i++) total += (len[i] = get32(h + 8 + 4 * i));
  char *buf = malloc(total + 1);
  if (!buf) return NULL;
  if (total && pread(q->spool_fd, buf, total, (off_t)(q->spool_r + sizeof h)) != (ssize_t)total) {
    free(buf);
    goto bad;
  }
  const char *f[NF];
  size_t o = 0;
  for (int i = 0; i < NF; i++) f[i] = buf + o, o += len[i];
  rec *r = rec_new(f, len);
  free(buf);
  if (!r) return NULL;
  r->hash = get32(h + 4);
  r->from_spool = 1;
  q->spool_r += sizeof h + total;
  q->spool_unconfirmed++;
  q->st.spool_bytes = q->spool_w - q->spool_r;
  return r;
bad:
  q_error(q, "queue_spool", "the spool could not be read back: %s (its rest is kept in the file)", strerror(errno));
  q->spool_r = q->spool_w;
  return NULL;
}

static void spool_maybe_reset(tw_queue *q) {
  if (q->spool_fd >= 0 && q->spool_w > 0 && q->spool_r >= q->spool_w && q->spool_unconfirmed == 0 &&
      !q->spool_dirty) {
    if (ftruncate(q->spool_fd, 0) == 0) {
      q->spool_r = q->spool_w = 0;
      q->st.spool_bytes = 0;
      fdatasync(q->spool_fd);
    }
  }
}

/* ---- publishing -------------------------------------------------------------------- */

static void on_pub_reply(tw_redis *rd, void *user, redisReply *rep, const tw_error *err) {
  (void)err;
  tw_queue *q = user;
  rec *r = q->infl_h;
  if (!r) return;
  size_t n = r->batch ? r->batch : 1;
  int good = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == n;
  for (size_t i = 0; i < n; i++) {
    r = list_pop(&q->infl_h, &q->infl_t);
    if (!r) break;
    q->n_infl--;
    if (good) {
      if (rep->element[i]->type == REDIS_REPLY_NIL) q->st.duplicates++;
      else q->st.published++;
      stored(q, r, NULL);
    } else { /* not stored: sent again once the link is back, ahead of everything else */
      r->batch = 0;
      list_push(&q->retry_h, &q->retry_t, r);
      q->n_retry++;
    }
  }
  if (!good && rep && !q->closing) {
    q_error(q, "redis_error", "publish refused: %s (retried after a reconnection)",
            rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
    tw_redis_drop(rd, "redis_error");
    return;
  }
  if (good && !q->closing) flush(q);
}

/* Sends recs[0..n) in one call; on failure they are left to the caller. */
static int send_batch(tw_queue *q, rec **recs, size_t n) {
  size_t argc = 3 + n + 5 + NF * n;
  const char **argv = malloc(argc * sizeof *argv);
  size_t *lens = malloc(argc * sizeof *lens);
  int rc = -1;
  if (!argv || !lens) goto out;
  char nk[16], trimv[48];
  snprintf(nk, sizeof nk, "%zu", n);
  const char *mode = "none";
  if (q->o.max_age_s > 0) {
    mode = "minid";
    snprintf(trimv, sizeof trimv, "%lld-0", (long long)((tw_wall_now() - q->o.max_age_s) * 1000));
  } else if (q->o.maxlen > 0) {
    mode = "maxlen";
    snprintf(trimv, sizeof trimv, "%lld", q->o.maxlen);
  } else {
    snprintf(trimv, sizeof trimv, "0");
  }
  size_t a = 0;
  argv[a] = "EVALSHA", lens[a++] = 7;
  argv[a] = q->sha_pub, lens[a++] = strlen(q->sha_pub);
  argv[a] = nk, lens[a++] = strlen(nk);
  for (size_t i = 0; i < n; i++) {
    const char *sk = q->skey[recs[i]->hash % (uint32_t)q->P];
    argv[a] = sk, lens[a++] = strlen(sk);
  }
  argv[a] = q->win_ms, lens[a++] = strlen(q->win_ms);
  argv[a] = mode, lens[a++] = strlen(mode);
  argv[a] = trimv, lens[a++] = strlen(trimv);
  argv[a] = q->seen_pre, lens[a++] = strlen(q->seen_pre);
  argv[a] = q->width_ms, lens[a++] = strlen(q->width_ms);
  for (size_t i = 0; i < n; i++)
    for (int f = 0; f < NF; f++) argv[a] = recs[i]->f[f], lens[a++] = recs[i]->len[f];
  if (tw_redis_cmd(q->pub, on_pub_reply, q, (int)a, argv, lens) != 0) goto out;
  for (size_t i = 0; i < n; i++) {
    recs[i]->batch = i == 0 ? (uint16_t)n : 0;
    list_push(&q->infl_h, &q->infl_t, recs[i]);
    q->n_infl++;
  }
  rc = 0;
out:
  free(argv);
  free(lens);
  return rc;
}

/* Sends what waits, in order, while the link is up and the window has room. */
static void flush(tw_queue *q) {
  rec *recs[BATCH];
  while (q->ready && q->pub_up && q->n_infl < WINDOW) {
    size_t n = 0;
    while (n < BATCH) {
      rec *r;
      if (q->retry_h) {
        r = list_pop(&q->retry_h, &q->retry_t);
        q->n_retry--;
      } else if (q->uns_h) {
        r = list_pop(&q->uns_h, &q->uns_t);
        q->n_uns--;
      } else if (q->spool_fd >= 0 && q->spool_r < q->spool_w) {
        r = spool_read(q);
        if (!r) break;
      } else {
        break;
      }
      recs[n++] = r;
    }
    if (n == 0) break;
    if (send_batch(q, recs, n) != 0) { /* the link just went: back to the front, in order */
      for (size_t i = n; i-- > 0;) {
        recs[i]->next = q->retry_h;
        q->retry_h = recs[i];
        if (!q->retry_t) q->retry_t = recs[i];
        q->n_retry++;
      }
      break;
    }
  }
  if (q->spool_fd >= 0) spool_maybe_reset(q);
}

static void on_flusht(uv_timer_t *t) {
  tw_queue *q = t->data;
  q->flush_armed = 0;
  if (!q->closing) flush(q);
}

static size_t held(const tw_queue *q) { return q->n_infl + q->n_retry + q->n_uns; }

static int spool_has(const tw_queue *q) { return q->spool_fd >= 0 && q->spool_r < q->spool_w; }

static int enqueue(tw_queue *q, rec *r, tw_error *err) {
  if (!spool_has(q) && held(q) < q->o.buffer_max) {
    list_push(&q->uns_h, &q->uns_t, r);
    q->n_uns++;
    /* sent at the end of this loop iteration, with whatever else arrived in it */
    if (!q->flush_armed && q->ready && q->pub_up) {
      q->flush_armed = 1;
      uv_timer_start(&q->flusht, on_flusht, 0, 0);
    }
    return 0;
  }
  if (q->spool_fd >= 0) {
    tw_queue_stored_fn cb = r->cb;
    void *user = r->user;
    int rc = spool_append(q, r);
    if (rc == 0) return 0;
    q->st.dropped++;
    tw_err_set(err, "queue_full", 0, "%s: message %s lost",
               rc == -1 ? "Redis unreachable or not keeping up, memory buffer and spool full" : "the spool cannot be written",
               r->len[0] ? r->f[0] : "?");
    free(r);
    if (cb) cb(user, err);
    return -1;
  }
  q->st.dropped++;
  tw_err_set(err, "queue_full", 0, "Redis unreachable or not keeping up, the memory buffer full (no spool): message %s lost",
             r->len[0] ? r->f[0] : "?");
  tw_queue_stored_fn cb = r->cb;
  void *user = r->user;
  free(r);
  if (cb) cb(user, err);
  return -1;
}

static uint32_t route_hash(const tw_msg *m) {
  static const char *const keys[] = {"broadcaster_user_id", "to_broadcaster_user_id", "from_broadcaster_user_id"};
  const tw_json *d = m->doc;
  tw_jnode objs[2] = {m->event, tw_json_get(d, m->subscription, "condition", 9)};
  for (int o = 0; o < 2; o++) {
    if (o == 0 && tw_json_type(d, objs[0]) != TW_JSON_OBJ) continue;
    for (int i = 0; i < 3; i++) {
      size_t n;
      const char *s = tw_json_str(d, tw_json_get(d, objs[o], keys[i], strlen(keys[i])), &n);
      if (s && n) return fnv1a(s, n);
    }
  }
  return m->id ? fnv1a(m->id, m->id_len) : 0;
}

int tw_queue_publish(tw_queue *q, const tw_msg *m, tw_queue_stored_fn cb, void *user, tw_error *err) {
  tw_err_clear(err);
  if (!q || q->closing) {
    tw_err_set(err, "closed", 0, "queue is closed");
    return TW_ECLOSED;
  }
  if (!(q->o.role & TW_QUEUE_GATEWAY)) {
    tw_err_set(err, "invalid_argument", 0, "a worker queue does not publish");
    return TW_EINVAL;
  }
  if (!m->doc || m->subscription == TW_JNONE) {
    tw_err_set(err, "invalid_argument", 0, "message without a document");
    return TW_EINVAL;
  }
  size_t sl = 0, el = 0;
  const char *sraw = tw_json_raw(m->doc, m->subscription, &sl);
  const char *eraw = m->event != TW_JNONE ? tw_json_raw(m->doc, m->event, &el) : NULL;
  int arr = eraw && tw_json_type(m->doc, m->event) == TW_JSON_ARR;
  tw_buf b = {0};
  int ok = tw_buf_append(&b, "{\"subscription\":", 16) == 0 && tw_buf_append(&b, sraw, sl) == 0;
  if (ok && eraw)
    ok = tw_buf_append(&b, arr ? ",\"events\":" : ",\"event\":", arr ? 10 : 9) == 0 && tw_buf_append(&b, eraw, el) == 0;
  ok = ok && tw_buf_append(&b, "}", 1) == 0;
  const char *tr = m->transport == TW_TRANSPORT_WEBHOOK ? "webhook" : m->transport == TW_TRANSPORT_QUEUE ? "queue" : "websocket";
  const char *mt = m->message_type ? m->message_type : "notification";
  const char *f[NF] = {m->id ? m->id : "", mt, m->timestamp ? m->timestamp : "", tr, b.p};
  uint32_t len[NF] = {m->id ? (uint32_t)m->id_len : 0, (uint32_t)strlen(mt), m->timestamp ? (uint32_t)strlen(m->timestamp) : 0,
                      (uint32_t)strlen(tr), (uint32_t)b.len};
  rec *r = ok ? rec_new(f, len) : NULL;
  tw_buf_free(&b);
  if (!r) {
    tw_err_set(err, "no_memory", 0, "out of memory: message %s not queued", m->id ? m->id : "?");
    q->st.dropped++;
    if (cb) cb(user, err);
    return TW_ENOMEM;
  }
  r->hash = route_hash(m);
  r->cb = cb;
  r->user = user;
  return enqueue(q, r, err) == 0 ? TW_OK : TW_EIO;
}

bool tw_queue_gateway_publish(tw_queue *q, const tw_msg *m, tw_queue_stored_fn stored_fn, void *user) {
  tw_error e;
  int rc = tw_queue_publish(q, m, stored_fn, user, &e);
  if (rc != TW_OK) {
    q_error(q, e.code, "%s", e.message);
    /* a message that was queued and dropped (ENOMEM, EIO) had its callback already */
    if (stored_fn && (rc == TW_ECLOSED || rc == TW_EINVAL)) stored_fn(user, &e);
  }
  return !q->o.local;
}

/* ---- set-up after each (re)connection --------------------------------------------- */

typedef struct setup_ctx {
  tw_queue *q;
  int gen;
  int what; /* 0 SCRIPT LOAD publish, 1 janitor, 2 SET NX partitions, 3 GET partitions, 4 XGROUP */
} setup_ctx;

static void setup_done(tw_queue *q) {
  if (!q->ready) {
    q->ready = 1;
    flush(q);
  }
  if ((q->o.role & TW_QUEUE_WORKER) && !q->groups_ok) {
    /* groups, from id 0: nothing queued before the first worker is lost */
    for (int k = 0; k < q->P; k++) {
      setup_ctx *x = malloc(sizeof *x);
      if (!x) return;
      *x = (setup_ctx){q, q->setup_gen, 4};
      const char *argv[] = {"XGROUP", "CREATE", q->skey[k], q->name, "0", "MKSTREAM"};
      size_t lens[] = {6, 6, strlen(q->skey[k]), strlen(q->name), 1, 8};
      if (tw_redis_cmd(q->pub, setup_reply, x, 6, argv, lens) != 0) {
        free(x);
        return;
      }
      q->pending_setup++;
    }
  }
}

static int make_keys(tw_queue *q, int P) {
  q->skey = calloc((size_t)P, sizeof *q->skey);
  q->last_id = calloc((size_t)P, sizeof *q->last_id);
  q->acks = calloc((size_t)P, sizeof *q->acks);
  if (!q->skey || !q->last_id || !q->acks) return -1;
  for (int k = 0; k < P; k++) {
    size_t n = strlen(q->name) + 24;
    q->skey[k] = malloc(n);
    q->last_id[k] = tw_strdup("0");
    if (!q->skey[k] || !q->last_id[k]) return -1;
    snprintf(q->skey[k], n, "%s:s:%d", q->name, k);
  }
  q->P = P;
  q->st.partitions = P;
  return 0;
}

static void setup_reply(tw_redis *rd, void *user, redisReply *rep, const tw_error *err) {
  (void)rd;
  setup_ctx *x = user;
  tw_queue *q = x->q;
  int gen = x->gen, what = x->what;
  free(x);
  if (q->closing || gen != q->setup_gen || !rep) return; /* a lost link restarts the set-up */
  if (rep->type == REDIS_REPLY_ERROR && !(what == 4 && strncmp(rep->str, "BUSYGROUP", 9) == 0)) {
    q_error(q, "redis_error", "queue set-up refused: %s", rep->str);
    tw_redis_drop(q->pub, "redis_error");
    return;
  }
  if (what == 0 && rep->type == REDIS_REPLY_STRING) snprintf(q->sha_pub, sizeof q->sha_pub, "%s", rep->str);
  if (what == 1 && rep->type == REDIS_REPLY_STRING) snprintf(q->sha_jan, sizeof q->sha_jan, "%s", rep->str);
  if (what == 3) {
    long v = rep->type == REDIS_REPLY_STRING ? strtol(rep->str, NULL, 10) : 0;
    if (v < 1 || v > 1024) {
      q_error(q, "queue_config", "%s:partitions holds no usable partition count", q->name);
      return;
    }
    if (q->P == 0) {
      if (make_keys(q, (int)v) != 0) {
        q_error(q, "no_memory", "%s", "out of memory");
        return;
      }
    } else if (q->P != v) {
      q_error(q, "queue_config", "the partition count in Redis changed under a running queue (%s)", "restart it");
    }
  }
  if (--q->pending_setup > 0) return;
  if (what <= 3) setup_done(q);
  if (what == 4 && q->pending_setup == 0) {
    q->groups_ok = 1;
    worker_read(q);
  }
}

static void start_setup(tw_queue *q) {
  q->setup_gen++;
  q->pending_setup = 0;
  q->ready = 0;
  q->groups_ok = 0;
  char pn[16];
  snprintf(pn, sizeof pn, "%d", q->o.partitions);
  size_t pk_n = strlen(q->name) + 16;
  char *pk = malloc(pk_n);
  if (!pk) return;
  snprintf(pk, pk_n, "%s:partitions", q->name);
  struct {
    int what, argc;
    const char *argv[6];
  } cmds[] = {
      {0, 3, {"SCRIPT", "LOAD", PUBLISH_LUA}},
      {1, 3, {"SCRIPT", "LOAD", JANITOR_LUA}},
      {2, 4, {"SET", pk, pn, "NX"}},
      {3, 2, {"GET", pk}},
  };
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
    size_t lens[6];
    for (int a = 0; a < cmds[i].argc; a++) lens[a] = strlen(cmds[i].argv[a]);
    setup_ctx *x = malloc(sizeof *x);
    if (!x) break;
    *x = (setup_ctx){q, q->setup_gen, cmds[i].what};
    if (tw_redis_cmd(q->pub, setup_reply, x, cmds[i].argc, cmds[i].argv, lens) != 0) {
      free(x);
      break;
    }
    q->pending_setup++;
  }
  free(pk);
}

static void on_state(void *user, tw_redis *rd, int up, const tw_error *err) {
  tw_queue *q = user;
  if (q->closing) return;
  if (rd == q->pub) {
    if (up) {
      q->pub_up = 1;
      start_setup(q);
    } else {
      if (q->pub_up) {
        q->st.outages++;
        q_error(q, err ? err->code : "redis_disconnected", "%s: messages are kept until it is back",
                err ? err->message : "redis: connection lost");
      }
      q->pub_up = 0;
      q->ready = 0;
      q->groups_ok = 0;
      q->setup_gen++;
    }
  } else {
    q->sub_up = up;
    if (up) {
      q->phase_pending = 1; /* its own pending entries first */
      for (int k = 0; k < q->P; k++) {
        free(q->last_id[k]);
        q->last_id[k] = tw_strdup("0");
      }
      worker_read(q);
    } else {
      q->reading = 0;
    }
  }
  q->st.up = q->ready && q->pub_up;
}

/* ---- worker ------------------------------------------------------------------------ */

/* A field of an entry; at (hint) first: the gateway writes id, mt, ts, tr, b in that order. */
static const char *field(const redisReply *fields, size_t hint, const char *k, size_t *len) {
  size_t kl = strlen(k);
  if (hint + 1 < fields->elements) {
    const redisReply *a = fields->element[hint], *b = fields->element[hint + 1];
    if (a->type == REDIS_REPLY_STRING && b->type == REDIS_REPLY_STRING && a->len == kl && memcmp(a->str, k, kl) == 0) {
      *len = b->len;
      return b->str;
    }
  }
  for (size_t i = 0; i + 1 < fields->elements; i += 2) {
    const redisReply *a = fields->element[i], *b = fields->element[i + 1];
    if (a->type == REDIS_REPLY_STRING && b->type == REDIS_REPLY_STRING && strcmp(a->str, k) == 0) {
      *len = b->len;
      return b->str;
    }
  }
  *len = 0;
  return NULL;
}

static void record_error(tw_queue *q, int k, const char *entry, const char *msg) {
  size_t n = strlen(q->name) + strlen(entry) + 32;
  char *key = malloc(n);
  if (!key) return;
  snprintf(key, n, "%s:err:%d:%s", q->name, k, entry);
  const char *argv[] = {"SET", key, msg, "PX", "86400000"};
  size_t lens[] = {3, strlen(key), strlen(msg), 2, 8};
  tw_redis_cmd(q->pub, NULL, NULL, 5, argv, lens);
  free(key);
}

static void deliver_entry(tw_queue *q, int k, const redisReply *e) {
  if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 || e->element[0]->type != REDIS_REPLY_STRING) return;
  const char *entry = e->element[0]->str;
  const redisReply *fields = e->element[1];
  if (fields->type != REDIS_REPLY_ARRAY) { /* deleted (trimmed) while pending: nothing to do */
    q->st.outstanding++;
    tw_queue_done(q, k, entry, NULL);
    return;
  }
  size_t idl, mtl, tsl, trl, bl;
  const char *id = field(fields, 0, "id", &idl), *mt = field(fields, 2, "mt", &mtl), *ts = field(fields, 4, "ts", &tsl);
  const char *tr = field(fields, 6, "tr", &trl), *b = field(fields, 8, "b", &bl);
  char perr[160] = "";
  tw_json *doc = b ? tw_json_parse_pooled(q->c->doc_pool, b, bl, perr, sizeof perr) : NULL;
  tw_msg m;
  memset(&m, 0, sizeof m);
  m.transport = TW_TRANSPORT_QUEUE;
  m.origin = tr && trl == 7 && memcmp(tr, "webhook", 7) == 0 ? TW_TRANSPORT_WEBHOOK : TW_TRANSPORT_WEBSOCKET;
  m.message_type = mt && mtl && mt[0] == 'r' ? "revocation" : "notification";
  m.id = id && idl ? id : NULL;
  m.id_len = m.id ? idl : 0;
  m.timestamp = ts && tsl ? ts : NULL;
  m.subscription = m.event = m.metadata = TW_JNONE;
  tw_error err;
  tw_err_clear(&err);
  if (!doc || tw_envelope_decode_body(doc, 0, &m, &err) != 0) {
    q->st.bad_entries++;
    char msg[300];
    snprintf(msg, sizeof msg, "unreadable entry %s: %s", entry, doc ? err.message : b ? perr : "no body");
    record_error(q, k, entry, msg);
    q_error(q, "bad_message", "%s", msg);
    tw_json_unref(doc);
    return;
  }
  if (m.message_type[0] == 'r') m.event = TW_JNONE;
  q->st.delivered++;
  q->st.outstanding++;
  tw_event ev = {.type = TW_EV_QUEUED, .msg = &m, .status = m.status, .queue = q, .entry = entry, .partition = k};
  q->depth++;
  tw_emit(q->c, &ev);
  q->depth--;
  tw_json_unref(doc);
}

static int stream_index(const tw_queue *q, const char *key) {
  const char *p = strrchr(key, ':');
  if (!p) return -1;
  long k = strtol(p + 1, NULL, 10);
  return k >= 0 && k < q->P && strcmp(q->skey[k], key) == 0 ? (int)k : -1;
}

static void deliver_entries(tw_queue *q, int k, const redisReply *entries) {
  if (entries->type != REDIS_REPLY_ARRAY) return;
  for (size_t j = 0; j < entries->elements && !q->closing; j++) deliver_entry(q, k, entries->element[j]);
}

static void on_read(tw_redis *rd, void *user, redisReply *rep, const tw_error *err) {
  (void)rd;
  (void)err;
  tw_queue *q = user;
  q->reading = 0;
  if (q->closing || !rep) return;
  if (rep->type == REDIS_REPLY_ERROR) {
    if (strncmp(rep->str, "NOGROUP", 7) == 0) q->groups_ok = 0; /* the stream was deleted: set up again */
    q_error(q, "redis_error", "XREADGROUP refused: %s", rep->str);
    if (!q->groups_ok && q->pub_up) start_setup(q);
    return;
  }
  size_t total = 0;
  if (rep->type == REDIS_REPLY_ARRAY) {
    q->depth++;
    for (size_t i = 0; i < rep->elements && !q->closing; i++) {
      const redisReply *s = rep->element[i];
      if (s->type != REDIS_REPLY_ARRAY || s->elements < 2) continue;
      int k = stream_index(q, s->element[0]->str);
      const redisReply *entries = s->element[1];
      if (k < 0 || entries->type != REDIS_REPLY_ARRAY) continue;
      total += entries->elements;
      if (q->phase_pending && entries->elements > 0) {
        const redisReply *last = entries->element[entries->elements - 1];
        if (last->type == REDIS_REPLY_ARRAY && last->elements >= 1) {
          free(q->last_id[k]);
          q->last_id[k] = tw_strdup(last->element[0]->str);
        }
      }
      deliver_entries(q, k, entries);
    }
    q->depth--;
  }
  if (q->phase_pending && total == 0) q->phase_pending = 0;
  if (!q->closing) worker_read(q);
}

static void worker_read(tw_queue *q) {
  if (q->closing || !(q->o.role & TW_QUEUE_WORKER) || !q->sub_up || !q->groups_ok || q->reading || !q->P) return;
  if (q->st.outstanding >= (size_t)q->o.max_outstanding) return;
  int P = q->P, argc = 0;
  const char **argv = malloc(sizeof *argv * (size_t)(10 + 2 * P));
  size_t *lens = malloc(sizeof *lens * (size_t)(10 + 2 * P));
  if (!argv || !lens) {
    free(argv);
    free(lens);
    return;
  }
  char cnt[16];
  size_t room = (size_t)q->o.max_outstanding - q->st.outstanding;
  snprintf(cnt, sizeof cnt, "%d", (int)(room < (size_t)q->o.batch ? room : (size_t)q->o.batch));
  argv[argc++] = "XREADGROUP";
  argv[argc++] = "GROUP";
  argv[argc++] = q->name;
  argv[argc++] = q->consumer;
  argv[argc++] = "COUNT";
  argv[argc++] = cnt;
  if (!q->phase_pending) {
    argv[argc++] = "BLOCK";
    argv[argc++] = "1000";
  }
  argv[argc++] = "STREAMS";
  for (int k = 0; k < P; k++) argv[argc++] = q->skey[k];
  for (int k = 0; k < P; k++) argv[argc++] = q->phase_pending ? q->last_id[k] : ">";
  for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
  if (tw_redis_cmd_t(q->sub, on_read, q, argc, argv, lens, q->phase_pending ? 0 : 1000) == 0) q->reading = 1;
  free(argv);
  free(lens);
}

static void flush_acks(tw_queue *q) {
  q->acks_dirty = 0;
  for (int k = 0; k < q->P; k++) {
    ackbuf *a = &q->acks[k];
    if (!a->n) continue;
    if (q->pub_up) {
      size_t argc = 3 + a->n;
      const char **argv = malloc(sizeof *argv * argc);
      size_t *lens = malloc(sizeof *lens * argc);
      if (argv && lens) {
        argv[0] = "XACK", argv[1] = q->skey[k], argv[2] = q->name;
        for (size_t i = 0; i < a->n; i++) argv[3 + i] = a->ids[i];
        for (size_t i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
        if (tw_redis_cmd(q->pub, NULL, NULL, (int)argc, argv, lens) == 0) q->st.acked += a->n;
      }
      free(argv);
      free(lens);
    }
    /* not sent (link down): the entry stays pending and comes back (at least once) */
    for (size_t i = 0; i < a->n; i++) free(a->ids[i]);
    a->n = 0;
  }
}

static void on_ackt(uv_timer_t *t) { flush_acks(t->data); }

void tw_queue_done(tw_queue *q, int k, const char *entry, const char *error) {
  if (!q || k < 0 || k >= q->P || !entry) return;
  if (q->st.outstanding > 0) q->st.outstanding--;
  if (!q->closing) {
    if (error) {
      q->st.failed++;
      if (q->pub_up) record_error(q, k, entry, error);
    } else {
      ackbuf *a = &q->acks[k];
      if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 64;
        char **ni = realloc(a->ids, nc * sizeof *ni);
        if (ni) a->ids = ni, a->cap = nc;
      }
      char *id = a->n < a->cap ? tw_strdup(entry) : NULL;
      if (id) {
        a->ids[a->n++] = id;
        if (!q->acks_dirty) {
          q->acks_dirty = 1;
          uv_timer_start(&q->ackt, on_ackt, 0, 0);
        }
        if (a->n >= 512) flush_acks(q);
      }
    }
  }
  if (!q->reading && q->depth == 0) worker_read(q);
}

/* ---- the janitor ------------------------------------------------------------------- */

static void on_jan_reply(tw_redis *rd, void *user, redisReply *rep, const tw_error *err) {
  (void)rd;
  (void)err;
  tw_queue *q = user;
  if (q->closing || !rep) return;
  if (rep->type == REDIS_REPLY_INTEGER) q->st.dead += (uint64_t)rep->integer;
  else if (rep->type == REDIS_REPLY_ERROR) q_error(q, "redis_error", "janitor: %s", rep->str);
}

static void on_claim(tw_redis *rd, void *user, redisReply *rep, const tw_error *err) {
  (void)rd;
  (void)err;
  tw_queue *q = *(tw_queue **)user;
  int k = ((int *)((tw_queue **)user + 1))[0];
  free(user);
  if (q->closing || !rep) return;
  if (rep->type == REDIS_REPLY_ERROR) {
    q_error(q, "redis_error", "XAUTOCLAIM: %s", rep->str);
    return;
  }
  if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 2) return;
  const redisReply *entries = rep->element[1];
  if (entries->type == REDIS_REPLY_ARRAY) q->st.claimed += entries->elements;
  q->depth++;
  deliver_entries(q, k, entries);
  q->depth--;
}

static void janitor(tw_queue *q) {
  char idle[24], maxd[16], cnt[16], part[16];
  snprintf(idle, sizeof idle, "%lld", (long long)(q->o.claim_idle_s * 1000));
  snprintf(maxd, sizeof maxd, "%d", q->o.max_deliveries);
  snprintf(cnt, sizeof cnt, "%d", q->o.batch);
  size_t n = strlen(q->name) + 16;
  char *dead = malloc(n), *errp = malloc(n + 16);
  if (!dead || !errp) goto out;
  snprintf(dead, n, "%s:dead", q->name);
  for (int k = 0; k < q->P; k++) {
    snprintf(errp, n + 16, "%s:err:%d:", q->name, k);
    snprintf(part, sizeof part, "%d", k);
    const char *a1[] = {"EVALSHA", q->sha_jan, "2", q->skey[k], dead, q->name, idle, maxd, errp, part};
    size_t l1[10];
    for (int i = 0; i < 10; i++) l1[i] = strlen(a1[i]);
    tw_redis_cmd(q->pub, on_jan_reply, q, 10, a1, l1);
    if (q->st.outstanding >= (size_t)q->o.max_outstanding) continue;
    void *ctx = malloc(sizeof(tw_queue *) + sizeof(int));
    if (!ctx) continue;
    *(tw_queue **)ctx = q;
    ((int *)((tw_queue **)ctx + 1))[0] = k;
    const char *a2[] = {"XAUTOCLAIM", q->skey[k], q->name, q->consumer, idle, "0-0", "COUNT", cnt};
    size_t l2[8];
    for (int i = 0; i < 8; i++) l2[i] = strlen(a2[i]);
    if (tw_redis_cmd(q->pub, on_claim, ctx, 8, a2, l2) != 0) free(ctx);
  }
out:
  free(dead);
  free(errp);
}

static void on_tick(uv_timer_t *t) {
  tw_queue *q = t->data;
  if (q->closing) return;
  if (q->spool_fd >= 0) {
    spool_sync(q);
    spool_maybe_reset(q);
  }
  uint64_t now = uv_now(q->c->loop);
  if ((q->o.role & TW_QUEUE_WORKER) && q->groups_ok && q->pub_up && now >= q->next_janitor) {
    q->next_janitor = now + (uint64_t)(q->o.claim_idle_s * 500);
    janitor(q);
  }
}

/* ---- commands from the host -------------------------------------------------------- */

typedef struct cmd_ctx {
  tw_queue_reply_fn cb;
  void *user;
} cmd_ctx;

static void on_cmd(tw_redis *rd, void *user, redisReply *rep, const tw_error *err) {
  (void)rd;
  cmd_ctx *x = user;
  x->cb(x->user, rep, err);
  free(x);
}

int tw_queue_command(tw_queue *q, int argc, const char **argv, const size_t *lens, tw_queue_reply_fn cb, void *user,
                     tw_error *err) {
  tw_err_clear(err);
  if (!q || q->closing) {
    tw_err_set(err, "closed", 0, "queue is closed");
    return TW_ECLOSED;
  }
  if (argc < 1) {
    tw_err_set(err, "invalid_argument", 0, "a command needs a name");
    return TW_EINVAL;
  }
  cmd_ctx *x = malloc(sizeof *x);
  if (!x) {
    tw_err_set(err, "no_memory", 0, "out of memory");
    return TW_ENOMEM;
  }
  x->cb = cb;
  x->user = user;
  if (!q->pub_up || tw_redis_cmd(q->pub, on_cmd, x, argc, argv, lens) != 0) {
    free(x);
    tw_err_set(err, "redis_unreachable", 0, "redis: not connected");
    return TW_EIO;
  }
  return TW_OK;
}

/* ---- life ---------------------------------------------------------------------------- */

static void handle_closed(uv_handle_t *h) {
  tw_queue *q = h->data;
  if (--q->handles == 0) {
    free(q);
  }
}

tw_queue *tw_queue_new(tw_client *c, const tw_queue_opts *o, tw_error *err) {
  tw_err_clear(err);
  const char *bad = NULL;
  if (!o || !o->redis || !*o->redis) bad = "redis is required";
  else if (!o->name || !*o->name || strlen(o->name) > 200) bad = "name is required (at most 200 bytes)";
  else if (o->role < 1 || o->role > 3) bad = "role must be gateway, worker or both";
  else if (o->partitions < 1 || o->partitions > 1024) bad = "partitions must be between 1 and 1024";
  else if (!(o->claim_idle_s > 0)) bad = "claim_idle must be > 0";
  else if (o->max_deliveries < 1) bad = "max_deliveries must be >= 1";
  else if (!(o->dedupe_window_s > 0)) bad = "dedupe_window must be > 0";
  else if (o->maxlen < 0 || !(o->max_age_s >= 0)) bad = "maxlen and max_age must be >= 0";
  else if (o->buffer_max < 1) bad = "buffer_max must be >= 1";
  else if (!(o->connect_timeout_s > 0) || !(o->command_timeout_s > 0)) bad = "timeouts must be > 0";
  else if (o->batch < 1 || o->batch > 10000) bad = "batch must be between 1 and 10000";
  else if (o->max_outstanding < 1) bad = "max_outstanding must be >= 1";
  else if ((o->role & TW_QUEUE_GATEWAY) && c->gateway) bad = "this client already has a gateway queue";
  if (bad) {
    tw_err_set(err, "invalid_argument", 0, "%s", bad);
    return NULL;
  }
  tw_queue *q = calloc(1, sizeof *q);
  if (!q) {
    tw_err_set(err, "no_memory", 0, "out of memory");
    return NULL;
  }
  q->c = c;
  q->o = *o;
  q->spool_fd = -1;
  q->name = tw_strdup(o->name);
  q->url = tw_strdup(o->redis);
  if (o->consumer && *o->consumer) {
    q->consumer = tw_strdup(o->consumer);
  } else {
    char host[128] = "host", buf[192];
    gethostname(host, sizeof host - 1);
    snprintf(buf, sizeof buf, "%s:%ld", host, (long)getpid());
    q->consumer = tw_strdup(buf);
  }
  {
    long long wms = (long long)(o->dedupe_window_s * 1000), bw;
    if (wms < DEDUPE_BUCKETS) wms = DEDUPE_BUCKETS;
    bw = (wms + DEDUPE_BUCKETS - 1) / DEDUPE_BUCKETS;
    snprintf(q->win_ms, sizeof q->win_ms, "%lld", wms);
    snprintf(q->width_ms, sizeof q->width_ms, "%lld", bw);
    size_t n = strlen(o->name) + 48;
    if ((q->seen_pre = malloc(n))) snprintf(q->seen_pre, n, "%s:seen:%lld:", o->name, bw);
  }
  q->o.redis = q->url;
  q->o.name = q->name;
  q->o.consumer = q->consumer;
  q->o.spool = NULL;
  if (!q->name || !q->consumer || !q->url || !q->seen_pre) goto nomem;
  if (o->spool && *o->spool && (o->role & TW_QUEUE_GATEWAY)) {
    q->spool_path = tw_strdup(o->spool);
    if (!q->spool_path) goto nomem;
    q->o.spool = q->spool_path;
    if (spool_open(q, err) != 0) goto fail;
  }
  q->pub = tw_redis_new(c, o->redis, o->connect_timeout_s, o->command_timeout_s, on_state, q, err);
  if (!q->pub) goto fail;
  if (o->role & TW_QUEUE_WORKER) {
    q->sub = tw_redis_new(c, o->redis, o->connect_timeout_s, o->command_timeout_s, on_state, q, err);
    if (!q->sub) goto fail;
  }
  uv_timer_init(c->loop, &q->tick);
  uv_timer_init(c->loop, &q->ackt);
  uv_timer_init(c->loop, &q->flusht);
  q->tick.data = q->ackt.data = q->flusht.data = q;
  q->handles = 3;
  uv_timer_start(&q->tick, on_tick, 20, 20);
  q->next = c->queues;
  c->queues = q;
  if (o->role & TW_QUEUE_GATEWAY) c->gateway = q;
  return q;
nomem:
  tw_err_set(err, "no_memory", 0, "out of memory");
fail:
  if (q->pub) tw_redis_free(q->pub);
  if (q->sub) tw_redis_free(q->sub);
  if (q->spool_fd >= 0) close(q->spool_fd);
  free(q->name);
  free(q->seen_pre);
  free(q->url);
  free(q->consumer);
  free(q->spool_path);
  free(q);
  return NULL;
}

static void free_list(tw_queue *q, rec **h, rec **t, int to_spool, uint64_t *lost) {
  rec *r;
  while ((r = list_pop(h, t))) {
    tw_queue_stored_fn cb = r->cb;
    void *user = r->user;
    if (to_spool && !r->from_spool && spool_append(q, r) == 0) continue;
    if (to_spool && r->from_spool) { /* still in the file: rewound below */
      free(r);
      continue;
    }
    (*lost)++;
    free(r);
    if (cb) {
      tw_error e;
      tw_err_set(&e, "closed", 0, "queue closed before the message was stored");
      cb(user, &e);
    }
  }
}

void tw_queue_free(tw_queue *q) {
  if (!q || q->closing) return;
  {
    q->closing = 1;
    tw_client *c = q->c;
    for (tw_queue **pp = &c->queues; *pp; pp = &(*pp)->next)
      if (*pp == q) {
        *pp = q->next;
        break;
      }
    if (c->gateway == q) c->gateway = NULL;
    /* Redis answers nothing more: what is in flight may or may not be stored, so it is
     * kept (the seen marks make a second copy a duplicate) */
    if (q->pub) tw_redis_free(q->pub);
    if (q->sub) tw_redis_free(q->sub);
    q->pub = q->sub = NULL;
  }
  /* the struct itself lives until its timers are closed (a later loop phase), so a
   * delivery in progress that closed it returns into valid memory */
  uint64_t lost = 0;
  int spool = q->spool_fd >= 0;
  if (spool && q->spool_unconfirmed) {
    /* records read back from the spool but not confirmed: rewind so they stay in it.
     * They sit before spool_r; the simplest faithful thing is to keep the whole file. */
    q->spool_r = 0;
  }
  /* what was read from the spool is still in it; the rest is appended behind */
  free_list(q, &q->infl_h, &q->infl_t, spool, &lost);
  free_list(q, &q->retry_h, &q->retry_t, spool, &lost);
  free_list(q, &q->uns_h, &q->uns_t, spool, &lost);
  if (spool) {
    q->spool_dirty = 1;
    spool_sync(q);
    close(q->spool_fd);
    q->spool_fd = -1;
  }
  if (lost) {
    char n[32];
    snprintf(n, sizeof n, "%llu", (unsigned long long)lost);
    tw_error e;
    tw_err_set(&e, "queue_lost", 0, "queue %s closed with %s messages not stored in Redis and no spool", q->name, n);
    tw_emit_error(q->c, NULL, NULL, &e);
  }
  for (int k = 0; k < q->P; k++) {
    free(q->skey[k]);
    free(q->last_id[k]);
    for (size_t i = 0; i < q->acks[k].n; i++) free(q->acks[k].ids[i]);
    free(q->acks[k].ids);
  }
  free(q->skey);
  free(q->last_id);
  free(q->acks);
  pend_cb *p = q->fs_h; /* a spool sync that never ran: not known to be stored */
  q->fs_h = q->fs_t = NULL;
  while (p) {
    pend_cb *n = p->next;
    tw_error e;
    tw_err_set(&e, "closed", 0, "queue closed before the message was stored");
    p->cb(p->user, &e);
    free(p);
    p = n;
  }
  free(q->name);
  free(q->seen_pre);
  free(q->url);
  free(q->consumer);
  free(q->spool_path);
  uv_timer_stop(&q->tick);
  uv_timer_stop(&q->ackt);
  uv_timer_stop(&q->flusht);
  uv_close((uv_handle_t *)&q->flusht, handle_closed);
  uv_close((uv_handle_t *)&q->tick, handle_closed);
  uv_close((uv_handle_t *)&q->ackt, handle_closed);
}

void tw_queues_free_all(tw_client *c) {
  while (c->queues) tw_queue_free(c->queues);
}

void tw_queue_set_user(tw_queue *q, void *user) { q->user = user; }
void *tw_queue_user(const tw_queue *q) { return q->user; }
const char *tw_queue_name(const tw_queue *q) { return q->name; }
const char *tw_queue_consumer(const tw_queue *q) { return q->consumer; }

void tw_queue_get_stats(const tw_queue *q, tw_queue_stats *out) {
  *out = q->st;
  out->buffered = held(q);
  out->up = q->ready && q->pub_up;
  out->partitions = q->P;
}
