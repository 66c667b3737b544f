-- bench/queue.lua: the queue end to end, gateway -> Redis -> worker, in one process of
-- role "both" (the emulator and redis-server are processes of their own).
--   throughput: a blast of N events over 200 channels, events/s from the first to the
--               last handled by the worker's handler;
--   latency:    a stream at a fixed 10,000 events/s; added latency = the worker's handler
--               time minus the conduit handler's time for the same message id (the loop's
--               clock, 1 ms resolution);
--   cpu:        over the blast, CPU (user + system, waited-for children included) of the
--               emulator, redis-server and this process, in us per event; Redis's own
--               time per command (INFO commandstats, reset before the blast);
--   floor:      raw pipelined XADDs of bodies of the same size from this process on the
--               queue's own connection, read back in pages of 1000, same run.
--   LUA_PATH="lua/?.lua;lua/?/init.lua;spec/?.lua;;" LUA_CPATH="build/lib/?.so;;" \
--   TWCONDUIT_MOCK=build/bin/twconduit-mock lua5.4 bench/queue.lua [N] [rate]
-- rate 0 skips the latency run; BENCH_NOFLOOR=1 the floor; BENCH_NOAOF=1 turns AOF off;
-- BENCH_APPENDFSYNC=no|everysec|always sets Redis's appendfsync (default everysec).
local twconduit = require "twconduit"
local mock = require "twconduit.mock"
local R = dofile("spec/support/redis.lua")
twconduit.set_log_level(0)
local N = tonumber(arg[1] or "100000")
local RATE = tonumber(arg[2] or "10000")

local function cpu_s(pid)
  local f = io.open(("/proc/%s/stat"):format(pid))
  if not f then return 0 end
  local st = f:read("a")
  f:close()
  local rest = st:match("%) (.*)$")
  local v = {}
  for w in rest:gmatch("%S+") do v[#v + 1] = w end
  -- utime, stime, and the children's (waited for: redis-server's AOF rewrites), in ticks
  return (tonumber(v[12]) + tonumber(v[13]) + tonumber(v[14]) + tonumber(v[15])) / 100
end

