--- The benchmark runner: starts a fresh emulator for every measured run, runs each
-- client in its own process (bench/twbench for C, bench/client.lua for Lua), takes
-- the median of the runs with min and max, prints one table and writes
-- bench/results/latest.json.
--
--   lua5.4 bench/run.lua [--quick] [--only name,name] [--runs N] [--out file.json]
-- Environment: BUILD (default build), BENCH_QUICK=1 (same as --quick), LUA (lua5.4),
-- TWCONDUIT_MOCK (the emulator binary), LUA_PATH/LUA_CPATH for the Lua clients.
-- Only plain Lua here: the runner works even when the Lua module does not load.
-- luacheck: no max line length

local BUILD = os.getenv("BUILD") or "build"
local LUA = os.getenv("LUA") or "lua5.4"
local MOCK = os.getenv("TWCONDUIT_MOCK") or (BUILD .. "/bin/twconduit-mock")
local TWBENCH = BUILD .. "/bench/twbench"

local opts = { quick = (os.getenv("BENCH_QUICK") or "") ~= "" and os.getenv("BENCH_QUICK") ~= "0",
  out = "bench/results/latest.json" }
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    if a == "--quick" then opts.quick = true
    elseif a == "--only" then i = i + 1; opts.only = {}
      for n in arg[i]:gmatch("[^,]+") do opts.only[n] = true end
    elseif a == "--runs" then i = i + 1; opts.runs = tonumber(arg[i])
    elseif a == "--out" then i = i + 1; opts.out = arg[i]
    else io.stderr:write("run.lua: unknown argument ", a, "\n"); os.exit(64) end
    i = i + 1
  end
end

local QUICK = opts.quick
local RUNS = opts.runs or (QUICK and 1 or 5)
local NOTIFS = QUICK and 200000 or 1000000
local IDLE_S = QUICK and 10 or 60
local TMP = os.getenv("TMPDIR") or "/tmp"
local WORK = ("%s/twconduit-bench-%d"):format(TMP, math.random(1, 1 << 30))
os.execute("mkdir -p " .. WORK)
local LOG = WORK .. "/stderr.log"

local function sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function write_file(p, s)
  local f = assert(io.open(p, "w"))
  f:write(s)
  f:close()
end

local function capture(cmd)
  local f = io.popen(cmd, "r")
  local s = f:read("a")
  f:close()
  return (s:gsub("%s+$", ""))
end

-- the fd limit: as high as the hard limit allows (10,000 shards need > 10,000 fds on
-- each side); the emulator and the clients raise their soft limit to it
local NOFILE = tonumber(capture("sh -c 'ulimit -Hn'")) or 4096
if NOFILE > 1048576 then NOFILE = 1048576 end

-- wss: a certificate for 127.0.0.1 made for this run; the emulator serves it on a second
-- listener, the clients trust it through SSL_CERT_FILE
local CERT, KEY = WORK .. "/tls.crt", WORK .. "/tls.key"
local tls_ok = os.execute(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1")
  :format(sh_quote(KEY), sh_quote(CERT)))
tls_ok = tls_ok == true or tls_ok == 0
if not tls_ok then io.stderr:write("bench: openssl could not make a certificate: the wss figures are skipped\n") end

-- ---------------------------------------------------------------------------------
-- the emulator

