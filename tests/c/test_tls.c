/* wss: the emulator behind a TLS terminator (socat), a certificate the client trusts
 * (SSL_CERT_FILE) and one it does not. Skipped, with a passing note, when socat or
 * openssl is missing. */
#include "support.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static int ready, notes, errors;
static char last_error[300];
static void on_event(void *u, const tw_event *ev) {
  (void)u;
  if (ev->type == TW_EV_READY) ready++;
  if (ev->type == TW_EV_NOTIFICATION) notes++;
  if (ev->type == TW_EV_ERROR) {
    errors++;
    snprintf(last_error, sizeof last_error, "%s: %s", ev->error->code, ev->error->message);
  }
}
static int is_ready(void *a) { (void)a; return ready > 0; }
static int want;
static int got(void *a) { (void)a; return notes >= want; }
static int some_errors(void *a) { (void)a; return errors >= 2; }
static void on_resp(void *u, const tw_response *r) { *(int *)u = r->status; }
static int resp_in(void *a) { return *(int *)a != 0; }

/* A port nothing listens on now (the kernel's pick for port 0), outside any fixed range. */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  int port = -1;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &al) == 0)
    port = ntohs(a.sin_port);
  if (fd >= 0) close(fd);
  return port;
}

/* Waits until something accepts TCP connections on 127.0.0.1:port (at most `secs`). */
static int listening(int port, double secs) {
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int r = fd >= 0 ? connect(fd, (struct sockaddr *)&a, sizeof a) : -1;
    if (fd >= 0) close(fd);
    if (r == 0) return 1;
    clock_gettime(CLOCK_MONOTONIC, &t);
    if ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 > secs) return 0;
    usleep(20000);
  }
}

static pid_t start_socat(const char *dir, int port, int target, const char *extra) {
  pid_t pid = fork();
  if (pid == 0) {
    char listen[256], to[64], log[300];
    snprintf(listen, sizeof listen, "OPENSSL-LISTEN:%d,bind=127.0.0.1,cert=%s/tls.pem,verify=0,fork,reuseaddr%s", port,
             dir, extra);
    snprintf(to, sizeof to, "TCP:127.0.0.1:%d", target);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    snprintf(log, sizeof log, "%s/socat%s.log", dir, *extra ? "12" : "");
    if (!freopen(log, "w", stderr)) _exit(126);
    if (*extra) execlp("socat", "socat", "-d", "-d", listen, to, (char *)NULL); /* notices: the cipher */
    else execlp("socat", "socat", listen, to, (char *)NULL);
    _exit(127);
  }
  return pid;
}

static tw_client *client_for(mock *m, int port) {
  static char wss[128];
  snprintf(wss, sizeof wss, "wss://127.0.0.1:%d/ws", port);
  tw_error err;
  tw_client_opts o = TW_CLIENT_OPTS_INIT;
  o.client_id = m->client_id;
  o.client_secret = m->client_secret;
  o.api_base = m->api_base;
  o.auth_base = m->auth_base;
  o.eventsub_ws = wss;
  o.backoff_min_s = 0.1;
  tw_client *c = tw_client_new(&o, &err);
  tw_client_on_event(c, on_event, NULL);
  return c;
}

