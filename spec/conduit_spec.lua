local twconduit = require "twconduit"
local H = require "support.helper"

describe("twconduit.conduit", function()
  local m
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  it("opens 4 shards assigned in one PATCH, then is reused by id and resized", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local before = m:state().helix_calls.by_route["PATCH /eventsub/conduits/shards"] or 0
    local enabled = H.counter(nil, true)
    local readies = H.counter(nil, true)
    local cd = assert(c:conduit { shards = 4 })
    cd:on("shard_enabled", enabled.fn)
    c:on("ready", readies.fn)
    assert(cd:wait_ready(15))
    assert.equal("ready", cd.state)
    assert.equal(4, cd.shard_count)
    assert.equal(4, enabled.n)
    assert.equal(1, readies.n)
    assert.equal(cd, readies.args[1][1])
    assert.equal(1, m:state().helix_calls.by_route["PATCH /eventsub/conduits/shards"] - before)
    local shards = cd:shards()
    assert.equal(4, #shards)
    for i, s in ipairs(shards) do
      assert.equal(tostring(i - 1), s.id)
      assert.equal("enabled", s.state)
      assert.is_string(s.session_id)
      assert.equal(cd, s.conduit)
      assert.equal(s, cd:shard(s.id))
    end
    local id = cd.id
    cd:close()
    H.wait_until(c, function() return cd.state == "closed" end, 5, "the conduit to close")
    assert.equal(id, cd.id)

    -- reuse by id, growing the total to 6
    local cd2 = assert(c:conduit { id = id, shards = 2, offset = 4, total = 6 })
    assert(cd2:wait_ready(15))
    assert.equal(id, cd2.id)
    assert.equal(6, cd2.shard_count)
    local list = assert(c:conduits())
    assert.equal(1, #list)
    assert.equal(6, list[1].shard_count)
    assert.same({ "4", "5" }, { cd2:shards()[1].id, cd2:shards()[2].id })
  end)

  it("delivers 1,000 events across 50 channels exactly once", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 4 })
    local channels = H.channels(50)
    H.subscribe_all(cd, "stream.online", channels)
    local seen, dup, n = {}, 0, 0
    local typed = 0
    cd:on("notification", function(event, msg)
      if seen[msg.id] then dup = dup + 1 end
      seen[msg.id] = true
      n = n + 1
      assert(event.broadcaster_user_id)
    end)
    cd:on("stream.online", function() typed = typed + 1 end)
    local r = assert(m:trigger { type = "stream.online", channels = channels, count = 20 })
    assert.equal(1000, r.produced)
    H.wait_until(c, function() return n >= 1000 end, 30, "1000 notifications")
    H.drain(c, 0.2)
    assert.equal(1000, n)
    assert.equal(1000, typed)
    assert.equal(0, dup)
    local ids, delivered = H.delivered_ids(m, "stream.online")
    assert.equal(1000, delivered)
    for id in pairs(ids) do assert.is_true(seen[id], "missing " .. id) end
    for _, id in ipairs(r.message_ids) do assert.is_true(seen[id]) end
  end)

  it("gives handlers a message and views that stay valid after they return", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 2 })
    local sub = H.subscribe_all(cd, "channel.chat.message", { "777" })[1]
    local kept = {}
    cd:on("channel.chat.message", function(event, msg)
      kept[#kept + 1] = { event = event, msg = msg, text = event.message.text }
      collectgarbage()
    end)
    assert(m:trigger { type = "channel.chat.message", channels = { "777" }, count = 3 })
    H.wait_until(c, function() return #kept == 3 end, 10, "3 chat messages")
    collectgarbage()
    collectgarbage()
    for _, k in ipairs(kept) do
      assert.equal("777", k.event.broadcaster_user_id)
      assert.equal(k.text, k.event.message.text)
      assert.is_true(twconduit.isview(k.event))
      local t = twconduit.totable(k.event)
      assert.equal("table", type(t))
      assert.equal("777", t.broadcaster_user_id)
      local msg = k.msg
      assert.is_string(msg.id)
      assert.equal("channel.chat.message", msg.type)
      assert.equal("1", msg.version)
      assert.is_string(msg.timestamp)
      assert.equal("websocket", msg.transport)
      assert.equal(cd, msg.conduit)
      assert.equal(cd, msg.shard.conduit)
      assert.equal(sub.id, msg.subscription.id)
    end
  end)

  it("keeps a document alive through a nested view alone", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    H.subscribe_all(cd, "channel.chat.message", { "778" })
    local parts, metas, texts = {}, {}, {}
    cd:on("channel.chat.message", function(event, msg)
      -- keep only views nested two levels down; the event and the message go
      parts[#parts + 1] = event.message.fragments
      metas[#metas + 1] = msg.metadata
      texts[#texts + 1] = event.message.text
    end)
    assert(m:trigger { type = "channel.chat.message", channels = { "778" }, count = 20 })
    H.wait_until(c, function() return #parts == 20 end, 10, "20 chat messages")
    for _ = 1, 3 do collectgarbage() end
    -- more traffic reuses the client's recycled document memory meanwhile
    assert(m:trigger { type = "channel.chat.message", channels = { "778" }, count = 20 })
    H.wait_until(c, function() return #parts == 40 end, 10, "20 more")
    for _ = 1, 3 do collectgarbage() end
    local ids = {}
    for i = 1, 40 do
      assert.is_true(twconduit.isview(parts[i]))
      assert.is_true(#parts[i] >= 1)
      local joined = {}
      for _, f in ipairs(parts[i]) do joined[#joined + 1] = f.text end
      assert.equal(texts[i], table.concat(joined))
      assert.equal("notification", metas[i].message_type)
      ids[metas[i].message_id] = true
    end
    local n = 0
    for _ in pairs(ids) do n = n + 1 end
    assert.equal(40, n)
  end)

  it("reports handler errors and keeps going", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    H.subscribe_all(cd, "stream.online", { "42" })
    local errs, after = {}, 0
    cd:on("stream.online", function() error("handler failed") end)
    cd:on("stream.online", function() after = after + 1 end)
    c:on("error", function(err, obj) errs[#errs + 1] = { err, obj } end)
    assert(m:trigger { type = "stream.online", channels = { "42" }, count = 2 })
    H.wait_until(c, function() return after == 2 end, 10, "2 events")
    assert.equal(2, #errs)
    assert.equal("callback_error", errs[1][1].code)
    assert.matches("handler failed", tostring(errs[1][1]))
    assert.equal(cd, errs[1][2])
    -- an error inside an error handler goes to stderr and the loop still runs
    c:off("error")
    c:on("error", function() error("error handler failed too") end)
    assert(m:trigger { type = "stream.online", channels = { "42" }, count = 1 })
    H.wait_until(c, function() return after == 3 end, 10, "a third event")
  end)

  it("runs conduit, shard, then client handlers in order; on/off take effect from the next event", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    H.subscribe_all(cd, "stream.online", { "43" })
    local sh = cd:shards()[1]
    local seen = {}
    local function rec(tag) return function(event, msg)
      assert.equal("43", event.broadcaster_user_id)
      seen[#seen + 1] = tag .. ":" .. msg.type
    end end
    c:on("notification", rec("client.notification"))
    c:on("stream.online", rec("client.type"))
    sh:on("notification", rec("shard.notification"))
    sh:on("stream.online", rec("shard.type"))
    cd:on("notification", rec("conduit.notification"))
    local late, added = rec("late"), false
    cd:on("stream.online", function(...)
      rec("conduit.type")(...)
      if not added then added = true; cd:on("stream.online", late) end
    end)
    assert(m:trigger { type = "stream.online", channels = { "43" }, count = 1 })
    H.wait_until(c, function() return #seen >= 6 end, 10, "one event through six handlers")
    assert.same({ "conduit.type:stream.online", "conduit.notification:stream.online",
      "shard.type:stream.online", "shard.notification:stream.online",
      "client.type:stream.online", "client.notification:stream.online" }, seen)
    -- the handler added during that event runs from the next one, after the first
    seen = {}
    assert(m:trigger { type = "stream.online", channels = { "43" }, count = 1 })
    H.wait_until(c, function() return #seen >= 7 end, 10, "the next event through seven")
    assert.equal("late:stream.online", seen[2])
    -- removing handlers takes effect too
    seen = {}
    assert.is_true(sh:off("notification"))
    assert.is_true(c:off("stream.online"))
    assert.is_true(cd:off("stream.online", late))
    assert(m:trigger { type = "stream.online", channels = { "43" }, count = 1 })
    H.wait_until(c, function() return #seen >= 4 end, 10, "the third event through four")
    H.drain(c, 0.2)
    assert.same({ "conduit.type:stream.online", "conduit.notification:stream.online",
      "shard.type:stream.online", "client.notification:stream.online" }, seen)
  end)

  it("survives an error object whose __tostring raises an error object whose __tostring raises", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    H.subscribe_all(cd, "stream.online", { "44" })
    local n = 0
    c:on("notification", function()
      n = n + 1
      local inner = setmetatable({}, { __tostring = function() error("boom from inner __tostring") end })
      error(setmetatable({}, { __tostring = function() error(inner) end }))
    end)
    assert(m:trigger { type = "stream.online", channels = { "44" }, count = 2 })
    H.wait_until(c, function() return n >= 2 end, 10, "both events, the loop alive after the first")
    assert.is_true(c:step(0) ~= nil)
  end)

  it("survives a handler that closes its conduit", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 2 })
    H.subscribe_all(cd, "stream.online", H.channels(4, 900))
    local n = 0
    cd:on("notification", function()
      n = n + 1
      cd:close()
      collectgarbage()
    end)
    assert(m:trigger { type = "stream.online", channels = H.channels(4, 900), count = 5 })
    H.wait_until(c, function() return cd.state == "closed" end, 10, "the conduit to close")
    H.drain(c, 0.3)
    assert.is_true(n >= 1)
    assert.equal("closed conduit", twconduit.type(cd))
    assert.has_error(function() cd:shards()[1]:stats() end)
  end)

  it("survives a handler that stops or closes the client", function()
    local c = H.client(m)
    local cd = H.ready_conduit(c, { shards = 1 })
    H.subscribe_all(cd, "stream.online", { "31" })
    local n = 0
    cd:on("notification", function() n = n + 1; c:stop() end)
    assert(m:trigger { type = "stream.online", channels = { "31" }, count = 3 })
    assert(c:run()) -- returns once a handler stops it
    assert.is_true(n >= 1)
    cd:off("notification")
    local k = 0
    cd:on("notification", function() k = k + 1; c:close(); collectgarbage() end)
    assert(m:trigger { type = "stream.online", channels = { "31" }, count = 3 })
    local ok, err = pcall(function()
      while not c:closed() do c:step(0.05) end
    end)
    assert.is_true(ok, tostring(err))
    assert.equal(1, k)
    assert.equal("closed client", twconduit.type(c))
  end)

  it("subscribe resolves a 409 to the existing subscription; revocations update it", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    local s1 = assert(cd:subscribe { type = "stream.online", version = "1",
      condition = { broadcaster_user_id = "55" } })
    local s2 = assert(cd:subscribe { type = "stream.online", version = "1",
      condition = { broadcaster_user_id = "55" } })
    assert.equal(s1, s2)
    assert.equal("enabled", s1.status)
    assert.equal("subscription", twconduit.type(s1))
    local subs = assert(cd:subscriptions())
    assert.equal(1, #subs)
    assert.equal(s1, subs[1])
    local got, conduit_rev
    s1:on("revocation", function(sub, status) got = { sub, status } end)
    cd:on("revocation", function(view, msg) conduit_rev = { view, msg } end)
    assert(m:revoke(s1.id, "authorization_revoked"))
    H.wait_until(c, function() return got and conduit_rev end, 10, "the revocation")
    assert.equal(s1, got[1])
    assert.equal("authorization_revoked", got[2])
    assert.equal("authorization_revoked", s1.status)
    assert.equal(s1.id, conduit_rev[1].id)
    assert.equal(cd, conduit_rev[2].conduit)
  end)

  it("delete removes the conduit on Twitch", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    local id = cd.id
    assert(cd:delete())
    for _, x in ipairs(assert(c:conduits())) do assert.not_equal(id, x.id) end
  end)
end)
