-- Declarative subscriptions against the emulator: a large wanted set reconciled from
-- empty, after changes made behind the client's back, and after a crash halfway, each
-- with exactly the Helix calls needed (pages read + creates + deletes, counted by the
-- emulator) and no 429; then adoption, revocations, per-subscription errors and the
-- cost ceiling.
--
-- Under SANITIZED (ASan + UBSan, 2-3x slower) the large runs use 1,000 subscriptions
-- (100 removals, 100 additions) instead of 10,000 (1,000, 1,000) and a bucket of 900
-- points a minute instead of 6,000, so the first run still outruns the bucket and is
-- paced by its refill; the assertions are the same.
local H = require "support.helper"
local twconduit = require "twconduit"

local SAN = os.getenv("SANITIZED") ~= nil
local N = SAN and 1000 or 10000
local DRIFT = N // 10
local BUCKET = SAN and 900 or 6000
local PAGE = 100 -- the emulator's sub_page_size

local function pages(n) return math.max(1, (n + PAGE - 1) // PAGE) end

local function want_list(n, base)
  local list = {}
  for i = 1, n do
    list[i] = { type = "stream.online", condition = { broadcaster_user_id = tostring(base + i) } }
  end
  return list
end

-- the emulator's Helix counters for the subscription endpoints, and by status
local function counters(m)
  local h = assert(m:helix_calls())
  local r = h.by_route
  return {
    get = r["GET /eventsub/subscriptions"] or 0,
    post = r["POST /eventsub/subscriptions"] or 0,
    delete = r["DELETE /eventsub/subscriptions"] or 0,
    s429 = h.by_status["429"] or 0, s409 = h.by_status["409"] or 0,
  }
end

local function delta(a, b)
  return { get = b.get - a.get, post = b.post - a.post, delete = b.delete - a.delete,
    s429 = b.s429 - a.s429, s409 = b.s409 - a.s409 }
end

-- the emulator's enabled subscriptions on conduit id: broadcaster id -> sub
local function emulator_set(m, id)
  local st = assert(m:state())
  local set, n = {}, 0
  for _, s in ipairs(st.subscriptions) do
    if s.transport.conduit_id == id and s.status == "enabled" then
      assert(not set[s.condition.broadcaster_user_id], "a duplicate on the emulator")
      set[s.condition.broadcaster_user_id] = s
      n = n + 1
    end
  end
  return set, n
end

local function same_as(m, id, list)
  local set, n = emulator_set(m, id)
  assert.equal(#list, n)
  for _, w in ipairs(list) do
    local b = w.condition.broadcaster_user_id
    assert(set[b], "missing on the emulator: " .. b)
  end
end

describe("declarative subscriptions", function()
  local m
  lazy_setup(function()
    m = H.start_mock()
  end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function()
    assert(m:reset())
    assert(m:config { rate_limit = 800, max_total_cost = 10000 })
  end)

  it(("reconciles %d subscriptions at the bucket's pace: from empty, after drift, after a crash")
    :format(N), function()
    -- BUCKET points a minute; each run starts with a full bucket, as runs minutes apart
    -- would: the first spends it and then goes at the refill's pace
    assert(m:config { rate_limit = BUCKET, max_total_cost = 100000 })
    assert(m:set_bucket())
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = assert(c:conduit { shards = 0, total = 1 })
    local id = assert(cd:_wait_id())
    local list = want_list(N, 100000)
    local events, last = 0, nil
    cd:on("reconcile", function(st) events = events + 1; last = st end)

    -- 1. from empty: one page, N creates
    local before = counters(m)
    cd:want(list, { prune = true })
    local st = assert(cd:reconcile_wait(300))
    local d = delta(before, counters(m))
    assert.same({ get = 1, post = N, delete = 0, s429 = 0, s409 = 0 }, d)
    assert.equal("done", st.phase)
    assert.equal(N, st.created)
    assert.equal(1 + N, st.calls)
    assert.equal(st.total, st.done)
    assert.equal(0, #st.errors)
    assert.equal(N, st.total_cost)
    assert.is_true(events >= 3)
    assert.equal("done", last.phase)
    same_as(m, id, list)
    local rl = c:ratelimit()
    assert.equal(BUCKET, rl.limit)
    assert.is_true(N + 1 > BUCKET and c:stats().helix_rate_waits > 0) -- outran the bucket, waited
    assert.equal(0, rl.final_429)
    assert.equal(0, rl.waiting.background)

    -- 2. DRIFT removals and DRIFT additions behind the client's back
    local set = emulator_set(m, id)
    local gone = {}
    for i = 1, DRIFT do gone[i] = set[list[i * 7 % N + 1].condition.broadcaster_user_id].id end
    local del = assert(m:delete_subscriptions(gone))
    assert.equal(DRIFT, del.deleted)
    local extra = {}
    for i = 1, DRIFT do
      extra[i] = { type = "stream.online", condition = { broadcaster_user_id = tostring(900000 + i) },
        transport = { method = "conduit", conduit_id = id } }
    end
    local made = assert(m:create_subscriptions(extra))
    assert.equal(0, #made.errors)
    assert(m:set_bucket())
    before = counters(m)
    cd:reconcile_now()
    st = assert(cd:reconcile_wait(300))
    d = delta(before, counters(m))
    assert.same({ get = pages(N), post = DRIFT, delete = DRIFT, s429 = 0, s409 = 0 }, d)
    assert.equal(DRIFT, st.created)
    assert.equal(DRIFT, st.deleted)
    assert.equal(pages(N) + 2 * DRIFT, st.calls)
    same_as(m, id, list)

    -- 3. a crash halfway: the emulator emptied behind the client's back, the client
    -- reconciles and is closed (no clean-up) halfway, a fresh client resumes
    local all = {}
    for _, s in pairs(emulator_set(m, id)) do all[#all + 1] = s.id end
    assert.equal(N, assert(m:delete_subscriptions(all)).deleted)
    assert(m:set_bucket())
    before = counters(m)
    cd:reconcile_now()
    H.wait_until(c, function() return cd:reconcile_status().created >= N // 2 end, 300,
      "half of the subscriptions")
    c:close()
    -- requests already on the wire when the client went may still be answered: read
    -- until two readings agree
    local crashed, have
    for _ = 1, 50 do
      local c1 = counters(m)
      _, have = emulator_set(m, id)
      local c2 = counters(m)
      crashed = delta(before, c2)
      if c1.post == c2.post and have == crashed.post then break end
    end
    assert.equal(1, crashed.get)
    assert.equal(have, crashed.post) -- every create that reached Twitch made one
    assert.is_true(have >= N // 2 and have < N)
    assert.equal(0, crashed.s429)

    local c2 = H.client(m)
    finally(function() c2:close() end)
    local cd2 = assert(c2:conduit { id = id, shards = 0 })
    assert(m:set_bucket())
    before = counters(m)
    cd2:want(list, { prune = true })
    st = assert(cd2:reconcile_wait(300))
    d = delta(before, counters(m))
    assert.same({ get = pages(have), post = N - have, delete = 0, s429 = 0, s409 = 0 }, d)
    assert.equal(N - have, st.created)
    same_as(m, id, list)
  end)

  it("takes want_add and want_remove made during a run without reading Twitch again", function()
    assert(m:config { rate_limit = 6000 })
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = assert(c:conduit { shards = 0, total = 1 })
    local id = assert(cd:_wait_id())
    local n = SAN and 150 or 300
    local list = want_list(n, 4000)
    local before = counters(m)
    cd:want(list)
    H.wait_until(c, function() return cd:reconcile_status().created >= n // 4 end, 30, "creates to flow")
    local removed, final = {}, {}
    for i = 1, n do
      if i % 10 == 0 then removed[#removed + 1] = list[i] else final[#final + 1] = list[i] end
    end
    local added = want_list(10, 8000)
    for _, w in ipairs(added) do final[#final + 1] = w end
    cd:want_remove(removed)
    cd:want_add(added)
    local st = assert(cd:reconcile_wait(60))
    local d = delta(before, counters(m))
    same_as(m, id, final)
    assert.equal(1, d.get)
    assert.equal(0, d.s429 + d.s409)
    assert.equal(d.get + d.post + d.delete, st.calls)
    assert.equal(d.post - d.delete, #final) -- each removed one created before its removal is deleted
    assert.equal(#final, st.wanted)
  end)

  it("adopts what exists: the listing (any key order) and a 409", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = assert(c:conduit { shards = 0, total = 1 })
    local id = assert(cd:_wait_id())
    -- made elsewhere with the condition's keys in another order
    assert(m:call("POST", "/subscriptions", { subscriptions = {
      { type = "channel.chat.message", condition = { user_id = "1", broadcaster_user_id = "77" },
        transport = { method = "conduit", conduit_id = id } } } }))
    local before = counters(m)
    cd:want { { type = "channel.chat.message", condition = { broadcaster_user_id = "77", user_id = "1" } },
      { type = "stream.online", condition = { broadcaster_user_id = "78" } } }
    local st = assert(cd:reconcile_wait(30))
    assert.same({ get = 1, post = 1, delete = 0, s429 = 0, s409 = 0 }, delta(before, counters(m)))
    assert.equal(1, st.created)
    -- made elsewhere after the listing: the create answers 409 and adopts it
    assert(m:create_subscriptions { { type = "stream.online", condition = { broadcaster_user_id = "79" },
      transport = { method = "conduit", conduit_id = id } } })
    before = counters(m)
    cd:want_add { { type = "stream.online", condition = { broadcaster_user_id = "79" } } }
    st = assert(cd:reconcile_wait(30))
    assert.same({ get = 0, post = 1, delete = 0, s429 = 0, s409 = 1 }, delta(before, counters(m)))
    assert.equal(1, st.adopted)
    assert.equal(0, #st.errors)
    local _, n = emulator_set(m, id)
    assert.equal(3, n)
    -- want_remove deletes what was wanted, from what is known (no new listing)
    before = counters(m)
    cd:want_remove { { type = "stream.online", condition = { broadcaster_user_id = "78" } } }
    assert(cd:reconcile_wait(30))
    assert.same({ get = 0, post = 0, delete = 1, s429 = 0, s409 = 0 }, delta(before, counters(m)))
    local set
    set, n = emulator_set(m, id)
    assert.equal(2, n)
    assert.is_nil(set["78"])
  end)

  it("re-creates a revoked subscription; reports authorization_revoked and does not retry it", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    local id = cd.id
    local reported = {}
    cd:on("error", function(err) reported[#reported + 1] = err end)
    local list = want_list(3, 500)
    cd:want(list)
    assert(cd:reconcile_wait(30))
    local set = emulator_set(m, id)
    local a, b = set["501"].id, set["502"].id
    local before = counters(m)
    assert(m:revoke(a, "notification_failures_exceeded"))
    assert(m:revoke(b, "authorization_revoked"))
    -- the revocations trigger one re-check: one page, one create for the first
    H.wait_until(c, function()
      local s = emulator_set(m, id)
      return s["501"] and s["501"].id ~= a
    end, 20, "the revoked subscription to be re-created")
    local st = assert(cd:reconcile_wait(30))
    local d = delta(before, counters(m))
    assert.equal(1, d.post)
    assert.equal(0, d.s429)
    assert.equal(1, #reported)
    assert.equal("authorization_revoked", reported[1].code)
    assert.equal("502", reported[1].subscription.condition.broadcaster_user_id)
    assert.equal(2, st.wanted)
    -- a re-check does not try it again
    before = counters(m)
    cd:reconcile_now()
    st = assert(cd:reconcile_wait(30))
    assert.same({ get = 1, post = 0, delete = 0, s429 = 0, s409 = 0 }, delta(before, counters(m)))
    assert.equal(1, #reported)
    assert.equal(0, #st.errors) -- not reported again
    -- wanting it again tries it again
    cd:want_add { list[2] }
    st = assert(cd:reconcile_wait(30))
    assert.equal(1, st.created)
    assert.is_truthy(emulator_set(m, id)["502"])
  end)

  it("reports a permanent per-subscription error once and does not retry it", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = assert(c:conduit { shards = 0, total = 1 })
    local reported = {}
    c:on("error", function(err) reported[#reported + 1] = err end)
    cd:want { { type = "channel.follow", version = "2", condition = { broadcaster_user_id = "5" } },
      { type = "stream.online", condition = { broadcaster_user_id = "5" } } }
    local st = assert(cd:reconcile_wait(30))
    assert.equal("done", st.phase)
    assert.equal(1, st.created)
    assert.equal(1, #st.errors)
    assert.equal(400, st.errors[1].status)
    assert.is_true(st.errors[1].permanent)
    assert.equal("channel.follow", st.errors[1].subscription.type)
    assert.equal(1, #reported)
    local before = counters(m)
    cd:reconcile_now()
    assert(cd:reconcile_wait(30))
    assert.same({ get = 1, post = 0, delete = 0, s429 = 0, s409 = 0 }, delta(before, counters(m)))
    assert.equal(1, #reported)
  end)

  it("refuses to exceed max_total_cost and says by how much", function()
    assert(m:config { max_total_cost = 5 })
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = assert(c:conduit { shards = 0, total = 1 })
    local id = assert(cd:_wait_id())
    local reported = {}
    cd:on("error", function(err) reported[#reported + 1] = err end)
    local before = counters(m)
    cd:want(want_list(8, 700))
    local st, err = cd:reconcile_wait(30)
    assert.is_nil(st)
    assert.equal("cost_exceeded", err.code)
    assert.equal(3, err.shortfall)
    assert.equal(5, err.max_total_cost)
    assert.equal(3, err.missing)
    local d = delta(before, counters(m))
    assert.equal(5, d.post) -- never a create Twitch would refuse
    assert.equal(0, d.s429)
    local _, n = emulator_set(m, id)
    assert.equal(5, n)
    assert.equal(1, #reported)
    assert.equal("creating", cd:reconcile_status().phase)
    assert.equal(5, cd:reconcile_status().total_cost)
  end)

  it("serves bot calls before the reconciler's queue", function()
    assert(m:config { rate_limit = 6000 })
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = assert(c:conduit { shards = 0, total = 1 })
    assert(cd:_wait_id())
    local n = SAN and 200 or 600
    cd:want(want_list(n, 3000), { concurrency = 64 })
    H.wait_until(c, function() return cd:reconcile_status().created >= 20 end, 30, "creates to flow")
    local rl = c:ratelimit()
    local waiting = rl.waiting.background
    assert.is_true(waiting > 0, "background calls waiting")
    local bg0, bot0 = rl.sent.background, rl.sent.bot
    local list
    twconduit.spawn(function() list = assert(c:conduits()) end) -- a bot call, queued behind them
    -- the bot call goes out before the background calls that were waiting when it came
    H.wait_until(c, function() return c:ratelimit().sent.bot > bot0 end, 30, "the bot call sent")
    local bg_meanwhile = c:ratelimit().sent.background - bg0
    assert.is_true(bg_meanwhile < waiting,
      ("%d background calls were sent before the bot call, %d were waiting"):format(bg_meanwhile, waiting))
    H.wait_until(c, function() return list ~= nil end, 30, "the bot call's answer")
    assert.equal(1, #list)
    assert(cd:reconcile_wait(60))
  end)

  it("checks its arguments", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = assert(c:conduit { shards = 0, total = 1 })
    assert.has_error(function() cd:want("x") end)
    assert.has_error(function() cd:want { { type = 1, condition = {} } } end)
    assert.has_error(function()
      cd:want { { type = "stream.online", condition = { broadcaster_user_id = 5 } } }
    end)
    assert.has_error(function() cd:want({}, { prune = "yes" }) end)
    assert.has_error(function() cd:want({}, { bogus = true }) end)
    assert.has_error(function() cd:reconcile_wait(-1) end)
    assert.has_error(function() c:helix("GET", "/x", { priority = "urgent" }) end)
    assert.equal("done", cd:reconcile_status().phase)
  end)
end)
