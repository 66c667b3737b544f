--- Shared set-up of the operation specs: a conduit with stream.online subscriptions on
-- many channels, a handler counting every message id, and a steady stream from the
-- emulator while an operation runs; then the ledger is checked: nothing dropped, every
-- delivered event handled exactly once.
local H = require "spec.support.helper"
local assert = require "luassert"

local O = {}

O.SAN = os.getenv("SANITIZED") ~= nil
O.CHANNELS = O.SAN and 100 or 200
O.RATE = O.SAN and 300 or 600

--- Subscribes c to stream.online on every channel, the requests in parallel (up to the
-- client's http_max_inflight at once; one after another they take ~90 ms each here).
function O.subscribe_parallel(c, chans, type_)
  local twconduit = require "twconduit"
  local done, failed = 0, nil
  for _, ch in ipairs(chans) do
    twconduit.spawn(function()
      local s, err = c:subscribe { type = type_ or "stream.online", condition = { broadcaster_user_id = ch } }
      if not s then failed = failed or err end
      done = done + 1
    end)
  end
  H.wait_until(c.client, function() return done == #chans end, 60, "the subscriptions")
  assert(not failed, "subscribe failed: " .. tostring(failed))
end

--- A client and a ready conduit of `shards`, subscribed on O.CHANNELS channels.
function O.setup(m, shards, client_opts, conduit_opts)
  local client = H.client(m, client_opts)
  local o = { shards = shards }
  for k, v in pairs(conduit_opts or {}) do o[k] = v end
  local c = H.ready_conduit(client, o)
  local t = { client = client, c = c, handled = {}, n = 0, ops = {}, chans = H.channels(O.CHANNELS, 7000) }
  O.subscribe_parallel(c, t.chans)
  c:on("stream.online", function(_, msg)
    t.handled[msg.id] = (t.handled[msg.id] or 0) + 1
    t.n = t.n + 1
  end)
  c:on("operation", function(ev) t.ops[#t.ops + 1] = ev end)
  return t
end

--- Runs fn() while the emulator streams O.RATE events/s; returns fn's results.
function O.during_stream(m, t, fn, rate)
  rate = rate or O.RATE
  local st = assert(m:stream { type = "stream.online", channels = t.chans, rate = rate, count = rate * 120 })
  local n0 = t.n
  H.wait_until(t.client, function() return t.n >= n0 + rate / 4 end, 10, "events to flow")
  t.streamed_during = t.n
  local res = table.pack(fn())
  local n1 = t.n
  H.wait_until(t.client, function() return t.n >= n1 + rate / 4 end, 10, "events after the operation")
  assert(m:stop_stream(st.stream_id))
  return table.unpack(res, 1, res.n)
end

--- Waits for the ledger to settle, then checks it: 0 dropped, every delivered
-- stream.online handled exactly once. Returns the ledger and the count of delivered
-- entries whose first attempt did not reach an enabled shard (a fallback).
function O.check_ledger(m, t)
  local polled, l = 0, nil
  H.wait_until(t.client, function()
    if t.client:now() - polled < 0.2 then return false end
    polled = t.client:now()
    l = assert(m:ledger())
    local _, count = H.delivered_ids(m, "stream.online")
    return l.pending == 0 and t.n >= count
  end, 30, "the ledger to settle")
  local ids, count
  ids, count, l = H.delivered_ids(m, "stream.online")
  assert.are.equal(0, l.dropped, "the ledger shows dropped events")
  local missing, doubled = 0, 0
  for id in pairs(ids) do
    if not t.handled[id] then missing = missing + 1 elseif t.handled[id] > 1 then doubled = doubled + 1 end
  end
  assert.are.equal(0, missing, "delivered but not handled")
  assert.are.equal(0, doubled, "handled twice")
  assert.are.equal(count, t.n)
  assert.is_true(count > 0)
  local fallbacks = 0
  for _, e in ipairs(l.entries) do
    if e.message_type == "notification" and e.attempts and #e.attempts > 1 then fallbacks = fallbacks + 1 end
  end
  return l, fallbacks
end

--- The phases of the operation events of `name`, in order.
function O.phases(t, name)
  local out = {}
  for _, ev in ipairs(t.ops) do
    if ev.name == name and ev.phase ~= "step" then out[#out + 1] = ev.phase end
  end
  return out
end

function O.session(m, id)
  for _, s in ipairs(assert(m:sessions())) do if s.id == id then return s end end
end

--- Twitch's view of the conduit (GET /_mock/state).
function O.twitch(m, cid)
  for _, c in ipairs(assert(m:state()).conduits) do
    if c.id == cid then
      local by = {}
      for _, s in ipairs(c.shards) do by[s.id] = s end
      return c, by
    end
  end
end

function O.helix_calls(m, route)
  local st = assert(m:state())
  return (st.helix_calls.by_route or {})[route] or 0
end

--- Asserts that the client closed session sid with 1000 after a close handshake.
function O.closed_cleanly(m, client, sid)
  local r = H.wait_until(client, function()
    local x = O.session(m, sid)
    return x and not x.connected and x
  end, 15, "session " .. sid .. " to end")
  assert.are.equal("client", r.closed_by)
  assert.are.equal(1000, r.close_code)
  assert.is_true(r.clean)
end

return O
