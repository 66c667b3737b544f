-- Notifications on the hot path: once a runner is idle the core resumes it directly, so
-- what a handler does on a later event (raise, yield) and a handler added or removed
-- between events must behave as on the first.
local H = require "support.helper"

local m
local function trigger(channel, n)
  assert(m:trigger { type = "stream.online", channels = { channel }, count = n })
end

describe("dispatch of notifications to an idle runner", function()
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

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
