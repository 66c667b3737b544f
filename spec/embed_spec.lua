-- The embedding trio (pollfd / events / timeout, then step(0)) under real host loops.
local H = require "support.helper"

describe("embedding", function()
  local m
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  -- drives a conduit to ready, subscribes and receives `count` events, all from inside
  -- the host's loop; `run_host(client, done)` must return once done() is true
  local function scenario(run_host)
    local c = H.client(m)
    local result = { ready = false, n = 0 }
    local cd = assert(c:conduit { shards = 2 })
    cd:on("ready", function() result.ready = true end)
    cd:on("notification", function() result.n = result.n + 1 end)
    local twconduit = require "twconduit"
    twconduit.spawn(function()
      assert(cd:wait_ready(15))
      assert(cd:subscribe { type = "stream.online", version = "1",
        condition = { broadcaster_user_id = "808" } })
      result.subscribed = true
    end)
    local triggered = false
    local ok, err = pcall(run_host, c, function()
      if result.subscribed and not triggered then
        triggered = true
        assert(m:trigger { type = "stream.online", channels = { "808" }, count = 10 })
      end
      return result.n >= 10
    end)
    c:close()
    assert(ok, tostring(err))
    assert.is_true(result.ready)
    assert.equal(10, result.n)
  end

  it("works inside a cqueues loop", function()
    local cqueues = require "cqueues"
    scenario(function(client, done)
      local cq = cqueues.new()
      local deadline = cqueues.monotime() + 20
      cq:wrap(function()
        while not done() do
          assert(cqueues.monotime() < deadline, "timed out in the cqueues loop")
          cqueues.poll(client, math.min(client:timeout() or 1, 1))
          assert(client:step(0))
        end
      end)
      local ok, err = cq:loop()
      assert(ok, tostring(err))
      cqueues.cancel(client:pollfd())
    end)
  end)

  it("works inside a luv loop", function()
    local uv = require "luv"
    scenario(function(client, done)
      local poll = uv.new_poll(client:pollfd())
      local timer = uv.new_timer()
      local guard = uv.new_timer()
      local failure
      local function finish()
        poll:stop(); timer:stop(); guard:stop()
      end
      local function pump()
        local ok, err = client:step(0)
        if not ok then failure = tostring(err); return finish() end
        local ok2, d = pcall(done)
        if not ok2 then failure = tostring(d); return finish() end
        if d then return finish() end
        local t = client:timeout()
        if t then timer:start(math.max(1, math.ceil(t * 1000)), 0, pump) else timer:stop() end
      end
      poll:start("r", function() pump() end)
      guard:start(20000, 0, function() failure = "timed out in the luv loop"; finish() end)
      pump()
      uv.run("default")
      poll:close(); timer:close(); guard:close()
      uv.run("nowait")
      assert(failure == nil, failure)
    end)
  end)
end)
