-- The status page in headless Chromium, with a running client against the emulator: the
-- DOM lists every shard with its state, a shard whose session the emulator closes shows
-- as down within seconds, and a screenshot goes to the test output folder.
local H = require "support.helper"

local CHROMIUM = os.getenv("CHROMIUM") or "chromium"
local OUT = os.getenv("TWCONDUIT_TEST_OUT") or "build/test-output"
local SHARDS = os.getenv("SANITIZED") and 2 or 4

local function have_chromium()
  local p = io.popen(("command -v %s 2>/dev/null"):format(CHROMIUM))
  local path = p:read("l")
  p:close()
  return path ~= nil
end

-- Runs chromium headless on url in the background (the client's loop keeps serving
-- meanwhile); what = "--dump-dom" (returns the DOM) or "--screenshot=path".
local function chromium(c, url, what)
  local base = os.tmpname()
  os.remove(base .. ".done")
  local cmd = table.concat({
    "env -u LD_PRELOAD", CHROMIUM,
    "--headless --no-sandbox --disable-gpu --no-first-run --disable-dev-shm-usage",
    "--disable-extensions --hide-scrollbars --window-size=1280,900",
    ("--user-data-dir='%s.profile'"):format(base), "--virtual-time-budget=1500", what, ("'%s'"):format(url),
  }, " ")
  os.execute(("(%s > '%s.out' 2>/dev/null; touch '%s.done') &"):format(cmd, base, base))
  H.wait_until(c, function()
    local f = io.open(base .. ".done")
    if f then f:close() end
    return f ~= nil
  end, 60, "chromium")
  local f = io.open(base .. ".out")
  local out = f and f:read("a") or ""
  if f then f:close() end
  os.execute(("rm -rf '%s' '%s.out' '%s.done' '%s.profile'"):format(base, base, base, base))
  return out
end

-- shard id -> data-state of the rows the page drew for the shards run here
local function shard_states(dom)
  local out, n = {}, 0
  for tr in dom:gmatch("<tr[^>]*>") do
    if tr:find('class="shard"', 1, true) then
      local id, state = tr:match('data%-shard="([^"]*)"'), tr:match('data%-state="([^"]*)"')
      if id then
        out[id] = state
        n = n + 1
      end
    end
  end
  return out, n
end

describe("status page", function()
  local m
  setup(function() m = H.start_mock() end)
  teardown(function() if m then m:stop() end end)

  local run = have_chromium() and it or pending
  run("shows every shard live in headless Chromium; a shard killed by the emulator shows as down", function()
    -- a long reconnect backoff keeps a killed shard down while the page is read
    local c = H.client(m, { log = false, backoff_min = 30, backoff_max = 40 })
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = SHARDS })
    local srv = assert(c:serve_metrics { port = 0, interval = 0.2, twitch_interval = 0.3 })
    local url = ("http://127.0.0.1:%d/"):format(srv.port)

    -- every shard, enabled (Twitch's view read too); retried until the page shows it
    local states, n
    H.wait_until(c, function()
      local dom = chromium(c, url, "--dump-dom")
      states, n = shard_states(dom)
      return n == SHARDS and dom:find('class="twitch-shard"', 1, true)
    end, 30, "the page listing every shard")
    for i = 0, SHARDS - 1 do assert.equal("enabled", states[tostring(i)]) end

    -- the emulator closes shard 1's session: the page shows it down
    local s1 = cd:shard("1")
    assert(m:close_session(s1.session_id, 4000))
    H.wait_until(c, function()
      states = shard_states(chromium(c, url, "--dump-dom"))
      return states["1"] ~= nil and states["1"] ~= "enabled"
    end, 20, "shard 1 shown as down")
    assert.equal("idle", states["1"])
    for i = 0, SHARDS - 1 do
      if i ~= 1 then assert.equal("enabled", states[tostring(i)]) end
    end

    os.execute(("mkdir -p '%s'"):format(OUT))
    local png = OUT .. "/status-page.png"
    os.remove(png)
    chromium(c, url, ("--screenshot='%s'"):format(png))
    local f = assert(io.open(png, "rb"), "no screenshot written")
    local magic = f:read(8)
    f:close()
    assert.equal("\137PNG\r\n\26\n", magic)
  end)
end)
