-- The autoscale policy driven by a rising then falling event rate: it scales up once and
-- back down once (no flapping while the rate holds), and nothing is lost on the way.
local H = require "spec.support.helper"
local O = require "spec.support.ops"
local autoscale = require "twconduit.policies.autoscale"

describe("autoscale policy", function()
  local m
  before_each(function() m = H.start_mock() end)
  after_each(function() m:stop() end)

  it("scales 1 -> up -> 1 with the rate, once each way, without loss", function()
    local t = O.setup(m, 1)
    local c, client = t.c, t.client
    local high = O.SAN and 300 or 500
    local up_to = O.SAN and 3 or 4 -- ceil(high / (0.6 * 200)), capped at max = 4
    c:monitor { sample = 0.1, window = 1.5, poll = 0 }
    if os.getenv("DEBUG_OPS") then c:on("operation", function(ev) print("op", ev.name, ev.phase, ev.message, client:now()) end) end
    local p = autoscale { target = 200, sustain = 1, cooldown = 3, max = 4 }
    local pol = c:policy(p, { interval = 0.2, cooldown = 3 })

    local st = assert(m:stream { type = "stream.online", channels = t.chans, rate = high, count = high * 60 })
    H.wait_until(client, function() return c.shard_count == up_to and not c:operation() end, 30, "the scale-up")
    assert.are.equal(1, #pol.actions)
    assert.are.same({ resize = up_to }, { resize = pol.actions[1].resize })
    -- the rate holds: 4 shards at 125/s each sit inside the 40-80 % band
    H.drain(client, 4)
    assert.are.equal(1, #pol.actions, "no second action while the rate holds")
    assert(m:stop_stream(st.stream_id))

    st = assert(m:stream { type = "stream.online", channels = t.chans, rate = 40, count = 40 * 60 })
    H.wait_until(client, function() return c.shard_count == 1 and not c:operation() end, 30, "the scale-down")
    assert.are.equal(2, #pol.actions)
    assert.are.equal(1, pol.actions[2].resize)
    H.drain(client, 4)
    assert.are.equal(2, #pol.actions, "no flapping")
    assert(m:stop_stream(st.stream_id))
    assert.are.equal(2, #p.decisions)
    assert.is_true(p.decisions[1].rate > 0.8 * 200)
    assert.is_true(p.decisions[2].rate / p.decisions[2].from < 0.4 * 200)
    pol.stop()
    c:unmonitor()
    O.check_ledger(m, t)
    assert.are.same({ "start", "done", "start", "done" }, O.phases(t, "resize"))
    client:close()
  end)

  it("checks its options", function()
    assert.has_error(function() autoscale { target = 0 } end, "target must be > 0")
    assert.has_error(function() autoscale { up = 0.3 } end, "down < aim < up expected")
    assert.has_error(function() autoscale { nope = 1 } end, "unknown option 'nope'")
    -- a policy the user writes: a function returning an action
    local p = autoscale { target = 100, sustain = 0, cooldown = 0 }
    local snap = { running = 2, rate = 1000, now = 10 }
    assert.is_nil(p:tick(snap)) -- the direction is noted first
    assert.are.same({ resize = 17 }, p:tick(snap))
  end)
end)
