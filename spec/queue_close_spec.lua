-- Closing a gateway that holds messages Redis never stored (no spool): the loss is
-- reported to the error handlers whether the queue or the client is closed, inside or
-- outside step/run; never only a line on stderr.
local H = require "support.helper"

describe("closing a gateway with unstored messages", function()
  local m
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  -- a gateway whose Redis is not there, holding n notifications in its memory buffer
  local function holding(n)
    local c = H.client(m)
    local errs = {}
    c:on("error", function(e) errs[#errs + 1] = e end)
    local q = assert(c:queue { redis = "unix:/nonexistent/twconduit-redis.sock", name = "closebot",
      role = "gateway", connect_timeout = 0.2 })
    local cd = H.ready_conduit(c, { shards = 1 })
    H.subscribe_all(cd, "stream.online", { "8101" })
    assert(m:trigger { type = "stream.online", channels = { "8101" }, count = n })
    H.wait_until(c, function() return q:stats().buffered >= n end, 10, n .. " messages buffered")
    return c, q, errs
  end
  local function lost(errs)
    for _, e in ipairs(errs) do
      if e.code == "queue_lost" then return e end
    end
  end

  it("q:close() outside step/run reports queue_lost to the client's error handlers", function()
    local c, q, errs = holding(3)
    finally(function() c:close() end)
    q:close() -- at the top level: no step or run is active
    local e = lost(errs)
    assert.is_table(e, "queue_lost reported")
    assert.matches("3 messages not stored", e.message)
  end)

  it("client:close() closes its queues first, so their losses are reported too", function()
    local c, _, errs = holding(2)
    c:close()
    local e = lost(errs)
    assert.is_table(e, "queue_lost reported")
    assert.matches("2 messages not stored", e.message)
  end)
end)
