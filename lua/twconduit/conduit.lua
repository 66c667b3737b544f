--- twconduit.conduit: a conduit whose shards this process runs over websockets.
-- Fields read live from the C core: id, state, shard_count.
local errors = require "twconduit.errors"
local events = require "twconduit.events"
local Shard = require "twconduit.shard"

local Conduit = { __name = "twconduit.Conduit" }

local getters = {
  id = function(self)
    if self._ud:closed() then return self._id end
    local id = self._ud:id()
    self._id = id or self._id
    return id
  end,
  state = function(self) return self._ud:state() end,
  shard_count = function(self)
    if self._ud:closed() then return self._shard_count or 0 end
    local n = self._ud:shard_count()
    self._shard_count = n
    return n
  end,
  client = function(self) return self._client end,
}

Conduit.__index = events.index(Conduit, getters)
events.methods(Conduit)

local function check_open(self)
  if self._ud:closed() then error("conduit is closed", 3) end
end

function Conduit.wrap(client, ud)
  local self = setmetatable({ _client = client, _ud = ud, _h = {}, _watchers = {} }, Conduit)
  ud:bind(self)
  for _, s in ipairs(ud:shards()) do
    if type(s) == "userdata" then Shard.wrap(client, self, s) end
  end
  return self
end

function Conduit:__tostring()
  return ("twconduit.conduit{id=%q,state=%q}"):format(self.id or "?", self.state)
end

--- The shards run here, in id order.
function Conduit:shards()
  check_open(self)
  local list = self._ud:shards()
  for i, s in ipairs(list) do
    if type(s) == "userdata" then list[i] = Shard.wrap(self._client, self, s) end
  end
  table.sort(list, function(a, b)
    local x, y = tonumber(a.id), tonumber(b.id)
    if x and y then return x < y end
    return tostring(a.id) < tostring(b.id)
  end)
  return list
end

--- The shard with this id, if it runs here.
function Conduit:shard(id)
  if type(id) == "number" then id = tostring(math.tointeger(id) or id) end
  if type(id) ~= "string" then
    errors.argerror(1, "shard", ("string expected, got %s"):format(type(id)))
  end
  check_open(self)
  local s = self._ud:shard(id)
  if type(s) == "userdata" then s = Shard.wrap(self._client, self, s) end
  return s
end

--- Adds n websocket shards with the next free ids, growing the conduit on Twitch when
-- its shard_count is too small. Async: the list of the new shard objects once every one
-- is enabled | nil, err.
function Conduit:add_shards(n, timeout)
  if math.type(n) ~= "integer" or n < 1 then
    errors.argerror(1, "add_shards", "positive integer expected")
  end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    errors.argerror(2, "add_shards", "non-negative number expected")
  end
  if self._ud:closed() then error("conduit is closed", 2) end
  local list, err = self._ud:add_shards(n)
  if not list then return nil, err end
  for i, s in ipairs(list) do
    if type(s) == "userdata" then list[i] = Shard.wrap(self._client, self, s) end
  end
  local before = self._last_error
  return self._client:_wait(function()
    local all = true
    for _, s in ipairs(list) do
      if s._ud:closed() and not s._enabled_once then
        local e = self._last_error
        if e ~= before and errors.is(e) then return nil, e end
        return nil, errors.new("closed", "a new shard was closed before it was enabled")
      end
      if not s._enabled_once then all = false end
    end
    if all then return list end
  end, timeout, self, "the new shards to be enabled")
end

-- the shard-lifecycle verbs the operations build on (private: their public forms,
-- sequenced for zero loss, are conduit operations)
function Conduit:_resize(n) return self._ud:_resize(n) end
function Conduit:_verify() return self._ud:_verify() end
function Conduit:_lost_policy(p) return self._ud:_lost_policy(p) end

