--- twconduit.shard: one websocket shard of a conduit run by this process.
-- Fields read live: id, state, status, session_id; conduit.
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

return Shard
