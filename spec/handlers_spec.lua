-- Handlers that call async functions, and what close() does to calls still waiting.
local twconduit = require "twconduit"
local H = require "support.helper"

local m
local function trigger(channel, n)
  assert(m:trigger { type = "stream.online", channels = { channel }, count = n })
end

describe("handlers", function()
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  it("may call client:helix and the endpoint wrappers (reply to a message)", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local errs = {}
    c:on("error", function(e) errs[#errs + 1] = tostring(e) end)
    local cd = H.ready_conduit(c, { shards = 1 })
    assert(cd:subscribe { type = "stream.online", version = "1", condition = { broadcaster_user_id = "71" } })
    local got
    cd:on("stream.online", function(event)
      local body = assert(c:helix("GET", "/eventsub/subscriptions"))
      local list = assert(c:conduits())
      got = { body = body, n = #list, user = event.broadcaster_user_id }
    end)
    trigger("71", 1)
    H.wait_until(c, function() return got or #errs > 0 end, 10, "the handler's Helix calls")
    assert.same({}, errs)
    assert.equal("71", got.user)
    assert.equal(1, got.n)
    assert.equal(1, #got.body.data)
  end)

  it("may subscribe from a ready handler and sleep in a shard_enabled handler", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local errs, sub, slept = {}, nil, false
    c:on("error", function(e) errs[#errs + 1] = tostring(e) end)
    local cd = assert(c:conduit { shards = 1 })
    cd:on("shard_enabled", function()
      assert(c:sleep(0.01))
      slept = true
    end)
    cd:on("ready", function(conduit)
      sub = assert(conduit:subscribe { type = "stream.online", version = "1",
        condition = { broadcaster_user_id = "72" } })
    end)
    H.wait_until(c, function() return (sub and slept) or #errs > 0 end, 15, "the subscription")
    assert.same({}, errs)
    assert.equal("stream.online", sub.type)
  end)

  it("keep the order of one shard's events for handlers that do not yield", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    assert(cd:subscribe { type = "stream.online", version = "1", condition = { broadcaster_user_id = "73" } })
    local log, seen, resumed = {}, {}, 0
    -- first handler: yields on every third event (Helix round trip), the others return
    cd:on("stream.online", function(_, msg)
      seen[#seen + 1] = msg.id
      if #seen % 3 == 1 then
        log[#log + 1] = "yield " .. msg.id
        assert(c:conduits())
        resumed = resumed + 1
        log[#log + 1] = "resumed " .. msg.id
      end
    end)
    local order = {}
    -- second handler of the same events: runs at once even when the first one yielded
    cd:on("stream.online", function(_, msg)
      order[#order + 1] = msg.id
      log[#log + 1] = "second " .. msg.id
    end)
    trigger("73", 30)
    H.wait_until(c, function() return #order == 30 and resumed == 10 end, 15, "30 events")
    local _, n, ledger = H.delivered_ids(m, "stream.online")
    assert.equal(30, n)
    local expected = {}
    for _, e in ipairs(ledger.entries) do
      if e.type == "stream.online" and e.status == "delivered" then expected[#expected + 1] = e.message_id end
    end
    assert.same(expected, order)
    assert.same(expected, seen)
    -- the first event's second handler ran before the first handler was resumed
    local first = expected[1]
    local pos = {}
    for i, l in ipairs(log) do pos[l] = i end
    assert.is_true(pos["second " .. first] < pos["resumed " .. first])
  end)

  it("report an error raised after a yield through the error event", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    assert(cd:subscribe { type = "stream.online", version = "1", condition = { broadcaster_user_id = "74" } })
    local got, after = nil, 0
    c:on("error", function(e) got = e end)
    cd:on("stream.online", function()
      assert(c:sleep(0.01))
      error("late boom")
    end)
    cd:on("stream.online", function() after = after + 1 end)
    trigger("74", 2)
    H.wait_until(c, function() return got and after == 2 end, 10, "the error")
    assert.equal("callback_error", got.code)
    assert.matches("late boom", got.message)
  end)

  it("report an error raised before any yield and go on with the next handler and event", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    assert(cd:subscribe { type = "stream.online", version = "1", condition = { broadcaster_user_id = "75" } })
    local errs, after = {}, 0
    c:on("error", function(e) errs[#errs + 1] = e end)
    cd:on("stream.online", function() error("early boom") end)
    cd:on("stream.online", function() after = after + 1 end)
    trigger("75", 3)
    H.wait_until(c, function() return after == 3 and #errs == 3 end, 10, "3 events")
    assert.equal("callback_error", errs[1].code)
    assert.matches("early boom", errs[1].message)
    assert.matches("traceback", errs[1].message)
  end)
end)

describe("client:close()", function()
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  it("ends sleep, helix and wait_ready calls still waiting with nil, closed", function()
    local c = H.client(m)
    assert(m:fault { latency_ms = 3000 })
    finally(function() c:close(); assert(m:fault { latency_ms = 0 }) end)
    local cd = assert(c:conduit { shards = 1 }) -- its creation waits for the latency
    local results = {}
    local cos = {
      sleep = twconduit.spawn(function() results.sleep = table.pack(c:sleep(60)) end),
      helix = twconduit.spawn(function()
        results.helix = table.pack(c:helix("GET", "/eventsub/conduits"))
      end),
      wait_ready = twconduit.spawn(function() results.wait_ready = table.pack(cd:wait_ready(60)) end),
    }
    assert(c:step(0.05))
    for name, co in pairs(cos) do assert.equal("suspended", coroutine.status(co), name) end
    c:close()
    for name, co in pairs(cos) do
      assert.equal("dead", coroutine.status(co), name)
      local r = results[name]
      assert.is_nil(r[1], name)
      assert.equal("closed", r[2].code, name)
    end
  end)

  it("inside a handler of a loop driven with step completes once the step returns", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    assert(cd:subscribe { type = "stream.online", version = "1", condition = { broadcaster_user_id = "76" } })
    local waited
    twconduit.spawn(function() waited = table.pack(c:sleep(60)) end)
    local calls = 0
    cd:on("stream.online", function()
      calls = calls + 1
      c:close()
      assert.is_true(c:closed())
    end)
    trigger("76", 5)
    for _ = 1, 200 do -- at most 10 s
      if c:closed() then break end
      assert.is_true(c:step(0.05))
    end
    assert.equal(1, calls)
    assert.equal("closed client", twconduit.type(c))
    assert.is_nil(waited[1])
    assert.equal("closed", waited[2].code)
  end)

  -- Notifications on the hot path: once a runner is idle the core resumes it directly, so
  -- what a handler does on a later event (raise, yield) and a handler added or removed
  -- between events must behave as on the first.
  describe("dispatch of notifications to an idle runner", function()
    local function setup(channel)
      local c = H.client(m)
      local cd = H.ready_conduit(c, { shards = 1 })
      assert(cd:subscribe {
        type = "stream.online", version = "1", condition = { broadcaster_user_id = channel },
      })
      return c, cd
    end

    it("reports an error raised on a later event and goes on with the next handler and event", function()
      local c, cd = setup("81")
      finally(function() c:close() end)
      local errs, seen, after = {}, {}, {}
      c:on("error", function(e) errs[#errs + 1] = e end)
      cd:on("stream.online", function(_, msg)
        seen[#seen + 1] = msg.id
        if #seen == 4 then error("boom on the fourth") end
      end)
      cd:on("stream.online", function(_, msg) after[#after + 1] = msg.id end)
      trigger("81", 8)
      H.wait_until(c, function() return #after == 8 end, 10, "8 events")
      assert.equal(1, #errs)
      assert.equal("callback_error", errs[1].code)
      assert.matches("boom on the fourth", errs[1].message)
      assert.matches("traceback", errs[1].message)
      assert.same(seen, after) -- every event reached both handlers, in order
      local _, n = H.delivered_ids(m, "stream.online")
      assert.equal(8, n)
    end)

    it("lets a handler yield on a later event: the next handler runs at once", function()
      local c, cd = setup("82")
      finally(function() c:close() end)
      local log, seen, resumed = {}, 0, false
      cd:on("stream.online", function(_, msg)
        seen = seen + 1
        if seen == 3 then
          log[#log + 1] = "yield " .. msg.id
          assert(c:sleep(0.01))
          resumed = true
          log[#log + 1] = "resumed " .. msg.id
        end
      end)
      local order = {}
      cd:on("stream.online", function(_, msg)
        order[#order + 1] = msg.id
        log[#log + 1] = "second " .. msg.id
      end)
      trigger("82", 6)
      H.wait_until(c, function() return #order == 6 and resumed end, 10, "6 events and the resume")
      assert.equal(6, seen)
      local pos = {}
      for i, l in ipairs(log) do pos[l] = i end
      local third = order[3]
      assert.is_true(pos["second " .. third] < pos["resumed " .. third])
    end)

    it("sees a handler added and one removed between events", function()
      local c, cd = setup("83")
      finally(function() c:close() end)
      local a, b = 0, 0
      local function fb() b = b + 1 end
      cd:on("stream.online", function()
        a = a + 1
        if a == 3 then cd:on("stream.online", fb) end
      end)
      trigger("83", 5)
      H.wait_until(c, function() return a == 5 end, 10, "5 events")
      assert.equal(2, b) -- added during the third event: the fourth and fifth
      cd:off("stream.online", fb)
      trigger("83", 3)
      H.wait_until(c, function() return a == 8 end, 10, "3 more events")
      assert.equal(2, b)
    end)
  end)
end)
