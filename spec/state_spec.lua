-- The state store: a store object with load/save, the file store's atomic write, and
-- misuse.
local H = require "spec.support.helper"
local core = require "twconduit.core"
local state = require "twconduit.state"

describe("state store", function()
  local m
  before_each(function() m = H.start_mock() end)
  after_each(function() m:stop() end)

  it("keeps the conduit and subscriptions in a store object; a reopen creates nothing", function()
    local saved, saves = nil, 0
    local store = {
      load = function() return saved and core.json_decode(saved) or nil end,
      save = function(d) saves = saves + 1; saved = core.json_encode(d); return true end,
    }
    local client = H.client(m)
    local c = H.ready_conduit(client, { shards = 2, state = store })
    local sub = assert(c:subscribe { type = "stream.online", condition = { broadcaster_user_id = "42" } })
    local d = core.json_decode(saved)
    assert.are.equal(c.id, d.conduit_id)
    assert.are.equal(2, d.shards)
    assert.are.equal(1, #d.subscriptions)
    assert.are.equal(sub.id, d.subscriptions[1].id)
    assert(c:resize(3))
    assert.are.equal(3, core.json_decode(saved).shards)
    local id = c.id
    client:close()

    local calls = assert(m:state()).helix_calls.by_route
    local creates = (calls["POST /eventsub/conduits"] or 0) + (calls["POST /eventsub/subscriptions"] or 0)
    client = H.client(m)
    c = H.ready_conduit(client, { state = store })
    assert.are.equal(id, c.id)
    assert.are.equal(3, #c:shards())
    local again = assert(c:subscribe { type = "stream.online", condition = { broadcaster_user_id = "42" } })
    assert.are.equal(sub.id, again.id)
    calls = assert(m:state()).helix_calls.by_route
    assert.are.equal(creates, (calls["POST /eventsub/conduits"] or 0) + (calls["POST /eventsub/subscriptions"] or 0))
    client:close()
  end)

  it("writes the file atomically and refuses bad stores", function()
    local path = os.tmpname()
    assert.is_true(core.write_atomic(path, '{"conduit_id":"x"}'))
    local f = assert(io.open(path))
    assert.are.equal('{"conduit_id":"x"}', f:read("a"))
    f:close()
    assert.is_nil(io.open(path .. ".tmp"))
    assert.are.equal("x", state.file(path).load().conduit_id)
    local ok, err = core.write_atomic("/nonexistent-dir/state.json", "{}")
    assert.is_nil(ok)
    assert.are.equal("io_error", err.code)
    os.remove(path)
    local bad = os.tmpname()
    f = assert(io.open(bad, "w"))
    f:write("not json")
    f:close()
    local client = H.client(m)
    assert.has_error(function() client:conduit { state = bad } end)
    assert.has_error(function() client:conduit { state = 42 } end, "state must be a path or an object with load and save")
    os.remove(bad)
    client:close()
  end)
end)
