-- Objects closed from inside their own handlers, and the client closed with them open:
-- a websocket session closed by its own notification handler, the client closed by a
-- session's handler, and a session's Helix call in flight when its session closes.
-- Nothing crashes, nothing runs after the close, and the closed object raises or
-- answers a clear error.
local H = require "support.helper"

describe("closing from handlers", function()
  local m
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  local function user(login)
    return assert(m:call("POST", "/users", { login = login, scopes = { "user:read:chat" } }))
  end
  local function session(c, u)
    local s = assert(c:websocket_session { access_token = u.access_token })
    assert(s:wait_ready(10))
    assert(s:subscribe { type = "channel.chat.message",
      condition = { broadcaster_user_id = "8801", user_id = u.user_id } })
    return s
  end

  it("a session closed by its own notification handler gets no more of them", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local s = session(c, user("closer1"))
    local n, after = 0, 0
    s:on("channel.chat.message", function()
      if s.state == "closed" then after = after + 1 end
      n = n + 1
      if n == 1 then s:close() end
    end)
    assert(m:trigger { type = "channel.chat.message", channels = { "8801" }, count = 10 })
    H.wait_until(c, function() return n >= 1 end, 10, "the first notification")
    H.drain(c, 0.3)
    assert.equal(0, after)
    assert.is_true(s.state == "closed" or s.state == "closing")
    -- the closed session raises
    assert.has_error(function() s:subscribe { type = "channel.chat.message",
      condition = { broadcaster_user_id = "8802", user_id = "1" } } end)
    assert.has_error(function() s:helix("GET", "/eventsub/subscriptions") end)
  end)

  it("the client closed by a session's handler", function()
    local c = H.client(m)
    local s = session(c, user("closer2"))
    local n = 0
    s:on("channel.chat.message", function()
      n = n + 1
      if n == 1 then c:close() end
    end)
    assert(m:trigger { type = "channel.chat.message", channels = { "8801" }, count = 10 })
    local t0 = os.time()
    while not c:closed() and os.time() - t0 < 10 do c:step(0.05) end
    assert.is_true(c:closed())
    assert.equal(1, n)
    assert.has_error(function() c:step(0) end)
  end)

  it("a session's Helix call in flight when the session closes is answered", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local s = session(c, user("closer3"))
    assert(m:fault { latency_ms = 300 })
    local got, gerr = "none", nil
    local twconduit = require "twconduit"
    twconduit.spawn(function()
      got, gerr = s:helix("GET", "/eventsub/subscriptions")
    end)
    c:step(0.01)
    s:close()
    H.wait_until(c, function() return got ~= "none" end, 10, "the call's answer")
    assert.is_true(got ~= nil or gerr ~= nil) -- answered (the request was sent before the close)
    assert(m:fault { latency_ms = 0 })
  end)
end)
