--- Conduit operations at scale (not part of the tests): for N shards (default 1,000),
-- handover_all while the emulator streams (duration, events lost per the ledger, Helix
-- calls), and resize small -> N -> small (durations, Helix calls by route).
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/lib/?.so;;" \
--     lua5.4 bench/ops.lua [N] [small] [concurrency]
-- Prints key=value lines. Needs ~2 N file descriptors in this process and the emulator.
local twconduit = require "twconduit"
local mock = require "twconduit.mock"
twconduit.set_log_level(0)

local N = tonumber(arg[1]) or 1000
local SMALL = tonumber(arg[2]) or 100
local CONC = tonumber(arg[3]) or 50
local RATE, NCH = 500, 200

local function put(k, fmt, v) io.write(k, "=", fmt:format(v), "\n"); io.flush() end

local binary
if not os.getenv "TWCONDUIT_MOCK" then
  local f = io.open("build/bin/twconduit-mock", "r")
  if f then f:close(); binary = "build/bin/twconduit-mock" end
end
local m = assert(mock.start { binary = binary, config = { max_shards = 20000 } })
local client = assert(twconduit.client { client_id = m.client_id, client_secret = m.client_secret,
  api_base = m.api_base, auth_base = m.auth_base, eventsub_ws = m.eventsub_ws,
  backoff_min = 0.05, backoff_max = 1, verify_interval = 0 })
client:on("error", function(e) io.stderr:write("error: ", tostring(e), "\n") end)

local function calls()
  local st = assert(m:state())
  local r = {}
  for k, v in pairs(st.helix_calls.by_route or {}) do r[k] = v end
  r.total = st.helix_calls.total
  return r
end
local function diff(a, b, route) return (b[route] or 0) - (a[route] or 0) end

local c = assert(client:conduit { shards = N })
local t0 = client:now()
assert(c:wait_ready(300))
put("bringup_s", "%.2f", client:now() - t0)

local handled, n = {}, 0
c:on("stream.online", function(_, msg) handled[msg.id] = (handled[msg.id] or 0) + 1; n = n + 1 end)
local chans = {}
for i = 1, NCH do chans[i] = tostring(60000 + i) end
local subscribed = 0
for _, ch in ipairs(chans) do
  twconduit.spawn(function()
    assert(c:subscribe { type = "stream.online", condition = { broadcaster_user_id = ch } })
    subscribed = subscribed + 1
  end)
end
while subscribed < NCH do client:step(0.05) end

-- handover_all under a stream
local st = assert(m:stream { type = "stream.online", channels = chans, rate = RATE, count = RATE * 600 })
while n < RATE do client:step(0.05) end
local before = calls()
t0 = client:now()
local ok, err = c:handover_all { concurrency = CONC }
local took = client:now() - t0
assert(ok, tostring(err))
local after = calls()
local n1 = n
while n < n1 + RATE do client:step(0.05) end
assert(m:stop_stream(st.stream_id))
local l
repeat
  client:step(0.2)
  l = assert(m:ledger())
  local delivered = 0
  for _, e in ipairs(l.entries) do if e.status == "delivered" then delivered = delivered + 1 end end
until l.pending == 0 and n >= delivered
local missing, doubled = 0, 0
for _, e in ipairs(l.entries) do
  if e.status == "delivered" and e.message_type == "notification" then
    local h = handled[e.message_id]
    if not h then missing = missing + 1 elseif h > 1 then doubled = doubled + 1 end
  end
end
put("handover_all_shards", "%d", N)
put("handover_all_concurrency", "%d", CONC)
put("handover_all_s", "%.2f", took)
put("handover_all_patch_calls", "%d", diff(before, after, "PATCH /eventsub/conduits/shards"))
put("handover_all_events", "%d", n)
put("handover_all_dropped", "%d", l.dropped)
put("handover_all_unhandled", "%d", missing)
put("handover_all_doubled", "%d", doubled)

-- one handover, each method, 10 times: mean duration and Helix calls per handover
for _, method in ipairs { "direct", "spare" } do
  local b = calls()
  local t = client:now()
  for i = 1, 10 do assert(c:handover(tostring(i), { method = method })) end
  local a = calls()
  put(("handover_%s_mean_ms"):format(method), "%.1f", (client:now() - t) * 100)
  put(("handover_%s_helix_calls"):format(method), "%.1f", (a.total - b.total) / 10)
end

-- resize N -> SMALL -> N -> SMALL (from N down first: the conduit is at N now)
local function timed_resize(k)
  local b = calls()
  local t = client:now()
  assert(c:resize(k))
  local d = client:now() - t
  local a = calls()
  put(("resize_to_%d_s"):format(k), "%.2f", d)
  put(("resize_to_%d_update_conduits"):format(k), "%d", diff(b, a, "PATCH /eventsub/conduits"))
  put(("resize_to_%d_update_shards"):format(k), "%d", diff(b, a, "PATCH /eventsub/conduits/shards"))
  put(("resize_to_%d_get_shards"):format(k), "%d", diff(b, a, "GET /eventsub/conduits/shards"))
  put(("resize_to_%d_helix_calls"):format(k), "%d", a.total - b.total)
end
timed_resize(SMALL)
timed_resize(N)
timed_resize(SMALL)
client:close()
m:stop()
