-- Metrics, the status JSON and logs, against the emulator: promtool accepts /metrics,
-- values move as events arrive, /status shows every shard next to Twitch's view, the
-- bearer token is enforced, and every log line is free of secrets.
local twconduit = require "twconduit"
local H = require "support.helper"

local SCALE = os.getenv("SANITIZED") and 0.25 or 1

-- GET url with curl in the background while the client's loop runs; returns the status
-- code and the body.
local function http_get(c, url, headers)
  local base = os.tmpname()
  local hdr = ""
  for _, h in ipairs(headers or {}) do hdr = hdr .. (" -H '%s'"):format(h) end
  os.remove(base .. ".done")
  local cmd = "(env -u LD_PRELOAD curl -s -o '%s.body' -w '%%{http_code}'%s '%s' > '%s.code' 2>/dev/null; "
    .. "touch '%s.done') &"
  os.execute(cmd:format(base, hdr, url, base, base))
  H.wait_until(c, function()
    local f = io.open(base .. ".done")
    if f then f:close() end
    return f ~= nil
  end, 15, "curl " .. url)
  local f = assert(io.open(base .. ".code"))
  local code = tonumber(f:read("a"))
  f:close()
  f = io.open(base .. ".body")
  local body = f and f:read("a") or ""
  if f then f:close() end
  os.remove(base)
  os.remove(base .. ".code")
  os.remove(base .. ".body")
  os.remove(base .. ".done")
  return code, body
end

-- the value of one sample (name{labels}) in a Prometheus text, or nil
local function value(text, name, labels)
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local n, l, v = line:match("^([%w_:]+)(%b{}) (%S+)$")
      if not n then
        n, v = line:match("^([%w_:]+) (%S+)$")
        l = ""
      end
      if n == name then
        local ok = true
        for k, want in pairs(labels or {}) do
          if not l:find(('%s="%s"'):format(k, want:gsub("%p", "%%%0")), 1) then ok = false end
        end
        if ok then return tonumber(v) or (v == "+Inf" and math.huge) end
      end
    end
  end
end

