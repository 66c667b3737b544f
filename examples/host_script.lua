-- The Lua side of examples/host.c: sets up a client against the bundled emulator and
-- hands it to the C host, which drives it from its own poll loop.
local twconduit = require "twconduit"
twconduit.set_log_level(0) -- libwebsockets: errors only
local mock = require "twconduit.mock"

local m = mock.start {}
local client = twconduit.client {
  client_id = m.client_id, client_secret = m.client_secret,
  api_base = m.api_base, auth_base = m.auth_base, eventsub_ws = m.eventsub_ws,
}
local conduit = client:conduit { shards = 2 }
assert(conduit:wait_ready(10))          -- the loop is not running yet: this steps it
local channels = { "2001", "2002", "2003" }
for _, ch in ipairs(channels) do
  assert(conduit:subscribe { type = "stream.online", version = "1",
                             condition = { broadcaster_user_id = ch } })
end

local got = 0
conduit:on("stream.online", function(event, msg)
  got = got + 1
  print(("host_script: %s went live (message %s on shard %s)"):format(
    event.broadcaster_user_login, msg.id, msg.shard.id))
end)
local want = m:trigger { type = "stream.online", channels = channels, count = 2 }.produced

return {
  client = client,
  done = function() return got >= want end,
  finish = function()
    print(("host_script: %d of %d events handled"):format(got, want))
    client:close()
    m:stop()
  end,
}
