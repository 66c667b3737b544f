local twconduit = require "twconduit"
local H = require "support.helper"

describe("twconduit.client", function()
  local m
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)

  describe("misuse raises with the argument named", function()
    it("rejects a missing options table", function()
      assert.has_error(function() twconduit.client() end,
        "bad argument #1 to 'client' (table expected, got nil)")
    end)
    it("rejects wrong option types and unknown options", function()
      assert.has_error(function() twconduit.client { client_id = 1, client_secret = "x" } end,
        "client_id must be a string")
      assert.has_error(function() twconduit.client { client_secret = {} } end,
        "client_secret must be a string")
      assert.has_error(function() twconduit.client { client_id = "x", client_secret = "y", bogus = 1 } end,
        "unknown option 'bogus'")
      assert.has_error(function()
        twconduit.client { client_id = "x", client_secret = "y", keepalive = 5 }
      end,
        "keepalive must be an integer between 10 and 600")
    end)
    it("checks conduit options", function()
      local c = H.client(m)
      finally(function() c:close() end)
      assert.has_error(function() c:conduit() end,
        "bad argument #1 to 'conduit' (table expected, got nil)")
      assert.has_error(function() c:conduit { shards = -1 } end,
        "shards must be a non-negative integer")
      assert.has_error(function() c:conduit { shards = 1.5 } end,
        "shards must be a non-negative integer")
      assert.has_error(function() c:conduit { shards = 1, colour = "red" } end,
        "unknown option 'colour'")
      assert.has_error(function() c:on("no_such_event", print) end,
        "bad argument #1 to 'on' (unknown event 'no_such_event')")
      assert.has_error(function() c:on("ready", 42) end,
        "bad argument #2 to 'on' (function expected, got number)")
      assert.has_error(function() c:helix("GET", "eventsub/conduits") end,
        "bad argument #2 to 'helix' (path must start with '/')")
    end)
    it("raises on a closed client", function()
      local c = H.client(m)
      c:close()
      c:close() -- idempotent
      assert.equal("closed client", twconduit.type(c))
      assert.has_error(function() c:step(0) end, "client is closed")
    end)
  end)

  it("errors are tables with __tostring and __concat", function()
    local e = twconduit.error("rate_limited", "slow down", 429)
    assert.equal("rate_limited (429): slow down", tostring(e))
    assert.equal("x: rate_limited (429): slow down", "x: " .. e)
    assert.equal("error", twconduit.type(e))
  end)

  it("fails with nil, err when the outside world fails", function()
    local c = H.client(m, { api_base = "http://127.0.0.1:1/helix", auth_base = "http://127.0.0.1:1/oauth2",
      http_retries = 0 })
    finally(function() c:close() end)
    c:on("error", function() end)
    local body, err = c:helix("GET", "/eventsub/conduits")
    assert.is_nil(body)
    assert.equal("table", type(err))
    assert.is_string(err.code)
    assert.is_true(err.code == "network" or err.code == "auth_failed", err.code)
  end)

  it("makes a client without credentials (a queue worker's): Helix calls fail with no_credentials", function()
    local c = twconduit.client {}
    finally(function() c:close() end)
    assert.is_nil(c:options().client_id)
    local body, err = c:helix("GET", "/eventsub/conduits")
    assert.is_nil(body)
    assert.equal("no_credentials", err.code)
    assert.matches("client_id", err.message)
    local c2 = twconduit.client { client_id = "abc" }
    finally(function() c2:close() end)
    body, err = c2:helix("GET", "/eventsub/conduits")
    assert.is_nil(body)
    assert.equal("no_credentials", err.code)
    assert.matches("client_secret", err.message)
  end)

  describe("helix and endpoint wrappers", function()
    local c
    before_each(function() assert(m:reset()); c = H.client(m) end)
    after_each(function() c:close() end)

    it("returns plain tables with integers kept integers", function()
      local created = assert(c:create_conduit(3))
      assert.is_string(created.id)
      assert.equal(3, created.shard_count)
      assert.equal("integer", math.type(created.shard_count))
      local list = assert(c:conduits())
      assert.equal(1, #list)
      assert.equal(created.id, list[1].id)
      local upd = assert(c:update_conduit(created.id, 5))
      assert.equal(5, upd.shard_count)
      local shards = assert(c:conduit_shards(created.id))
      assert.equal(5, #shards)
      assert.is_true(assert(c:delete_conduit(created.id)))
      local _, err = c:update_conduit(created.id, 2)
      assert.equal("not_found", err.code)
      assert.equal(404, err.status)
    end)

    it("pages through subscriptions and keeps the totals", function()
      local conduit = assert(c:create_conduit(1))
      for i = 1, 3 do
        assert(c:create_subscription { type = "stream.online", version = "1",
          condition = { broadcaster_user_id = tostring(500 + i) },
          transport = { method = "conduit", conduit_id = conduit.id } })
      end
      local list = assert(c:subscriptions {})
      assert.equal(3, #list)
      assert.equal(3, list.total)
      assert.equal("integer", math.type(list.total_cost))
      local only = assert(c:subscriptions { conduit_id = conduit.id })
      assert.equal(3, #only)
      assert.equal(0, #assert(c:subscriptions { conduit_id = "nope" }))
      local _, err = c:create_subscription { type = "stream.online", version = "1",
        condition = { broadcaster_user_id = "501" },
        transport = { method = "conduit", conduit_id = conduit.id } }
      assert.equal("conflict", err.code)
      assert.is_true(assert(c:delete_subscription(list[1].id)))
    end)

    it("absorbs 429 and 5xx from Helix", function()
      assert(m:fault { helix = { { status = 429, count = 2 }, { status = 503, count = 2 } } })
      local before = m:state().helix_calls.total
      local list, err = c:conduits()
      assert.is_table(list, tostring(err))
      assert.is_true(m:state().helix_calls.total - before >= 5)
      assert.is_true(c:stats().helix_retries >= 1)
    end)

    it("refreshes the token after a 401", function()
      assert(c:conduits())
      local fetches = c:stats().token_fetches
      local tokens = 0
      c:on("token", function() tokens = tokens + 1 end)
      assert(m:revoke_all_tokens())
      local list, err = c:conduits()
      assert.is_table(list, tostring(err))
      assert.is_true(c:stats().token_fetches > fetches)
      assert.is_true(tokens >= 1)
    end)

    it("update_shards batches by patch_batch", function()
      c:close()
      c = H.client(m, { patch_batch = 2 })
      local conduit = assert(c:create_conduit(5))
      local before = m:state().helix_calls.by_route["PATCH /eventsub/conduits/shards"] or 0
      local shards = {}
      for i = 0, 4 do
        shards[#shards + 1] = { id = tostring(i), transport = { method = "websocket", session_id = "nope" } }
      end
      local r = assert(c:update_shards(conduit.id, shards))
      assert.equal(5, #r.errors) -- no such sessions
      assert.equal(3, m:state().helix_calls.by_route["PATCH /eventsub/conduits/shards"] - before)
    end)
  end)

  describe("async calls", function()
    local c
    before_each(function() c = H.client(m) end)
    after_each(function() c:close() end)

    it("yield inside spawn and resume in order", function()
      local steps = {}
      twconduit.spawn(function()
        steps[#steps + 1] = "start"
        assert(twconduit.sleep(c, 0.05))
        steps[#steps + 1] = "slept"
        local list = assert(c:conduits())
        steps[#steps + 1] = type(list)
      end)
      assert.same({ "start" }, steps)
      H.wait_until(c, function() return #steps == 3 end, 5, "the coroutine")
      assert.same({ "start", "slept", "table" }, steps)
    end)

    it("raise when called from a plain callback", function()
      local err
      twconduit.spawn(function() twconduit.sleep(c, 0.01) end)
      c._core:timer(0.01, function()
        local ok, e = pcall(c.conduits, c)
        err = ok and "no error" or e
      end)
      H.wait_until(c, function() return err end, 5, "the timer")
      assert.matches("call this from twconduit.spawn", err)
    end)

    it("report errors of a spawned coroutine through the error event", function()
      local got
      c:on("error", function(e) got = e end)
      twconduit.spawn(function()
        twconduit.sleep(c, 0.01)
        error("boom")
      end)
      H.wait_until(c, function() return got end, 5, "the error event")
      assert.equal("callback_error", got.code)
      assert.matches("boom", got.message)
      assert.matches("traceback", got.message)
    end)

    it("block at top level while the loop is not running", function()
      local t0 = c:now()
      assert.is_true(twconduit.sleep(c, 0.1))
      assert.is_true(c:now() - t0 >= 0.09)
    end)
  end)

  it("step refuses to nest and pollfd/events/timeout answer", function()
    local c = H.client(m)
    finally(function() c:close() end)
    assert.is_number(c:pollfd())
    assert.equal("r", c:events())
    local t = c:timeout()
    assert.is_true(t == nil or t >= 0)
    local nested
    c._core:timer(0, function() nested = table.pack(c:step(0)) end)
    H.wait_until(c, function() return nested end, 5, "the timer")
    assert.is_nil(nested[1])
    assert.equal("busy", nested[2].code)
  end)
end)