local function promtool_check(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  local p = assert(io.popen(("env -u LD_PRELOAD promtool check metrics < '%s' 2>&1; echo rc=$?")
    :format(path)))
  local out = p:read("a")
  p:close()
  os.remove(path)
  return out:match("rc=(%d+)") == "0", out
end

describe("metrics", function()
  local m
  setup(function() m = H.start_mock() end)
  teardown(function() if m then m:stop() end end)

  it("serves Prometheus text that promtool accepts, and its values move as events arrive", function()
    local c = H.client(m, { log = false })
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 2 })
    H.subscribe_all(cd, "stream.online", { "501", "502" })
    local srv = assert(c:serve_metrics { port = 0 })
    assert.is_true(srv.port > 0)
    local url = ("http://127.0.0.1:%d/metrics"):format(srv.port)

    local code, before = http_get(c, url)
    assert.equal(200, code)
    local ok, out = promtool_check(before)
    assert(ok, "promtool check metrics failed:\n" .. out)
    assert.equal(1, value(before, "twconduit_build_info", { version = twconduit.VERSION }))
    assert.equal(1, value(before, "twconduit_shard_up", { conduit = cd.id, shard = "0",
      transport = "websocket" }))
    assert.equal(0, value(before, "twconduit_notifications_total"))
    assert.is_true(value(before, "twconduit_helix_requests_total",
      { endpoint = "/eventsub/conduits/shards", status = "2xx" }) >= 1)
    -- HELP and TYPE once per family
    local seen = {}
    for name in before:gmatch("# TYPE (%S+)") do
      assert.is_nil(seen[name], "TYPE twice for " .. name)
      seen[name] = true
    end

    local n = math.max(8, math.floor(40 * SCALE))
    local got = 0
    c:on("stream.online", function() got = got + 1 end)
    assert(m:trigger { type = "stream.online", channels = { "501", "502" }, count = n / 2 })
    H.wait_until(c, function() return got == n end, 15, n .. " notifications")
    -- a shard's socket closed by the server with 4003: counted by code
    local s0 = cd:shard("0")
    assert(m:close_session(s0.session_id, 4003))
    H.wait_until(c, function() return s0:stats().connects >= 2 and s0.state == "enabled" end, 15,
      "shard 0 back")

    local _, after = http_get(c, url)
    ok, out = promtool_check(after)
    assert(ok, "promtool check metrics failed:\n" .. out)
    assert.equal(n, value(after, "twconduit_notifications_total"))
    local per = 0
    for _, id in ipairs { "0", "1" } do
      per = per + value(after, "twconduit_shard_notifications_total", { conduit = cd.id, shard = id })
    end
    assert.equal(n, per)
    local lag = 0
    for _, id in ipairs { "0", "1" } do
      lag = lag + value(after, "twconduit_shard_lag_seconds_count", { conduit = cd.id, shard = id })
      assert.equal(value(after, "twconduit_shard_lag_seconds_count", { conduit = cd.id, shard = id }),
        value(after, "twconduit_shard_lag_seconds_bucket", { conduit = cd.id, shard = id, le = "+Inf" }))
    end
    assert.equal(n, lag)
    assert.equal(1, value(after, "twconduit_shard_closes_total", { conduit = cd.id, shard = "0",
      code = "4003" }))
    assert.equal(2, value(after, "twconduit_shard_connects_total", { conduit = cd.id, shard = "0" }))
    assert.equal(1, value(after, "twconduit_shard_outages_total", { conduit = cd.id, shard = "0" }))
    -- one notification in 16 is timed (the 16th, the 32nd, ...)
    assert.equal(math.floor(n / 16), value(after, "twconduit_dispatch_seconds_count"))
    assert.is_true(value(after, "twconduit_shard_last_message_timestamp_seconds", { shard = "1" }) > 1.5e9)
    assert.is_true(value(after, "twconduit_shard_received_bytes_total", { shard = "1" })
      > value(before, "twconduit_shard_received_bytes_total", { shard = "1" }))
  end)

  it("serves /status with every shard and Twitch's view, and the page; a token is enforced", function()
    local c = H.client(m, { log = false })
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 2, total = 3 })
    local srv = assert(c:serve_metrics { port = 0, token = "s3cret-token", twitch_interval = 0.2 })
    local base = ("http://127.0.0.1:%d"):format(srv.port)
    for _, path in ipairs { "/metrics", "/status", "/" } do
      assert.equal(401, (http_get(c, base .. path)))
      assert.equal(401, (http_get(c, base .. path, { "Authorization: Bearer wrong" })))
    end
    local code, page = http_get(c, base .. "/?token=s3cret-token")
    assert.equal(200, code)
    assert.matches("<!doctype html>", page, 1, true)
    assert.is_nil(page:find("https?://[%w.]+/[%w/]*%.js")) -- no external assets
    local st
    H.wait_until(c, function()
      local code2, body = http_get(c, base .. "/status", { "Authorization: Bearer s3cret-token" })
      assert.equal(200, code2)
      st = twconduit.json_decode(body)
      return #st.conduits == 1 and type(st.conduits[1].twitch) == "table" and #st.conduits[1].twitch == 3
    end, 15, "Twitch's view of 3 shards")
    local c1 = st.conduits[1]
    assert.equal(cd.id, c1.id)
    assert.equal(3, c1.shard_count)
    assert.equal(2, #c1.shards)
    for i, s in ipairs(c1.shards) do
      assert.equal(tostring(i - 1), s.id)
      assert.equal("enabled", s.state)
      assert.equal("websocket", s.transport)
      assert.equal(cd:shard(s.id).session_id, s.session_id)
      assert.is_number(s.connected_at)
    end
    -- Twitch shows the third shard (run nowhere) as it is
    local tw = {}
    for _, t in ipairs(c1.twitch) do tw[t.id] = t end
    assert.equal("enabled", tw["0"].status)
    assert.equal(cd:shard("1").session_id, tw["1"].session_id)
    assert.is_not_nil(tw["2"])
    assert.is_number(st.helix.requests)
    srv:close()
    assert.is_true(srv:closed())
  end)

  it("adds its routes to an existing webhook server", function()
    local c = H.client(m, { log = false })
    finally(function() c:close() end)
    H.ready_conduit(c, { shards = 1 })
    local wh = assert(c:webhook_server { port = 0 })
    local srv = assert(c:serve_metrics { server = wh })
    assert.equal(wh.port, srv.port)
    local code, text = http_get(c, ("http://127.0.0.1:%d/metrics"):format(wh.port))
    assert.equal(200, code)
    assert.is_not_nil(value(text, "twconduit_http_requests_total"))
    -- page views read the caches: no Helix call per view
    local base = ("http://127.0.0.1:%d/status"):format(wh.port)
    H.wait_until(c, function()
      local st = twconduit.json_decode(select(2, http_get(c, base)))
      return type(st.conduits[1].twitch_at) == "number" and type(st.subscriptions.at) == "number"
    end, 10, "the caches filled")
    local before = c:stats().helix_requests
    for _ = 1, 5 do assert.equal(200, (http_get(c, base))) end
    assert.equal(before, c:stats().helix_requests)
    assert.has_error(function() c:serve_metrics { server = wh, port = 1 } end)
    assert.has_error(function() c:serve_metrics { bogus = 1 } end)
  end)
