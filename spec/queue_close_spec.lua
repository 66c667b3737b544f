-- Closing a gateway that holds messages Redis never stored (no spool): the loss is
-- reported to the error handlers whether the queue or the client is closed, inside or
-- outside step/run; never only a line on stderr. And a publish call that Redis refused
-- half-way leaves no de-duplication mark behind: its retry stores the messages.
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

  it("a publish Redis refused marks nothing: once Redis takes it, the retry stores every message", function()
    local R = require "support.redis"
    local redis = R.start()
    local c = H.client(m)
    finally(function() c:close(); redis:destroy() end)
    local errs = {}
    c:on("error", function(e) errs[#errs + 1] = e end)
    local q = assert(c:queue { redis = redis.url, name = "refbot", role = "gateway", partitions = 1 })
    H.wait_until(c, function() return q:stats().up end, 10, "the gateway's Redis link")
    local cd = H.ready_conduit(c, { shards = 1 })
    H.subscribe_all(cd, "stream.online", { "8201" })
    -- the stream's key holds a string: every XADD to it fails (WRONGTYPE)
    redis:cli("DEL", "refbot:s:0")
    redis:cli("SET", "refbot:s:0", "not a stream")
    assert(m:trigger { type = "stream.online", channels = { "8201" }, count = 3 })
    H.wait_until(c, function()
      for _, e in ipairs(errs) do if e.code == "redis_error" then return true end end
    end, 10, "the refused publish reported")
    redis:cli("DEL", "refbot:s:0")
    H.wait_until(c, function() return q:stats().published >= 3 end, 20, "3 messages published on a retry")
    assert.equal(0, q:stats().duplicates)
    assert.equal("3", redis:cli("XLEN", "refbot:s:0"))
  end)
end)

