-- A worker process for spec/queue_spec.lua: reads the queue, records each handled message
-- id in Redis (SADD <name>:handled, INCR <name>:handled_count) from inside its handler
-- (an async call: the handler yields, so the entry is acknowledged after it returned).
-- Messages of channel "poison" raise every time. Prints "ready" once connected.
-- args: redis_url name consumer claim_idle
local twconduit = require "twconduit"
local url, name, consumer, claim_idle = arg[1], arg[2], arg[3], tonumber(arg[4] or "1")
twconduit.set_log_level(0)
local client = assert(twconduit.client {}) -- a worker needs no Twitch credentials
local q = assert(client:queue { redis = url, name = name, role = "worker", consumer = consumer,
  claim_idle = claim_idle, max_deliveries = 3 })
local function handle(ev, msg)
  if ev.broadcaster_user_id == "666" then error("poison message " .. msg.id) end
  assert(msg.transport == "queue" and msg.origin == "websocket")
  local r, err = q:command { "SADD", name .. ":handled", msg.id }
  if not r then error("SADD failed: " .. tostring(err)) end
  q:command { "INCR", name .. ":handled_count" }
end
q:on("stream.online", handle)
q:on("error", function() end)
client:on("error", function() end)
twconduit.spawn(function()
  assert(q:wait_up(10))
  io.stdout:write("ready\n")
  io.stdout:flush()
end)
client:run()
