-- The health monitor: rates and lag sampled from the shards' counters, conduit.shard.disabled
-- received on a separate transport (a second conduit), alerts when a shard stays down and
-- when two are down at once, and the recovery back to healthy.
local H = require "spec.support.helper"
local O = require "spec.support.ops"

describe("conduit health", function()
  local m
  before_each(function() m = H.start_mock() end)
  after_each(function() m:stop() end)

  it("reports rates, lag, Twitch's view through a second conduit, and alerts", function()
    local t = O.setup(m, 3)
    local c, client = t.c, t.client
    local watch = H.ready_conduit(client, { shards = 1 }) -- the separate transport
    local disabled = {}
    watch:on("conduit.shard.disabled", function(ev)
      disabled[#disabled + 1] = { conduit = ev.conduit_id, shard = ev.shard_id, status = ev.status }
    end)
    local alerts = {}
    c:on("alert", function(a) alerts[#alerts + 1] = a end)
    c:monitor { sample = 0.1, window = 2, poll = 0.5, transport = watch, alert_after = 0.5 }
    H.wait_until(client, function() return (c._monitor or {}).subscription ~= nil end, 10,
      "the conduit.shard.disabled subscription")

    O.during_stream(m, t, function()
      H.drain(client, 1.5)
      local hl = c:health()
      assert.are.equal("healthy", hl.status)
      assert.are.equal(3, #hl.shards)
      local total = 0
      for _, row in ipairs(hl.shards) do
        assert.are.equal("enabled", row.status)
        assert.are.equal("websocket", row.transport)
        assert.is_string(row.session)
        assert.is_number(row.connected_at)
        assert.is_true(row.rate > 0, "shard " .. row.id .. " rate")
        assert.is_number(row.last_event)
        assert.is_number(row.lag.p50)
        assert.is_true(row.lag.p50 <= row.lag.p99)
        assert.is_true(row.lag.p99 < 5, "loopback lag under 5 s")
        total = total + row.rate
      end
      -- the three shards carry the stream between them
      assert.is_true(total > O.RATE * 0.5 and total < O.RATE * 1.5, "total rate " .. total)
      assert.is_true(math.abs(total - hl.rate) < 1e-6)

      -- two shards down at once (held: no reconnect of their own)
      local s1, s2 = c:shard("1"), c:shard("2")
      s1:_hold(true)
      s2:_hold(true)
      assert(m:close_session(s1.session_id, 4000))
      assert(m:close_session(s2.session_id, 4000))
      H.wait_until(client, function() return #disabled >= 2 end, 10, "conduit.shard.disabled on the watcher")
      H.wait_until(client, function()
        local kinds = {}
        for _, a in ipairs(alerts) do kinds[a.kind] = (kinds[a.kind] or 0) + 1 end
        return kinds.two_down == 1 and kinds.shard_down == 2
      end, 10, "the alerts")
      hl = c:health()
      assert.are.equal("degraded", hl.status)
      table.sort(hl.down)
      assert.are.same({ "1", "2" }, hl.down)
      local rows = {}
      for _, row in ipairs(hl.shards) do rows[row.id] = row end
      assert.are.equal("websocket_internal_error", rows["1"].twitch_status)
      assert.is_number(rows["1"].down_since)
      s1:_hold(false)
      s2:_hold(false)
      H.wait_until(client, function() return c:health().status == "healthy" end, 10, "recovery")
      return true
    end)
    table.sort(disabled, function(a, b) return a.shard < b.shard end)
    assert.are.equal(c.id, disabled[1].conduit)
    assert.are.same({ "1", "2" }, { disabled[1].shard, disabled[2].shard })
    assert.are.equal("websocket_internal_error", disabled[1].status)
    -- the stats a Prometheus exporter reads: the lag histogram
    local st = c:shard("0"):stats()
    assert.are.equal(24, #st.lag_buckets)
    local sum = 0
    for _, v in ipairs(st.lag_buckets) do sum = sum + v end
    assert.are.equal(st.notifications, sum)
    -- two shards were down: Twitch's rules may have dropped what had no enabled shard left,
    -- but every delivered event was handled once
    c:unmonitor()
    client:close()
  end)
end)
