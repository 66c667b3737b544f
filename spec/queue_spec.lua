-- The gateway/worker split over Redis Streams, end to end: the emulator, one gateway of
-- 4 shards (this process), two workers (child processes, spec/support/queue_worker.lua)
-- and a private redis-server (AOF on). Handled ids are recorded by the workers in Redis;
-- what should have been handled is the emulator's ledger.
local H = require "support.helper"
local R = require "support.redis"
local twconduit = require "twconduit"

local SAN = os.getenv("SANITIZED") ~= nil
local RATE = SAN and 300 or 1000 -- events/s
local NAME = "bot"
local CLAIM_IDLE = 1

local function tmpdir()
  local p = io.popen("mktemp -d /tmp/twq-spec.XXXXXX")
  local d = p:read("l")
  p:close()
  return d
end

describe("queue", function()
  local redis, m, c, cd, q, dir
  local workers = {}

  local function start_worker(consumer)
    local p = assert(io.popen(("exec sh -c 'echo $$; exec lua5.4 spec/support/queue_worker.lua %s %s %s %d'")
      :format(redis.url, NAME, consumer, CLAIM_IDLE), "r"))
    local pid = assert(tonumber(p:read("l")), "no worker pid")
    local w = { pipe = p, pid = pid, consumer = consumer }
    workers[#workers + 1] = w
    assert(p:read("l") == "ready", "worker " .. consumer .. " did not start")
    return w
  end

  local function kill(w, sig)
    if w.dead then return end
    w.dead = true
    os.execute(("kill -%s %d 2>/dev/null"):format(sig or "KILL", w.pid))
    pcall(w.pipe.close, w.pipe)
  end

  local function handled_set()
    local set, n = {}, 0
    local p = io.popen(("env -u LD_PRELOAD redis-cli -s '%s' SMEMBERS %s:handled"):format(redis.socket, NAME))
    for line in p:lines() do
      if line ~= "" then set[line] = true; n = n + 1 end
    end
    p:close()
    return set, n
  end

  -- steps the gateway until every delivered stream.online of the ledger was handled
  local function wait_all_handled(timeout, what)
    local ids, n
    H.wait_until(c, function()
      ids, n = H.delivered_ids(m, "stream.online")
      local _, h = handled_set()
      return h >= n and n > 0
    end, timeout, what)
    local set = handled_set()
    for id in pairs(ids) do assert(set[id], "delivered by Twitch, never handled: " .. id) end
    return n
  end

  local function stream_done(id)
    local st = m:call("GET", "/stream/" .. id)
    return st and st.done
  end

  setup(function()
    dir = tmpdir()
    redis = R.start(dir)
    m = H.start_mock()
    c = H.client(m)
    c:on("error", function() end)
    q = assert(c:queue { redis = redis.url, name = NAME, role = "gateway", ["local"] = true,
      buffer_max = 200, spool = dir .. "/gateway.spool", connect_timeout = 0.5, command_timeout = 3 })
    q:on("error", function() end)
    H.wait_until(c, function() return q:stats().up end, 10, "the gateway's Redis link")
    cd = H.ready_conduit(c, { shards = 4 })
    local chans = H.channels(200)
    chans[#chans + 1] = "666" -- the poison channel
    H.subscribe_all(cd, "stream.online", chans)
  end)

  teardown(function()
    for _, w in ipairs(workers) do kill(w) end
    if c then c:close() end
    if m then m:stop() end
    if redis then redis:destroy() end
    if dir then os.execute("rm -rf '" .. dir .. "'") end
  end)

  it("(a, b) a worker killed mid-stream and both restarted: every event handled, "
    .. "the dead worker's entries claimed", function()
    local wa, wb = start_worker("A"), start_worker("B")
    local total = RATE * 6
    local st = assert(m:stream { type = "stream.online", channels = H.channels(200), rate = RATE,
      count = total })
    -- (a) SIGKILL A mid-stream
    H.wait_until(c, function() return q:stats().published >= total // 4 end, 20, "a quarter published")
    kill(wa, "KILL")
    -- its pending entries are claimed by B within the threshold (claim_idle + a janitor period)
    H.wait_until(c, function()
      local out = redis:cli("XPENDING", NAME .. ":s:0", NAME, "-", "+", "10", "A") ..
        redis:cli("XPENDING", NAME .. ":s:1", NAME, "-", "+", "10", "A") ..
        redis:cli("XPENDING", NAME .. ":s:2", NAME, "-", "+", "10", "A") ..
        redis:cli("XPENDING", NAME .. ":s:3", NAME, "-", "+", "10", "A")
      return out == ""
    end, CLAIM_IDLE * 4 + 2, "A's pending entries claimed")
    -- (b) restart both while the gateway runs (B is killed as abruptly)
    H.wait_until(c, function() return q:stats().published >= total // 2 end, 20, "half published")
    kill(wb, "KILL")
    start_worker("A")
    start_worker("B")
    H.wait_until(c, function() return stream_done(st.stream_id) end, 30, "the stream's end")
    local n = wait_all_handled(30, "every event handled")
    assert.is_true(n >= total)
    -- at least once: duplicates may exist, each id is in the set once
    local count = tonumber(redis:cli("GET", NAME .. ":handled_count"))
    assert.is_true(count >= n)
    assert.are.equal(0, q:stats().dropped)
  end)

  it("(c) Redis stopped for 10 s and started again: the gateway spools, replays in order, "
    .. "loses nothing", function()
    local base = q:stats()
    local total = RATE * 14
    local st = assert(m:stream { type = "stream.online", channels = H.channels(200), rate = RATE,
      count = total })
    H.wait_until(c, function() return q:stats().published >= base.published + RATE end, 20,
      "a second published")
    redis:stop()
    local t0 = c:now()
    H.wait_until(c, function() return c:now() - t0 >= 10 end, 15, "ten seconds")
    local mid = q:stats()
    assert.is_true(mid.outages > base.outages)
    assert.is_true(mid.spooled > base.spooled, "the memory buffer (200) overflowed into the spool")
    assert.is_true(mid.spool_bytes > 0)
    redis:restart()
    H.wait_until(c, function() return stream_done(st.stream_id) end, 30, "the stream's end")
    H.wait_until(c, function()
      local s = q:stats()
      return s.up and s.buffered == 0 and s.spool_bytes == 0
    end,
      30, "the spool replayed")
    wait_all_handled(40, "every event handled after the outage")
    assert.are.equal(0, q:stats().dropped)
    -- in order: each channel's entries in its stream follow the order Twitch sent them
    local ledger = assert(m:ledger())
    local seq = {}
    for _, e in ipairs(ledger.entries) do
      if e.status == "delivered" then seq[e.message_id] = e.seq end
    end
    local last = {}
    for k = 0, 3 do
      local from, entries = "-", {}
      repeat -- in pages: one reply of the whole stream would outlast the command timeout
        local page = assert(q:command { "XRANGE", NAME .. ":s:" .. k, from, "+", "COUNT", "500" })
        for _, e in ipairs(page) do entries[#entries + 1] = e end
        if #page > 0 then from = "(" .. page[#page][1] end
      until #page < 500
      for _, e in ipairs(entries) do
        local f = {}
        for i = 1, #e[2] - 1, 2 do f[e[2][i]] = e[2][i + 1] end
        local ev = twconduit.json_decode(f.b).event
        local s = seq[f.id]
        if s then
          local ch = ev.broadcaster_user_id
          assert(last[ch] == nil or last[ch] < s, "channel " .. ch .. " out of order in partition " .. k)
          last[ch] = s
        end
      end
    end
  end)

  it("(d) a message whose handler raises every time ends in the dead-letter stream after 3 tries", function()
    local r = assert(m:trigger { type = "stream.online", channels = { "666" } })
    local id = r.message_ids[1]
    H.wait_until(c, function() return tonumber(redis:cli("XLEN", NAME .. ":dead")) >= 1 end,
      CLAIM_IDLE * 8 + 5, "the dead-letter entry")
    local dead = assert(q:command { "XRANGE", NAME .. ":dead", "-", "+" })
    local f = {}
    for i = 1, #dead[1][2] - 1, 2 do f[dead[1][2][i]] = dead[1][2][i + 1] end
    assert.are.equal(id, f.id)
    assert.are.equal("3", f.deliveries)
    assert.truthy(f.error:find("poison message " .. id, 1, true))
    local handled = handled_set()
    assert.is_nil(handled[id])
    local stats = assert(c:queue_stats())
    assert.are.equal(1, stats[NAME].dead)
  end)

  it("(e) the same notification delivered to two gateways is queued once", function()
    local c2 = H.client(m)
    local q2 = assert(c2:queue { redis = redis.url, name = NAME, role = "gateway" })
    H.wait_until(c2, function() return q2:stats().up end, 10, "the second gateway's link")
    local got
    cd:on("stream.online", function(_, msg) if not got then got = msg; assert(q2:publish(msg)) end end)
    local before = tonumber(redis:cli("GET", NAME .. ":handled_count"))
    local pub = q:stats().published
    local r = assert(m:trigger { type = "stream.online", channels = { "2001" } })
    H.wait_until(c, function() return got and q:stats().published > pub end, 10, "the first gateway's entry")
    H.wait_until(c2, function() return q2:stats().duplicates == 1 end, 10, "the second gateway's answer")
    assert.are.equal(0, q2:stats().published)
    assert.are.equal(r.message_ids[1], got.id)
    H.wait_until(c, function() return tonumber(redis:cli("GET", NAME .. ":handled_count")) > before end,
      10, "handled")
    H.drain(c, CLAIM_IDLE + 0.5)
    assert.are.equal(before + 1, tonumber(redis:cli("GET", NAME .. ":handled_count")))
    c2:close()
  end)

  it("a message seen within the de-duplication window is a duplicate, queued again after it", function()
    -- the window (2 s) is judged on Redis's clock: the first entry's id is its time t0
    local W = 2000
    local c2 = H.client(m)
    local q2 = assert(c2:queue { redis = redis.url, name = "win", role = "gateway", partitions = 1,
      dedupe_window = W / 1000 })
    H.wait_until(c2, function() return q2:stats().up end, 10, "the gateway's link")
    local function answered(s) return s.published + s.duplicates end
    local done, perr, once, sent = false, nil, false, {}
    local function redis_ms()
      local sec, usec = redis:cli("TIME"):match("^(%d+)%s+(%d+)")
      return tonumber(sec) * 1000 + tonumber(usec) // 1000
    end
    cd:on("stream.online", function(_, msg)
      if once then return end
      once = true
      -- the handler yields between publishes: the message stays valid until it returns
      while not done do
        local before, dups = answered(q2:stats()), q2:stats().duplicates
        local at = redis_ms() -- the script runs after this, on the same clock
        local ok, e = q2:publish(msg)
        if not ok then perr = e; return end
        H.wait_until(c2, function() return answered(q2:stats()) > before end, 10, "the answer")
        sent[#sent + 1] = { at = at, dup = q2:stats().duplicates > dups }
        if q2:stats().published >= 2 then done = true else c:sleep(0.05) end
      end
    end)
    assert(m:trigger { type = "stream.online", channels = { "2002" } })
    H.wait_until(c, function() return done or perr end, 15, "a publish after the window")
    assert.is_nil(perr)
    local ids = {}
    for line in redis:cli("XRANGE", "win:s:0", "-", "+"):gmatch("[^\n]+") do
      if line:match("^%d+%-%d+$") then ids[#ids + 1] = line end
    end
    assert.are.equal(2, #ids, "queued twice: once, and once after the window")
    local t0, t1 = tonumber(ids[1]:match("^(%d+)")), tonumber(ids[2]:match("^(%d+)"))
    assert.is_true(t1 - t0 > W, ("queued again %d ms after the first, window %d ms"):format(t1 - t0, W))
    -- and not longer than the window: a publish sent once Redis's clock had passed
    -- t0 + window was never answered "duplicate"
    for _, p in ipairs(sent) do
      if p.dup then
        assert.is_true(p.at <= t0 + W, ("a duplicate %d ms after the first"):format(p.at - t0))
      end
    end
    local s = q2:stats()
    assert.is_true(s.duplicates >= 1, "a duplicate within the window")
    assert.are.equal(2, s.published)
    -- old buckets go: at most the window's buckets, the one before it and the current
    local keys = 0
    for _ in redis:cli("KEYS", "win:seen:*"):gmatch("%S+") do keys = keys + 1 end
    assert.is_true(keys >= 1 and keys <= 6, "marks' buckets kept: " .. keys)
    c2:close()
  end)

  it("streams are trimmed by length (MAXLEN ~) and by age (MINID ~)", function()
    local cl, ca = H.client(m), H.client(m)
    local ql = assert(cl:queue { redis = redis.url, name = "tl", role = "gateway", partitions = 1,
      maxlen = 100 })
    local qa = assert(ca:queue { redis = redis.url, name = "ta", role = "gateway", partitions = 1,
      max_age = 1 })
    H.wait_until(cl, function() return ql:stats().up end, 10, "a link")
    H.wait_until(ca, function() return qa:stats().up end, 10, "a link")
    local on = true
    cd:on("stream.online", function(_, msg)
      if on then assert(ql:publish(msg)); assert(qa:publish(msg)) end
    end)
    local function xlen(k) return tonumber(redis:cli("XLEN", k)) end
    local function redis_ms()
      local sec, usec = redis:cli("TIME"):match("^(%d+)%s+(%d+)")
      return tonumber(sec) * 1000 + tonumber(usec) // 1000
    end
    local function publish(n)
      local l0, a0 = ql:stats().published, qa:stats().published
      assert(m:trigger { type = "stream.online", channels = H.channels(100), count = n // 100 })
      H.wait_until(c, function()
        cl:step(0); ca:step(0)
        return ql:stats().published >= l0 + n and qa:stats().published >= a0 + n
      end, 20, "published")
    end
    publish(300)
    local t_old = redis_ms()
    H.wait_until(c, function() return redis_ms() > t_old + 1500 end, 10, "Redis's clock past the age limit")
    publish(300)
    on = false
    local nl, na = xlen("tl:s:0"), xlen("ta:s:0")
    assert.is_true(nl >= 100 and nl < 300, "by length: 600 added, " .. nl .. " kept (100, and a node more)")
    assert.is_true(na >= 300 and na < 450, "by age: 300 old and 300 new added, " .. na .. " kept")
    cl:close()
    ca:close()
  end)

  it("an entry is acknowledged once its yielding handler returned; an unreadable one is reported", function()
    local body = twconduit.json_encode { subscription = { type = "stream.online", version = "1" },
      event = { broadcaster_user_id = "42" } }
    local function add(id, b)
      redis:cli("XADD", "y:s:0", "*", "id", id, "mt", "notification", "ts", "", "tr", "websocket", "b", b)
    end
    add("m-1", body)
    add("m-2", "{nope")
    local w = assert(c:queue { redis = redis.url, name = "y", role = "worker", partitions = 1 })
    local started, finished, errs = false, false, {}
    w:on("error", function(e) errs[#errs + 1] = e end)
    w:on("stream.online", function(ev, msg)
      assert.are.equal("42", ev.broadcaster_user_id)
      assert.are.equal("queue", msg.transport)
      assert.are.equal("m-1", msg.id)
      started = true
      twconduit.sleep(c, 0.5) -- yields: the entry must stay pending meanwhile
      finished = true
    end)
    H.wait_until(c, function() return started end, 10, "the handler")
    local function pending()
      return tonumber((redis:cli("XPENDING", "y:s:0", "y"):match("^(%d+)")))
    end
    assert.is_false(finished)
    assert.is_true(pending() >= 1, "pending while the handler waits")
    H.wait_until(c, function() return finished end, 5, "the handler's end")
    H.wait_until(c, function() return w:stats().acked == 1 end, 5, "the acknowledgement")
    assert.are.equal(1, w:stats().bad_entries)
    assert.are.equal("bad_message", errs[1] and errs[1].code)
    w:close()
  end)

  it("a gateway closed while Redis is down leaves its messages in the spool; the next one replays them",
    function()
    redis:stop()
    H.wait_until(c, function() return not q:stats().up end, 10, "the link down")
    local r = assert(m:trigger { type = "stream.online", channels = H.channels(50) })
    H.wait_until(c, function() return q:stats().buffered >= r.produced end, 10, "the messages held")
    q:close()
    local f = assert(io.open(dir .. "/gateway.spool", "rb"))
    local size = f:seek("end")
    f:close()
    assert.is_true(size > 0, "the spool holds them")
    redis:restart()
    local q2 = assert(c:queue { redis = redis.url, name = NAME, role = "gateway",
      spool = dir .. "/gateway.spool" })
    H.wait_until(c, function()
      local st = q2:stats()
      return st.up and st.spool_bytes == 0 and st.buffered == 0
    end,
      20, "the spool replayed")
    assert.is_true(q2:stats().published + q2:stats().duplicates >= r.produced)
    local handled = nil
    H.wait_until(c, function() handled = handled_set(); for _, id in ipairs(r.message_ids) do
      if not handled[id] then return false end end return true end, 30, "every message of the outage handled")
    q = q2
  end)
end)
