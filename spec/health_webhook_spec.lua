-- The health monitor with a webhook shard in the conduit: a webhook shard Twitch
-- disabled is not "repaired" with a websocket handover (it has no socket to hand over:
-- that only fails, again and again); the core's own reassignment brings it back.
local H = require "support.helper"

local SECRET = "s3cret-for-webhooks"

describe("health monitor and webhook shards", function()
  local m
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  it("a webhook shard Twitch disabled is not handed over", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local errs, ops, lost = {}, {}, 0
    c:on("error", function(e) errs[#errs + 1] = tostring(e) end)
    local cd = H.ready_conduit(c, { shards = 1 })
    local srv = assert(c:webhook_server { port = 0 })
    local wh = assert(cd:add_webhook_shard { server = srv, path = "/wh", secret = SECRET })
    assert.equal("enabled", wh.state)
    cd:on("operation", function(op) ops[#ops + 1] = op.name .. ":" .. op.phase end)
    cd:on("shard_lost", function() lost = lost + 1 end)
    cd:monitor { sample = 0.1, window = 2, poll = 0.2, alert_after = 0.3, backoff_min = 0.1,
      backoff_max = 0.2 }
    assert(m:call("POST", ("/conduits/%s/shards/%s/disable"):format(cd.id, wh.id),
      { status = "notification_failures_exceeded" }))
    H.wait_until(c, function() return lost > 0 end, 10, "the core seeing the shard lost")
    H.wait_until(c, function()
      for _, sh in ipairs(assert(c:conduit_shards(cd.id))) do
        if sh.id == wh.id then return sh.status == "enabled" end
      end
    end, 10, "the webhook shard enabled again on Twitch")
    H.drain(c, 1)
    cd:unmonitor()
    for _, o in ipairs(ops) do
      assert.is_nil(o:find("^handover"), "an operation on the webhook shard: " .. o)
    end
    for _, e in ipairs(errs) do assert.is_nil(e:find("repairing shard"), "a repair was tried: " .. e) end
    assert.equal(0, #ops)
  end)
end)
