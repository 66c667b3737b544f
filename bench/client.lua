--- The Lua side of the benchmarks, one scenario per process so os.clock (user + system
-- CPU of this process) and VmRSS see only the client. The emulator runs in its own
-- process, started by bench/run.lua, its addresses in TWB_* variables. Prints
-- "key=value" lines.
--
--   lua5.4 bench/client.lua pipeline <shards> <notifications> [bot]
--     bot: a chat bot's handler on a varied load (bench/fixtures/chat_variants.json)
--   lua5.4 bench/client.lua shards <shards> <idle_seconds>
--   lua5.4 bench/client.lua subs <subscriptions>
local twconduit = require "twconduit"
local core = require "twconduit.core"

local E = {}
for k, v in pairs { api = "TWB_API_BASE", auth = "TWB_AUTH_BASE", ws = "TWB_EVENTSUB_WS",
  control = "TWB_CONTROL", client_id = "TWB_CLIENT_ID", client_secret = "TWB_CLIENT_SECRET" } do
  E[k] = os.getenv(v) or error(v .. " is not set (bench/run.lua sets it)")
end

local NCHAN, CHAN0 = 64, 30000

local function put(k, fmt, v)
  io.write(k, "=", string.format(fmt, v), "\n")
  io.flush()
end

local function rss_kb()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

local function control(method, path, body)
  local status, text, err = core.http_sync(method, E.control .. path,
    body and core.json_encode(body) or nil, 60)
  if not status or status >= 300 then
    error(("control %s %s: %s %s"):format(method, path, tostring(status), tostring(text or err)))
  end
  return text ~= "" and core.json_decode(text) or {}
end

local function helix_calls()
  local st = control("GET", "/state")
  local by = st.helix_calls.by_route or {}
  return st.helix_calls.total, by["PATCH /eventsub/conduits/shards"] or 0
end

