-- A gateway's webhook answers wait for the queue: a notification is answered 204 only
-- once Redis (a private redis-server) holds it, 503 when it could not be stored (Twitch
-- then retries, and the retry is taken: its id is not left behind as a duplicate), and
-- at once for a duplicate.
local H = require "support.helper"
local R = require "support.redis"
local W = require "support.webhook_post"

local SECRET = "s3cret-for-webhooks"
local NAME = "whq"

local function tmpdir()
  local p = io.popen("mktemp -d /tmp/twq-wh.XXXXXX")
  local d = p:read("l")
  p:close()
  return d
end

describe("webhook notifications through a gateway", function()
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

  -- a client with a gateway queue (opts) and a webhook route; post(id) sends a signed
  -- notification to it (curl in the background)
  local function receiver(opts)
    W.need_curl()
    local c = H.client(m)
    finally(function() c:close() end)
    c:on("error", function() end)
    local q = gateway(c, opts)
    local srv = assert(c:webhook_server { port = 0 })
    assert(srv:_route("/hook", SECRET))
    local post, done = W.poster(m, srv.url .. "/hook", SECRET)
    finally(done)
    return c, q, post
  end
  -- Redis stopped (restarted when the test ends, if it still is not) and the link seen down
  local function redis_away(c, q)
    redis:stop()
    finally(function() if not redis.running then redis:restart() end end)
    H.wait_until(c, function() return not q:stats().up end, 10, "the link down")
  end

  it("answers 204 once Redis holds the message, after an outage too; a duplicate at once", function()
    local c, q, post = receiver()

    assert.equal(204, W.answer(c, post("wq-1"), "the first answer"))
    assert.equal(1, queued_ids(q)["wq-1"])

    -- Redis away: the message waits in the gateway's buffer, and so does its answer
    redis_away(c, q)
    local held = post("wq-2")
    H.wait_until(c, function() return q:stats().buffered >= 1 end, 15, "the message buffered")
    H.drain(c, 0.5)
    assert.is_nil(held(), "answered before the message was stored")
    redis:restart()
    assert.equal(204, W.answer(c, held, "the held answer"))
    H.wait_until(c, function() return q:stats().buffered == 0 end, 10, "the buffer drained")
    assert.equal(1, queued_ids(q)["wq-2"])

    -- a duplicate is answered without a second entry
    local published = q:stats().published
    assert.equal(204, W.answer(c, post("wq-2"), "the duplicate's answer"))
    assert.equal(published, q:stats().published)
    assert.equal(1, queued_ids(q)["wq-2"])
  end)

  it("the retry of a message whose queue closed before storing it is stored", function()
    local c, q, post = receiver()
    redis_away(c, q)
    local held = post("wr-1")
    H.wait_until(c, function() return q:stats().buffered >= 1 end, 15, "the message buffered")
    q:close()
    assert.equal(503, W.answer(c, held, "the answer after the close"))
    redis:restart()
    local q2 = gateway(c)
    assert.equal(204, W.answer(c, post("wr-1"), "the answer to Twitch's retry"))
    assert.equal(1, queued_ids(q2)["wr-1"], "the retried message is in the queue")
  end)

  it("the retry of a message refused by a full buffer is stored", function()
    local c, q, post = receiver { buffer_max = 1 }
    redis_away(c, q)
    local first = post("wr-2")
    H.wait_until(c, function() return q:stats().buffered >= 1 end, 15, "the first message buffered")
    assert.equal(503, W.answer(c, post("wr-3"), "the answer with the buffer full"))
    redis:restart()
    assert.equal(204, W.answer(c, first, "the first message's answer"))
    assert.equal(204, W.answer(c, post("wr-3"), "the answer to Twitch's retry"))
    local ids = queued_ids(q)
    assert.equal(1, ids["wr-2"])
    assert.equal(1, ids["wr-3"], "the retried message is in the queue")
  end)
end)
