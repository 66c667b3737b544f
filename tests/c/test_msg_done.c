/* A message's completion (tw_msg.done) without a gateway queue: tw_client_deliver calls
 * it exactly once, with no error, before the handlers see the message; a duplicate and a
 * stale message are answered too (nothing to retry) and not handed to the handlers; a
 * message without one is delivered as before. The gateway's side (stored, or 503 and the
 * id forgotten) is spec/webhook_queue_spec.lua's. */
#include "support.h"
#include "internal.h"

typedef struct rec {
  int done, done_err, handled, errors, stale_errors;
  int handled_at_done; /* handler calls seen when the completion ran */
} rec;

static void on_done(void *user, const tw_error *err) {
  rec *r = user;
  r->done++;
  if (err) r->done_err++;
  r->handled_at_done = r->handled;
}

static void on_event(void *user, const tw_event *ev) {
  rec *r = user;
  if (ev->type == TW_EV_NOTIFICATION || ev->type == TW_EV_REVOCATION) r->handled++;
  if (ev->type == TW_EV_ERROR) {
    r->errors++;
    if (ev->error && strcmp(ev->error->code, "stale_message") == 0) r->stale_errors++;
  }
}

static tw_msg msg(const char *id, const char *ts, rec *r) {
  tw_msg m;
  memset(&m, 0, sizeof m);
  m.transport = TW_TRANSPORT_WEBHOOK;
  m.message_type = "notification";
  m.id = id;
  m.id_len = strlen(id);
  m.timestamp = ts;
  m.type = "stream.online";
  m.subscription = m.event = m.metadata = TW_JNONE;
  if (r) {
    m.done = on_done;
    m.done_user = r;
  }
  return m;
}

int main(void) {
  tw_set_lws_log_level(0);
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = "id";
  o.client_secret = "secret";
  tw_error err;
  tw_client *c = tw_client_new(&o, &err);
  ok(c != NULL, "client created");
  if (!c) return done_testing();
  rec r;
  memset(&r, 0, sizeof r);
  tw_client_on_event(c, on_event, &r);
  char now[40];
  time_t t = time(NULL);
  strftime(now, sizeof now, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));

  tw_msg m = msg("done-1", now, &r);
  bool d = tw_client_deliver(c, &m, NULL, NULL, NULL);
  ok(d && r.done == 1 && r.done_err == 0 && r.handled == 1,
     "delivered: completed once without an error (done %d, errors %d, handled %d)", r.done, r.done_err, r.handled);
  ok(r.handled_at_done == 0, "completed before the handler ran");

  memset(&r, 0, sizeof r);
  m = msg("done-1", now, &r);
  d = tw_client_deliver(c, &m, NULL, NULL, NULL);
  ok(!d && r.done == 1 && r.done_err == 0 && r.handled == 0,
     "a duplicate: completed once without an error, not handled (done %d, handled %d)", r.done, r.handled);

  memset(&r, 0, sizeof r);
  m = msg("done-2", "2001-01-01T00:00:00Z", &r);
  d = tw_client_deliver(c, &m, NULL, NULL, NULL);
  ok(!d && r.done == 1 && r.done_err == 0 && r.handled == 0 &&
         r.stale_errors == 1,
     "a stale message: completed once without an error, reported, not handled (done %d, stale %d, handled %d)", r.done,
     r.stale_errors, r.handled);

  memset(&r, 0, sizeof r);
  m = msg("done-3", now, NULL);
  d = tw_client_deliver(c, &m, NULL, NULL, NULL);
  ok(d && r.handled == 1 && r.done == 0,
     "a message without a completion is delivered (handled %d)", r.handled);

  tw_client_free(c);
  return done_testing();
}
