-- An example bot.
--
-- With TWITCH_CLIENT_ID and TWITCH_CLIENT_SECRET set it runs against Twitch (optional:
-- TWITCH_CONDUIT_ID to reuse a conduit, TWITCH_BROADCASTER_ID to pick the channel) and
-- prints events until interrupted. Otherwise it starts the bundled emulator, opens a
-- conduit of 4 shards, subscribes to channel.chat.message and stream.online for a few
-- channels, triggers events, prints each one, and exits 0 once all arrived (1 on timeout).
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/lib/?.so;;" lua5.4 examples/bot.lua
--
-- Split over Redis (README "Deployment"): `--gateway [redis-url]` runs the conduit and
-- publishes every event to the queue (exits once the triggered events are stored);
-- `--worker [redis-url]` runs the handlers from the queue until interrupted.
-- With --status-port N it also serves Prometheus metrics (/metrics), the status JSON
-- (/status) and the live status page (/) on 127.0.0.1:N, and runs until interrupted
-- (against the emulator: a few events a second).
local twconduit = require "twconduit"
twconduit.set_log_level(0) -- libwebsockets: errors only

local role = (arg[1] == "--gateway" or arg[1] == "--worker") and arg[1]:sub(3) or nil
local redis_url = role and (arg[2] or "redis://127.0.0.1:6379")
if role == "worker" then -- no conduit, no Twitch credentials: the queue's handlers only
  local client = assert(twconduit.client {})
  local q = assert(client:queue { redis = redis_url, name = "example-bot", role = "worker" })
  q:on("notification", function(event, msg)
    print(("[queue, from %s] %s %s %s"):format(msg.origin, msg.type, msg.id, event.broadcaster_user_login))
  end)
  client:run()
  os.exit(0)
end

local client_id = os.getenv "TWITCH_CLIENT_ID"
local client_secret = os.getenv "TWITCH_CLIENT_SECRET"
local live = client_id and client_secret and client_id ~= "" and client_secret ~= ""

local emulator
local opts
if live then
  opts = { client_id = client_id, client_secret = client_secret }
else
  local mock = require "twconduit.mock"
  local err
  -- the emulator binary: $TWCONDUIT_MOCK, $PATH, or the build tree
  local binary
  if not os.getenv "TWCONDUIT_MOCK" then
    local f = io.open("build/bin/twconduit-mock", "r")
    if f then f:close(); binary = "build/bin/twconduit-mock" end
  end
  emulator, err = mock.start { binary = binary }
  if not emulator then
    io.stderr:write("cannot start the emulator: ", tostring(err), "\n")
    os.exit(1)
  end
  opts = { client_id = emulator.client_id, client_secret = emulator.client_secret,
    api_base = emulator.api_base, auth_base = emulator.auth_base,
    eventsub_ws = emulator.eventsub_ws }
end

local function finish(code)
  if emulator then emulator:stop() end
  os.exit(code)
end

local client = assert(twconduit.client(opts))
client:on("error", function(err) io.stderr:write("error: ", tostring(err), "\n") end)

local queue = role and assert(client:queue { redis = redis_url, name = "example-bot", role = "gateway" })
local status_port
for i = 1, #arg do
  if arg[i] == "--status-port" then status_port = assert(math.tointeger(tonumber(arg[i + 1])),
    "--status-port N") end
end
if status_port then
  local srv = assert(client:serve_metrics { port = status_port, subscriptions_interval = 5 })
  print(("status page %s/  metrics %s/metrics"):format(srv.url, srv.url))
  io.stdout:flush()
end

local conduit = assert(client:conduit { id = os.getenv "TWITCH_CONDUIT_ID", shards = 4 })
conduit:on("shard_disabled", function(shard, status)
  print(("shard %s disabled (%s)"):format(shard.id, tostring(status)))
end)

-- reconciliation progress: one line rewritten in place on a terminal, a line per phase otherwise
local tty = os.getenv "TERM" and os.getenv "TERM" ~= "dumb"
local last_phase
conduit:on("reconcile", function(st)
  local line = ("subscriptions: %-8s %d/%d, %d calls%s%s"):format(st.phase, st.done, st.total, st.calls,
    st.eta and st.eta > 0 and (", eta %ds"):format(math.ceil(st.eta)) or "",
    #st.errors > 0 and (", %d error(s)"):format(#st.errors) or "")
  if tty then
    io.write("\r", line, "\27[K", st.phase == "done" and "\n" or "")
    io.flush()
  elseif st.phase ~= last_phase then
    print(line)
  end
  last_phase = st.phase
end)

local handled = 0
conduit:on("channel.chat.message", function(event, msg)
  handled = handled + 1
  print(("[shard %s] #%s <%s> %s"):format(msg.shard.id, event.broadcaster_user_login,
    event.chatter_user_login, event.message.text))
end)
conduit:on("stream.online", function(event, msg)
  -- handlers may call async functions: count the app's stream.online subscriptions
  local subs = client:subscriptions { type = "stream.online" }
  handled = handled + 1
  print(("[shard %s] %s went live (%s; %s subscription(s))"):format(msg.shard.id,
    event.broadcaster_user_login, event.type, subs and #subs or "?"))
end)

local channels = live and { os.getenv "TWITCH_BROADCASTER_ID" } or { "1001", "1002", "1003" }
local expected, timed_out = nil, false

twconduit.spawn(function()
  local ok, err = conduit:wait_ready(30)
  if not ok then
    io.stderr:write("conduit not ready: ", tostring(err), "\n")
    timed_out = true
    return client:stop()
  end
  print(("conduit %s ready with %d shards"):format(conduit.id, #conduit:shards()))
  -- the subscriptions the bot wants; the reconciler creates what is missing
  local want = {}
  for _, ch in ipairs(channels) do
    want[#want + 1] = { type = "channel.chat.message", version = "1",
      condition = { broadcaster_user_id = ch, user_id = live and ch or "1" } }
    want[#want + 1] = { type = "stream.online", version = "1", condition = { broadcaster_user_id = ch } }
  end
  conduit:want(want)
  assert(conduit:reconcile_wait(60))
  if live then return end
  local a = assert(emulator:trigger { type = "channel.chat.message", channels = channels, count = 5 })
  local b = assert(emulator:trigger { type = "stream.online", channels = channels, count = 1 })
  expected = a.produced + b.produced
  -- stop when everything arrived, or after 20 s
  local waited = 0
  if queue then handled = nil end -- the workers handle them: wait until they are stored
  while (handled or queue:stats().published + queue:stats().duplicates) < expected and waited < 20 do
    twconduit.sleep(client, 0.1)
    waited = waited + 0.1
  end
  handled = handled or queue:stats().published + queue:stats().duplicates
  timed_out = handled < expected
  while status_port do -- keep the page lively until interrupted
    emulator:trigger { type = "channel.chat.message", channels = channels, count = math.random(1, 4) }
    twconduit.sleep(client, 0.5)
  end
  client:stop()
end)

client:run()
if live then
  client:close()
  finish(0)
end
print(("summary: %d of %d events handled; %d notifications, %d duplicates dropped"):format(
  handled, expected or 0, client:stats().notifications, client:stats().duplicates))
client:close()
finish(timed_out and 1 or 0)
