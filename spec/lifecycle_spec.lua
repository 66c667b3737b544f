-- The shard lifecycle from Lua: shards added to and released from a running conduit
-- under a steady stream (the emulator's ledger shows nothing lost or doubled), and one
-- shard_disabled per outage however many reconnects fail during it.
local H = require "spec.support.helper"
local twconduit = require "twconduit"

describe("shard lifecycle", function()
  local m
  before_each(function() m = H.start_mock() end)
  after_each(function() m:stop() end)

  local function ledger_settled(total)
    local l = assert(m:ledger())
    return l.pending == 0 and (l.delivered + l.dropped) >= total, l
  end

  it("adds 3 shards to a running 4-shard conduit, releases 2, under a 600/s stream: nothing lost", function()
    local client = H.client(m)
    local c = H.ready_conduit(client, { shards = 4 })
    local chans = H.channels(100, 5000)
    H.subscribe_all(c, "stream.online", chans)
    local handled, n, wrong = {}, 0, 0
    c:on("stream.online", function(_, msg)
      handled[msg.id] = (handled[msg.id] or 0) + 1
      n = n + 1
      if msg.transport ~= "websocket" then wrong = wrong + 1 end
    end)
    local released_events = 0
    c:on("shard_released", function() released_events = released_events + 1 end)
    local total = 6000
    assert(m:stream { type = "stream.online", channels = chans, rate = 600, count = total })
    H.wait_until(client, function() return n >= 300 end, 10, "events to flow")

    local added, err = c:add_shards(3, 15)
    assert.is_truthy(added, tostring(err))
    assert.are.equal(3, #added)
    local ids = {}
    for i, s in ipairs(added) do
      ids[i] = s.id
      assert.are.equal("enabled", s.state)
    end
    assert.are.same({ "4", "5", "6" }, ids)
    assert.are.equal(7, c.shard_count)
    assert.are.equal(7, #c:shards())

    local gone = { c:shard("1"), added[2] }
    local sessions = { gone[1].session_id, gone[2].session_id }
    for _, s in ipairs(gone) do
      local ok, rerr = s:release(10)
      assert.is_true(ok, tostring(rerr))
    end
    assert.are.equal(2, released_events)
    assert.is_nil(c:shard("1"))
    assert.is_nil(c:shard("5"))
    assert.are.equal(5, #c:shards())
    assert.are.equal("closed", gone[1].state)
    assert.has_error(function() gone[1]:release() end, "shard is closed")

    local polled = 0
    H.wait_until(client, function()
      if client:now() - polled < 0.2 then return false end
      polled = client:now()
      return ledger_settled(total) and n >= total
    end, 40, "the stream to end")
    local _, l = ledger_settled(total)
    assert.are.equal(total, l.delivered)
    assert.are.equal(0, l.dropped)
    -- every event the emulator produced was handled exactly once
    local ledger_ids, count = H.delivered_ids(m, "stream.online")
    assert.are.equal(total, count)
    local missing, doubled = 0, 0
    for id in pairs(ledger_ids) do
      if not handled[id] then missing = missing + 1 elseif handled[id] > 1 then doubled = doubled + 1 end
    end
    assert.are.equal(0, missing)
    assert.are.equal(0, doubled)
    assert.are.equal(total, n)
    assert.are.equal(0, wrong)
    -- payload bytes are counted per shard (a 0 before): at least the events it delivered
    for _, sh in ipairs(c:shards()) do
      local st = sh:stats()
      assert.is_true(st.bytes >= st.notifications * 200, ("shard %s: %d bytes"):format(sh.id, st.bytes))
      assert.is_true(st.bytes > 0)
    end

    -- the released shards' sockets were closed and never reconnected
    local closed = 0
    for _, s in ipairs(assert(m:sessions())) do
      for _, sid in ipairs(sessions) do
        if s.id == sid then
          assert.is_false(s.connected)
          assert.are.equal("client", s.closed_by)
          assert.are.equal(1000, s.close_code)
          closed = closed + 1
        end
      end
      if s.connected then
        for _, a in ipairs(s.shards or {}) do
          assert.is_true(a.shard ~= "1" and a.shard ~= "5", "a released shard came back")
        end
      end
    end
    assert.are.equal(2, closed)
    client:close()
  end)

  it("fires shard_disabled once for a 7 s server outage with repeated failed connects", function()
    -- a TCP proxy in front of the emulator's websocket: stopping it is the outage
    local upstream = m.eventsub_ws:match("^ws://([^/]+)/")
    local logf = os.tmpname()
    local port, running = 0, nil
    local function proxy_up()
      os.remove(logf)
      running = ("TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork"):format(port)
      -- outside any sanitizer the specs may run under (LD_PRELOAD is not for socat or pkill)
      assert(os.execute(("env -u LD_PRELOAD socat -d -d %s TCP:%s 2>%s &"):format(running, upstream, logf)))
    end
    local function proxy_down()
      os.execute(("env -u LD_PRELOAD pkill -KILL -f 'socat -d -d %s' >/dev/null 2>&1"):format(running))
    end
    local function listening() -- socat logs "listening on AF=2 127.0.0.1:PORT"
      local f = io.open(logf)
      local text = f and f:read("a") or ""
      if f then f:close() end
      local p = text:match("listening on [^\n]-:(%d+)")
      return p and tonumber(p)
    end
    local client = H.client(m)
    proxy_up()
    port = H.wait_until(client, listening, 10, "the proxy to listen")
    proxy_down() -- it listened on a port the kernel chose: run it on that port for good
    proxy_up()
    H.wait_until(client, listening, 10, "the proxy to listen again")
    client:close()
    client = H.client(m, { eventsub_ws = ("ws://127.0.0.1:%d/ws"):format(port) })
    local c = H.ready_conduit(client, { shards = 2 })
    local disabled, states = {}, {}
    c:on("shard_disabled", function(s)
      disabled[s.id] = (disabled[s.id] or 0) + 1
      states[#states + 1] = s.state
    end)
    proxy_down()
    H.wait_until(client, function() return disabled["0"] and disabled["1"] end, 10, "both shards disabled")
    H.drain(client, 7) -- the outage: every reconnect attempt is refused
    local failed = 0
    for _, s in ipairs(c:shards()) do failed = failed + s:stats().failed_connects end
    proxy_up()
    H.wait_until(client, listening, 10, "the proxy to come back")
    H.wait_until(client, function()
      for _, s in ipairs(c:shards()) do if s.state ~= "enabled" then return false end end
      return true
    end, 20, "the shards to come back")
    assert.are.equal(1, disabled["0"])
    assert.are.equal(1, disabled["1"])
    for _, st in ipairs(states) do assert.are.equal("idle", st) end
    assert.is_true(failed >= 6, "reconnects failed during the outage: " .. failed)
    for _, s in ipairs(c:shards()) do assert.are.equal(1, s:stats().outages) end
    client:close()
    proxy_down()
    os.remove(logf)
  end)
end)

describe("shard assignment against delayed, reordered and refused replies", function()
  local m
  before_each(function() m = H.start_mock() end)
  after_each(function() m:stop() end)

  local function held()
    local r = assert(m:call("GET", "/shard_patches"))
    return r.requests
  end
  local function twitch_shard(cid, id)
    local st = assert(m:state())
    for _, c in ipairs(st.conduits) do
      if c.id == cid then
        for _, s in ipairs(c.shards) do if s.id == id then return s end end
      end
    end
  end
  local function session(id)
    for _, s in ipairs(assert(m:sessions())) do if s.id == id then return s end end
  end
  local function close_session(id, code) assert(m:close_session(id, code or 4000)) end

  -- A 1-shard conduit whose first assignment is held (the next `hold` PATCHes are): its
  -- session then ends and a new one is welcomed while that assignment is in flight.
  -- Returns the conduit, the first session id and the shard (on its new session).
  local function session_replaced_while_held(client, hold)
    assert(m:fault { shard_patch = { hold = hold } })
    local c = assert(client:conduit { shards = 1 })
    H.wait_until(client, function() return #held() == 1 end, 10, "the first PATCH to be held")
    local first = held()[1].shards[1].session_id
    close_session(first, 4000)
    local s = H.wait_until(client, function()
      local sh = c:shards()[1]
      return sh and sh.session_id and sh.session_id ~= first and sh
    end, 10, "a new session")
    return c, first, s
  end

  it("a late error for a shard's previous session closes nothing", function()
    local client = H.client(m)
    local errs = {}
    client:on("error", function(e) errs[#errs + 1] = e end)
    local c, first, s = session_replaced_while_held(client, 1)
    local second = s.session_id
    -- one request in flight per shard: the new session waits for the first reply
    assert.are.equal(1, #held())
    -- the held request is answered with a per-shard error for the old session
    assert(m:fault { shard_patch = { hold = 0, reject = { { shard = "0", session_id = first } } } })
    assert(m:call("POST", "/shard_patches/release", { order = "fifo" }))
    H.wait_until(client, function() return s.state == "enabled" end, 10, "the shard enabled anew")
    assert.are.equal(second, s.session_id)
    local live = session(second)
    assert.is_true(live.connected)
    assert.are.equal(twconduit.null, live.closed_by)
    assert.are.equal(second, twitch_shard(c.id, "0").transport.session_id)
    local stale = false
    for _, e in ipairs(errs) do
      if e.code == "shard_assign_failed" and e.message:find("no longer uses", 1, true) then stale = true end
    end
    assert.is_true(stale, "the stale refusal is reported")
    client:close()
  end)

  it("replies applied in reverse order leave the conduit on the live session", function()
    local client = H.client(m)
    -- every request is held: a second one for the same shard would be too
    local c, _, s = session_replaced_while_held(client, 2)
    H.drain(client, 1.5) -- past the batch window: a second PATCH would have gone by now
    -- never two requests in flight for one shard (applied last, the older one would
    -- leave Twitch pointing at the closed session while the shard looks enabled)
    assert.are.equal(1, #held())
    assert(m:fault { shard_patch = { hold = 0 } })
    assert(m:call("POST", "/shard_patches/release", { order = "reverse" }))
    H.wait_until(client, function() return c.state == "ready" end, 15, "the conduit ready")
    H.wait_until(client, function()
      local t = twitch_shard(c.id, "0")
      return t and t.status == "enabled" and t.session_connected and t.transport.session_id == s.session_id
    end, 10, "Twitch pointing at the live session")
    client:close()
  end)

  it("a shard another process took is reported lost, then reassigned or left to a hook", function()
    local client = H.client(m)
    local c = H.ready_conduit(client, { shards = 2 })
    local s0, s1 = c:shard("0"), c:shard("1")
    local own1 = s1.session_id
    local lost = {}
    c:on("shard_lost", function(s, twitch, err)
      lost[#lost + 1] = { id = s.id, twitch = twitch, err = err }
    end)
    -- another owner points shard 1 at shard 0's session
    assert(m:call("POST", ("/conduits/%s/shards/1"):format(c.id), { session_id = s0.session_id }))
    assert(c:_verify())
    H.wait_until(client, function() return #lost == 1 end, 10, "shard_lost")
    assert.are.equal("1", lost[1].id)
    assert.are.equal(s0.session_id, lost[1].twitch.session_id)
    assert.are.equal("websocket", lost[1].twitch.method)
    assert.are.equal("shard_lost", lost[1].err.code)
    H.wait_until(client, function()
      return twitch_shard(c.id, "1").transport.session_id == own1
    end, 10, "the default hook to reassign shard 1")
    assert.are.equal(1, s1:stats().lost)

    -- a hook that keeps the shard where the other owner put it
    c:off("shard_lost")
    c:on("shard_lost", function(s) s:_hold(true) end)
    assert(m:call("POST", ("/conduits/%s/shards/1"):format(c.id), { session_id = s0.session_id }))
    assert(c:_verify())
    H.wait_until(client, function() return s1:stats().lost == 2 end, 10, "the second shard_lost")
    H.drain(client, 3) -- past the reassignment's verification delay
    assert.are.equal(s0.session_id, twitch_shard(c.id, "1").transport.session_id)
    assert.is_true(s1:_held())
    client:close()
  end)

  it("closes released shards and the client's sockets with 1000 after a close handshake", function()
    local client = H.client(m)
    local c = H.ready_conduit(client, { shards = 3 })
    local gone = c:shard("2").session_id
    assert.is_true((c:shard("2"):release(10)))
    local rec = session(gone)
    assert.are.equal("client", rec.closed_by)
    assert.are.equal(1000, rec.close_code)
    assert.is_true(rec.clean)
    local rest = { c:shard("0").session_id, c:shard("1").session_id }
    client:close()
    for _, sid in ipairs(rest) do
      local r = H.wait_until(H.client(m), function()
        local x = session(sid)
        return x and not x.connected and x
      end, 5, "the session to end")
      assert.are.equal("client", r.closed_by)
      assert.are.equal(1000, r.close_code)
      assert.is_true(r.clean)
    end
  end)
end)
