-- A bot that scales its conduit with the autoscale policy and prints its health once a
-- second.
--
-- With TWITCH_CLIENT_ID and TWITCH_CLIENT_SECRET set it runs against Twitch (optional:
-- TWITCH_CONDUIT_ID, TWITCH_STATE = a state file to restart without recreating anything)
-- with the policy's production settings, until interrupted. Otherwise it starts the
-- bundled emulator, subscribes to stream.online on 100 channels, streams a rising then
-- falling event rate, and exits 0 once the conduit has scaled up and back down to one
-- shard (1 on timeout). Demo settings: a target of 100 events/s per shard, decisions after
-- 1 s, a 3 s cool-down (the defaults are 500/s, 30 s and 5 minutes).
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/lib/?.so;;" lua5.4 examples/autoscale_bot.lua
local twconduit = require "twconduit"
local autoscale = require "twconduit.policies.autoscale"
local keep_healthy = require "twconduit.policies.keep_healthy"
twconduit.set_log_level(0)

local client_id, client_secret = os.getenv "TWITCH_CLIENT_ID", os.getenv "TWITCH_CLIENT_SECRET"
local live = client_id and client_secret and client_id ~= "" and client_secret ~= ""

local emulator, opts
if live then
  opts = { client_id = client_id, client_secret = client_secret }
else
  local binary
  if not os.getenv "TWCONDUIT_MOCK" then
    local f = io.open("build/bin/twconduit-mock", "r")
    if f then f:close(); binary = "build/bin/twconduit-mock" end
  end
  local err
  emulator, err = require("twconduit.mock").start { binary = binary }
  if not emulator then
    io.stderr:write("cannot start the emulator: ", tostring(err), "\n")
    os.exit(1)
  end
  opts = { client_id = emulator.client_id, client_secret = emulator.client_secret,
    api_base = emulator.api_base, auth_base = emulator.auth_base, eventsub_ws = emulator.eventsub_ws }
end

local client = assert(twconduit.client(opts))
client:on("error", function(err) io.stderr:write("error: ", tostring(err), "\n") end)
local conduit = assert(client:conduit { id = os.getenv "TWITCH_CONDUIT_ID", shards = 1,
  state = os.getenv "TWITCH_STATE" })

local handled = 0
conduit:on("stream.online", function() handled = handled + 1 end)
conduit:on("operation", function(op)
  if op.phase ~= "step" then print(("operation %s %s%s"):format(op.name, op.phase,
    op.phase == "failed" and (": " .. tostring(op.error)) or "")) end
end)
conduit:on("alert", function(a) print("ALERT " .. a.message) end)

-- A policy written by a user: repairs first (keep_healthy), else the autoscale decision.
local scaler = live and autoscale { target = 500 }
  or autoscale { target = 100, sustain = 1, cooldown = 3, max = 8 }
local healthy = keep_healthy()
local function policy(snap)
  return healthy:tick(snap) or scaler:tick(snap)
end
conduit:monitor { window = live and 60 or 2, poll = live and 30 or 5 }
conduit:policy(policy, { interval = 1, cooldown = live and 300 or 3 })

local function report()
  local h = conduit:health()
  local parts = {}
  for _, s in ipairs(h.shards) do
    parts[#parts + 1] = ("%s:%s %.0f/s p99=%s"):format(s.id, s.status, s.rate,
      s.lag.p99 and ("%.0fms"):format(s.lag.p99 * 1000) or "-")
  end
  print(("health %s: %d shard(s), %.0f events/s [%s]"):format(h.status, #h.shards, h.rate,
    table.concat(parts, " ")))
end

local ok_exit = false
twconduit.spawn(function()
  assert(conduit:wait_ready(30))
  local chans = {}
  for i = 1, 100 do chans[i] = tostring(40000 + i) end
  local n = 0
  for _, ch in ipairs(chans) do
    twconduit.spawn(function()
      assert(conduit:subscribe { type = "stream.online", condition = { broadcaster_user_id = ch } })
      n = n + 1
    end)
  end
  while n < #chans do client:sleep(0.05) end
  print(("conduit %s ready, %d subscriptions"):format(conduit.id, n))
  if live then
    while true do report(); client:sleep(1) end
  end
  local grown, started = false, client:now()
  local st = assert(emulator:stream { type = "stream.online", channels = chans, rate = 300,
    count = 300 * 60 })
  while client:now() - started < 18 do
    report()
    client:sleep(1)
    if not grown and conduit.shard_count > 1 and not conduit:operation() then
      grown = true
      assert(emulator:stop_stream(st.stream_id))
      st = assert(emulator:stream { type = "stream.online", channels = chans, rate = 20, count = 20 * 60 })
    elseif grown and conduit.shard_count == 1 and not conduit:operation() then
      ok_exit = true
      break
    end
  end
  report()
  print(("%d events handled; scaled %s"):format(handled, ok_exit and "up and back down" or "incompletely"))
  client:stop()
end)

client:run()
client:close()
if emulator then emulator:stop() end
os.exit(ok_exit and 0 or 1)
