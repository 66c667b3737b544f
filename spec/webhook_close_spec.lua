-- A webhook server closed from inside the handler of the notification it delivered:
-- the 204 given before the handler ran is still written (it was buffered for the pass and
-- lost with the connection), the handler runs once, and the closed server raises.
local H = require "support.helper"
local W = require "support.webhook_post"

local SECRET = "s3cret-for-webhooks"

describe("a webhook server closed from its own handler", function()
  local m
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)

  it("the server closed by the notification's handler", function()
    W.need_curl()
    local c = H.client(m)
    finally(function() c:close() end)
    local srv = assert(c:webhook_server { port = 0 })
    assert(srv:_route("/hook", SECRET))
    local n = 0
    c:on("notification", function()
      n = n + 1
      srv:close()
    end)
    local post, done = W.poster(m, srv.url .. "/hook", SECRET)
    finally(done)
    assert.equal(204, W.answer(c, post("wc-1"), "the answer"))
    H.wait_until(c, function() return n >= 1 end, 10, "the handler")
    H.drain(c, 0.2)
    assert.equal(1, n)
    assert.is_true(srv:closed())
    assert.has_error(function() srv:stats() end)
  end)
end)