end)

describe("logs", function()
  local m
  setup(function() m = H.start_mock() end)
  teardown(function() if m then m:stop() end end)

  it("logs each library event once with fields, and never a secret", function()
    local lines = {}
    local c = H.client(m, { log_level = "debug", log = function(level, message, fields)
      lines[#lines + 1] = { level = level, message = message, fields = fields }
    end })
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 2 })
    local function find(pred)
      local out = {}
      for _, l in ipairs(lines) do if pred(l) then out[#out + 1] = l end end
      return out
    end
    H.wait_until(c, function() return #find(function(l) return l.message == "conduit ready" end) == 1 end,
      5, "ready")
    assert.equal(2, #find(function(l) return l.message == "shard enabled" and l.fields.conduit == cd.id end))
    assert.equal(1,
      #find(function(l) return l.message == "conduit started" and l.fields.shard_count == 2 end))
    -- a close with a code: one warn line with the code
    local s1 = cd:shard("1")
    assert(m:close_session(s1.session_id, 4001))
    H.wait_until(c, function() return s1.state == "enabled" and s1:stats().connects == 2 end, 10,
      "shard 1 back")
    local closes = find(function(l)
      return l.level == "warn" and l.fields.shard == "1" and l.fields.close_code == 4001
    end)
    assert.equal(1, #closes)
    assert.equal(cd.id, closes[1].fields.conduit)
    -- a Helix error
    local ok, err = c:helix("GET", "/eventsub/conduits/shards",
      { query = { conduit_id = "no-such-conduit" } })
    assert.is_nil(ok)
    local hx = find(function(l) return l.message:find("^helix GET") end)
    assert.equal(1, #hx)
    assert.equal(err.code, hx[1].fields.code)
    -- an operation
    assert(cd:resize(3))
    H.wait_until(c, function()
      return #find(function(l) return l.message:find("^operation resize done") end) == 1
    end, 10, "the operation's line")
    -- no secret anywhere: the client secret, the app token in use
    local token = c._core:token()
    assert.is_string(token)
    for _, l in ipairs(lines) do
      local all = { l.message }
      for k, v in pairs(l.fields) do all[#all + 1] = tostring(k) .. "=" .. tostring(v) end
      for _, s in ipairs(all) do
        assert.is_nil(s:find(m.client_secret, 1, true), "client secret in a log line: " .. s)
        assert.is_nil(s:find(token, 1, true), "token in a log line: " .. s)
      end
    end
  end)

  it("scrubs a secret that gets into a message, and checks its options", function()
    local lines = {}
    local c = H.client(m, { log = function(_, msg) lines[#lines + 1] = msg end })
    finally(function() c:close() end)
    c._log:write("error", "oops " .. m.client_secret .. " end", {})
    assert.equal("oops [redacted] end", lines[1])
    c._log:write("debug", "below the level", {})
    assert.equal(1, #lines)
    assert.has_error(function() H.client(m, { log = 42 }) end)
    assert.has_error(function() H.client(m, { log_level = "loud" }) end)
  end)
end)

describe("examples/bot.lua --status-port", function()
  it("serves the metrics and the status page", function()
    -- a free port: bind one, read it, let it go
    local c = assert(twconduit.client { client_id = "x", access_token = "y", log = false })
    local probe = assert(c:webhook_server { port = 0 })
    local port = probe.port
    probe:close()
    c:close()
    local dir = os.tmpname()
    os.remove(dir)
    local script = ([[
      %s examples/bot.lua --status-port %d > '%s.log' 2>&1 &
      pid=$!
      ok=0
      for i in $(seq 150); do
        if env -u LD_PRELOAD curl -sf http://127.0.0.1:%d/metrics | grep -q '^twconduit_shard_up{' &&
           env -u LD_PRELOAD curl -sf http://127.0.0.1:%d/ | grep -q '<title>twconduit status</title>'
        then ok=1; break; fi
        kill -0 $pid 2>/dev/null || break
        sleep 0.2
      done
      kill $pid 2>/dev/null; wait $pid 2>/dev/null
      [ $ok = 1 ]
    ]]):format(os.getenv("LUA") or "lua5.4", port, dir, port, port)
    local ok = os.execute(script)
    local f = io.open(dir .. ".log")
    local log = f and f:read("a") or ""
    if f then f:close() end
    os.remove(dir .. ".log")
    assert(ok, "the bot did not serve /metrics and / on port " .. port .. ":\n" .. log)
    assert.matches("status page http://127.0.0.1:" .. port, log, 1, true)
  end)
end)
