local H = require "support.helper"

-- sessions of the emulator that carry one of our shards, by shard id
local function sessions_by_shard(m, conduit_id)
  local out = {}
  for _, s in ipairs(assert(m:sessions())) do
    if s.connected then
      for _, a in ipairs(s.shards or {}) do
        if a.conduit_id == conduit_id then out[tostring(a.shard)] = s.id end
      end
    end
  end
  return out
end

describe("twconduit.shard", function()
  local m
  lazy_setup(function() m = H.start_mock { assign_window_s = 3, reconnect_grace_s = 5 } end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  it("a session_reconnect under a steady stream loses and doubles nothing", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 2 })
    local channels = H.channels(8, 3000)
    H.subscribe_all(cd, "stream.online", channels)
    local seen, dup, reconnects = {}, 0, 0
    cd:on("notification", function(_, msg)
      if seen[msg.id] then dup = dup + 1 end
      seen[msg.id] = true
    end)
    cd:on("reconnect", function() reconnects = reconnects + 1 end)
    local st = assert(m:stream { type = "stream.online", channels = channels, rate = 200, count = 400 })
    H.drain(c, 0.3)
    local sess = sessions_by_shard(m, cd.id)
    assert(m:reconnect_session(sess["0"]))
    H.wait_until(c, function() return reconnects >= 1 end, 10, "the reconnect event")
    H.wait_until(c, function()
      local l = assert(m:ledger())
      return l.pending == 0 and (l.delivered + l.dropped) >= 400
    end, 20, "the stream to finish")
    H.drain(c, 0.3)
    m:stop_stream(st.stream_id)
    local ids, delivered, l = H.delivered_ids(m, "stream.online")
    assert.equal(0, l.dropped)
    assert.equal(400, delivered)
    for id in pairs(ids) do assert.is_true(seen[id], "lost " .. id) end
    assert.equal(0, dup)
    assert.equal(1, cd:shard("0"):stats().reconnects)
  end)

  it("a killed socket is reconnected and reassigned; events routed elsewhere arrive", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 4 })
    local channels = H.channels(20, 4000)
    H.subscribe_all(cd, "stream.online", channels)
    local seen, n = {}, 0
    cd:on("notification", function(_, msg) if not seen[msg.id] then n = n + 1 end; seen[msg.id] = true end)
    local disabled, enabled = {}, {}
    cd:on("shard_disabled", function(s, status) disabled[#disabled + 1] = { s.id, status } end)
    cd:on("shard_enabled", function(s) enabled[#enabled + 1] = s.id end)
    local old = sessions_by_shard(m, cd.id)["1"]
    assert(m:drop_session(old))
    assert(m:trigger { type = "stream.online", channels = channels, count = 5 })
    H.wait_until(c, function()
      for _, id in ipairs(enabled) do if id == "1" then return true end end
    end, 15, "shard 1 to be enabled again")
    assert.equal("1", disabled[1] and disabled[1][1])
    local now = sessions_by_shard(m, cd.id)["1"]
    assert.is_string(now)
    assert.not_equal(old, now)
    assert(m:trigger { type = "stream.online", channels = channels, count = 5 })
    H.wait_until(c, function()
      local _, d = H.delivered_ids(m, "stream.online")
      return n >= d and d > 0
    end, 15, "every delivered event")
    local ids = H.delivered_ids(m, "stream.online")
    for id in pairs(ids) do assert.is_true(seen[id], "lost " .. id) end
  end)

  local expected = {
    [4000] = "websocket_internal_error", [4001] = "websocket_received_inbound_traffic",
    [4002] = "websocket_failed_ping_pong", [4003] = "websocket_connection_unused",
    [4004] = "websocket_failed_to_reconnect", [4005] = "websocket_network_timeout",
    [4006] = "websocket_network_error", [4007] = "websocket_failed_to_reconnect",
  }
  for code = 4000, 4007 do
    it(("close code %d: shard_disabled, then reconnected and reassigned"):format(code), function()
      local c = H.client(m)
      finally(function() c:close() end)
      local cd = H.ready_conduit(c, { shards = 1 })
      local got, back = nil, 0
      cd:on("shard_disabled", function(s, status, err)
        got = got or { s = s, status = status, err = err }
      end)
      cd:on("shard_enabled", function() back = back + 1 end)
      local sess = sessions_by_shard(m, cd.id)["0"]
      assert(m:close_session(sess, code))
      H.wait_until(c, function() return got and back >= 1 end, 15, "disable + re-enable")
      assert.equal(cd:shard("0"), got.s)
      assert.is_string(got.status)
      if code ~= 4007 then assert.equal(expected[code], got.status) end
      assert.equal(code, cd:shard("0"):stats().last_close_code)
      assert.equal("enabled", cd:shard("0").state)
      assert.not_equal(sess, sessions_by_shard(m, cd.id)["0"])
    end)
  end

  it("survives malformed frames, duplicate ids and stale timestamps, and reports them", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    H.subscribe_all(cd, "stream.online", { "66" })
    local errs, n = {}, 0
    c:on("error", function(e) errs[#errs + 1] = e end)
    cd:on("notification", function() n = n + 1 end)
    local sess = sessions_by_shard(m, cd.id)["0"]
    assert(m:fault { malformed_frame = { session_id = sess } })
    assert(m:fault { duplicate_next = 2, stale_next = 1 })
    assert(m:trigger { type = "stream.online", channels = { "66" }, count = 4 })
    H.wait_until(c, function()
      local s = c:stats()
      return s.duplicates >= 2 and s.stale >= 1 and s.bad_messages >= 1
    end, 10, "the faults to be counted")
    assert(m:trigger { type = "stream.online", channels = { "66" }, count = 1 })
    H.wait_until(c, function() return n >= 4 end, 10, "the clean events")
    H.drain(c, 0.2)
    assert.equal(4, n) -- 5 sent, one stale, duplicates dropped
    assert.is_true(#errs >= 1)
    assert.equal("enabled", cd:shard("0").state)
  end)

  it("shard:reconnect() reconnects and shard:stats() counts", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    local s = cd:shard("0")
    local before = s:stats().connects
    local back = 0
    s:on("shard_enabled", function() back = back + 1 end)
    assert(s:reconnect())
    H.wait_until(c, function() return back >= 1 end, 10, "the shard to come back")
    assert.equal(before + 1, s:stats().connects)
    assert.matches('twconduit.shard{id="0"', tostring(s))
  end)
end)
