-- Webhook shards, webhook subscriptions and mixed conduits against the emulator's
-- webhook delivery (signed requests, retries on the same shard, challenges).
local H = require "support.helper"
local core = require "twconduit.core"

local SANITIZED = os.getenv("SANITIZED") ~= nil and os.getenv("SANITIZED") ~= ""
local SECRET = "s3cret-for-webhooks"

local function mixed(c, srvs)
  local cd = H.ready_conduit(c, { shards = 2 })
  local whs = {}
  for i, srv in ipairs(srvs) do
    local s, err = cd:add_webhook_shard { server = srv, path = "/shard" .. i, secret = SECRET }
    assert(s, "add_webhook_shard: " .. tostring(err))
    whs[i] = s
  end
  return cd, whs
end

-- counts notifications by id, by transport and by shard
local function collector(cd)
  local st = { n = 0, seen = {}, dup = 0, by_transport = {}, by_shard = {} }
  cd:on("notification", function(_, msg)
    if st.seen[msg.id] then st.dup = st.dup + 1 end
    st.seen[msg.id] = true
    st.n = st.n + 1
    st.by_transport[msg.transport] = (st.by_transport[msg.transport] or 0) + 1
    local sid = msg.shard and msg.shard.id or "?"
    st.by_shard[sid] = (st.by_shard[sid] or 0) + 1
  end)
  return st
end

-- every notification the ledger lists as delivered was handled, and nothing dropped
local function ledger_exactly_once(m, st, type_, expect)
  local ids, delivered, l = H.delivered_ids(m, type_)
  assert.equal(expect, delivered)
  assert.equal(0, l.dropped)
  for id in pairs(ids) do assert.is_true(st.seen[id], "missing " .. id) end
  assert.equal(0, st.dup)
end

describe("webhooks", function()
  local m
  setup(function()
    m = H.start_mock { webhook_retry_base_s = 0.2, webhook_max_attempts = 6 }
  end)
  teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  it("a conduit of 2 websocket + 2 webhook shards gets 2,000 events across 100 channels exactly once", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local s1 = assert(c:webhook_server { port = 0 })
    local s2 = assert(c:webhook_server { port = 0, path = "/hooks" })
    assert.is_true(s1.port > 0)
    assert.equal("http://127.0.0.1:" .. s2.port .. "/hooks", s2.url)
    local cd, whs = mixed(c, { s1, s2 })
    assert.equal(4, cd.shard_count)
    assert.same({ "2", "3" }, { whs[1].id, whs[2].id })
    assert.equal("enabled", whs[1].status)
    local channels = H.channels(100)
    H.subscribe_all(cd, "stream.online", channels)
    local st = collector(cd)
    local per = SANITIZED and 5 or 20
    local r = assert(m:trigger { type = "stream.online", channels = channels, count = per })
    local total = 100 * per
    assert.equal(total, r.produced)
    H.wait_until(c, function() return st.n >= total end, 60, total .. " notifications")
    H.drain(c, 0.2)
    assert.equal(total, st.n)
    ledger_exactly_once(m, st, "stream.online", total)
    assert.is_true((st.by_transport.webhook or 0) > 0)
    assert.is_true((st.by_transport.websocket or 0) > 0)
    assert.equal(total, (st.by_transport.webhook or 0) + (st.by_transport.websocket or 0))
    -- webhook deliveries name their shard; the routes counted them
    assert.is_true((st.by_shard["2"] or 0) > 0 and (st.by_shard["3"] or 0) > 0)
    local rs = s1:stats().routes["/shard1"]
    assert.equal(st.by_shard["2"], rs.notifications)
    assert.equal(0, rs.rejected)
  end)
end)
