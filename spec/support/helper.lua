--- Shared helpers for the specs: start the emulator, make clients pointed at it, and
-- wait for conditions by stepping the client's loop (never by sleeping).
local twconduit = require "twconduit"
local mock = require "twconduit.mock"

local H = {}

twconduit.set_log_level(0) -- libwebsockets' notices would clutter the test output

--- Starts the emulator (fails the spec with a clear message when it cannot).
function H.start_mock(config)
  local m, err = mock.start { config = config }
  assert(m, "cannot start the emulator: " .. tostring(err))
  return m
end

--- A client pointed at the emulator m; opts override the defaults.
function H.client(m, opts)
  local o = {
    client_id = m.client_id, client_secret = m.client_secret,
    api_base = m.api_base, auth_base = m.auth_base, eventsub_ws = m.eventsub_ws,
    backoff_min = 0.05, backoff_max = 0.5, http_timeout = 5,
  }
  for k, v in pairs(opts or {}) do o[k] = v end
  return assert(twconduit.client(o))
end

--- Steps the client until pred() is truthy or `timeout` seconds (default 10) pass;
-- fails with `what` when the deadline passes. Returns pred()'s value.
function H.wait_until(client, pred, timeout, what)
  timeout = timeout or 10
  local start = client:now()
  while true do
    local v = pred()
    if v then return v end
    if client:now() - start > timeout then
      error(("timed out after %gs waiting for %s"):format(timeout, what or "a condition"), 2)
    end
    local ok, err = client:step(0.05)
    assert(ok, "step failed: " .. tostring(err))
  end
end

--- Steps the client for `seconds` (to let stray events arrive; used only to prove
-- that something does NOT happen).
function H.drain(client, seconds)
  local start = client:now()
  while client:now() - start < seconds do
    assert(client:step(0.05))
  end
end

--- Opens a conduit of n shards and waits until it is ready.
function H.ready_conduit(client, opts, timeout)
  local c = assert(client:conduit(opts))
  local ok, err = c:wait_ready(timeout or 15)
  assert(ok, "conduit not ready: " .. tostring(err))
  return c
end

--- Set of delivered message ids in the emulator's ledger (optionally for one type).
function H.delivered_ids(m, type_)
  local l = assert(m:ledger())
  local ids, n = {}, 0
  for _, e in ipairs(l.entries) do
    if e.status == "delivered" and e.message_type == "notification"
      and (type_ == nil or e.type == type_) then
      ids[e.message_id] = true
      n = n + 1
    end
  end
  return ids, n, l
end

--- Counts calls of a wrapped function; `collect` forces a full GC after each call.
function H.counter(fn, collect)
  local c = { n = 0, args = {} }
  c.fn = function(...)
    c.n = c.n + 1
    c.args[c.n] = table.pack(...)
    local r = fn and fn(...)
    if collect then collectgarbage() end
    return r
  end
  return c
end

function H.channels(n, base)
  local out = {}
  for i = 1, n do out[i] = tostring((base or 2000) + i) end
  return out
end

--- Subscribes conduit c to type for each channel.
function H.subscribe_all(c, type_, channels, version)
  local subs = {}
  for i, ch in ipairs(channels) do
    local cond = { broadcaster_user_id = ch }
    if type_ == "channel.chat.message" then cond.user_id = "1" end
    local s, err = c:subscribe { type = type_, version = version or "1", condition = cond }
    assert(s, "subscribe failed: " .. tostring(err))
    subs[i] = s
  end
  return subs
end

return H
