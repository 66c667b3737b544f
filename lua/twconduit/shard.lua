--- twconduit.shard: one websocket shard of a conduit run by this process.
-- Fields read live: id, state, status, session_id; conduit.
local errors = require "twconduit.errors"
local events = require "twconduit.events"

local Shard = { __name = "twconduit.Shard" }

local getters = {
  state = function(self) return self._ud:state() end,
  status = function(self)
    if self._ud:closed() then return self._status end
    self._status = self._ud:status()
    return self._status
  end,
  session_id = function(self)
    if self._ud:closed() then return nil end
    return self._ud:session_id()
  end,
  conduit = function(self) return self._conduit end,
  client = function(self) return self._client end,
}

Shard.__index = events.index(Shard, getters)
events.methods(Shard)

function Shard.wrap(client, conduit, ud)
  local existing = ud:bound()
  if existing then return existing end
  local self = setmetatable({ _client = client, _conduit = conduit, _ud = ud, _h = {},
    id = ud:id() }, Shard)
  ud:bind(self)
  return self
end

function Shard:__tostring()
  return ("twconduit.shard{id=%q,state=%q}"):format(self.id or "?", self.state)
end

--- Counters of this shard (see docs/api.md).
function Shard:stats()
  if self._ud:closed() then error("shard is closed", 2) end
  return self._ud:stats()
end

--- Drops the socket and connects again at once. Returns true | nil, err.
function Shard:reconnect()
  if self._ud:closed() then error("shard is closed", 2) end
  return self._ud:reconnect()
end

--- Closes the shard's socket with a close handshake and never reconnects it; the
-- shard is removed from its conduit. Twitch keeps it pointing at the closed session.
-- Async: true once the socket closed | nil, err.
function Shard:release(timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    errors.argerror(1, "release", "non-negative number expected")
  end
  if self._ud:closed() then error("shard is closed", 2) end
  local ok, err = self._ud:release()
  if not ok then return nil, err end
  return self._client:_wait(function()
    if self._released or self._ud:closed() then return true end
  end, timeout, self._conduit, "the shard to be released")
end

-- private verbs (see Conduit:_resize)
function Shard:_point_at(target) return self._ud:_point_at(target._ud) end
function Shard:_handover() return self._ud:_handover() end
function Shard:_hold(on) return self._ud:_hold(on) end
function Shard:_held() return self._ud:_held() end
function Shard:_transport() return self._ud:_transport() end
function Shard:_renumber(id) return self._ud:_renumber(id) end

return Shard
