--- twconduit: Twitch EventSub conduits for Lua.
-- See docs/api.md for the whole API.
local core = require "twconduit.core"
local errors = require "twconduit.errors"
local async = require "twconduit.async"
local Client = require "twconduit.client"
local Conduit = require "twconduit.conduit"
local Shard = require "twconduit.shard"
local Subscription = require "twconduit.subscription"
local WSession = require("twconduit.wsession").WSession
require "twconduit.webhook" -- webhook servers, shards, subscriptions (adds methods)
-- client:serve_metrics (/metrics, /status, the status page) loads twconduit.metrics on first use
function Client.serve_metrics(...)
  require "twconduit.metrics" -- replaces this function
  return Client.serve_metrics(...)
end

local M = {
  VERSION = core.VERSION,
  null = core.null,
  totable = core.totable,
  isview = core.isview,
  json_decode = core.json_decode,
  json_encode = core.json_encode,
  Error = errors.mt,
  error = errors.new,
  spawn = async.spawn,
  defaults = core.defaults,
}

--- Creates a client (see docs/api.md for the options). Returns client | nil, err.
function M.client(opts)
  return Client.new(opts)
end

--- Waits `seconds` on the client's loop (async: yields inside spawn).
function M.sleep(client, seconds)
  if getmetatable(client) ~= Client then
    errors.argerror(1, "sleep", ("twconduit.client expected, got %s"):format(type(client)))
  end
  return client:sleep(seconds)
end

--- "client", "conduit", "shard", "subscription", "message", "view", "error" (each
-- prefixed with "closed " when closed), or nil.
function M.type(v)
  local mt = getmetatable(v)
  if mt == Client then return v._closed and "closed client" or "client" end
  if mt == Conduit then return v._ud:closed() and "closed conduit" or "conduit" end
  if mt == Shard then return v._ud:closed() and "closed shard" or "shard" end
  if mt == Subscription then return "subscription" end
  if mt == WSession then return v._ud:closed() and "closed websocket_session" or "websocket_session" end
  if mt == errors.mt then return "error" end
  if core.isview(v) then return "view" end
  if type(v) == "userdata" and mt and mt.__name == "twconduit.message" then return "message" end
  return nil
end

--- lws logging (process-wide): 0 errors, 1 + warnings, 2 + notices.
M.set_log_level = core.set_log_level

return M
