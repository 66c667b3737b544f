/* tw_queue.h - the queue transport (queue.c): a gateway appends what its conduits receive
 * to Redis Streams; workers read them through a consumer group and acknowledge each entry
 * once its handlers finished. See docs/ARCHITECTURE.md "Queue". */
#ifndef TW_QUEUE_H
#define TW_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "twconduit.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tw_queue tw_queue;

enum { TW_QUEUE_GATEWAY = 1, TW_QUEUE_WORKER = 2, TW_QUEUE_BOTH = 3 };

typedef struct tw_queue_opts {
  const char *redis;        /* "redis://[:password@]host[:port][/db]" or "unix:/path" (required) */
  const char *name;         /* the bot's name: stream and group names derive from it (required) */
  int role;                 /* TW_QUEUE_* */
  const char *consumer;     /* worker: its name in the group; NULL: hostname:pid */
  int partitions;           /* streams; the count stored in Redis by the first process wins */
  double claim_idle_s;      /* entries pending longer are claimed by a worker's janitor (> 0) */
  int max_deliveries;       /* deliveries before an entry goes to the dead-letter stream (>= 1) */
  double dedupe_window_s;   /* cross-process de-duplication window (> 0) */
  long long maxlen;         /* trim each stream to about this many entries (0: no length trim) */
  double max_age_s;         /* trim entries older than this (0: no age trim) */
  size_t buffer_max;        /* messages held in memory while Redis is unreachable (>= 1) */
  const char *spool;        /* append-only spool file used once the buffer is full; NULL: none */
  size_t spool_max;         /* spool size limit in bytes */
  double connect_timeout_s; /* (> 0) */
  double command_timeout_s; /* (> 0) */
  int batch;                /* entries per read (1..10000) */
  int max_outstanding;      /* worker: entries handed out and not yet acknowledged (>= 1) */
  int local;                /* gateway: also deliver to this process's handlers */
} tw_queue_opts;

#define TW_QUEUE_OPTS_INIT                                                                          \
  {                                                                                               \
    .role = TW_QUEUE_BOTH, .partitions = 4, .claim_idle_s = 30, .max_deliveries = 5,              \
    .dedupe_window_s = 600, .maxlen = 1000000, .buffer_max = 10000, .spool_max = (size_t)256 << 20, \
    .connect_timeout_s = 2, .command_timeout_s = 5, .batch = 256, .max_outstanding = 1024          \
  }

/* Opens a queue on client c (connects at once; the link's state arrives as events).
 * A gateway queue makes the client publish every message it delivers (one gateway per
 * client). Returns NULL with err filled. Freed by tw_queue_free or tw_client_free. */
TW_API tw_queue *tw_queue_new(tw_client *c, const tw_queue_opts *o, tw_error *err);
/* Stops publishing and reading; what is not stored yet is kept in the spool when there is
 * one (else it is reported lost). Safe from callbacks; idempotent. */
TW_API void tw_queue_free(tw_queue *q);
TW_API void tw_queue_set_user(tw_queue *q, void *user);
TW_API void *tw_queue_user(const tw_queue *q);

/* Publishing with a completion: stored(user, NULL) once Redis confirmed the entry (or
 * that another gateway stored it: a duplicate), or the spool's fsync covered it;
 * stored(user, err) when it could not be kept. Webhook answers wait on this. */
typedef void (*tw_queue_stored_fn)(void *user, const tw_error *err);
TW_API int tw_queue_publish(tw_queue *q, const tw_msg *m, tw_queue_stored_fn stored, void *user, tw_error *err);

/* Worker: the handlers of the entry (partition, entry id) finished: acknowledge it, or
 * (error != NULL) keep it pending with the error recorded for the dead-letter stream. */
TW_API void tw_queue_done(tw_queue *q, int partition, const char *entry, const char *error);

/* Any Redis command on the queue's connection; cb gets the reply (borrowed). */
typedef void (*tw_queue_reply_fn)(void *user, const void *redis_reply, const tw_error *err);
TW_API int tw_queue_command(tw_queue *q, int argc, const char **argv, const size_t *lens, tw_queue_reply_fn cb,
                            void *user, tw_error *err);

typedef struct tw_queue_stats {
  uint64_t published;   /* entries Redis confirmed */
  uint64_t duplicates;  /* found already queued (another gateway) */
  uint64_t spooled;     /* written to the spool */
  uint64_t dropped;     /* could not be kept (buffer and spool full): reported */
  uint64_t delivered;   /* worker: entries handed to handlers */
  uint64_t acked;
  uint64_t failed;      /* handler errors */
  uint64_t claimed;     /* taken over from idle consumers */
  uint64_t dead;        /* moved to the dead-letter stream by this process */
  uint64_t bad_entries; /* unreadable entries */
  uint64_t outages;     /* times the link went down */
  size_t buffered;      /* messages held in memory, not yet confirmed */
  uint64_t spool_bytes; /* bytes in the spool */
  size_t outstanding;   /* worker: handed out, not yet done */
  int partitions;       /* 0 until known */
  int up;               /* link up and set up */
} tw_queue_stats;
TW_API void tw_queue_get_stats(const tw_queue *q, tw_queue_stats *out);
TW_API const char *tw_queue_name(const tw_queue *q);
TW_API const char *tw_queue_consumer(const tw_queue *q);

#ifdef __cplusplus
}
#endif
#endif