local function start_mock(cfg)
  local cfgfile = WORK .. "/mock-config.json"
  local parts = {}
  for k, v in pairs(cfg or {}) do parts[#parts + 1] = ('"%s":%s'):format(k, tostring(v)) end
  write_file(cfgfile, "{" .. table.concat(parts, ",") .. "}")
  local tls = tls_ok and (" --tls-cert %s --tls-key %s"):format(sh_quote(CERT), sh_quote(KEY)) or ""
  local cmd = ("exec sh -c %s"):format(sh_quote(("ulimit -n %d; exec %s --port 0 --config %s%s --die-with-parent 2>>%s")
    :format(NOFILE, sh_quote(MOCK), sh_quote(cfgfile), tls, sh_quote(LOG))))
  local pipe = assert(io.popen(cmd, "r"))
  local line = pipe:read("l")
  if not line then error("the emulator did not start (see " .. LOG .. ")") end
  local m = { pipe = pipe, line = line }
  for _, k in ipairs { "api_base", "auth_base", "eventsub_ws", "eventsub_wss", "control", "client_id", "client_secret" } do
    m[k] = line:match('"' .. k .. '":"([^"]*)"')
  end
  m.pid = tonumber(line:match('"pid":(%d+)'))
  return m
end

local function stop_mock(m)
  if m.pid then os.execute("kill " .. m.pid .. " 2>/dev/null") end
  m.pipe:close()
end

local function client_env(m, wss)
  return ("TWB_API_BASE=%s TWB_AUTH_BASE=%s TWB_EVENTSUB_WS=%s TWB_CONTROL=%s TWB_CLIENT_ID=%s TWB_CLIENT_SECRET=%s SSL_CERT_FILE=%s")
    :format(sh_quote(m.api_base), sh_quote(m.auth_base), sh_quote(wss and m.eventsub_wss or m.eventsub_ws),
      sh_quote(m.control), sh_quote(m.client_id), sh_quote(m.client_secret), sh_quote(CERT))
end

-- one client process against a fresh emulator; returns its key=value figures
local function run_client(argv, mockcfg, timeout, wss)
  local m = start_mock(mockcfg)
  local cmd = ("%s timeout %d sh -c %s 2>>%s"):format(client_env(m, wss), timeout or 300,
    sh_quote(("ulimit -n %d; exec %s"):format(NOFILE, argv)), sh_quote(LOG))
  local f = io.popen(cmd, "r")
  local out = f:read("a")
  local ok, _, code = f:close()
  stop_mock(m)
  local r = {}
  for k, v in out:gmatch("([%w_]+)=([^\n]*)") do r[k] = tonumber(v) or v end
  r._ok = ok
  r._code = code
  return r
end

-- ---------------------------------------------------------------------------------
-- scenarios: each run yields figures; several figures may come from one process

local lua_ok
do
  local r = os.execute(("%s -e 'require \"twconduit\"' 2>/dev/null"):format(LUA))
  lua_ok = r == true or r == 0
end

local function lua_client(args) return ("%s bench/client.lua %s"):format(LUA, args) end
local function c_client(args) return ("%s %s"):format(sh_quote(TWBENCH), args) end

-- the emulator's default pings (5 s) and keepalives (10 s), even at 10,000 sockets
local MOCK_BIG = { assign_window_s = 600 }
local RUNS_10K = QUICK and 1 or math.min(RUNS, 3)

local scenarios = {
  { name = "ceiling8", what = "emulator send ceiling, 8 shards, raw drain client",
    cmd = c_client("drain 8 " .. NOTIFS) },
  { name = "drain1", what = "raw drain client, 1 shard (framing only: the floor)", cmd = c_client("drain 1 " .. NOTIFS) },
  { name = "c_pipeline1", what = "C sink, 1 shard", cmd = c_client("pipeline 1 " .. NOTIFS) },
  { name = "c_pipeline8", what = "C sink, 8 shards", cmd = c_client("pipeline 8 " .. NOTIFS) },
  { name = "lua_pipeline1", what = "Lua handler, 1 shard", lua = true, cmd = lua_client("pipeline 1 " .. NOTIFS) },
  { name = "lua_pipeline8", what = "Lua handler, 8 shards", lua = true, cmd = lua_client("pipeline 8 " .. NOTIFS) },
  { name = "lua_bot1", what = "Lua bot handler, 1 shard, varied chat", lua = true, cmd = lua_client("pipeline 1 " .. NOTIFS .. " bot") },
  { name = "lua_bot8", what = "Lua bot handler, 8 shards, varied chat", lua = true, cmd = lua_client("pipeline 8 " .. NOTIFS .. " bot") },
  { name = "c_pipeline1_wss", what = "C sink, 1 shard, wss", wss = true, cmd = c_client("pipeline 1 " .. NOTIFS) },
  { name = "c_pipeline8_wss", what = "C sink, 8 shards, wss", wss = true, cmd = c_client("pipeline 8 " .. NOTIFS) },
  { name = "lua_pipeline1_wss", what = "Lua handler, 1 shard, wss", lua = true, wss = true, cmd = lua_client("pipeline 1 " .. NOTIFS) },
  { name = "lua_pipeline8_wss", what = "Lua handler, 8 shards, wss", lua = true, wss = true, cmd = lua_client("pipeline 8 " .. NOTIFS) },
  { name = "lua_bot1_wss", what = "Lua bot handler, 1 shard, wss", lua = true, wss = true, cmd = lua_client("pipeline 1 " .. NOTIFS .. " bot") },
  { name = "lua_shards1000_wss", what = "Lua, 1,000 shards over wss", lua = true, wss = true,
    cmd = lua_client("shards 1000 0"), cfg = MOCK_BIG },
  { name = "c_shards1000_wss", what = "C, 1,000 shards over wss", wss = true, cmd = c_client("shards 1000 0"), cfg = MOCK_BIG },
  { name = "lua_shards1000", what = "Lua, 1,000 shards, then idle", lua = true,
    cmd = lua_client("shards 1000 " .. IDLE_S), cfg = MOCK_BIG, timeout = IDLE_S + 120 },
  { name = "c_shards1000", what = "C, 1,000 shards", cmd = c_client("shards 1000 0"), cfg = MOCK_BIG },
  { name = "lua_shards10000", what = "Lua, 10,000 shards", lua = true, cmd = lua_client("shards 10000 0"),
    cfg = MOCK_BIG, timeout = 300, runs = RUNS_10K },
  { name = "c_shards10000", what = "C, 10,000 shards", cmd = c_client("shards 10000 0"), cfg = MOCK_BIG,
    timeout = 300, runs = RUNS_10K },
  { name = "lua_subs1000", what = "Lua, 1,000 subscription objects", lua = true,
    cmd = lua_client("subs 1000"), cfg = { rate_limit = 1000000 }, runs = math.min(RUNS, 3) },
  { name = "c_recovery", what = "C, 4 shards, 2,000/s stream, one socket dropped",
    cmd = c_client("recovery 4 2000 6") },
}

-- When the Lua module is missing, the 1,000-shard idle figure comes from C.
if not lua_ok then
  scenarios[#scenarios + 1] = { name = "c_idle1000", what = "C, 1,000 idle shards",
    cmd = c_client("shards 1000 " .. IDLE_S), cfg = MOCK_BIG, timeout = IDLE_S + 120 }
end

local results = {}
local t_start = os.time()
for _, sc in ipairs(scenarios) do
  if (not opts.only or opts.only[sc.name]) and (not sc.lua or lua_ok) and (not sc.wss or tls_ok) then
    local runs = {}
    local nruns = sc.runs or RUNS
    for i = 1, nruns do
      io.stderr:write(("bench: %s (%s) run %d/%d\n"):format(sc.name, sc.what, i, nruns))
      local r = run_client(sc.cmd, sc.cfg, sc.timeout, sc.wss)
      if not r._ok then
        io.stderr:write(("bench: %s run %d failed (exit %s), see %s\n"):format(sc.name, i, tostring(r._code), LOG))
      end
      runs[#runs + 1] = r
    end
    results[sc.name] = { what = sc.what, runs = runs }
  elseif sc.lua and not lua_ok then
    io.stderr:write(("bench: %s skipped: require \"twconduit\" fails\n"):format(sc.name))
  end
end
local elapsed = os.time() - t_start
local LOADAVG -- read when the table is printed

-- ---------------------------------------------------------------------------------
-- figures

local function stats(name, key)
  local res = results[name]
  if not res then return nil end
  local v = {}
  for _, r in ipairs(res.runs) do
    if r._ok and type(r[key]) == "number" then v[#v + 1] = r[key] end
  end
  if #v == 0 then return nil end
  table.sort(v)
  local med = #v % 2 == 1 and v[(#v + 1) // 2] or (v[#v // 2] + v[#v // 2 + 1]) / 2
  return { median = med, min = v[1], max = v[#v], n = #v, values = v }
end

local function fmt_num(x, dec)
  if x == nil then return "?" end
  local s = ("%." .. (dec or 0) .. "f"):format(x)
  local int, frac = s:match("^(-?%d+)(.*)$")
  int = int:reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^(-?),", "%1")
  return int .. frac
end

-- rows: scenario label, figure, stats, unit, target text, check (fn of median) or nil
local rows = {}
local function row(label, figure, st, unit, dec, target, check)
  rows[#rows + 1] = { label = label, figure = figure, st = st, unit = unit, dec = dec, target = target,
    check = check }
end

local backoff_min = 0.25 -- the core's default backoff_min_s, used by the clients here
local batch = 100        -- the core's default patch_batch

local function scale(st, f)
  if not st then return nil end
  return { median = st.median * f, min = st.min * f, max = st.max * f, n = st.n }
end

-- CPU figures are also given as ratios to two floors measured in the same run: the raw
-- drain client's CPU per frame (framing only, no parse) and the C sink's (the core
-- without Lua), each for the same number of shards over ws. Targets that must hold on
-- any machine are ratios; the absolute ones are for the reference machine (README).
local function floors(sh)
  return { drain = stats(sh == 1 and "drain1" or "ceiling8", "cpu_us_per_notification"),
    csink = stats("c_pipeline" .. sh, "cpu_us_per_notification") }
end
local function ratio(st, fl) return st and fl and fl.median > 0 and st.median / fl.median or nil end
local function cpu_row(figure, name, sh, target, check)
  local st = stats(name, "cpu_us_per_notification")
  local fl = floors(sh)
  row("pipeline", figure, st, "µs", 2, target, check)
  rows[#rows].x_drain = ratio(st, fl.drain)
  rows[#rows].x_csink = ratio(st, fl.csink)
end
local function sfx(sh) return ("%d shard%s"):format(sh, sh > 1 and "s" or "") end

row("pipeline", "emulator send ceiling, 8 shards (drain client)", stats("ceiling8", "notifications_per_s"),
  "/s", 0, "(feeds ≥ 250,000/s)", function(v) return v >= 250000 end)
for _, sh in ipairs { 1, 8 } do
  row("pipeline", ("floor: drain client, %s: CPU/frame (framing only)"):format(sfx(sh)),
    stats(sh == 1 and "drain1" or "ceiling8", "cpu_us_per_notification"), "µs", 3, nil, nil)
end
-- 3 µs and 1.53 µs for the C sink on the reference machine: 3 / 1.53 ≈ 2 × C sink
local LUA_X = 2.0
for _, sh in ipairs { 1, 8 } do
  cpu_row(("Lua handler, %s: CPU/notification"):format(sfx(sh)), "lua_pipeline" .. sh, sh,
    ("≤ %.1f× C sink (≤ 3 µs ref.)"):format(LUA_X), function(_, r) return r.x_csink and r.x_csink <= LUA_X end)
  row("pipeline", ("Lua handler, %s: rate"):format(sfx(sh)),
    stats("lua_pipeline" .. sh, "notifications_per_s"), "/s", 0,
    sh == 8 and "≥ 250,000/s" or nil, sh == 8 and function(v) return v >= 250000 end or nil)
end
for _, sh in ipairs { 1, 8 } do
  cpu_row(("Lua bot handler, %s: CPU/notification (varied chat)"):format(sfx(sh)), "lua_bot" .. sh, sh,
    ("≤ %.1f× C sink (≤ 3 µs ref.)"):format(LUA_X), function(_, r) return r.x_csink and r.x_csink <= LUA_X end)
  row("pipeline", ("Lua bot handler, %s: rate"):format(sfx(sh)), stats("lua_bot" .. sh, "notifications_per_s"),
    "/s", 0, nil, nil)
end
for _, sh in ipairs { 1, 8 } do
  cpu_row(("C sink, %s: CPU/notification"):format(sfx(sh)), "c_pipeline" .. sh, sh, nil, nil)
  row("pipeline", ("C sink, %s: rate"):format(sfx(sh)),
    stats("c_pipeline" .. sh, "notifications_per_s"), "/s", 0, nil, nil)
end
-- wss: at most 0.6 µs more than ws on the reference machine (0.6 / 1.53 ≈ 0.4 × C sink)
local WSS_X = 0.4
local function wss_rows(label, name, sh)
  local ws = stats(name, "cpu_us_per_notification")
  local fl = floors(sh)
  cpu_row(("%s, %s, wss: CPU/notification"):format(label, sfx(sh)), name .. "_wss", sh,
    ("≤ ws + %.1f× C sink (+0.6 µs ref.)"):format(WSS_X), function(v, r)
      return ws and r.x_csink and fl.csink and (v - ws.median) / fl.csink.median <= WSS_X
    end)
  local r = rows[#rows]
  r.extra = ws and r.st and ("wss − ws = %+.2f µs"):format(r.st.median - ws.median) or nil
  row("pipeline", ("%s, %s, wss: rate"):format(label, sfx(sh)), stats(name .. "_wss", "notifications_per_s"),
    "/s", 0, nil, nil)
end
for _, sh in ipairs { 1, 8 } do wss_rows("C sink", "c_pipeline" .. sh, sh) end
for _, sh in ipairs { 1, 8 } do wss_rows("Lua handler", "lua_pipeline" .. sh, sh) end
wss_rows("Lua bot handler", "lua_bot1", 1)
row("pipeline", "emulator's own rate report during the Lua 8-shard run", stats("lua_pipeline8", "emulator_rate"),
  "/s", 0, nil, nil)
for _, n in ipairs { 1000, 10000 } do
  row("memory", ("Lua, %s shards: RSS per idle shard"):format(fmt_num(n)), stats("lua_shards" .. n, "rss_per_shard_kb"),
    "KB", 2, "≤ 12 KB", function(v) return v <= 12 end)
  row("memory", ("C, %s shards: RSS per idle shard"):format(fmt_num(n)), stats("c_shards" .. n, "rss_per_shard_kb"),
    "KB", 2, "≤ 12 KB", function(v) return v <= 12 end)
end
row("memory", "Lua, 1,000 shards over wss: RSS per idle shard", stats("lua_shards1000_wss", "rss_per_shard_kb"),
  "KB", 2, "≤ 12 KB", function(v) return v <= 12 end)
row("memory", "C, 1,000 shards over wss: RSS per idle shard", stats("c_shards1000_wss", "rss_per_shard_kb"),
  "KB", 2, "≤ 12 KB", function(v) return v <= 12 end)
row("memory", "Lua, 10,000 shards: process RSS", scale(stats("lua_shards10000", "rss_after_kb"), 1 / 1024), "MB", 1,
  "< 150 MB", function(v) return v < 150 end)
row("memory", "C, 10,000 shards: process RSS", scale(stats("c_shards10000", "rss_after_kb"), 1 / 1024), "MB", 1,
  "< 150 MB", function(v) return v < 150 end)
row("memory", "Lua, per 1,000 subscription objects: RSS", stats("lua_subs1000", "rss_per_1000_subs_kb"), "KB", 0,
  nil, nil)
row("memory", "Lua, per 1,000 subscription objects: Lua heap", stats("lua_subs1000", "lua_heap_per_1000_subs_kb"),
  "KB", 0, nil, nil)
local need_calls = 1 + math.ceil(1000 / batch)
for _, who in ipairs { "lua", "c" } do
  local W = who == "lua" and "Lua" or "C"
  row("bring-up", W .. ", 1,000 shards: open to all enabled", stats(who .. "_shards1000", "bringup_s"), "s", 3,
    "≤ 2 s", function(v) return v <= 2 end)
  row("bring-up", W .. ", 1,000 shards: Helix calls", stats(who .. "_shards1000", "helix_calls"), "",
    0, ("≤ %d"):format(need_calls), function(v) return v <= need_calls end)
  row("bring-up", W .. ", 1,000 shards: PATCH calls", stats(who .. "_shards1000", "patch_calls"), "", 0,
    ("≤ %d"):format(need_calls - 1), function(v) return v <= need_calls - 1 end)
  row("bring-up", W .. ", 10,000 shards: open to all enabled", stats(who .. "_shards10000", "bringup_s"), "s", 3,
    nil, nil)
end
for _, who in ipairs { "lua", "c" } do
  local W = who == "lua" and "Lua" or "C"
  row("bring-up", W .. ", 1,000 shards over wss: open to all enabled", stats(who .. "_shards1000_wss", "bringup_s"), "s",
    3, "≤ 2 s", function(v) return v <= 2 end)
  row("bring-up", W .. ", 1,000 shards over wss: Helix calls", stats(who .. "_shards1000_wss", "helix_calls"), "", 0,
    ("≤ %d"):format(need_calls), function(v) return v <= need_calls end)
end
row("recovery", "C, dropped socket to shard enabled", stats("c_recovery", "recovery_s"), "s", 3,
  ("≤ %.2f s (1 s + backoff_min %.2f s)"):format(1 + backoff_min, backoff_min),
  function(v) return v <= 1 + backoff_min end)
row("recovery", "C, events lost (stream total − handled)", stats("c_recovery", "lost"), "", 0, "0",
  function(v) return v == 0 end)
local idle_label = ("1,000 idle shards over %d s%s: CPU"):format(IDLE_S, QUICK and " (--quick: shortened from 60 s)" or "")
if lua_ok then
  row("idle", "Lua, " .. idle_label, stats("lua_shards1000", "idle_cpu_pct"), "% of a core", 3, "< 1%",
    function(v) return v < 1 end)
else
  row("idle", "C, " .. idle_label, stats("c_idle1000", "idle_cpu_pct"), "% of a core", 3, "< 1%",
    function(v) return v < 1 end)
end

-- ---------------------------------------------------------------------------------
-- the table

local function ulen(s) return utf8.len(s) or #s end
local function pad(s, n) return s .. string.rep(" ", math.max(0, n - ulen(s))) end

local out = {}
local widths = { 0, 0, 0, 0, 0 }
for _, r in ipairs(rows) do
  local v
  if r.st then
    local u = r.unit ~= "" and (" " .. r.unit) or ""
    if r.st.n > 1 then
      v = ("%s%s (%s–%s)"):format(fmt_num(r.st.median, r.dec), u, fmt_num(r.st.min, r.dec), fmt_num(r.st.max, r.dec))
    else
      v = fmt_num(r.st.median, r.dec) .. u
    end
    if r.st.n ~= RUNS then v = v .. (" [%d run%s]"):format(r.st.n, r.st.n > 1 and "s" or "") end
    local x = {}
    if r.x_drain then x[#x + 1] = ("%.2f× drain"):format(r.x_drain) end
    if r.x_csink then x[#x + 1] = ("%.2f× C sink"):format(r.x_csink) end
    if r.extra then x[#x + 1] = r.extra end
    if #x > 0 then v = v .. " = " .. table.concat(x, ", ") end
  else
    v = "not measured"
  end
  local met = "—"
  if r.check and r.st then r.met = r.check(r.st.median, r) and true or false; met = r.met and "met" or "MISSED" end
  if r.check and not r.st then met = "n/a" end
  local cells = { r.label, r.figure, v, r.target or "—", met }
  for i = 1, 5 do widths[i] = math.max(widths[i], ulen(cells[i])) end
  out[#out + 1] = cells
end
local head = { "scenario", "figure", ("median (min–max) of %d run%s"):format(RUNS, RUNS > 1 and "s" or ""), "target",
  "met" }
for i = 1, 5 do widths[i] = math.max(widths[i], ulen(head[i])) end
local function line(c)
  local t = {}
  for i = 1, 5 do t[i] = pad(c[i], widths[i]) end
  return table.concat(t, "  ")
end
local commit = capture("git rev-parse --short HEAD 2>/dev/null")
LOADAVG = capture("cut -d' ' -f1-3 /proc/loadavg")
local cpu = capture("sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1")
local ncpu = capture("nproc")
local lws = capture("pkg-config --modversion libwebsockets 2>/dev/null")
print()
print(("twconduit benchmarks — commit %s, %s, %s cores, %s, libwebsockets %s%s"):format(commit, cpu, ncpu,
  os.date("!%Y-%m-%d %H:%M UTC"), lws, QUICK and ", QUICK (--quick: fewer notifications, 1 run, 10 s idle)" or ""))
print(("%s notifications of ~1.7 KB (channel.chat.message) per pipeline run; client CPU = user+sys of the client process"):
  format(fmt_num(NOTIFS)))
print(("absolute figures are for this machine (load average at the end: %s); \"× drain\" and \"× C sink\" divide by"):format(LOADAVG))
print("the floors measured in this same run (raw drain client, C sink; same shard count, ws)")
print(line(head))
print(line { string.rep("-", widths[1]), string.rep("-", widths[2]), string.rep("-", widths[3]),
  string.rep("-", widths[4]), string.rep("-", widths[5]) })
for _, c in ipairs(out) do print(line(c)) end
print(("(%d s; runs' stderr in %s)"):format(elapsed, LOG))

-- ---------------------------------------------------------------------------------
-- JSON

local function jstr(s) return '"' .. tostring(s):gsub('[%c"\\]', function(c)
  return c == '"' and '\\"' or c == "\\" and "\\\\" or ("\\u%04x"):format(c:byte())
end) .. '"' end
local function jval(v)
  if v == nil then return "null" end
  if type(v) == "boolean" then return tostring(v) end
  if type(v) == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    return math.type(v) == "integer" and tostring(v) or ("%.6g"):format(v)
  end
  return jstr(v)
end
local J = {}
J[#J + 1] = "{"
J[#J + 1] = ('  "machine": {"cpu": %s, "cores": %s, "kernel": %s, "libwebsockets": %s, "loadavg": %s},'):format(jstr(cpu), jval(tonumber(ncpu)),
  jstr(capture("uname -sr")), jstr(lws), jstr(LOADAVG))
J[#J + 1] = ('  "commit": %s, "date": %s, "quick": %s, "runs": %d, "notifications": %d, "idle_s": %d, "seconds": %d,')
  :format(jstr(capture("git rev-parse HEAD 2>/dev/null")), jstr(os.date("!%Y-%m-%dT%H:%M:%SZ")), tostring(QUICK), RUNS,
    NOTIFS, IDLE_S, elapsed)
J[#J + 1] = '  "figures": ['
for i, r in ipairs(rows) do
  local st = r.st
  J[#J + 1] = ('    {"scenario": %s, "figure": %s, "unit": %s, "median": %s, "min": %s, "max": %s, "n": %s, "x_drain": %s, "x_c_sink": %s, "target": %s, "met": %s}%s')
    :format(jstr(r.label), jstr(r.figure), jstr(r.unit), jval(st and st.median), jval(st and st.min),
      jval(st and st.max), jval(st and st.n), jval(r.x_drain), jval(r.x_csink), r.target and jstr(r.target) or "null",
      r.check and st and tostring(r.met) or "null", i < #rows and "," or "")
end
J[#J + 1] = "  ],"
J[#J + 1] = '  "raw": {'
local names = {}
for n in pairs(results) do names[#names + 1] = n end
table.sort(names)
for i, n in ipairs(names) do
  local runs = {}
  for _, r in ipairs(results[n].runs) do
    local keys, kv = {}, {}
    for k in pairs(r) do if k:sub(1, 1) ~= "_" then keys[#keys + 1] = k end end
    table.sort(keys)
    for _, k in ipairs(keys) do kv[#kv + 1] = jstr(k) .. ": " .. jval(r[k]) end
    kv[#kv + 1] = '"ok": ' .. tostring(r._ok == true)
    runs[#runs + 1] = "{" .. table.concat(kv, ", ") .. "}"
  end
  J[#J + 1] = ('    %s: {"what": %s, "runs": [\n      %s\n    ]}%s'):format(jstr(n), jstr(results[n].what),
    table.concat(runs, ",\n      "), i < #names and "," or "")
end
J[#J + 1] = "  }"
J[#J + 1] = "}"
os.execute("mkdir -p " .. sh_quote(opts.out:match("^(.*)/") or "."))
write_file(opts.out, table.concat(J, "\n") .. "\n")
print("results: " .. opts.out)
