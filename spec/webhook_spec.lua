-- Webhook shards, webhook subscriptions and mixed conduits against the emulator's
-- webhook delivery (signed requests, retries on the same shard, challenges).
local H = require "support.helper"
local W = require "support.webhook_post"
local twconduit = require "twconduit"

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

  it("a conduit of 2 websocket + 2 webhook shards gets 2,000 events on 100 channels once", function()
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

describe("webhook delivery", function()
  local m
  setup(function()
    m = H.start_mock { webhook_retry_base_s = 0.2, webhook_max_attempts = 6 }
  end)
  teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  it("a stopped receiver is retried on the same shard and its events arrive when it is back", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local s1 = assert(c:webhook_server { port = 0 })
    local s2 = assert(c:webhook_server { port = 0 })
    local port2 = s2.port
    local cd, whs = mixed(c, { s1, s2 })
    local channels = H.channels(40, 3000)
    H.subscribe_all(cd, "stream.online", channels)
    local st = collector(cd)
    s2:close()
    local r = assert(m:trigger { type = "stream.online", channels = channels, count = 2 })
    local total = r.produced
    -- the other shards deliver at once; shard 3's events wait for their retries
    H.wait_until(c, function() return st.n > 0 end, 20, "the first notifications")
    assert.is_nil(st.by_shard["3"])
    -- the receiver comes back only once the emulator has seen one of shard 3's attempts
    -- fail (on a slow machine its first attempts may not have been made yet)
    H.wait_until(c, function()
      for _, e in ipairs(assert(m:ledger()).entries) do
        if e.shard == "3" then
          for _, a in ipairs(e.attempts) do
            if a.result == "transport error" or a.result == "http error" then return true end
          end
        end
      end
    end, 20, "a failed attempt on shard 3")
    local s2b = assert(c:webhook_server { port = port2 })
    assert(whs[2]:webhook_attach(s2b))
    H.wait_until(c, function() return st.n >= total end, 30, total .. " notifications")
    H.drain(c, 0.3)
    assert.equal(total, st.n)
    ledger_exactly_once(m, st, "stream.online", total)
    assert.is_true(st.by_shard["3"] > 0)
    -- the ledger shows the retries, all on shard 3
    local retried = 0
    for _, e in ipairs(assert(m:ledger()).entries) do
      if e.shard == "3" and e.message_type == "notification" then
        for _, a in ipairs(e.attempts) do assert.equal("3", a.shard) end
        if #e.attempts > 1 then retried = retried + 1 end
      end
    end
    assert.is_true(retried > 0) -- (a request on a dropped keep-alive connection may be
    -- resent by the emulator's HTTP client within one attempt)
    assert.equal("enabled", whs[2].status)
  end)

  it("rotates a secret: both are accepted during the grace period, nothing is lost", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local s1 = assert(c:webhook_server { port = 0 })
    local cd = H.ready_conduit(c, { shards = 0, total = 1 })
    local sh = assert(cd:add_webhook_shard { id = 0, server = s1, secret = SECRET })
    assert.equal("0", sh.id)
    local channels = H.channels(10, 4000)
    H.subscribe_all(cd, "stream.online", channels)
    local st = collector(cd)
    -- the PATCH with the new secret is held: Twitch still signs with the old one
    assert(m:fault { shard_patch = { hold = 1 } })
    local done
    twconduit.spawn(function() done = { sh:rotate_secret("a-new-secret-0123", { grace = 60 }) } end)
    assert(m:trigger { type = "stream.online", channels = channels, count = 3 })
    H.wait_until(c, function() return st.n >= 30 end, 20, "30 notifications under the old secret")
    local path = sh:webhook_info().path
    local rs = s1:stats().routes[path]
    assert.equal(30, rs.old_secret)
    assert(m:call("POST", "/shard_patches/release", {}))
    H.wait_until(c, function() return done end, 20, "the rotation")
    assert.is_true(done[1], tostring(done[2]))
    assert(m:trigger { type = "stream.online", channels = channels, count = 3 })
    H.wait_until(c, function() return st.n >= 60 end, 20, "30 more")
    H.drain(c, 0.2)
    rs = s1:stats().routes[path]
    assert.equal(30, rs.old_secret) -- the new ones were signed with the new secret
    assert.equal(0, rs.rejected)
    ledger_exactly_once(m, st, "stream.online", 60)
  end)

  it("maintenance: a webhook shard goes offline and back without loss", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local s1 = assert(c:webhook_server { port = 0 })
    local s2 = assert(c:webhook_server { port = 0 })
    local port1 = s1.port
    local cd, whs = mixed(c, { s1, s2 })
    local k = whs[1] -- shard 2; the last is shard 3
    local channels = H.channels(40, 5000)
    H.subscribe_all(cd, "stream.online", channels)
    local st = collector(cd)
    local ok, err = cd:webhook_offline(k)
    assert(ok, tostring(err))
    assert.equal(3, cd.shard_count)
    s1:close() -- k's receiver is down for its maintenance
    local before = st.by_shard["2"] or 0
    local r = assert(m:trigger { type = "stream.online", channels = channels, count = 3 })
    H.wait_until(c, function() return st.n >= r.produced end, 30, "the events during maintenance")
    assert.equal(before, st.by_shard["2"] or 0)
    local s1b = assert(c:webhook_server { port = port1 })
    assert(k:webhook_attach(s1b))
    ok, err = cd:webhook_online(k)
    assert(ok, tostring(err))
    assert.equal(4, cd.shard_count)
    local r2 = assert(m:trigger { type = "stream.online", channels = channels, count = 3 })
    local total = r.produced + r2.produced
    H.wait_until(c, function() return st.n >= total end, 30, "the events after maintenance")
    H.drain(c, 0.3)
    assert.equal(total, st.n)
    ledger_exactly_once(m, st, "stream.online", total)
    assert.is_true((st.by_shard["2"] or 0) > before, "shard 2 delivers again")
    local shards = assert(c:conduit_shards(cd.id))
    assert.equal(4, #shards)
    for _, s in ipairs(shards) do assert.equal("enabled", s.status) end
  end)

  it("webhook subscriptions without a conduit: notifications and revocations", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local srv = assert(c:webhook_server { port = 0 })
    local sub, err = c:subscribe { transport = "webhook", server = srv, secret = SECRET,
      type = "stream.online", condition = { broadcaster_user_id = "6001" } }
    assert(sub, tostring(err))
    assert.equal("enabled", sub.status)
    local got = {}
    c:on("notification", function(_, msg) got[#got + 1] = msg end)
    local r = assert(m:trigger { type = "stream.online", channels = { "6001" }, count = 2 })
    H.wait_until(c, function() return #got >= 2 end, 20, "2 notifications")
    assert.equal("webhook", got[1].transport)
    assert.is_nil(got[1].conduit)
    assert.equal("stream.online", got[1].type)
    assert.equal(r.message_ids[1], got[1].id)
    local rev
    sub:on("revocation", function(s, status) rev = { s, status } end)
    assert(m:revoke(sub.id, "authorization_revoked"))
    H.wait_until(c, function() return rev end, 20, "the revocation")
    assert.equal(sub, rev[1])
    assert.equal("authorization_revoked", rev[2])
    -- a wrong secret is refused before any request
    local bad, berr = c:subscribe { transport = "webhook", server = srv, secret = "short",
      type = "stream.online", condition = { broadcaster_user_id = "6002" } }
    assert.is_nil(bad)
    assert.equal("invalid_argument", berr.code)
  end)
end)

describe("webhook refusals from Lua's point of view", function()
  local m
  setup(function() m = H.start_mock() end)
  teardown(function() if m then m:stop() end end)

  local curl_bg, iso = W.curl_bg, W.iso
  local function signed(secret, id, ts, body) return W.sign(m, secret, id, ts, body) end

  it("forged, stale and 10 MB requests get 403 / 403 / 413 and never reach Lua", function()
    W.need_curl()
    local c = H.client(m)
    finally(function() c:close() end)
    local srv = assert(c:webhook_server { port = 0, max_body = 65536 })
    local route = assert(srv:_route("/hook", SECRET))
    assert(route)
    local handled = 0
    c:on("notification", function() handled = handled + 1 end)
    local body = '{"subscription":{"id":"s","type":"stream.online","version":"1","status":"enabled"},'
      .. '"event":{"broadcaster_user_id":"1"}}'
    local bodyfile = os.tmpname()
    local f = assert(io.open(bodyfile, "w"))
    f:write(body)
    f:close()
    local url = srv.url .. "/hook"
    local function post(id, ts, sig, file)
      return curl_bg(("-X POST -H 'Content-Type: application/json' -H 'Expect:' "
        .. "-H 'Twitch-Eventsub-Message-Id: %s' -H 'Twitch-Eventsub-Message-Timestamp: %s' "
        .. "-H 'Twitch-Eventsub-Message-Type: notification' -H 'Twitch-Eventsub-Message-Signature: %s' "
        .. "--data-binary @%s %s"):format(id, ts, sig, file or bodyfile, url))
    end
    local now = iso(os.time())
    local forged = post("f-1", now, signed("not-the-secret-0", "f-1", now, body))
    local old = iso(os.time() - 700)
    local stale = post("f-2", old, signed(SECRET, "f-2", old, body))
    local big = os.tmpname()
    assert(os.execute(("env -u LD_PRELOAD head -c 10485760 /dev/zero > %s"):format(big)))
    local huge = post("f-3", now, signed(SECRET, "f-3", now, body), big)
    local good = post("f-4", now, signed(SECRET, "f-4", now, body))
    local st = {}
    H.wait_until(c, function()
      st.forged, st.stale, st.huge, st.good = st.forged or forged(), st.stale or stale(), st.huge or huge(),
        st.good or good()
      return st.forged and st.stale and st.huge and st.good
    end, 30, "curl's answers")
    os.remove(big)
    os.remove(bodyfile)
    assert.equal(403, st.forged)
    assert.equal(403, st.stale)
    assert.equal(413, st.huge)
    assert.equal(204, st.good)
    H.drain(c, 0.1)
    assert.equal(1, handled) -- only the good one
    local s = srv:stats()
    assert.equal(1, s.too_large)
    assert.equal(1, s.routes["/hook"].bad_signature)
    assert.equal(1, s.routes["/hook"].stale)
    assert.equal(1, s.routes["/hook"].notifications)
  end)
end)

describe("webhook arguments", function()
  local m
  setup(function() m = H.start_mock() end)
  teardown(function() if m then m:stop() end end)

  it("wrong types raise, bad values return an error, a taken port is an error", function()
    local c = H.client(m)
    finally(function() c:close() end)
    assert.has_error(function() c:webhook_server("x") end)
    assert.has_error(function() c:webhook_server { port = "80" } end)
    assert.has_error(function() c:webhook_server { bogus = 1 } end)
    assert.has_error(function() c:webhook_server { tls = { cert = "c.pem" } } end)
    local srv = assert(c:webhook_server { port = 0 })
    local s2, err = c:webhook_server { port = srv.port }
    assert.is_nil(s2)
    assert.equal("listen_failed", err.code)
    local _, terr = c:webhook_server { tls = { cert = "/nonexistent.pem", key = "/nonexistent.pem" } }
    assert.equal("tls", terr.code)
    local cd = H.ready_conduit(c, { shards = 0, total = 1 })
    assert.has_error(function() cd:add_webhook_shard { server = {}, secret = SECRET } end)
    assert.has_error(function() cd:add_webhook_shard { server = srv, secret = 12345678901 } end)
    assert.has_error(function()
      cd:add_webhook_shard { server = srv, path = "/a", callback = "http://x/a", secret = SECRET }
    end)
    assert.has_error(function() cd:add_webhook_shard { server = srv, path = "no-slash", secret = SECRET } end)
    local sh, serr = cd:add_webhook_shard { server = srv, secret = "short" }
    assert.is_nil(sh)
    assert.equal("invalid_argument", serr.code)
    local before = assert(m:state())
    sh, serr = cd:add_webhook_shard { server = srv, secret = string.rep("x", 101) }
    assert.is_nil(sh)
    assert.equal("invalid_argument", serr.code)
    -- refused before any request: Twitch saw no PATCH
    assert.equal(before.helix_calls.total, assert(m:state()).helix_calls.total)
    srv:close()
    assert.is_true(srv:closed())
    assert.has_error(function() srv:stats() end)
  end)
end)
