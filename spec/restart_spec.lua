-- Restarts without recreating anything: a bot killed with SIGKILL mid-stream starts again
-- with the same state file; the emulator's log shows no Create Conduits or Create
-- Subscription call from the second run, and the ledger accounts for every event: those
-- routed while nothing ran are dropped by Twitch's rule (no enabled shard), every one
-- delivered to the second process was handled once, and the first process handled all
-- it was sent except the frames in flight at the kill.
local H = require "spec.support.helper"
local O = require "spec.support.ops"

local function lines(path)
  local out, n = {}, 0
  local f = io.open(path)
  if not f then return out, 0 end
  for l in f:lines() do
    if l ~= "" then out[l] = (out[l] or 0) + 1; n = n + 1 end
  end
  f:close()
  return out, n
end

local function count_lines(path)
  local _, n = lines(path)
  return n
end

describe("restart from a state file", function()
  local m
  before_each(function() m = H.start_mock() end)
  after_each(function() m:stop() end)

  it("SIGKILL mid-stream, start again: same conduit and subscriptions, no create calls", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local statef, nch = dir .. "/state.json", O.CHANNELS
    local pids = {}
    local env = ("TWR_CLIENT_ID=%s TWR_CLIENT_SECRET=%s TWR_API_BASE=%s TWR_AUTH_BASE=%s TWR_EVENTSUB_WS=%s"):format(
      m.client_id, m.client_secret, m.api_base, m.auth_base, m.eventsub_ws)
    local function start(n)
      local cmd = ("%s exec lua5.4 spec/support/restart_child.lua %s %s/log%d %s/ready%d %d 2>%s/err%d & echo $! > %s/pid%d")
        :format(env, statef, dir, n, dir, n, nch, dir, n, dir, n)
      assert(os.execute("sh -c '" .. cmd:gsub("'", "'\\''") .. "'"))
      local f = assert(io.open(("%s/pid%d"):format(dir, n)))
      local pid = tonumber(f:read("l"))
      f:close()
      pids[n] = pid
      return pid
    end
    finally(function()
      for _, pid in pairs(pids) do os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
      os.execute("rm -rf " .. dir)
    end)
    local client = H.client(m) -- steps a loop while the children run
    local function ready(n)
      local f = io.open(("%s/ready%d"):format(dir, n))
      if not f then return nil end
      local r = { id = f:read("l"), sessions = {} }
      for l in f:lines() do r.sessions[l] = true end
      f:close()
      return r
    end
    local pid1 = start(1)
    local r1 = H.wait_until(client, function() return ready(1) end, 30, "the first run to be ready")
    local creates_c = O.helix_calls(m, "POST /eventsub/conduits")
    local creates_s = O.helix_calls(m, "POST /eventsub/subscriptions")
    assert.are.equal(1, creates_c)
    assert.are.equal(nch, creates_s)

    local chans = {}
    for i = 1, nch do chans[i] = tostring(9000 + i) end
    local st = assert(m:stream { type = "stream.online", channels = chans, rate = O.RATE, count = O.RATE * 120 })
    H.wait_until(client, function() return count_lines(dir .. "/log1") >= O.RATE / 2 end, 15, "the first run handling")
    assert(os.execute("kill -KILL " .. pid1))
    pids[1] = nil
    -- the emulator sees both sockets go; events routed meanwhile have no enabled shard
    H.wait_until(client, function()
      for _, s in ipairs(assert(m:sessions())) do
        if r1.sessions[s.id] and s.connected then return false end
      end
      return true
    end, 15, "the killed process's sessions to end")
    H.wait_until(client, function() return assert(m:ledger()).dropped >= O.RATE / 10 end, 15, "events while down")

    start(2)
    local r2 = H.wait_until(client, function() return ready(2) end, 30, "the second run to be ready")
    assert.are.equal(r1.id, r2.id)
    H.wait_until(client, function() return count_lines(dir .. "/log2") >= O.RATE / 2 end, 15, "the second run handling")
    assert(m:stop_stream(st.stream_id))
    local polled, settled = 0, nil
    settled = H.wait_until(client, function()
      if client:now() - polled < 0.2 then return false end
      polled = client:now()
      local l = assert(m:ledger())
      local n2 = 0
      for _, e in ipairs(l.entries) do
        if e.status == "delivered" and r2.sessions[e.session_id] then n2 = n2 + 1 end
      end
      return l.pending == 0 and count_lines(dir .. "/log2") >= n2 and l
    end, 30, "the ledger to settle")

    -- no create call from the second run
    assert.are.equal(creates_c, O.helix_calls(m, "POST /eventsub/conduits"))
    assert.are.equal(creates_s, O.helix_calls(m, "POST /eventsub/subscriptions"))

    local h1 = lines(dir .. "/log1")
    local h2 = lines(dir .. "/log2")
    local produced, delivered1, delivered2, dropped, missing1, last_handled1 = 0, 0, 0, 0, {}, 0
    for _, e in ipairs(settled.entries) do
      if e.message_type == "notification" then
        produced = produced + 1
        if e.status == "dropped" then
          dropped = dropped + 1
          -- Twitch's rules: nothing enabled to deliver to while no shard was up, or frames
          -- written to the killed process's socket before the kernel reset it
          local r = tostring(e.reason)
          assert.is_truthy(r:find("no other enabled shard", 1, true) or r:find("session closed", 1, true)
            or r:find("socket closed before the frame was flushed", 1, true), "dropped for " .. r)
          assert.is_nil(r2.sessions[e.session_id or ""], "dropped on a session of the second run")
          assert.is_nil(h1[e.message_id])
          assert.is_nil(h2[e.message_id])
        elseif r2.sessions[e.session_id] then
          delivered2 = delivered2 + 1
          assert.are.equal(1, h2[e.message_id], "delivered to the second run, handled once")
        else
          assert.is_true(r1.sessions[e.session_id] ~= nil)
          delivered1 = delivered1 + 1
          if h1[e.message_id] then
            assert.are.equal(1, h1[e.message_id])
            last_handled1 = math.max(last_handled1, e.seq)
          else
            missing1[#missing1 + 1] = e.seq
          end
        end
      end
    end
    assert.are.equal(produced, delivered1 + delivered2 + dropped)
    assert.is_true(dropped > 0 and delivered1 > 0 and delivered2 > 0)
    -- what the first run never handled is the tail it was sent just before the kill
    for _, seq in ipairs(missing1) do assert.is_true(seq > last_handled1 - 200, "a gap in the middle") end
    print(("# restart: %d produced, %d handled by the first run (+%d in flight at the kill), %d dropped while down, %d handled by the second")
      :format(produced, delivered1 - #missing1, #missing1, dropped, delivered2))
    client:close()
  end)
end)
