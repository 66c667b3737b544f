--- twconduit.queue: the gateway/worker split over Redis Streams.
-- `client:queue{ redis =, name =, role = "gateway" | "worker" | "both", ... }` returns a
-- queue. A gateway publishes what the client's conduits receive; a worker runs the
-- handlers registered on the queue (`q:on(type, fn)`, the same arguments as a conduit's:
-- `fn(event, msg)`, msg.transport == "queue", msg.origin the transport the gateway got
-- it on) and acknowledges each entry once its handlers finished, after a yielding handler
-- resumed and returned too. A handler that raises leaves the entry pending: it is
-- delivered again after claim_idle, and after max_deliveries it goes to the dead-letter
-- stream with the last error.
local errors = require "twconduit.errors"
local async = require "twconduit.async"
local events = require "twconduit.events"

local traceback = debug.traceback
local xpcall, type, tostring = xpcall, type, tostring
local resume, yield = coroutine.resume, coroutine.yield

local Queue = {}
Queue.__name = "twconduit.Queue"
Queue.__index = Queue

local OPTIONS = {
  redis = "string", name = "string", role = "string", consumer = "string", spool = "string",
  partitions = "integer", claim_idle = "number", max_deliveries = "integer",
  dedupe_window = "number", maxlen = "integer", max_age = "number", buffer_max = "integer",
  spool_max = "integer", connect_timeout = "number", command_timeout = "number",
  batch = "integer", max_outstanding = "integer", ["local"] = "boolean",
}

local ALLOWED = {
  notification = true, revocation = true, error = true,
}
local function allowed_event(name)
  return ALLOWED[name] or (type(name) == "string" and name:find(".", 1, true))
end

local function check(opts)
  if type(opts) ~= "table" then
    errors.argerror(1, "queue", ("table expected, got %s"):format(type(opts)), 4)
  end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then error(("unknown option '%s'"):format(tostring(k)), 4) end
    local ok
    if want == "integer" then ok = math.type(v) == "integer"
    else ok = type(v) == want end
    if not ok then error(("%s must be %s %s"):format(k, want == "integer" and "an" or "a", want), 4) end
  end
  if opts.redis == nil then error("redis must be a string (redis://host:port or unix:/path)", 4) end
  if opts.name == nil then error("name must be a string", 4) end
  if opts.role ~= nil and opts.role ~= "gateway" and opts.role ~= "worker" and opts.role ~= "both" then
    error('role must be "gateway", "worker" or "both"', 4)
  end
end

