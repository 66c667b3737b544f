-- A webhook server closed from inside the handler of the notification it delivered:
-- the 204 given before the handler ran is still written (it was buffered for the pass and
-- lost with the connection), the handler runs once, and the closed server raises.
local H = require "support.helper"

local SECRET = "s3cret-for-webhooks"

describe("a webhook server closed from its own handler", function()
  local m
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)

  -- curl in the background (the loop keeps running to answer it); returns a function
  -- giving the HTTP status once curl has one
  local function curl_bg(args)
    local out = os.tmpname()
    os.execute(("env -u LD_PRELOAD curl -s -o /dev/null -w '%%{http_code}' --max-time 30 %s > %s"
      .. " 2>/dev/null &"):format(args, out))
    return function()
      local f = io.open(out)
      local s = f and f:read("a")
      if f then f:close() end
      if s and #s == 3 then
        os.remove(out)
        return tonumber(s)
      end
    end
  end

  local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%S", t) .. ".000000000Z" end

  local function poster(url)
    local body = '{"subscription":{"id":"s","type":"stream.online","version":"1","status":"enabled"},'
      .. '"event":{"broadcaster_user_id":"42"}}'
    local bodyfile = os.tmpname()
    local f = assert(io.open(bodyfile, "w"))
    f:write(body)
    f:close()
    return function(id)
      local ts = iso(os.time())
      local sig = assert(m:call("POST", "/sign",
        { secret = SECRET, message_id = id, timestamp = ts, body = body })).signature
      return curl_bg(("-X POST -H 'Content-Type: application/json' -H 'Expect:' "
        .. "-H 'Twitch-Eventsub-Message-Id: %s' -H 'Twitch-Eventsub-Message-Timestamp: %s' "
        .. "-H 'Twitch-Eventsub-Message-Type: notification' -H 'Twitch-Eventsub-Message-Signature: %s' "
        .. "--data-binary @%s %s"):format(id, ts, sig, bodyfile, url))
    end, function() os.remove(bodyfile) end
  end

  local function answer(c, pending, what)
    local st
    H.wait_until(c, function()
      st = pending()
      return st ~= nil
    end, 30, what)
    return st
  end

  it("the server closed by the notification's handler", function()
    if os.execute("command -v curl >/dev/null") ~= true then return pending("curl missing") end
    local c = H.client(m)
    finally(function() c:close() end)
    local srv = assert(c:webhook_server { port = 0 })
    assert(srv:_route("/hook", SECRET))
    local n = 0
    c:on("notification", function()
      n = n + 1
      srv:close()
    end)
    local post, done = poster(srv.url .. "/hook")
    finally(done)
    assert.equal(204, answer(c, post("wc-1"), "the answer"))
    H.wait_until(c, function() return n >= 1 end, 10, "the handler")
    H.drain(c, 0.2)
    assert.equal(1, n)
    assert.is_true(srv:closed())
    assert.has_error(function() srv:stats() end)
  end)
end)
