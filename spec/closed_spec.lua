-- One rule for closed objects (docs/api.md "Conventions"): a method that needs the
-- connection raises "<kind> is closed"; close(), closed(), is_running(), stop(), on/off,
-- the fields and tostring stay safe. conduit:delete() works on a closed conduit of an
-- open client (it deletes the conduit on Twitch).
local twconduit = require "twconduit"
local H = require "support.helper"

local function raises(msg, fn, ...)
  local args = table.pack(...)
  local ok, err = pcall(function() return fn(table.unpack(args, 1, args.n)) end)
  assert.is_false(ok, "expected an error: " .. msg)
  assert.matches(msg, tostring(err), 1, true)
end

describe("closed objects", function()
  local m
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  it("a closed client raises in every method that needs it, and the rest stays safe", function()
    local c = H.client(m)
    c:close()
    local closed = "client is closed"
    raises(closed, c.run, c)
    raises(closed, c.step, c, 0)
    raises(closed, c.pollfd, c)
    raises(closed, c.events, c)
    raises(closed, c.timeout, c)
    raises(closed, c.stats, c)
    raises(closed, c.now, c)
    raises(closed, c.options, c)
    raises(closed, c.conduit, c, { shards = 1 })
    raises(closed, c.open_conduits, c)
    raises(closed, c.helix, c, "GET", "/eventsub/conduits")
    raises(closed, c.conduits, c)
    raises(closed, c.create_conduit, c, 1)
    raises(closed, c.update_conduit, c, "x", 1)
    raises(closed, c.delete_conduit, c, "x")
    raises(closed, c.conduit_shards, c, "x")
    raises(closed, c.update_shards, c, "x", {})
    raises(closed, c.subscriptions, c, {})
    raises(closed, c.create_subscription, c, { type = "stream.online", version = "1",
      condition = { broadcaster_user_id = "1" }, transport = { method = "conduit", conduit_id = "x" } })
    raises(closed, c.delete_subscription, c, "x")
    raises(closed, c.sleep, c, 0)
    raises(closed, twconduit.sleep, c, 0)
    -- safe
    c:close()
    c:stop()
    assert.is_true(c:closed())
    assert.is_false(c:is_running())
    assert.equal(c, c:on("ready", function() end))
    assert.is_true(c:off("ready"))
    assert.matches("closed", tostring(c))
    assert.equal("closed client", twconduit.type(c))
  end)

  it("a closed conduit and its shards raise in every method that needs them; delete still works", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    local sh = cd:shards()[1]
    local id = cd.id
    cd:close()
    assert.equal("closed conduit", twconduit.type(cd))
    assert.equal("closed", cd.state)
    assert.equal(id, cd.id)
    local closed = "conduit is closed"
    raises(closed, cd.shards, cd)
    raises(closed, cd.shard, cd, "0")
    raises(closed, cd.wait_ready, cd, 1)
    raises(closed, cd.subscribe, cd, { type = "stream.online", condition = { broadcaster_user_id = "1" } })
    raises(closed, cd.subscriptions, cd)
    cd:close()
    assert.equal(cd, cd:on("ready", function() end))
    assert.is_true(cd:off("ready"))
    assert.matches("closed", tostring(cd))
    -- its shard
    H.wait_until(c, function() return sh.state == "closed" end, 5, "the shard to close")
    assert.equal("closed shard", twconduit.type(sh))
    raises("shard is closed", sh.stats, sh)
    raises("shard is closed", sh.reconnect, sh)
    assert.equal("0", sh.id)
    assert.equal(cd, sh.conduit)
    assert.is_nil(sh.session_id)
    assert.equal(sh, sh:on("error", function() end))
    assert.is_true(sh:off("error"))
    -- delete works on a closed conduit
    assert.is_true(assert(cd:delete()))
    assert.equal(0, #assert(c:conduits()))
  end)

  it("objects of a closed client: conduit, shard and subscription methods raise", function()
    local c = H.client(m)
    local cd = H.ready_conduit(c, { shards = 1 })
    local sub = assert(cd:subscribe { type = "stream.online", version = "1",
      condition = { broadcaster_user_id = "91" } })
    local sh = cd:shards()[1]
    c:close()
    raises("conduit is closed", cd.shards, cd)
    raises("conduit is closed", cd.subscribe, cd,
      { type = "stream.online", condition = { broadcaster_user_id = "1" } })
    raises("client is closed", cd.delete, cd)
    raises("shard is closed", sh.stats, sh)
    raises("client is closed", sub.delete, sub)
    assert.equal(sub, sub:on("revocation", function() end))
    assert.is_true(sub:off("revocation"))
    assert.equal("closed", cd.state)
    assert.equal("closed", sh.state)
  end)
end)
