/* JSON for Lua: read-only views over tw_json documents, plain-table decoding,
 * encoding, and the null sentinel. Implemented in view.c and luajson.c.
 *
 * Views: a full userdata (metatable "twconduit.view") holding a document pointer and
 * a node index, with the document's anchor (the Lua value owning its memory) as user
 * value; only objects and arrays become views, scalars are pushed as Lua values. null: one full userdata per Lua state, metatable
 * "twconduit.null" (__tostring "twconduit.null"), published as core.null. */
#ifndef TWL_JSON_H
#define TWL_JSON_H

#include <lauxlib.h>
#include <lua.h>

#include "tw_json.h"

#define TWL_VIEW_MT "twconduit.view"
#define TWL_NULL_MT "twconduit.null"

extern const char *const twl_null_name; /* "twconduit.null" */

/* Registers the view and null metatables and sets null, totable, json_decode,
 * json_encode, json_view, isview in the table at modidx. Idempotent per state. */
void twl_json_open(lua_State *L, int modidx);

/* Pushes node n of d: a string, integer, float, boolean, the null sentinel or,
 * for objects and arrays, a view anchored to the value at stack index `anchor`,
 * which must keep d alive for as long as it lives itself (a userdata holding d's
 * memory or a reference on it). Pushes nil for TW_JNONE. May raise on out of memory. */
void twl_view_push(lua_State *L, tw_json *d, tw_jnode n, int anchor);

/* Pushes node n of d as plain Lua values: deep tables (arrays 1-based), integers
 * as integers, null as the sentinel; duplicate keys: the last one wins. The
 * caller keeps d alive during the call (it takes no reference). May raise. */
void twl_json_push_table(lua_State *L, const tw_json *d, tw_jnode n);

/* Pushes the JSON text of the value at idx; raises "json_encode: ... at <path>"
 * for values JSON cannot carry. Tables with keys exactly 1..n (n > 0) are
 * arrays, any other table an object (empty table: {}); views emit their text. */
void twl_json_encode(lua_State *L, int idx);

void twl_push_null(lua_State *L);          /* pushes the null sentinel */
void twl_push_view_mt(lua_State *L);       /* pushes the view metatable */

/* twl_view_push with the view metatable and null of the frame's stack slots (no
 * registry lookups: the notification path). */
struct twl_frame;
void twl_view_push_frame(lua_State *L, const struct twl_frame *fr, tw_json *d, tw_jnode n, int anchor);
int twl_isview(lua_State *L, int idx);     /* 1 if the value at idx is a view */

/* The document and node behind the view at idx (borrowed: valid while the view
 * lives), or NULL when idx holds no view. */
tw_json *twl_view_get(lua_State *L, int idx, tw_jnode *n);

#endif