function Queue.new(client, opts)
  check(opts)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.role = o.role or "both"
  local ud, err = client._core:queue(o)
  if not ud then return nil, err end
  local self = setmetatable({ _ud = ud, _client = client, _h = {}, _role = o.role, _closed = false,
    _idle = nil }, Queue)
  ud:bind(self)
  client._queues = client._queues or {}
  client._queues[#client._queues + 1] = self
  return self
end

function Queue:on(name, fn)
  if not allowed_event(name) then errors.argerror(1, "on", ("unknown event '%s'"):format(tostring(name))) end
  events.check(name, fn, "on", nil, true)
  events.on(self._h, name, fn)
  return self
end

function Queue:off(name, fn)
  events.check(name, fn, "off")
  return events.off(self._h, name, fn)
end

local function check_open(self)
  if self._closed or self._client._closed then error("queue is closed", 3) end
end

--- Local counters (cheap): published, duplicates, spooled, dropped, delivered, acked,
-- failed, claimed, dead, bad_entries, outages, buffered, spool_bytes, outstanding,
-- partitions, up.
function Queue:stats() check_open(self); return self._ud:stats() end
function Queue:name() check_open(self); return self._ud:name() end
function Queue:consumer() check_open(self); return self._ud:consumer() end
function Queue:role() return self._role end
function Queue:closed() return self._closed or self._client._closed end

--- Any Redis command on the queue's connection (async): returns the reply converted to
-- Lua (arrays as tables, nil elements as false) | nil, err.
function Queue:command(argv)
  check_open(self)
  if type(argv) ~= "table" then
    errors.argerror(1, "command", ("table expected, got %s"):format(type(argv)))
  end
  return async.await(self._client, function(done)
    local ok, err = self._ud:command(argv, done)
    if not ok then done(nil, err) end
  end)
end

--- Publishes a message a handler received (a gateway's; de-duplicated across gateways
-- by message id). Returns true | nil, err.
function Queue:publish(msg)
  check_open(self)
  return self._ud:publish(msg)
end

--- Waits (async) until pred(stats) is true or timeout seconds pass: true | nil, err.
function Queue:wait_up(timeout)
  check_open(self)
  local client, t0 = self._client, self._client:now()
  timeout = timeout or 10
  while not self._ud:stats().up do
    if client:now() - t0 > timeout then
      return nil, errors.new("timeout", ("queue not connected after %g s"):format(timeout))
    end
    client:sleep(0.02)
  end
  return true
end

local function pairs_to_map(t)
  local m = {}
  if type(t) == "table" then
    for i = 1, #t - 1, 2 do m[t[i]] = t[i + 1] end
  end
  return m
end

--- From Redis (async): { partitions = { [k] = { length, lag, pending, last_delivered } },
-- dead = entries in the dead-letter stream, name = } | nil, err.
function Queue:redis_stats()
  check_open(self)
  local name = self:name()
  local n = self:stats().partitions
  if n == 0 then return nil, errors.new("redis_unreachable", "the queue is not set up yet") end
  local parts = {}
  for k = 0, n - 1 do
    local key = ("%s:s:%d"):format(name, k)
    local len, err = self:command { "XLEN", key }
    if not len then return nil, err end
    local groups, err2 = self:command { "XINFO", "GROUPS", key }
    if not groups then return nil, err2 end
    local g = {}
    for _, e in ipairs(groups) do
      local m = pairs_to_map(e)
      if m.name == name then g = m end
    end
    parts[k] = { length = len, lag = g.lag ~= false and g.lag or nil, pending = g.pending or 0,
      last_delivered = g["last-delivered-id"] }
  end
  local dead, err = self:command { "XLEN", name .. ":dead" }
  if not dead then return nil, err end
  return { name = name, partitions = parts, dead = dead }
end

function Queue:close()
  if self._closed then return end
  self._closed = true
  if not self._client._closed then self._ud:close() end
end
Queue.__close = Queue.close

function Queue:__tostring()
  return ("twconduit.queue{role=%q,closed=%s}"):format(self._role, tostring(self:closed()))
end

function Queue._wake() end

-- ---------------------------------------------------------------------------------
-- delivery: one runner coroutine reused from entry to entry while handlers return
-- without yielding; a handler that yields keeps its runner, which acknowledges the
-- entry once the rest of the handlers returned.

local DONE = {}

local function new_runner(self)
  local st = { detached = false }
  local co = coroutine.create(function(p, a1, a2, entry, part)
    while true do
      local err
      for i = 1, #p do
        local ok, e = xpcall(p[i], traceback, a1, a2)
        if not ok then
          err = tostring(e)
          self._client:_report(errors.new("callback_error", err), self)
        end
        if self._closed or self._client._closed then break end
      end
      if not (self._closed or self._client._closed) then
        -- the first line of the error is what the dead-letter stream keeps
        self._ud:done(part, entry, err and (err:match("^[^\n]*") or err))
      end
      if st.detached then return end
      p, a1, a2, entry, part = yield(DONE)
    end
  end)
  async.adopt(co, self._client)
  return co, st
end

function Queue:_plan(name)
  local p = {}
  local l = self._h[name]
  if l then for i = 1, #l do p[#p + 1] = l[i] end end
  if name ~= "revocation" then
    l = self._h.notification
    if l then for i = 1, #l do p[#p + 1] = l[i] end end
  end
  return p
end

-- from the client's dispatcher: ("queued", type, msg, view, entry, partition) or
-- ("queue_error", err)
function Queue:_dispatch(kind, a, b, c, d, e)
  if kind == "queue_error" then
    local list = self._h.error
    if list and #list > 0 then
      for i = 1, #list do
        local ok, e2 = xpcall(list[i], traceback, a, self)
        if not ok then io.stderr:write("twconduit: error in an error handler: ", tostring(e2), "\n") end
      end
    else
      self._client:_report(a)
    end
    return
  end
  local revocation = b.message_type == "revocation"
  local p = self:_plan(revocation and "revocation" or a)
  if #p == 0 then self._ud:done(e, d) return end
  local co, st = self._idle, self._idle_st
  if co then self._idle = nil else co, st = new_runner(self) end
  local ok, r = resume(co, p, c, b, d, e)
  if ok and r == DONE then
    self._idle, self._idle_st = co, st
  elseif ok then
    st.detached = true -- a handler yielded: this runner finishes the entry later
  else
    async.disown(co)
    self._client:_report(errors.new("callback_error", traceback(co, tostring(r))), self)
  end
end

return Queue
