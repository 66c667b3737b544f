-- A gateway's webhook notification answered 503 (the queue could not store it) is taken
-- again when Twitch retries it: its id is not left behind as a duplicate. Both ways a
-- message is not stored: the queue closed before Redis held it, and a full buffer.
local H = require "support.helper"
local R = require "support.redis"

local SECRET = "s3cret-for-webhooks"
local NAME = "whq-retry"

local function tmpdir()
  local p = io.popen("mktemp -d /tmp/twq-wh.XXXXXX")
  local d = p:read("l")
  p:close()
  return d
end

describe("a gateway's 503 and Twitch's retry", function()
  local m, redis, dir
  setup(function()
    dir = tmpdir()
    redis = R.start(dir)
    m = H.start_mock()
  end)
  teardown(function()
    if m then m:stop() end
    if redis then redis:destroy() end
    if dir then os.execute("rm -rf '" .. dir .. "'") end
  end)

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

  -- the message ids in every partition's stream
  local function queued_ids(q)
    local ids = {}
    for k = 0, q:stats().partitions - 1 do
      local entries = assert(q:command { "XRANGE", NAME .. ":s:" .. k, "-", "+" })
      for _, e in ipairs(entries) do
        for i = 1, #e[2] - 1, 2 do
          if e[2][i] == "id" then ids[e[2][i + 1]] = (ids[e[2][i + 1]] or 0) + 1 end
        end
      end
    end
    return ids
  end

  local function gateway(c, opts)
    local o = { redis = redis.url, name = NAME, role = "gateway", connect_timeout = 0.5, command_timeout = 3 }
    for k, v in pairs(opts or {}) do o[k] = v end
    local q = assert(c:queue(o))
    q:on("error", function() end)
    H.wait_until(c, function() return q:stats().up end, 10, "the gateway's Redis link")
    return q
  end

  it("the retry of a message whose queue closed before storing it is stored", function()
    if os.execute("command -v curl >/dev/null") ~= true then return pending("curl missing") end
    local c = H.client(m)
    finally(function() c:close() end)
    c:on("error", function() end)
    local q = gateway(c)
    local srv = assert(c:webhook_server { port = 0 })
    assert(srv:_route("/hook", SECRET))
    local post, done = poster(srv.url .. "/hook")
    finally(done)
    redis:stop()
    finally(function() if not redis.running then redis:restart() end end)
    H.wait_until(c, function() return not q:stats().up end, 10, "the link down")
    local held = post("wr-1")
    H.wait_until(c, function() return q:stats().buffered >= 1 end, 15, "the message buffered")
    q:close()
    assert.equal(503, answer(c, held, "the answer after the close"))
    redis:restart()
    local q2 = gateway(c)
    assert.equal(204, answer(c, post("wr-1"), "the answer to Twitch's retry"))
    assert.equal(1, queued_ids(q2)["wr-1"], "the retried message is in the queue")
  end)

  it("the retry of a message refused by a full buffer is stored", function()
    if os.execute("command -v curl >/dev/null") ~= true then return pending("curl missing") end
    local c = H.client(m)
    finally(function() c:close() end)
    c:on("error", function() end)
    local q = gateway(c, { buffer_max = 1 })
    local srv = assert(c:webhook_server { port = 0 })
    assert(srv:_route("/hook", SECRET))
    local post, done = poster(srv.url .. "/hook")
    finally(done)
    redis:stop()
    finally(function() if not redis.running then redis:restart() end end)
    H.wait_until(c, function() return not q:stats().up end, 10, "the link down")
    local first = post("wr-2")
    H.wait_until(c, function() return q:stats().buffered >= 1 end, 15, "the first message buffered")
    assert.equal(503, answer(c, post("wr-3"), "the answer with the buffer full"))
    redis:restart()
    assert.equal(204, answer(c, first, "the first message's answer"))
    assert.equal(204, answer(c, post("wr-3"), "the answer to Twitch's retry"))
    local ids = queued_ids(q)
    assert.equal(1, ids["wr-2"])
    assert.equal(1, ids["wr-3"], "the retried message is in the queue")
  end)
end)