-- watchers: internal functions told about every non-notification event
function Conduit:_watch(fn) self._watchers[fn] = true end
function Conduit:_unwatch(fn) self._watchers[fn] = nil end
function Conduit:_wake()
  local list = {}
  for fn in pairs(self._watchers) do list[#list + 1] = fn end
  for _, fn in ipairs(list) do
    local ok, err = pcall(fn)
    if not ok then io.stderr:write("twconduit: ", tostring(err), "\n") end
  end
end

local function state_error(self)
  local e = self._last_error
  if errors.is(e) then return e end
  return errors.new("closed", ("conduit is %s"):format(self.state))
end

--- Waits until every shard run here is enabled. Returns true | nil, err (async).
function Conduit:wait_ready(timeout)
  check_open(self)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    errors.argerror(1, "wait_ready", "non-negative number expected")
  end
  return self._client:_wait(function()
    local st = self.state
    if st == "ready" then return true end
    if st == "failed" or st == "closed" then return nil, state_error(self) end
  end, timeout, self, "the conduit to be ready")
end

--- Waits until the conduit's id is known (it is created asynchronously).
function Conduit:_wait_id(timeout)
  return self._client:_wait(function()
    local id = self.id
    if id then return id end
    local st = self.state
    if st == "failed" or st == "closed" then return nil, state_error(self) end
  end, timeout or self._client._opts.http_timeout * 4, self, "the conduit id")
end

local function same_condition(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do
    if b[k] ~= nil and tostring(b[k]) ~= tostring(v) then return false end
    if b[k] == nil and v ~= "" then return false end
  end
  for k, v in pairs(b) do
    if a[k] == nil and v ~= "" and v ~= require("twconduit.core").null then return false end
  end
  return true
end

--- Subscribes this conduit to an EventSub type. A 409 (already subscribed) resolves to
-- the existing subscription. Returns a subscription object | nil, err (async).
function Conduit:subscribe(spec)
  check_open(self)
  local client = self._client
  client:_check_sub_spec(spec, "subscribe", false)
  local id, err = self:_wait_id()
  if not id then return nil, err end
  local version = spec.version or "1"
  local st = self._state
  local known = st and st:find(spec.type, version, spec.condition)
  if known then return client:_subscription(known, self) end -- remembered: no Create call
  local data
  data, err = client:create_subscription { type = spec.type, version = version,
    condition = spec.condition, transport = { method = "conduit", conduit_id = id } }
  if data then
    if st then st:remember(data) end
    return client:_subscription(data, self)
  end
  if not (errors.is(err) and (err.code == "conflict" or err.status == 409)) then
    return nil, err
  end
  local list, lerr = client:subscriptions { type = spec.type }
  if not list then return nil, lerr end
  local fallback
  for _, s in ipairs(list) do
    if s.version == version and same_condition(spec.condition, s.condition) then
      local t = type(s.transport) == "table" and s.transport or {}
      if t.conduit_id == id then
        if st then st:remember(s) end
        return client:_subscription(s, self)
      end
      fallback = fallback or s
    end
  end
  if fallback then return client:_subscription(fallback, self) end
  return nil, err
end

--- This conduit's subscriptions, as subscription objects (async).
function Conduit:subscriptions()
  check_open(self)
  local id, err = self:_wait_id()
  if not id then return nil, err end
  local list
  list, err = self._client:subscriptions { conduit_id = id }
  if not list then return nil, err end
  local out = {}
  for i, s in ipairs(list) do out[i] = self._client:_subscription(s, self) end
  return out
end

--- Closes the sockets; the conduit stays on Twitch. Idempotent; safe in callbacks.
function Conduit:close()
  if not self._ud:closed() then
    self._id = self.id
    self._ud:close()
  end
end
Conduit.__close = Conduit.close

--- Closes the sockets and deletes the conduit on Twitch (async); also when closed.
function Conduit:delete()
  local id = self.id
  if not id then
    local err
    id, err = self:_wait_id()
    if not id then return nil, err end
  end
  self:close()
  self._client:_forget_conduit(self)
  return self._client:delete_conduit(id)
end

-- the operations, health and policies (operations.lua, health.lua), loaded on first use
local function lazy(mod, name)
  return function(...) return require(mod)[name](...) end
end
for _, k in ipairs { "resize", "remove_shard", "handover", "handover_all", "maintain", "rebalance" } do
  Conduit[k] = lazy("twconduit.operations", k)
end
Conduit.operation = lazy("twconduit.operations", "current")
for _, k in ipairs { "health", "monitor", "unmonitor", "policy" } do Conduit[k] = lazy("twconduit.health", k) end

--- Keeps the conduit's id, range and subscriptions in st (twconduit.state) once known.
function Conduit:_use_state(st)
  self._state = st
  local client = self._client
  require("twconduit.async").spawn(function()
    local id = self:_wait_id()
    if not id then return end
    local ok, err = st:conduit(id, self._open)
    if not ok then client:_report(err, nil, self) end
  end)
end

return Conduit