local redis = R.start()
if os.getenv("BENCH_NOAOF") then redis:cli("CONFIG", "SET", "appendonly", "no") end
local fsync = os.getenv("BENCH_APPENDFSYNC")
if fsync then redis:cli("CONFIG", "SET", "appendfsync", fsync) end
local m = assert(mock.start {})
local ok, err = pcall(function()
  local c = assert(twconduit.client { client_id = m.client_id, client_secret = m.client_secret,
    api_base = m.api_base, auth_base = m.auth_base, eventsub_ws = m.eventsub_ws })
  local q = assert(c:queue { redis = redis.url, name = "bench", role = "both", ["local"] = true,
    maxlen = 2000000, batch = 1000, max_outstanding = 4000, buffer_max = 1000000 })
  local cd = assert(c:conduit { shards = 4 })
  twconduit.spawn(function()
    assert(cd:wait_ready(15))
    for i = 1, 200 do
      assert(cd:subscribe { type = "stream.online", version = "1",
        condition = { broadcaster_user_id = tostring(3000 + i) } })
    end
    c:stop()
  end)
  c:run()
  local chans = {}
  for i = 1, 200 do chans[i] = tostring(3000 + i) end

  local recv, lat, handled, first = {}, {}, 0, nil
  local last
  local measure = false
  cd:on("stream.online", function(_, msg) if measure then recv[msg.id] = c:now() end end)
  q:on("stream.online", function(_, msg)
    local now = c:now()
    handled = handled + 1
    first = first or now
    last = now
    if measure then
      local t = recv[msg.id]
      if t then lat[#lat + 1] = now - t; recv[msg.id] = nil end
    end
  end)
  local function run_until(pred, timeout)
    local t0 = c:now()
    while not pred() and c:now() - t0 < timeout do c:step(0.05) end
  end

  -- latency at 10,000 events/s (rate 0: skipped)
  measure = true
  local n2 = RATE * 3
  if RATE > 0 then
    assert(m:stream { type = "stream.online", channels = chans, rate = RATE, count = n2 })
    run_until(function() return handled >= n2 end, 60)
    table.sort(lat)
    local function pct(p) return lat[math.max(1, math.ceil(#lat * p))] * 1000 end
    print(("added latency at %d events/s (%d samples, 1 ms clock): p50 %.0f ms, p99 %.0f ms, max %.0f ms")
      :format(RATE, #lat, pct(0.5), pct(0.99), lat[#lat] * 1000))
  end
  -- throughput
  handled, first, last, measure = 0, nil, nil, false
  local procs = { { "emulator", math.tointeger(m.pid) }, { "redis-server", redis.pid }, { "client", "self" } }
  local cpu0 = {}
  for i, p in ipairs(procs) do cpu0[i] = cpu_s(p[2]) end
  redis:cli("CONFIG", "RESETSTAT")
  assert(m:blast { type = "stream.online", channels = chans, count = N // 200 })
  local total = (N // 200) * 200
  run_until(function() return handled >= total end, 120)
  local eps = handled / math.max(last - first, 1e-3)
  -- CPU per event of each process (utime + stime over the blast, settling included) and
  -- Redis's own time per command (INFO commandstats, reset before the blast)
  local cpu_line, sum = {}, 0
  for i, p in ipairs(procs) do
    local us = (cpu_s(p[2]) - cpu0[i]) * 1e6 / handled
    sum = sum + us
    cpu_line[#cpu_line + 1] = ("%s %.1f"):format(p[1], us)
  end
  print(("cpu per event (us): %s; all %.1f"):format(table.concat(cpu_line, ", "), sum))
  local cs = {}
  for name, calls, usec in redis:cli("INFO", "commandstats"):gmatch("cmdstat_(%w+):calls=(%d+),usec=(%d+)") do
    cs[#cs + 1] = ("%s %d calls %.1f us/call %.2f us/event"):format(name, calls, usec / calls, usec / handled)
  end
  table.sort(cs)
  print("redis: " .. table.concat(cs, "; "))
  if os.getenv("BENCH_DIAG") then
    print(("process cpu %.2f s"):format(os.clock()))
    print(redis:cli("INFO", "commandstats"))
    print(redis:cli("INFO", "cpu"))
  end
  print(("end to end: %d events in %.2f s: %.0f events/s (gateway -> Redis -> worker, one process)"):format(
    handled, last - first, eps))

  -- the floor, same process, same link: raw pipelined XADDs of the same bodies (no script,
  -- no de-duplication), then reading them back in pages of 1000 (XREADGROUP-sized)
  if os.getenv("BENCH_NOFLOOR") then c:close() return end
  local body = twconduit.json_encode { subscription = { type = "stream.online", version = "1" },
    event = { broadcaster_user_id = "3001", pad = string.rep("x", 1400) } }
  local nf, answered = 50000, 0
  local t0 = c:now()
  for i = 1, nf do
    assert(q._ud:command({ "XADD", "floor", "*", "id", tostring(i), "b", body },
      function() answered = answered + 1 end))
    if i % 2000 == 0 then c:step(0) end
  end
  run_until(function() return answered >= nf end, 60)
  local from, got = "-", 0
  repeat
    local page = assert(q:command { "XRANGE", "floor", from, "+", "COUNT", "1000" })
    got = got + #page
    if #page > 0 then from = "(" .. page[#page][1] end
  until #page < 1000
  local floor = got / math.max(c:now() - t0, 1e-3)
  print(("floor: %d raw XADDs pipelined and read back from the same process: %.0f events/s; "
    .. "end to end / floor = %.2f"):format(
    got, floor, eps / floor))
  local s = q:stats()
  print(("queue: published %d, acked %d, duplicates %d, dropped %d")
    :format(s.published, s.acked, s.duplicates, s.dropped))
  c:close()
end)
m:stop()
redis:destroy()
if not ok then error(err) end