local function channels()
  local t = {}
  for i = 0, NCHAN - 1 do t[#t + 1] = tostring(CHAN0 + i) end
  return t
end

local function new_client()
  local client = assert(twconduit.client {
    client_id = E.client_id, client_secret = E.client_secret,
    api_base = E.api, auth_base = E.auth, eventsub_ws = E.ws,
  })
  client:on("error", function(err) io.stderr:write("client.lua: error ", tostring(err), "\n") end)
  return client
end

local function open(client, shards, timeout)
  local conduit = assert(client:conduit { shards = shards })
  assert(conduit:wait_ready(timeout))
  return conduit
end

local function subscribe_chat(conduit)
  for i = 0, NCHAN - 1 do
    assert(conduit:subscribe { type = "channel.chat.message", version = "1",
      condition = { broadcaster_user_id = tostring(CHAN0 + i), user_id = "1" } })
  end
end

local mode = arg[1]

if mode == "pipeline" then
  local shards, total = math.tointeger(tonumber(arg[2] or 1)), math.tointeger(tonumber(arg[3] or 1000000))
  local bot = arg[4] == "bot"
  local client = new_client()
  local conduit = open(client, shards, 60)
  subscribe_chat(conduit)
  client:sleep(0.1)
  local n, target = 0, math.huge
  local text, login, id, chars = nil, nil, nil, 0
  local variants, bot_counts
  if bot then
    -- what chat bots do: text length, every fragment's type, badges, chatter, reply
    local f = assert(io.open("bench/fixtures/chat_variants.json"))
    variants = core.json_decode(f:read("a"))
    f:close()
    local null = twconduit.null
    local mentions, emotes, badges, replies = 0, 0, 0, 0
    conduit:on("channel.chat.message", function(event)
      local m = event.message
      chars = chars + #m.text
      local frags = m.fragments
      for i = 1, #frags do
        local t = frags[i].type
        if t == "mention" then mentions = mentions + 1 elseif t == "emote" then emotes = emotes + 1 end
      end
      badges = badges + #event.badges
      login = event.chatter_user_login
      chars = chars + #login
      if event.reply ~= null then replies = replies + 1 end
      n = n + 1
      if n >= target then client:stop() end
    end)
    bot_counts = function() return mentions, emotes, badges, replies end
  else
    -- the issue's handler: reads event.message.text, event.chatter_user_login, msg.id
    conduit:on("channel.chat.message", function(event, msg)
      text = event.message.text
      login = event.chatter_user_login
      id = msg.id
      chars = chars + #text + #login + #id
      n = n + 1
      if n >= target then client:stop() end
    end)
  end
  local deadline = false
  twconduit.spawn(function()
    client:sleep(120)
    deadline = true
    client:stop()
  end)
  collectgarbage()
  local cpu0, t0 = os.clock(), client:now()
  local r = control("POST", "/blast", { type = "channel.chat.message", channels = channels(),
    count = total // (NCHAN * (variants and #variants or 1)), variants = variants })
  target = math.tointeger(r.total)
  if n < target then client:run() end
  local t1, cpu1 = client:now(), os.clock()
  if deadline then io.stderr:write(("client.lua: deadline passed at %d of %d\n"):format(n, target)) end
  put("shards", "%d", shards)
  put("produced", "%d", target)
  put("handled", "%d", n)
  put("wall_s", "%.4f", t1 - t0)
  put("cpu_s", "%.4f", cpu1 - cpu0)
  put("cpu_us_per_notification", "%.4f", n > 0 and (cpu1 - cpu0) * 1e6 / n or -1)
  put("notifications_per_s", "%.0f", n / (t1 - t0))
  put("chars_read", "%d", chars)
  if bot then
    local mentions, emotes, badges, replies = bot_counts()
    put("mentions", "%d", mentions)
    put("emotes", "%d", emotes)
    put("badges", "%d", badges)
    put("replies", "%d", replies)
  end
  local b = control("GET", "/blast/" .. r.blast_id)
  put("emulator_rate", "%.0f", b.rate)
  put("emulator_seconds", "%.4f", b.seconds)
  put("rss_kb", "%d", rss_kb())
  os.exit(n == target and 0 or 2, false)
elseif mode == "shards" then
  local shards, idle = math.tointeger(tonumber(arg[2] or 1000)), tonumber(arg[3] or 0)
  local client = new_client()
  local calls0, patches0 = helix_calls()
  collectgarbage()
  collectgarbage()
  local rss0 = rss_kb()
  local t0 = client:now()
  local conduit = open(client, shards, shards > 2000 and 300 or 60)
  local t1 = client:now()
  local calls1, patches1 = helix_calls()
  client:sleep(1)
  collectgarbage()
  collectgarbage()
  local rss1 = rss_kb()
  put("shards", "%d", shards)
  put("bringup_s", "%.4f", t1 - t0)
  put("helix_calls", "%d", calls1 - calls0)
  put("patch_calls", "%d", patches1 - patches0)
  put("rss_before_kb", "%d", rss0)
  put("rss_after_kb", "%d", rss1)
  put("rss_per_shard_kb", "%.3f", (rss1 - rss0) / shards)
  put("lua_heap_kb", "%.1f", collectgarbage("count"))
  if idle > 0 then
    local disabled = 0
    conduit:on("shard_disabled", function() disabled = disabled + 1 end)
    local w0, cpu0 = client:now(), os.clock()
    client:sleep(idle)
    local w1, cpu1 = client:now(), os.clock()
    put("idle_wall_s", "%.3f", w1 - w0)
    put("idle_cpu_s", "%.4f", cpu1 - cpu0)
    put("idle_cpu_pct", "%.4f", (cpu1 - cpu0) * 100 / (w1 - w0))
    put("idle_disabled", "%d", disabled)
    put("rss_after_idle_kb", "%d", rss_kb())
  end
  os.exit(0, false)
elseif mode == "subs" then
  local nsubs = math.tointeger(tonumber(arg[2] or 1000))
  local client = new_client()
  local conduit = open(client, 1, 60)
  -- one warm-up subscription so first-use allocations are not counted
  local subs = { assert(conduit:subscribe { type = "stream.online", version = "1",
    condition = { broadcaster_user_id = "49999" } }) }
  collectgarbage()
  collectgarbage()
  local rss0, heap0 = rss_kb(), collectgarbage("count")
  local t0 = client:now()
  for i = 1, nsubs do
    subs[#subs + 1] = assert(conduit:subscribe { type = "stream.online", version = "1",
      condition = { broadcaster_user_id = tostring(50000 + i) } })
  end
  local t1 = client:now()
  collectgarbage()
  collectgarbage()
  local rss1, heap1 = rss_kb(), collectgarbage("count")
  put("subscriptions", "%d", #subs - 1)
  put("subscribe_s", "%.4f", t1 - t0)
  put("rss_before_kb", "%d", rss0)
  put("rss_after_kb", "%d", rss1)
  put("rss_per_1000_subs_kb", "%.3f", (rss1 - rss0) * 1000 / nsubs)
  put("lua_heap_per_1000_subs_kb", "%.3f", (heap1 - heap0) * 1000 / nsubs)
  os.exit(0, false)
else
  io.stderr:write("usage: client.lua pipeline|shards|subs ...\n")
  os.exit(64)
end