int main(void) {
  tw_set_lws_log_level(0);
  if (system("command -v socat >/dev/null && command -v openssl >/dev/null") != 0) {
    ok(1, "# SKIP socat or openssl missing: wss not tested here");
    return done_testing();
  }
  char dir[] = "/tmp/twconduit-tls-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "cd %s && openssl req -x509 -newkey rsa:2048 -keyout k.pem -out tls.crt -days 1 -nodes -subj /CN=127.0.0.1 "
           "-addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1 && cat k.pem tls.crt > tls.pem",
           dir);
  ok(system(cmd) == 0, "a self-signed certificate for 127.0.0.1");
  mock m = {0};
  if (mock_start(&m) != 0) {
    ok(0, "the emulator starts");
    return done_testing();
  }
  int target = atoi(strrchr(m.api_base, ':') + 1);
  int port = free_port();
  pid_t sp = start_socat(dir, port, target, "");
  int up0 = port > 0 && listening(port, 10);
  ok(up0, "the TLS terminator listens on port %d", port);
  if (!up0) {
    snprintf(cmd, sizeof cmd, "sed 's/^/# socat: /' %s/socat.log", dir);
    if (system(cmd) != 0) printf("# no socat log\n");
  }

  /* trusted: SSL_CERT_FILE points OpenSSL's default verify paths at our certificate */
  char crt[300];
  snprintf(crt, sizeof crt, "%s/tls.crt", dir);
  setenv("SSL_CERT_FILE", crt, 1);
  tw_client *c = client_for(&m, port);
  tw_error err;
  tw_conduit_opts co = {.shards = 2};
  tw_conduit *cd = tw_conduit_open(c, &co, &err);
  int up = wait_until(c, is_ready, NULL, 15);
  ok(up, "2 shards connect over wss and are assigned");
  if (!up) { /* say why: the terminator's own log and the client's last error */
    printf("# last client error: %s\n", last_error);
    snprintf(cmd, sizeof cmd, "sed 's/^/# socat: /' %s/socat.log", dir);
    if (system(cmd) != 0) printf("# no socat log\n");
  }
  char body[512];
  snprintf(body, sizeof body,
           "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"31\"},"
           "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
           tw_conduit_id(cd) ? tw_conduit_id(cd) : "");
  int st = 0;
  tw_helix(c, "POST", "/eventsub/subscriptions", body, strlen(body), on_resp, &st, &err);
  wait_until(c, resp_in, &st, 5);
  cJSON_Delete(mock_call(&m, "POST", "/trigger", "{\"type\":\"stream.online\",\"channels\":[\"31\"],\"count\":50}"));
  want = 50;
  int arrived = wait_until(c, got, NULL, 10);
  ok(arrived, "50 notifications arrive through TLS (%d)", notes);
  tw_client_stats cs;
  tw_client_get_stats(c, &cs);
  ok(cs.tls_takeovers == 2, "TLS 1.3 (OpenSSL's server): both connections went on in the core's record layer (%llu)",
     (unsigned long long)cs.tls_takeovers);
  tw_client_free(c);

  /* a TLS 1.2 server: OpenSSL keeps the connection for its whole life */
  int port12 = free_port();
  pid_t sp12 = start_socat(dir, port12, target, ",openssl-max-proto-version=TLS1.2");
  int up12 = port12 > 0 && listening(port12, 10);
  ready = 0;
  notes = 0;
  c = client_for(&m, port12);
  cd = tw_conduit_open(c, &co, &err);
  up = up12 && wait_until(c, is_ready, NULL, 15);
  ok(up, "2 shards connect to a TLS 1.2 server and are assigned%s%s", up ? "" : ": ", up ? "" : last_error);
  snprintf(body, sizeof body,
           "{\"type\":\"stream.online\",\"version\":\"1\",\"condition\":{\"broadcaster_user_id\":\"32\"},"
           "\"transport\":{\"method\":\"conduit\",\"conduit_id\":\"%s\"}}",
           tw_conduit_id(cd) ? tw_conduit_id(cd) : "");
  st = 0;
  tw_helix(c, "POST", "/eventsub/subscriptions", body, strlen(body), on_resp, &st, &err);
  wait_until(c, resp_in, &st, 5);
  cJSON_Delete(mock_call(&m, "POST", "/trigger", "{\"type\":\"stream.online\",\"channels\":[\"32\"],\"count\":50}"));
  arrived = wait_until(c, got, NULL, 10);
  tw_client_get_stats(c, &cs);
  ok(arrived && cs.tls_takeovers == 0, "50 notifications arrive over TLS 1.2 (%d), read by OpenSSL (%llu takeovers)",
     notes, (unsigned long long)cs.tls_takeovers);
  snprintf(cmd, sizeof cmd, "grep -q 'SSL connection using ECDHE-RSA-AES128-GCM-SHA256' %s/socat12.log", dir);
  ok(system(cmd) == 0, "TLS 1.2: the server following the client's order picks AES-128-GCM");
  tw_client_free(c);
  kill(sp12, SIGTERM);
  waitpid(sp12, NULL, 0);

  /* untrusted: the handshake is refused with a clear error */
  unsetenv("SSL_CERT_FILE");
  setenv("SSL_CERT_FILE", "/nonexistent", 1);
  errors = 0;
  ready = 0;
  c = client_for(&m, port);
  tw_conduit_open(c, &co, &err);
  int failed = wait_until(c, some_errors, NULL, 10);
  ok(failed && ready == 0 && strstr(last_error, "certificate"), "an untrusted certificate is refused (%s)", last_error);
  tw_client_free(c);

  kill(sp, SIGTERM);
  waitpid(sp, NULL, 0);
  mock_stop(&m);
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) ok(0, "cleanup");
  return done_testing();
}
