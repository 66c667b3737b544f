/* A webhook route closed by the application's own handler of the notification it
 * delivered (tw_webhook_close from the event callback): the receiver touches nothing of
 * the route after the delivery returns (under ASan a use-after-free otherwise), the
 * request is answered 204, and a server closed the same way still writes its answer.
 * Helpers as in test_webhook.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/hmac.h>
#include <sys/socket.h>

#include "support.h"

#define SECRET "webhook-secret-0123"

typedef struct state {
  tw_client *c;
  tw_webhook *w;
  tw_httpd *h;
  int notifications, close_server;
} state;

static void on_event(void *user, const tw_event *ev) {
  state *st = user;
  if (ev->type != TW_EV_NOTIFICATION) return;
  st->notifications++;
  if (st->w) {
    tw_webhook_close(st->w); /* its own route, from its own handler */
    st->w = NULL;
  }
  if (st->close_server && st->h) {
    tw_httpd_close(st->h);
    st->h = NULL;
  }
}
#include "webhook_support.h"

int main(void) {
  tw_set_lws_log_level(0);
  state *st = calloc(1, sizeof *st);
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = "test-client";
  o.access_token = "test-token";
  o.api_base = "http://127.0.0.1:9/helix";
  o.auth_base = "http://127.0.0.1:9/oauth2";
  o.eventsub_ws = "ws://127.0.0.1:9/ws";
  tw_client *c = tw_client_new(&o, &err);
  ok(c != NULL, "client created");
  if (!c) return done_testing();
  st->c = c;
  tw_client_on_event(c, on_event, st);
  tw_httpd_opts ho = TW_HTTPD_OPTS_INIT;
  st->h = tw_httpd_open(c, &ho, &err);
  port = st->h ? tw_httpd_port(st->h) : 0;
  tw_webhook_opts wo = {.path = "/wh", .secret = SECRET};
  st->w = st->h ? tw_webhook_listen(st->h, &wo, &err) : NULL;
  ok(st->w != NULL, "a webhook route");
  double now = wall();
  int s1 = send_one(c, request("/wh", "notification", "c-1", now, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL));
  ok(s1 == 204 && st->notifications == 1 && st->w == NULL, "the route closed by its own handler: answered %d", s1);
  int s2 = send_one(c, request("/wh", "notification", "c-2", now, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL));
  ok(s2 == 404 && st->notifications == 1, "the closed route is gone (%d)", s2);

  /* the server closed by the handler: the 204 already given is written before the close */
  st->w = NULL;
  tw_webhook *w2 = tw_webhook_listen(st->h, &(tw_webhook_opts){.path = "/wh2", .secret = SECRET}, &err);
  st->close_server = 1;
  int s3 = send_one(c, request("/wh2", "notification", "c-3", now, NOTIF_BODY, NULL, NULL, strlen(NOTIF_BODY), NULL));
  ok(s3 == 204 && st->notifications == 2 && st->h == NULL, "the server closed by the handler: answered %d", s3);
  tw_webhook_close(w2);
  tw_client_free(c);
  free(st);
  return done_testing();
}
