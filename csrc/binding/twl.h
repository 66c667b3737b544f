/* twl.h - shared pieces of the Lua binding (twconduit.core).
 *
 * Objects: each core object (client, conduit, shard) is represented by a userdata holding
 * a small box with a pointer to it. The core object may outlive the userdata's usefulness
 * (sockets close asynchronously); when the core frees it (TW_EV_FREED) the box pointer is
 * set to NULL and methods raise "<type> is closed".
 *
 * Lua values live in uservalues: the client's slots hold the dispatcher, the table of
 * anchored conduit/shard userdata (keyed by the core pointer as light userdata) and the
 * table of pending callbacks (Helix requests, timers). A conduit or shard userdata keeps
 * the Lua object bound to it (`ud:bind(obj)`) in its own slot 1.
 */
#ifndef TWL_H
#define TWL_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "twconduit.h"

#include "twl_json.h"

#define TWL_CLIENT_MT "twconduit.client"
#define TWL_CONDUIT_MT "twconduit.conduit"
#define TWL_SHARD_MT "twconduit.shard"
#define TWL_MESSAGE_MT "twconduit.message"
#define TWL_ERROR_MT "twconduit.Error"
#define TWL_QUEUE_MT "twconduit.queue"

/* client uservalue slots */
enum { TWL_UV_DISPATCH = 1, TWL_UV_OBJS = 2, TWL_UV_PENDING = 3, TWL_UV_HOT = 4, TWL_UV_CLIENT_N = 4 };

typedef struct twl_req twl_req;

/* Stack slots cached while Lua is entered from the core (see twl_frame_begin). */
typedef struct twl_frame {
  lua_State *L;
  int ud;       /* the client userdata */
  int dispatch; /* dispatcher function (or nil) */
  int objs;     /* anchored objects table */
  int pending;  /* pending callbacks table */
  int msg_mt;   /* twconduit.message metatable */
  int s_notification; /* interned event names */
  int view_mt;  /* twconduit.view metatable */
  int null;     /* the null sentinel */
} twl_frame;

typedef struct twl_client {
  tw_client *c;       /* NULL once closed */
  twl_frame fr;       /* valid while fr.L != NULL */
  int running;        /* inside step/run */
  int depth;          /* Lua calls in progress from the core */
  int close_requested;/* close() inside a callback: finished when step/run returns */
  int dispatch_off;   /* no Lua while the client is being torn down */
  int self_ref;       /* registry ref anchoring the userdata while live */
  int nconduits;      /* open conduits */
  int npending;       /* pending requests + timers */
  int sweep;          /* some anchored objects were freed: sweep OBJS */
  lua_Integer next_id;/* ids of pending callbacks */
  twl_req *reqs;      /* pending requests and timers (freed on close) */
  lua_State *hot;     /* the Lua layer's idle notification runner (anchored in TWL_UV_HOT) */
  const void *hot_done; /* what it yields when its handlers have returned */
} twl_client;

/* A conduit or shard box: a userdata of metatable TWL_CONDUIT_MT or TWL_SHARD_MT whose
 * user value 1 is the bound Lua object and user value 2 the client userdata. */
typedef struct twl_obj {
  void *obj;          /* tw_conduit* or tw_shard*; NULL once freed */
  twl_client *cl;     /* owning client box (valid while obj != NULL) */
} twl_obj;
enum { TWL_BOX_BOUND = 1, TWL_BOX_CLIENT = 2 };

/* Pushes a new box of metatable mt over obj, anchored in objs (keyed by obj). */
twl_obj *twl_box_push(lua_State *L, twl_client *cl, int objs, int client_ud, void *obj, const char *mt);
/* The box at i; raises "<what> is closed" when its object or its client is gone. */
twl_obj *twl_box_check(lua_State *L, int i, const char *mt, const char *what);
int twl_box_closed(const twl_obj *b);
/* The box methods bind(obj), bound() and closed(), for metatable mt. */
int twl_box_bind(lua_State *L, const char *mt);
int twl_box_bound(lua_State *L, const char *mt);
int twl_box_is_closed(lua_State *L, const char *mt);
void twl_push_opt_string(lua_State *L, const char *s); /* s or nil */

struct twl_req {
  twl_client *cl;
  lua_Integer id;
  tw_timer *timer;    /* for timers */
  twl_req *prev, *next;
};

/* class helper */
void twl_newclass(lua_State *L, const char *name, const luaL_Reg *methods, const luaL_Reg *meta);

/* errors */
void twl_push_error(lua_State *L, const tw_error *e);
void twl_push_errorf(lua_State *L, const char *code, int status, const char *fmt, ...);
int twl_fail(lua_State *L, const tw_error *e); /* pushes nil, err; returns 2 */

