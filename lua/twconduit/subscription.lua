--- twconduit.subscription: an EventSub subscription known to this client.
-- Fields: id, type, version, condition, status, cost, created_at, transport.
local events = require "twconduit.events"

local Subscription = { __name = "twconduit.Subscription" }
Subscription.__index = Subscription

local FIELDS = { "id", "type", "version", "condition", "status", "cost", "created_at", "transport" }

function Subscription.new(client, data, conduit)
  local self = setmetatable({ _client = client, _conduit = conduit, _h = {} }, Subscription)
  self:_update(data)
  return self
end

function Subscription:_update(data)
  for _, k in ipairs(FIELDS) do
    if data[k] ~= nil then self[k] = data[k] end
  end
end

function Subscription:__tostring()
  return ("twconduit.subscription{id=%q,type=%q,status=%q}"):format(
    tostring(self.id), tostring(self.type), tostring(self.status))
end

local ALLOWED = { revocation = true, error = true }

--- Handlers: "revocation" fn(sub, status), "error" fn(err, sub).
events.methods(Subscription, ALLOWED)

--- Deletes the subscription on Twitch (async). Returns true | nil, err.
function Subscription:delete()
  if self._session then return self._session:_delete(self) end -- made with a user token
  local ok, err = self._client:delete_subscription(self.id)
  if ok then
    self.status = "deleted"
    local st = self._conduit and self._conduit._state
    if st then st:forget(self.id) end -- a restart must not answer with it
  end
  return ok, err
end

return Subscription
