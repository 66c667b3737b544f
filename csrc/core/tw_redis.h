/* tw_redis.h - one Redis connection on a client's loop (redis.c), for the queue. */
#ifndef TW_REDIS_H
#define TW_REDIS_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "twconduit.h"

typedef struct tw_redis tw_redis;
/* A reply (borrowed: valid during the call), or reply NULL and err set (disconnected,
 * timed out, closed). An error reply of Redis comes as a reply of type REDIS_REPLY_ERROR. */
typedef void (*tw_redis_fn)(tw_redis *r, void *user, redisReply *reply, const tw_error *err);
/* The link is up (commands may be sent) or down (err says why; a reconnection is
 * scheduled). Called once per change and on every failed attempt. */
typedef void (*tw_redis_state_fn)(void *user, tw_redis *r, int up, const tw_error *err);

/* url: "redis://[:password@]host[:port][/db]" or "unix:/path". Connects at once. */
tw_redis *tw_redis_new(tw_client *c, const char *url, double connect_timeout_s, double command_timeout_s,
                       tw_redis_state_fn state, void *user, tw_error *err);
/* Answers every command in flight with the error "closed", then frees the connection. */
void tw_redis_free(tw_redis *r);
/* Sends a command (pipelined behind those in flight). Returns -1 when the link is down.
 * extra_ms lengthens its deadline (blocking commands). */
int tw_redis_cmd(tw_redis *r, tw_redis_fn cb, void *user, int argc, const char **argv, const size_t *lens);
int tw_redis_cmd_t(tw_redis *r, tw_redis_fn cb, void *user, int argc, const char **argv, const size_t *lens,
                   uint64_t extra_ms);
/* Drops the connection as after a network error (code: the error's code). */
void tw_redis_drop(tw_redis *r, const char *code);
int tw_redis_up(const tw_redis *r);
size_t tw_redis_inflight(const tw_redis *r);

#endif