/* calls the function at top-nargs with nargs args through lua_pcall + traceback;
 * failures are reported on stderr (the Lua dispatcher routes handler errors itself).
 * Returns 1 when the call succeeded. Leaves the stack as it was below the function. */
int twl_msgh(lua_State *L); /* message handler: adds a traceback */
int twl_pcall(twl_client *cl, lua_State *L, int nargs);

/* Entering Lua from a core callback. Returns the frame to use, or NULL when Lua cannot be
 * entered (client torn down, or no frame). twl_enter_end must follow a non-NULL
 * twl_enter with the value it returned in *top. */
twl_frame *twl_enter(twl_client *cl, int *top);
void twl_enter_end(twl_client *cl, int top);
/* Sets up cl->fr on L with the client userdata at index ud (used by step/run). */
void twl_webhook_open(lua_State *L);   /* webhook.c: HTTP server, webhook routes and shards */
tw_httpd *twl_check_httpd(lua_State *L, int i); /* webhook.c: the open server at i, or raises */
tw_httpd *twl_httpd_at(lua_State *L, int i);    /* the same, or NULL when not an open server */
void twl_metrics_open(lua_State *L);   /* metrics.c: Prometheus text, plain HTTP routes */
void twl_lifecycle_open(lua_State *L); /* lifecycle.c: shard-set verbs of conduits and shards */
void twl_statefile_open(lua_State *L, int mod); /* statefile.c: core.write_atomic */
/* a table {method, session_id, callback, status} of t (empty for NULL) */
void twl_push_transport(lua_State *L, const tw_transport_info *t);
void twl_frame_begin(twl_client *cl, lua_State *L, int ud, twl_frame *saved);
void twl_frame_end(twl_client *cl, twl_frame *saved);
/* After a method that set up a frame outside step/run: finishes a close() a handler
 * asked for meanwhile (client userdata at ud). */
void twl_close_if_requested(twl_client *cl, lua_State *L, int ud);

/* anchoring */
void twl_client_update_anchor(twl_client *cl, lua_State *L, int client_ud);
/* pushes the bound Lua object of a core pointer (or its userdata, or nil) */
void twl_push_bound(lua_State *L, int objs, void *ptr);
/* pushes (creating on first use) the shard userdata for s; objs is a stack index */
void twl_push_shard_ud(lua_State *L, twl_client *cl, int objs, int client_ud, tw_shard *s);
void twl_sweep(twl_client *cl, lua_State *L, int objs);

/* per-type registration */
void twl_client_open(lua_State *L, int modidx);
void twl_conduit_open(lua_State *L);
void twl_shard_open(lua_State *L);
void twl_message_open(lua_State *L);
/* Pushes the message of ev; the caller sets user value 1 (the shard object). */
void twl_push_message(lua_State *L, twl_frame *fr, const tw_event *ev, int conduit_obj);
tw_json *twl_message_doc(lua_State *L, int idx); /* the document the message at idx holds a reference on */

/* conduit userdata creation (client.c calls it after tw_conduit_open) */
void twl_push_conduit_ud(lua_State *L, twl_client *cl, int objs, int client_ud, tw_conduit *cd);

twl_client *twl_check_client(lua_State *L, int idx); /* raises when closed */

int twl_http_sync(lua_State *L);

/* plain websocket sessions (wsession.c) */
#define TWL_WSESSION_MT "twconduit.wsession"
/* the object an event belongs to: its websocket session, else its conduit */
#define TWL_HOLDER(ev) ((ev)->wsession ? (void *)(ev)->wsession : (void *)(ev)->conduit)
void twl_wsession_open(lua_State *L); /* after twl_client_open: adds client:open_wsession */
int twl_wsession_push_event(lua_State *L, twl_frame *fr, const tw_event *ev); /* -1: not one of its events */
void twl_wsession_freed(twl_client *cl, const tw_event *ev);
twl_req *twl_req_new(twl_client *cl);
void twl_req_drop(twl_req *r);
void twl_req_response(void *user, const tw_response *r);
/* the queue (queue.c): client_ud:queue and the queue box */
void twl_queue_open(lua_State *L);
/* for other files entering Lua from the core: call_protected and protected_frame of client.c */
void twl_call_protected(twl_client *cl, lua_CFunction f, void *arg);
twl_client *twl_protected_frame(lua_State *L);
/* fills m from the message userdata at idx (borrowed from it); -1 when it has no document */
int twl_message_to_msg(lua_State *L, int idx, tw_msg *m);

/* seconds -> milliseconds, rounded up, clamped */
int twl_seconds_to_ms(lua_Number s);

#endif
