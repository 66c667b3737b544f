--- twconduit.client: one connection to Twitch (OAuth, Helix, EventSub websockets),
-- running every socket and timer on one loop.
local core = require "twconduit.core"
local errors = require "twconduit.errors"
local async = require "twconduit.async"
local events = require "twconduit.events"
local Conduit = require "twconduit.conduit"
local Shard = require "twconduit.shard"
local Subscription = require "twconduit.subscription"
local WSession = require "twconduit.wsession"

local traceback = debug.traceback
local resume = coroutine.resume
local xpcall, type, tostring = xpcall, type, tostring

local Client = {}
Client.__name = "twconduit.Client"

-- option name -> checker returning an error message or nil
local function str(v) if type(v) ~= "string" then return "must be a string" end end
local function int_range(lo, hi)
  return function(v)
    if math.type(v) ~= "integer" or v < lo or (hi and v > hi) then
      return hi and ("must be an integer between %d and %d"):format(lo, hi)
        or ("must be an integer >= %d"):format(lo)
    end
  end
end
local function num_min(lo, strict)
  return function(v)
    if type(v) ~= "number" or v ~= v or (strict and v <= lo) or v < lo then
      return ("must be a number %s %s"):format(strict and ">" or ">=", lo)
    end
  end
end
local function num(v) if type(v) ~= "number" or v ~= v then return "must be a number" end end
local function seconds_upto(hi)
  return function(v)
    if type(v) ~= "number" or not (v > 0 and v <= hi) then
      return ("must be a number > 0 and <= %d"):format(hi)
    end
  end
end

local function log_fn(v)
  if v ~= false and type(v) ~= "function" then return "must be a function or false" end
end
local function log_level(v)
  if v ~= "debug" and v ~= "info" and v ~= "warn" and v ~= "error" then
    return 'must be "debug", "info", "warn" or "error"'
  end
end

-- The options and their checks. Their defaults are the core's (core.defaults(), from
-- TW_CLIENT_OPTS_INIT): nothing here repeats them.
local OPTIONS = {
  client_id = str, client_secret = str, access_token = str,
  api_base = str, auth_base = str, eventsub_ws = str,
  keepalive = function(v)
    if v ~= 0 then return int_range(10, 600)(v) end
  end,
  keepalive_slack = num_min(0),
  dedupe_window = num_min(0, true), dedupe_max = int_range(1),
  max_age = num, backoff_min = num_min(0, true), backoff_max = num_min(0, true),
  http_timeout = num_min(0, true), http_retries = int_range(0),
  http_max_inflight = int_range(1), patch_batch = int_range(1, 100),
  validate_interval = num_min(0), verify_interval = num_min(0),
  max_message_bytes = int_range(1024), tls_handshakes = int_range(0),
  welcome_timeout = seconds_upto(600), reconnect_welcome_timeout = seconds_upto(600),
  log = log_fn, log_level = log_level,
}

local function check_options(opts)
  if type(opts) ~= "table" then
    errors.argerror(1, "client", ("table expected, got %s"):format(type(opts)), 3)
  end
  for k, v in pairs(opts) do
    local check = OPTIONS[k]
    if not check then error(("unknown option '%s'"):format(tostring(k)), 3) end
    local msg = check(v)
    if msg then error(("%s %s"):format(k, msg), 3) end
  end
  if opts.backoff_min and opts.backoff_max and opts.backoff_min > opts.backoff_max then
    error("backoff_min must not exceed backoff_max", 3)
  end
end

-- ---------------------------------------------------------------------------------
-- error reporting

local function write_stderr(prefix, err)
  io.stderr:write("twconduit: ", prefix, tostring(err), "\n")
  io.stderr:flush()
end

