-- Plain websocket mode against the emulator with user tokens: subscribe and receive,
-- reconnects with and without session_reconnect, the websocket limits, tokens.
local twconduit = require "twconduit"
local H = require "support.helper"

local CREATE = "POST /eventsub/subscriptions"

describe("client:websocket_session", function()
  local m
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  local function user(login, scopes)
    return assert(m:call("POST", "/users", { login = login, scopes = scopes or { "user:read:chat" } }))
  end
  local function creates() return m:state().helix_calls.by_route[CREATE] or 0 end
  local function chat(u, channel)
    return { type = "channel.chat.message",
      condition = { broadcaster_user_id = channel, user_id = u.user_id } }
  end
  local function ready_session(c, u, opts)
    local o = { access_token = u.access_token }
    for k, v in pairs(opts or {}) do o[k] = v end
    local s = assert(c:websocket_session(o))
    assert(s:wait_ready(10))
    return s
  end
  -- the ledger's delivered notifications of these subscription ids: id set and count
  local function ledger_of(sub_ids)
    local l = assert(m:ledger())
    local ids, n = {}, 0
    for _, e in ipairs(l.entries) do
      if e.status == "delivered" and e.message_type == "notification" and sub_ids[e.subscription_id]
        and not ids[e.message_id] then -- a duplicate sent by the emulator is the same message
        ids[e.message_id] = true
        n = n + 1
      end
    end
    return ids, n
  end
  -- handler counting each message id; asserts nothing came twice
  local function receiver()
    local r = { seen = {}, n = 0 }
    r.fn = function(ev, msg)
      assert(twconduit.isview(ev))
      r.n = r.n + 1
      r.seen[msg.id] = (r.seen[msg.id] or 0) + 1
      r.last_msg = msg
    end
    return r
  end
  local function assert_exactly_once(r, sub_ids)
    local ids, n = ledger_of(sub_ids)
    assert.is_true(n > 0)
    assert.equal(n, r.n)
    for id in pairs(ids) do assert.equal(1, r.seen[id], "message " .. id) end
    for id in pairs(r.seen) do assert.is_true(ids[id], "not in the ledger: " .. id) end
  end

  it("validates the user token, subscribes with it and delivers every event exactly once", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local u = user("wsbot")
    local s = ready_session(c, u)
    assert.equal("connected", s.state)
    assert.equal(u.user_id, s.user_id)
    assert.equal("wsbot", s.login)
    assert.same({ "user:read:chat" }, s.scopes)
    assert.is_string(s.session_id)
    assert.equal("websocket_session", twconduit.type(s))
    local before = creates()
    local sub = assert(s:subscribe(chat(u, "7001")))
    assert.equal(1, creates() - before)
    assert.equal("enabled", sub.status)
    assert.equal("websocket", sub.transport.method)
    assert.equal(s.session_id, sub.transport.session_id)
    assert.same({ sub }, s:subscriptions())
    local r, on_client = receiver(), H.counter()
    s:on("channel.chat.message", r.fn)
    c:on("channel.chat.message", on_client.fn)
    assert(m:fault { duplicate_next = 1 })
    assert(m:trigger { type = "channel.chat.message", channels = { "7001" }, count = 20 })
    H.wait_until(c, function() return r.n >= 20 end, 10, "20 notifications")
    H.drain(c, 0.2)
    assert_exactly_once(r, { [sub.id] = true })
    assert.equal(20, on_client.n) -- the client's handlers run too
    assert.equal(s, r.last_msg.session)
    assert.is_nil(r.last_msg.conduit)
    assert.equal("websocket", r.last_msg.transport)
    local st = s:stats()
    assert.equal(20, st.notifications)
    assert.equal(1, st.duplicates) -- the emulator's duplicate was absorbed
    assert.equal(1, st.sessions)
    -- an existing subscription (409) resolves to the same one on Twitch
    local again = assert(s:subscribe(chat(u, "7001")))
    assert.equal(sub.id, again.id)
    -- Twitch's answer for a session that is not connected has its own code
    local body, err = s:helix("POST", "/eventsub/subscriptions", { body = {
      type = "channel.chat.message", version = "1",
      condition = { broadcaster_user_id = "7002", user_id = u.user_id },
      transport = { method = "websocket", session_id = "AgoQnotasessionatallxxxxxxxx" } } })
    assert.is_nil(body)
    assert.equal("session_not_connected", err.code)
    assert.equal(400, err.status)
    -- deleting uses the user token
    assert(sub:delete())
    assert.equal("deleted", sub.status)
    assert.same({}, s:subscriptions())
    s:close()
    H.wait_until(c, function() return s.state == "closed" end, 5, "the session to close")
    assert.same({}, c:websocket_sessions())
  end)

  it("keeps its messages in a gateway process: the session's handlers run, nothing is published", function()
    local redis = require("support.redis").start()
    local c = H.client(m)
    finally(function() c:close(); redis:destroy() end)
    local q = assert(c:queue { redis = redis.url, name = "wsgw", role = "gateway" })
    H.wait_until(c, function() return q:stats().up end, 10, "the queue to reach Redis")
    local u = user("wsgw")
    local s = ready_session(c, u)
    local sub = assert(s:subscribe(chat(u, "7051")))
    local r = receiver()
    s:on("channel.chat.message", r.fn)
    assert(m:trigger { type = "channel.chat.message", channels = { "7051" }, count = 10 })
    H.wait_until(c, function() return r.n >= 10 end, 10, "10 notifications to the session's handler")
    H.drain(c, 0.2)
    assert_exactly_once(r, { [sub.id] = true })
    assert.equal(0, q:stats().published)
    q:close()
  end)

  it("re-creates its subscriptions on a new session after a close that is not a session_reconnect", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local u = user("wsbot2")
    local s = ready_session(c, u)
    local subs = { assert(s:subscribe(chat(u, "7101"))), assert(s:subscribe(chat(u, "7102"))) }
    local old_ids = { [subs[1].id] = true, [subs[2].id] = true }
    local r = receiver()
    s:on("notification", r.fn)
    local disconnected, connected = H.counter(), H.counter()
    s:on("session_disconnected", disconnected.fn)
    s:on("session_connected", connected.fn)
    assert(m:trigger { type = "channel.chat.message", channels = { "7101", "7102" }, count = 5 })
    H.wait_until(c, function() return r.n >= 10 end, 10, "10 notifications")
    local old_sid = s.session_id
    local before = creates()
    assert(m:close_session(old_sid, 4000))
    H.wait_until(c, function() return connected.n >= 1 end, 10, "a new session")
    assert.equal(1, disconnected.n)
    assert.equal("websocket_internal_error", disconnected.args[1][2])
    assert.equal(4000, disconnected.args[1][3].status)
    assert.are_not.equal(old_sid, s.session_id)
    H.wait_until(c, function()
      return subs[1].transport.session_id == s.session_id and subs[2].transport.session_id == s.session_id
    end, 10, "the subscriptions on the new session")
    assert.equal(2, creates() - before)
    assert.equal("enabled", subs[1].status)
    assert.is_nil(old_ids[subs[1].id]) -- Twitch's new subscriptions
    local new_ids = { [subs[1].id] = true, [subs[2].id] = true }
    assert(m:trigger { type = "channel.chat.message", channels = { "7101", "7102" }, count = 5 })
    H.wait_until(c, function() return r.n >= 20 end, 10, "10 more notifications")
    H.drain(c, 0.2)
    local all = {}
    for k in pairs(old_ids) do all[k] = true end
    for k in pairs(new_ids) do all[k] = true end
    assert_exactly_once(r, all)
    assert.equal(2, s:stats().sessions)
    assert.equal(1, s:stats().outages)
  end)

  it("does not make a revoked subscription again on a new session", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local u = user("wsbot11")
    local s = ready_session(c, u)
    local keep = assert(s:subscribe(chat(u, "7801")))
    local gone = assert(s:subscribe(chat(u, "7802")))
    local revoked = H.counter()
    gone:on("revocation", revoked.fn)
    local on_session = H.counter()
    s:on("revocation", on_session.fn)
    assert(m:revoke(gone.id, "authorization_revoked"))
    H.wait_until(c, function() return revoked.n >= 1 end, 5, "the revocation")
    assert.equal(gone, revoked.args[1][1])
    assert.equal("authorization_revoked", gone.status)
    assert.equal(1, on_session.n)
    local connected = H.counter()
    s:on("session_connected", connected.fn)
    local before = creates()
    assert(m:drop_session(s.session_id))
    H.wait_until(c, function() return connected.n >= 1 and keep.transport.session_id == s.session_id end,
      10, "the kept subscription on the new session")
    H.drain(c, 0.2)
    assert.equal(1, creates() - before)
    assert.equal("authorization_revoked", gone.status)
  end)

  it("keeps its subscriptions through a session_reconnect (no Create call)", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local u = user("wsbot3")
    local s = ready_session(c, u)
    local sub = assert(s:subscribe(chat(u, "7201")))
    local r, reconnects, connected = receiver(), H.counter(), H.counter()
    s:on("channel.chat.message", r.fn)
    s:on("reconnect", reconnects.fn)
    s:on("session_connected", connected.fn)
    local sid, sub_id = s.session_id, sub.id
    local before = creates()
    assert(m:reconnect_session(sid))
    H.wait_until(c, function() return reconnects.n >= 1 end, 10, "the session_reconnect")
    assert.equal(s, reconnects.args[1][1])
    assert.equal(sid, s.session_id)
    assert.equal(0, connected.n)
    assert(m:trigger { type = "channel.chat.message", channels = { "7201" }, count = 10 })
    H.wait_until(c, function() return r.n >= 10 end, 10, "10 notifications")
    H.drain(c, 0.3)
    assert.equal(0, creates() - before)
    assert.equal(sub_id, sub.id)
    assert_exactly_once(r, { [sub_id] = true })
    assert.equal(1, s:stats().reconnects)
    assert.equal(0, s:stats().outages)
  end)

  it("holds at most 300 subscriptions per session, and maps Twitch's 429 for it", function()
    local c = H.client(m, { http_max_inflight = 16 })
    finally(function() c:close() end)
    local u = user("wsbot4")
    local s = ready_session(c, u)
    local made, failed = 0, nil
    local refused -- the 301st, asked while the 300 are being made
    for i = 1, 301 do
      twconduit.spawn(function()
        local sub, err = s:subscribe(chat(u, tostring(80000 + i)))
        if sub then made = made + 1 elseif i == 301 then refused = err else failed = err end
      end)
    end
    assert.equal("too_many_subscriptions", refused.code) -- at once: 300 are in flight
    H.wait_until(c, function() return made + (failed and 1 or 0) >= 300 end, 30, "300 subscriptions")
    assert.is_nil(failed)
    assert.equal(300, made)
    local before = creates()
    local sub, err = s:subscribe(chat(u, "89999"))
    assert.is_nil(sub)
    assert.equal("too_many_subscriptions", err.code)
    assert.equal(0, creates() - before) -- refused here, without asking Twitch
    -- Twitch's own answer for it, when asked anyway
    local body, err2 = s:helix("POST", "/eventsub/subscriptions", { body = {
      type = "channel.chat.message", version = "1",
      condition = { broadcaster_user_id = "89999", user_id = u.user_id },
      transport = { method = "websocket", session_id = s.session_id } } })
    assert.is_nil(body)
    assert.equal("too_many_subscriptions", err2.code)
    assert.equal(429, err2.status)
  end)

  it("runs at most 3 sessions per user, and maps Twitch's 429 for a 4th elsewhere", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local u = user("wsbot5")
    local ss = {}
    for i = 1, 3 do
      ss[i] = ready_session(c, u)
      assert(ss[i]:subscribe(chat(u, tostring(7300 + i))))
    end
    local errs = H.counter()
    c:on("error", errs.fn)
    local s4 = assert(c:websocket_session { access_token = u.access_token })
    local ok, err = s4:wait_ready(10)
    assert.is_nil(ok)
    assert.equal("too_many_sessions", err.code)
    assert.equal("failed", s4.state)
    assert.equal("too_many_sessions", errs.args[1][1].code) -- reported as an error event too
    assert.equal(s4, errs.args[1][2])
    -- another process (client) with the same user: Twitch refuses the 4th connection
    local c2 = H.client(m)
    finally(function() c2:close() end)
    local other = ready_session(c2, u)
    local sub, err2 = other:subscribe(chat(u, "7399"))
    assert.is_nil(sub)
    assert.equal("too_many_sessions", err2.code)
    assert.equal(429, err2.status)
    -- another user is not limited by this one
    local v = user("wsbot6")
    local sv = ready_session(c, v)
    assert(sv:subscribe(chat(v, "7400")))
  end)

  it("reports a revoked token, and refuses an expired one it cannot refresh", function()
    local c = H.client(m, { validate_interval = 0.2 })
    finally(function() c:close() end)
    local u = user("wsbot7")
    local s = ready_session(c, u)
    assert(s:subscribe(chat(u, "7501")))
    local errs = H.counter()
    s:on("error", errs.fn)
    assert(m:revoke_token(u.access_token))
    H.wait_until(c, function() return errs.n >= 1 end, 5, "the revoked token reported")
    assert.equal("auth_failed", errs.args[1][1].code)
    assert.equal(401, errs.args[1][1].status)
    assert.equal(s, errs.args[1][2])
    local sub, err = s:subscribe(chat(u, "7502"))
    assert.is_nil(sub)
    assert.equal("unauthorized", err.code)
    -- expired before the session opens, and no refresh token: the session fails
    c:on("error", function() end)
    local v = user("wsbot8")
    assert(m:clock { advance_s = 14500 })
    local sv = assert(c:websocket_session { access_token = v.access_token })
    local ok, err2 = sv:wait_ready(10)
    assert.is_nil(ok)
    assert.equal("auth_failed", err2.code)
    assert.equal("failed", sv.state)
  end)

  it("refreshes an expired token with its refresh token (rotated) and goes on", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local u = user("wsbot9")
    assert(m:clock { advance_s = 14500 }) -- u's access token has expired
    local s = assert(c:websocket_session { access_token = u.access_token, refresh_token = u.refresh_token })
    local tokens = H.counter()
    s:on("session_token", tokens.fn)
    assert(s:wait_ready(10))
    assert.equal(1, tokens.n)
    local access, refresh = s:tokens()
    assert.are_not.equal(u.access_token, access)
    assert.are_not.equal(u.refresh_token, refresh)
    assert.equal(u.user_id, s.user_id)
    assert(s:subscribe(chat(u, "7601")))
    assert.equal(1, s:stats().token_refreshes)
  end)

  it("closes cleanly while validating, while requests are in flight, and from a handler", function()
    local u = user("wsbot10")
    -- closed at once: the validation in flight ends it quietly
    local c1 = H.client(m)
    local s1 = assert(c1:websocket_session { access_token = u.access_token })
    s1:close()
    H.wait_until(c1, function() return s1.state == "closed" end, 5, "the session to close")
    c1:close()
    -- the client closed with a subscribe in flight: the waiting call ends with `closed`
    local c2 = H.client(m)
    local s2 = ready_session(c2, u)
    local res
    twconduit.spawn(function() res = table.pack(s2:subscribe(chat(u, "7701"))) end)
    c2:close()
    assert.is_nil(res[1])
    assert.equal("closed", res[2].code)
    assert.equal("closed websocket_session", twconduit.type(s2))
    -- closed from inside its own notification handler (frames already written still arrive)
    local c3 = H.client(m)
    finally(function() c3:close() end)
    local s3 = ready_session(c3, u)
    assert(s3:subscribe(chat(u, "7702")))
    local n = 0
    s3:on("channel.chat.message", function() n = n + 1; s3:close() end)
    assert(m:trigger { type = "channel.chat.message", channels = { "7702" }, count = 5 })
    H.wait_until(c3, function() return s3.state == "closed" end, 5, "the session to close")
    assert.is_true(n >= 1)
    assert.has_error(function() s3:subscribe(chat(u, "7703")) end)
  end)

  it("refuses bad arguments", function()
    local c = H.client(m)
    finally(function() c:close() end)
    c:on("error", function() end)
    assert.has_error(function() c:websocket_session() end)
    assert.has_error(function() c:websocket_session {} end)
    assert.has_error(function() c:websocket_session { access_token = 5 } end)
    assert.has_error(function() c:websocket_session { access_token = "x", shards = 1 } end)
    local s = assert(c:websocket_session { access_token = "not-a-token" })
    local ok, err = s:wait_ready(10)
    assert.is_nil(ok)
    assert.equal("auth_failed", err.code)
    assert.has_error(function() s:on("nonsense", function() end) end)
    assert.has_error(function() s:subscribe { type = 1 } end)
    -- an app token is not a user token
    local s2 = assert(c:websocket_session { access_token = assert(c._core:token() or (function()
      assert(c:conduits()); return c._core:token() end)()) })
    local ok2, err2 = s2:wait_ready(10)
    assert.is_nil(ok2)
    assert.equal("auth_failed", err2.code)
  end)
end)
