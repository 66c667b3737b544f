-- A bot process for the restart spec: opens its conduit with a state file, subscribes
-- (remembered subscriptions make no Create call), rebalances, logs every message id it
-- handles (flushed at once: it is killed with SIGKILL) and writes a ready file with its
-- conduit id and sessions.
--   lua5.4 restart_child.lua <state> <log> <ready> <nchannels>   (TWR_* name the emulator)
local twconduit = require "twconduit"
local state, logpath, readypath, nch = arg[1], arg[2], arg[3], tonumber(arg[4])
local client = assert(twconduit.client {
  client_id = os.getenv("TWR_CLIENT_ID"), client_secret = os.getenv("TWR_CLIENT_SECRET"),
  api_base = os.getenv("TWR_API_BASE"), auth_base = os.getenv("TWR_AUTH_BASE"),
  eventsub_ws = os.getenv("TWR_EVENTSUB_WS"), backoff_min = 0.05, backoff_max = 0.5,
})
twconduit.set_log_level(0)
local c = assert(client:conduit { shards = 2, state = state })
local log = assert(io.open(logpath, "a"))
c:on("stream.online", function(_, msg)
  log:write(msg.id, "\n")
  log:flush()
end)
twconduit.spawn(function()
  assert(c:wait_ready(20))
  local done = 0
  for i = 1, nch do
    twconduit.spawn(function()
      assert(c:subscribe { type = "stream.online", condition = { broadcaster_user_id = tostring(9000 + i) } })
      done = done + 1
    end)
  end
  while done < nch do client:sleep(0.02) end
  assert(c:rebalance())
  local f = assert(io.open(readypath .. ".tmp", "w"))
  f:write(c.id, "\n")
  for _, s in ipairs(c:shards()) do f:write(s.session_id, "\n") end
  f:close()
  os.rename(readypath .. ".tmp", readypath)
end)
client:run()