--- Sends err to the "error" handlers of obj's chain (shard/subscription, conduit,
-- client); stderr when there is none. Errors inside error handlers go to stderr.
function Client:_report(err, obj, conduit)
  local lists = {}
  if obj and obj ~= conduit and type(obj) == "table" and obj._h then
    lists[#lists + 1] = obj._h.error
  end
  if conduit and conduit._h then lists[#lists + 1] = conduit._h.error end
  lists[#lists + 1] = self._h.error
  local any = false
  for _, list in ipairs(lists) do
    for i = 1, #list do
      any = true
      local ok, e2 = xpcall(list[i], traceback, err, obj or conduit)
      if not ok then write_stderr("error in an error handler: ", e2) end
    end
  end
  if not any then write_stderr("", err) end
end

async.report = function(client, err)
  if client and not client._closed then
    client:_report(err)
  else
    write_stderr("", err)
  end
end

-- ---------------------------------------------------------------------------------
-- dispatch: the one function the C binding calls for every event
--
-- Handlers run in a coroutine, so that they may call async functions (helix, the
-- endpoint wrappers, sleep, subscribe...). A runner coroutine is reused from event to
-- event: handlers that return without yielding cost one resume for all the handlers of
-- an event. A handler that yields keeps its runner (its async call resumes it, as a
-- spawned coroutine is); the next handler, and every later event, get a new runner, so
-- handlers that do not yield run in event order. Notifications take the hot path below
-- (`hot`); other events, and notifications produced while a handler runs, take `run`.

local DONE = {} -- what a `run` coroutine yields once the handlers it was given have returned

-- The handlers to run for one event, flattened as {fn, obj, fn, obj, ...}.
local function list_plan(list, obj)
  local p = {}
  for i = 1, #list do
    p[#p + 1] = list[i]
    p[#p + 1] = obj
  end
  return p
end

local function wrap_shard(client, s)
  if type(s) == "userdata" then
    local cd = s:conduit()
    return Shard.wrap(client, type(cd) == "table" and cd or nil, s)
  end
  return s
end

-- The handlers a notification of one type runs, in order: the conduit's for the type,
-- the conduit's "notification", the same two of the shard, then of the client. Built
-- once per (holder, type) as a flat array {fn, obj, fn, obj, ...} and kept until any
-- handler list anywhere changes (events.gen), so the hot path is one lookup and a loop.
-- A handler added or removed while an event is being handled takes effect from the
-- next event.
local function build_plan(client, conduit, shard, a)
  local p = { gen = events.gen, conduit = conduit }
  local function add(list, obj)
    if list then
      for i = 1, #list do
        p[#p + 1] = list[i]
        p[#p + 1] = obj
      end
    end
  end
  if type(conduit) == "table" then add(conduit._h[a], conduit); add(conduit._h.notification, conduit) end
  if shard then add(shard._h[a], shard); add(shard._h.notification, shard) end
  add(client._h[a], conduit); add(client._h.notification, conduit)
  return p
end

local function make_dispatcher(client)
  local plans = setmetatable({}, { __mode = "k" }) -- holder (shard, conduit or client) -> type -> plan
  local runner, rstate = nil, nil -- the idle `run` coroutine and its state { i =, detached = }

  -- A `run` coroutine: runs p[i](a1, a2[, a3]) for i = i, i + 2, ... then yields DONE and
  -- waits for the next plan. st.i is the handler running; st.detached is set once one
  -- has yielded, so that when it returns the coroutine ends instead of going on.
  local function new_runner()
    local st = { i = 0, detached = false }
    local co = coroutine.create(function(p, i, a1, a2, a3)
      while true do
        local n = #p
        while i <= n do
          st.i = i
          if a3 == nil then p[i](a1, a2) else p[i](a1, a2, a3) end
          if st.detached then return end
          if client._closed then break end
          i = i + 2
        end
        p, i, a1, a2, a3 = coroutine.yield(DONE)
      end
    end)
    async.adopt(co, client)
    return co, st
  end

  -- Runs the handlers of plan p from index i; conduit: for error reports.
  local function run(p, i, conduit, a1, a2, a3)
    local n = #p
    while i <= n do
      local co, st = runner, rstate
      if co then runner = nil else co, st = new_runner() end
      local ok, r = resume(co, p, i, a1, a2, a3)
      if ok and r == DONE then
        runner, rstate = co, st
        return
      end
      i = st.i
      if not ok then -- the handler raised; the runner is dead
        async.disown(co)
        client:_report(errors.new("callback_error", traceback(co, tostring(r))), p[i + 1], conduit)
      else -- the handler yielded: the runner is its coroutine from now on
        st.detached = true
      end
      if client._closed then return end
      i = i + 2
    end
  end
  client._run = run

  local function plan_for(conduit, a, d)
    if type(d) ~= "table" then d = nil end
    local holder = d or conduit or client
    local byt = plans[holder]
    if not byt then
      byt = {}
      plans[holder] = byt
    end
    local key = a or false -- a notification always has a type; never index with nil
    local p = byt[key]
    if not p or p.gen ~= events.gen or p.conduit ~= conduit then
      p = build_plan(client, conduit, d, key)
      byt[key] = p
    end
    return p
  end

  -- The hot path, for notifications: one runner (`hot`, idle between events) gets the
  -- dispatcher's arguments as resume arguments, finds the plan and runs it, then yields
  -- DONE and waits for the next. The core resumes it directly (set_hot: no Lua call and
  -- no coroutine.resume of the dispatcher per notification); a resume that does not end
  -- in DONE means a handler yielded (the runner is its coroutine from now on) or raised
  -- (the runner is dead), and comes back here as "hot_exit". busy is set while it runs
  -- handlers: a notification produced meanwhile (by a method a handler called) runs on a
  -- `run` coroutine. h_i is the handler running, 0 while the plan is looked up. (The
  -- event and message never go into an upvalue or a table: the write barrier would keep
  -- every one alive a whole collection longer, and their documents out of the pool.)
  local hot, busy = nil, false
  local h_p, h_i = nil, 0
  local yield = coroutine.yield
  local function new_hot()
    local co
    co = coroutine.create(function(conduit, a, b, c, d)
      while true do
        busy, h_i = true, 0
        local byt = plans[d or conduit or client]
        local p = byt and byt[a]
        if not p or p.gen ~= events.gen or p.conduit ~= conduit then p = plan_for(conduit, a, d) end
        h_p = p
        for i = 1, #p, 2 do
          h_i = i
          p[i](c, b)
          if hot ~= co or client._closed then break end
        end
        if hot ~= co then return end -- it yielded meanwhile: the rest already ran
        busy = false
        conduit, a, b, c, d = yield(DONE)
      end
    end)
    async.adopt(co, client)
    hot = co
    client._core:set_hot(co, DONE)
    return co
  end

  -- The runner did not end in DONE: ok, err as coroutine.resume returned them.
  local function hot_exit(ok, err, conduit, c, b)
    local co, p, i = hot, h_p, h_i
    hot, busy = nil, false
    client._core:set_hot(nil)
    if not ok then async.disown(co) end
    if i == 0 then -- the plan lookup itself failed: the dispatcher's own error
      if not ok then error(err, 0) end
      return
    end
    if not ok then
      client:_report(errors.new("callback_error", traceback(co, tostring(err))), p[i + 1], conduit)
    end
    if not client._closed then run(p, i + 2, conduit, c, b) end
  end

  -- kind, conduit; for notifications a: subscription type, b: message, c: event view,
  -- d: shard.
  return function(kind, conduit, a, b, c, d, e)
    if kind == "notification" then
      if busy then -- from inside a handler (a method it called produced the event)
        local byt = plans[d or conduit or client]
        local p = byt and byt[a]
        if not p or p.gen ~= events.gen or p.conduit ~= conduit then p = plan_for(conduit, a, d) end
        if not p[1] then return end
        local prev = async.current
        async.current = client
        run(p, 1, conduit, c, b)
        async.current = prev
        return
      end
      local ok, r = resume(hot or new_hot(), conduit, a, b, c, d)
      if ok and r == DONE then return end
      hot_exit(ok, r, conduit, c, b)
    elseif kind == "hot_exit" then -- from the core: conduit, ok, err, event, message
      hot_exit(a, b, conduit, c, d)
    else
      local prev = async.current
      async.current = client
      client:_event(kind, conduit, a, b, c, d, e)
      async.current = prev
    end
  end
end

-- Runs the handlers of `name` of obj (a shard or subscription), of conduit, then of the
-- client, with up to three arguments.
local function chain(client, obj, conduit, name, a1, a2, a3)
  local run = client._run
  if obj and type(obj) == "table" and obj._h and obj ~= conduit then
    local l = obj._h[name]
    if l then run(list_plan(l, obj), 1, conduit, a1, a2, a3) end
    if client._closed then return end
  end
  if conduit then
    local l = conduit._h[name]
    if l then run(list_plan(l, conduit), 1, conduit, a1, a2, a3) end
    if client._closed then return end
  end
  local l = client._h[name]
  if l then run(list_plan(l, obj or conduit), 1, conduit, a1, a2, a3) end
end

Client._chain = chain

function Client:_event(kind, conduit, a, b, c, d, e)
  if kind == "queued" or kind == "queue_error" then -- a queue's entry or error (queue.lua)
    if type(conduit) == "table" then conduit:_dispatch(kind, a, b, c, d, e) end
    return
  end
  if type(conduit) == "userdata" then conduit = nil end
  local log = self._log
  if log and kind ~= "revocation" then -- a line per event (twconduit.log)
    local sa = kind:find("^shard_") or kind == "reconnect"
    log:event(kind, conduit, sa and wrap_shard(self, a) or a,
      kind == "error" and wrap_shard(self, b) or b, c, e)
  end
  if WSession.event(self, kind, conduit, a, b) then return end -- a websocket session's own
  if kind == "revocation" then
    -- a: type, b: message, c: subscription view, d: shard, e: status
    local id = c and c.id
    local sub = id and self._subs[id]
    if sub then
      sub.status = e or (c and c.status) or "revoked"
      local l = sub._h.revocation
      if l then self._run(list_plan(l, sub), 1, conduit, sub, sub.status) end
      if self._closed then return end
    end
    if conduit and conduit._rc then conduit._rc:revoked(id, e or (c and c.status)) end
    chain(self, nil, conduit, "revocation", c, b)
  elseif kind == "ready" or kind == "started" then
    chain(self, nil, conduit, kind, conduit)
  elseif kind == "shard_enabled" or kind == "reconnect" or kind == "shard_released" then
    local s = wrap_shard(self, a)
    if type(s) == "table" then
      if kind == "shard_enabled" then s._enabled_once = true
      elseif kind == "shard_released" then s._released = true end
    end
    chain(self, s, conduit, kind, s)
  elseif kind == "shard_lost" then
    -- a: shard, b: what Twitch shows {method, session_id, callback, status}, c: error
    local s = wrap_shard(self, a)
    chain(self, s, conduit, kind, s, b, c)
  elseif kind == "shard_disabled" then
    local s = wrap_shard(self, a)
    chain(self, s, conduit, kind, s, b, c)
  elseif kind == "error" then
    local s = wrap_shard(self, b)
    if conduit then conduit._last_error = a end
    local obj = s or conduit
    if (s and s._h.error) or (conduit and conduit._h.error) or self._h.error then
      chain(self, s, conduit, "error", a, obj)
    elseif not log then
      write_stderr("", a)
    end
  elseif kind == "token" then
    chain(self, nil, nil, "token")
  end
  if conduit and not self._closed then conduit:_wake(kind) end
end

-- ---------------------------------------------------------------------------------
-- construction and the loop

function Client.new(opts)
  check_options(opts)
  local ud, err = core.client(opts)
  if not ud then return nil, err end
  local self = setmetatable({
    _core = ud, _h = {}, _opts = ud:options(), _conduits = {}, _subs = {}, _closed = false,
    _waiting = {}, _wsessions = {},
  }, Client)
  ud:set_dispatcher(make_dispatcher(self))
  self._log = require("twconduit.log").new(self, opts)
  return self
end

events.methods(Client)

local function check_open(self)
  if self._closed then error("client is closed", 3) end
end

--- Runs the loop until client:stop(). Returns true | nil, err.
function Client:run()
  check_open(self)
  return self._core:run()
end

--- Runs one loop iteration, waiting at most `timeout` seconds (nil: until
-- something happens). Returns true | nil, err.
function Client:step(timeout)
  check_open(self)
  if timeout ~= nil and type(timeout) ~= "number" then
    errors.argerror(1, "step", ("number expected, got %s"):format(type(timeout)))
  end
  return self._core:step(timeout)
end

function Client:stop()
  if not self._closed then self._core:stop() end
end

function Client:pollfd() check_open(self); return self._core:pollfd() end
function Client:events() check_open(self); return "r" end
function Client:timeout() check_open(self); return self._core:timeout() end
function Client:stats() check_open(self); return self._core:stats() end
function Client:now() check_open(self); return self._core:now() end

--- The options in effect, defaults included (no secrets).
function Client:options()
  check_open(self)
  local o = {}
  for k, v in pairs(self._opts) do o[k] = v end
  return o
end
--- A queue over Redis Streams (lua/twconduit/queue.lua): queue | nil, err.
function Client:queue(opts)
  check_open(self)
  return require("twconduit.queue").new(self, opts)
end

--- Per partition lag and pending entries, and the dead-letter count, of every open
-- queue of this client (async): { [name] = { partitions = {...}, dead = n } } | nil, err.
function Client:queue_stats()
  check_open(self)
  local out = {}
  for _, q in ipairs(self._queues or {}) do
    if not q:closed() then
      local st, err = q:redis_stats()
      if not st then return nil, err end
      out[q:name()] = st
    end
  end
  return out
end

function Client:is_running() return not self._closed and self._core:running() end
function Client:closed() return self._closed end

--- Closes every connection; idempotent. Inside a callback it takes effect when the
-- current step returns. Async calls still waiting return nil, err (`closed`).
function Client:close()
  if self._closed then return end
  -- queues first, while the client's handlers still hear what closing them reports
  for _, q in ipairs(self._queues or {}) do q:close() end
  self._closed = true
  self._core:close()
  async.close_waiting(self)
end
Client.__close = Client.close

function Client:__tostring()
  return ("twconduit.client{state=%q,conduits=%d}"):format(
    self._closed and "closed" or (self._core:running() and "running" or "idle"), #self._conduits)
end

Client.__index = Client

-- ---------------------------------------------------------------------------------
-- conduits

local CONDUIT_OPTS = { id = true, shards = true, offset = true, total = true, state = true }

--- Opens a conduit (creating it when id is nil) and connects `shards` websocket
-- shards. Returns the conduit object, or nil, err.
function Client:conduit(opts)
  check_open(self)
  if type(opts) ~= "table" then
    errors.argerror(1, "conduit", ("table expected, got %s"):format(type(opts)))
  end
  for k in pairs(opts) do
    if not CONDUIT_OPTS[k] then error(("unknown option '%s'"):format(tostring(k)), 2) end
  end
  local st
  if opts.state ~= nil then -- a restart reuses the conduit, its range and subscriptions
    st = require("twconduit.state").open(opts.state)
    opts = st:merge(opts)
  end
  if opts.id ~= nil and (type(opts.id) ~= "string" or opts.id == "") then
    error("id must be a non-empty string", 2)
  end
  local shards = opts.shards == nil and 1 or opts.shards
  if math.type(shards) ~= "integer" or shards < 0 then
    error("shards must be a non-negative integer", 2)
  end
  local offset = opts.offset or 0
  if math.type(offset) ~= "integer" or offset < 0 then
    error("offset must be a non-negative integer", 2)
  end
  if opts.total ~= nil and (math.type(opts.total) ~= "integer" or opts.total < 1) then
    error("total must be a positive integer", 2)
  end
  if opts.total ~= nil and opts.total < offset + shards then
    error("total must be at least offset + shards", 2)
  end
  local ud, err = self._core:open_conduit { id = opts.id, shards = shards, offset = offset,
    total = opts.total }
  if not ud then return nil, err end
  local c = Conduit.wrap(self, ud)
  c._open = { id = opts.id, shards = shards, offset = opts.offset, total = opts.total }
  if st then c:_use_state(st) end
  self._conduits[#self._conduits + 1] = c
  return c
end

--- The conduit objects opened by this client.
function Client:open_conduits()
  check_open(self)
  local out = {}
  for i, c in ipairs(self._conduits) do out[i] = c end
  return out
end

--- Plain websocket mode (lua/twconduit/wsession.lua): one session with a user token.
function Client:websocket_session(opts) return WSession.open(self, opts) end

--- The websocket session objects this client opened and did not close.
function Client:websocket_sessions()
  check_open(self)
  local out = {}
  for i, s in ipairs(self._wsessions) do out[i] = s end
  return out
end

function Client:_forget_wsession(s)
  for i, x in ipairs(self._wsessions) do
    if x == s then table.remove(self._wsessions, i); return end
  end
end

function Client:_forget_conduit(c)
  for i, x in ipairs(self._conduits) do
    if x == c then table.remove(self._conduits, i); return end
  end
end

-- ---------------------------------------------------------------------------------
-- Helix

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(ch) return ("%%%02X"):format(ch:byte()) end))
end

local function encode_query(q)
  local keys = {}
  for k in pairs(q) do
    if type(k) ~= "string" then error("query keys must be strings", 4) end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = q[k]
    if type(v) == "table" then
      for _, x in ipairs(v) do parts[#parts + 1] = urlencode(k) .. "=" .. urlencode(x) end
    elseif v ~= nil and v ~= false then
      parts[#parts + 1] = urlencode(k) .. "=" .. urlencode(v)
    end
  end
  return table.concat(parts, "&")
end
Client._encode_query = encode_query

local METHODS = { GET = true, POST = true, PATCH = true, PUT = true, DELETE = true }

--- One Helix call with the app token, rate limiting, retries and 401 refresh.
-- Returns the decoded body (a plain table), true for an empty 2xx body, or nil, err.
function Client:helix(method, path, opts)
  check_open(self)
  if type(method) ~= "string" then
    errors.argerror(1, "helix", ("string expected, got %s"):format(type(method)))
  end
  method = method:upper()
  if not METHODS[method] then errors.argerror(1, "helix", "unknown HTTP method " .. method) end
  if type(path) ~= "string" then
    errors.argerror(2, "helix", ("string expected, got %s"):format(type(path)))
  end
  if path:sub(1, 1) ~= "/" then errors.argerror(2, "helix", "path must start with '/'") end
  if opts ~= nil and type(opts) ~= "table" then
    errors.argerror(3, "helix", ("table expected, got %s"):format(type(opts)))
  end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "query" and k ~= "body" and k ~= "priority" then
      error(("unknown option '%s'"):format(tostring(k)), 2)
    end
  end
  local prio = opts.priority or "bot"
  if prio ~= "bot" and prio ~= "background" then
    error("priority must be \"bot\" or \"background\"", 2)
  end
  local full = path
  if opts.query ~= nil then
    if type(opts.query) ~= "table" then error("query must be a table", 2) end
    local q = encode_query(opts.query)
    if q ~= "" then full = full .. (full:find("?", 1, true) and "&" or "?") .. q end
  end
  local body = opts.body
  if type(body) == "table" then
    body = core.json_encode(body)
  elseif body ~= nil and type(body) ~= "string" then
    error("body must be a table or a string", 2)
  end
  local cd = self._core
  return async.await(self, function(done)
    local id, err = cd:helix(method, full, body, function(status, resp, e)
      if e then
        if type(resp) == "table" then e.body = resp end
        if self._log then self._log:helix_error(method, path, e) end
        done(nil, e)
      elseif resp == nil then
        done(true, status)
      else
        done(resp, status)
      end
    end, prio)
    if not id then done(nil, err) end
  end, 2)
end

-- pages through a list endpoint; returns all data, and the last page's body
local function all_pages(self, path, query)
  local out = {}
  local q = {}
  for k, v in pairs(query or {}) do q[k] = v end
  local last
  for _ = 1, 10000 do
    local body, err = self:helix("GET", path, { query = q })
    if not body then return nil, err end
    if type(body) ~= "table" then
      return nil, errors.new("bad_response", "expected a JSON body from " .. path)
    end
    last = body
    local data = body.data
    if type(data) == "table" then
      for _, x in ipairs(data) do out[#out + 1] = x end
    end
    local cursor = type(body.pagination) == "table" and body.pagination.cursor
    if type(cursor) ~= "string" or cursor == "" or cursor == q.after then break end
    q.after = cursor
  end
  return out, last
end

-- the first element of body.data, or nil, err (bad_response) when there is none
local function first_data(body, what)
  local d = type(body) == "table" and type(body.data) == "table" and body.data[1]
  if type(d) == "table" then return d end
  return nil, errors.new("bad_response", what)
end

local function check_id(v, n, fname)
  if type(v) ~= "string" or v == "" then
    errors.argerror(n, fname, ("string expected, got %s"):format(type(v)), 3)
  end
end

local function check_count(v, n, fname)
  if math.type(v) ~= "integer" or v < 1 then
    errors.argerror(n, fname, "shard count must be a positive integer", 3)
  end
end

--- The app's conduits: list of { id = , shard_count = }.
function Client:conduits()
  local body, err = self:helix("GET", "/eventsub/conduits")
  if not body then return nil, err end
  return type(body) == "table" and body.data or {}
end

function Client:create_conduit(n)
  check_count(n, 1, "create_conduit")
  local body, err = self:helix("POST", "/eventsub/conduits", { body = { shard_count = n } })
  if not body then return nil, err end
  return first_data(body, "no conduit in the response")
end

function Client:update_conduit(id, n)
  check_id(id, 1, "update_conduit")
  check_count(n, 2, "update_conduit")
  local body, err = self:helix("PATCH", "/eventsub/conduits", { body = { id = id, shard_count = n } })
  if not body then return nil, err end
  return first_data(body, "no conduit in the response")
end

function Client:delete_conduit(id)
  check_id(id, 1, "delete_conduit")
  local ok, err = self:helix("DELETE", "/eventsub/conduits", { query = { id = id } })
  if not ok then return nil, err end
  return true
end

--- Every shard of a conduit (all pages). opts: { status = }.
function Client:conduit_shards(conduit_id, opts)
  check_id(conduit_id, 1, "conduit_shards")
  if opts ~= nil and type(opts) ~= "table" then
    errors.argerror(2, "conduit_shards", ("table expected, got %s"):format(type(opts)))
  end
  local q = { conduit_id = conduit_id }
  for k, v in pairs(opts or {}) do
    if k ~= "status" then error(("unknown option '%s'"):format(tostring(k)), 2) end
    q[k] = v
  end
  local list, err = all_pages(self, "/eventsub/conduits/shards", q)
  if not list then return nil, err end
  return list
end

--- Updates shards ({ {id=, transport={...}}, ... }) in batches of patch_batch.
-- Returns { data = {...}, errors = {...} } or nil, err.
function Client:update_shards(conduit_id, shards)
  check_open(self)
  check_id(conduit_id, 1, "update_shards")
  if type(shards) ~= "table" then
    errors.argerror(2, "update_shards", ("table expected, got %s"):format(type(shards)))
  end
  local batch = self._opts.patch_batch
  local result = { data = {}, errors = {} }
  for i = 1, #shards, batch do
    local slice = {}
    for j = i, math.min(#shards, i + batch - 1) do slice[#slice + 1] = shards[j] end
    local body, err = self:helix("PATCH", "/eventsub/conduits/shards",
      { body = { conduit_id = conduit_id, shards = slice } })
    if not body then return nil, err end
    if type(body) == "table" then
      for _, x in ipairs(type(body.data) == "table" and body.data or {}) do
        result.data[#result.data + 1] = x
      end
      for _, x in ipairs(type(body.errors) == "table" and body.errors or {}) do
        result.errors[#result.errors + 1] = x
      end
    end
  end
  return result
end

local SUB_FILTERS = { status = true, type = true, user_id = true, subscription_id = true,
  conduit_id = true }

--- EventSub subscriptions (all pages). Filters: status, type, user_id,
-- subscription_id, conduit_id (applied here). The list carries total, total_cost and
-- max_total_cost.
function Client:subscriptions(filter)
  if filter ~= nil and type(filter) ~= "table" then
    errors.argerror(1, "subscriptions", ("table expected, got %s"):format(type(filter)))
  end
  local q, conduit_id = {}, nil
  for k, v in pairs(filter or {}) do
    if not SUB_FILTERS[k] then error(("unknown option '%s'"):format(tostring(k)), 2) end
    if type(v) ~= "string" then error(("%s must be a string"):format(k), 2) end
    if k == "conduit_id" then conduit_id = v else q[k] = v end
  end
  local list, last = all_pages(self, "/eventsub/subscriptions", q)
  if not list then return nil, last end
  if conduit_id then
    local kept = {}
    for _, s in ipairs(list) do
      local t = type(s.transport) == "table" and s.transport or {}
      if t.conduit_id == conduit_id then kept[#kept + 1] = s end
    end
    list = kept
  end
  list.total = last and last.total
  list.total_cost = last and last.total_cost
  list.max_total_cost = last and last.max_total_cost
  return list
end

local SUB_SPEC = { type = true, version = true, condition = true, transport = true }

function Client._check_sub_spec(_, spec, fname, need_transport)
  if type(spec) ~= "table" then
    errors.argerror(1, fname, ("table expected, got %s"):format(type(spec)), 3)
  end
  for k in pairs(spec) do
    if not SUB_SPEC[k] or (k == "transport" and not need_transport) then
      error(("unknown option '%s'"):format(tostring(k)), 3)
    end
  end
  if type(spec.type) ~= "string" or spec.type == "" then error("type must be a string", 3) end
  if spec.version ~= nil and type(spec.version) ~= "string" then
    error("version must be a string", 3)
  end
  if type(spec.condition) ~= "table" then error("condition must be a table", 3) end
  if need_transport and type(spec.transport) ~= "table" then
    error("transport must be a table", 3)
  end
end

--- Creates a subscription; returns its data (a plain table) or nil, err.
function Client:create_subscription(spec)
  self:_check_sub_spec(spec, "create_subscription", true)
  local body, err = self:helix("POST", "/eventsub/subscriptions", { body = {
    type = spec.type, version = spec.version or "1", condition = spec.condition,
    transport = spec.transport } })
  if not body then return nil, err end
  return first_data(body, "no subscription in the response")
end

function Client:delete_subscription(id)
  check_id(id, 1, "delete_subscription")
  local ok, err = self:helix("DELETE", "/eventsub/subscriptions", { query = { id = id } })
  if not ok then return nil, err end
  local sub = self._subs[id]
  if sub then
    sub.status = "deleted"
    self._subs[id] = nil
  end
  return true
end

--- The subscription object for a Helix subscription table (one per id).
function Client:_subscription(data, conduit)
  local sub = self._subs[data.id]
  if sub then
    sub:_update(data)
  else
    sub = Subscription.new(self, data, conduit)
    self._subs[data.id] = sub
  end
  return sub
end

--- The Helix rate-limit bucket shared by every call of this client: { limit, remaining,
-- reset, hold_until, waiting = { bot, background }, inflight = {...}, sent = {...},
-- final_429 }.
function Client:ratelimit() check_open(self); return self._core:ratelimit() end

--- Waits `s` seconds on the client's loop (async).
function Client:sleep(s)
  check_open(self)
  if type(s) ~= "number" or s < 0 then
    errors.argerror(1, "sleep", "non-negative number expected")
  end
  local cd = self._core
  return async.await(self, function(done)
    cd:timer(s, function() done(true) end)
  end, 2)
end

--- Waits until pred() is true (checked after every event of `conduit`, and every
-- 50 ms), or timeout seconds (nil: none). Returns true | nil, err.
function Client:_wait(pred, timeout, conduit, what)
  local v, e = pred()
  if v then return v end
  if e then return nil, e end
  local cd = self._core
  return async.await(self, function(done)
    local finished, poll_id, deadline_id = false, nil, nil
    local watcher
    local function finish(...)
      if finished then return end
      finished = true
      if poll_id then cd:cancel_timer(poll_id) end
      if deadline_id then cd:cancel_timer(deadline_id) end
      if conduit then conduit:_unwatch(watcher) end
      done(...)
    end
    local function check()
      local ok, err = pred()
      if ok then finish(ok) elseif err then finish(nil, err) end
    end
    watcher = check
    if conduit then conduit:_watch(watcher) end
    local function poll()
      poll_id = nil
      if finished then return end
      check()
      if not finished and not cd:closed() then poll_id = cd:timer(0.05, poll) end
    end
    -- a conduit wakes its waiters on each of its events; anything else is polled
    if not conduit then poll_id = cd:timer(0.05, poll) end
    if timeout then
      deadline_id = cd:timer(timeout, function()
        deadline_id = nil
        finish(nil, errors.new("timeout", ("timed out after %gs waiting for %s"):format(
          timeout, what or "a condition")))
      end)
    end
  end, 3)
end

return Client
