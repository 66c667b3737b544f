--- Subscription reconciliation against the emulator: Helix calls used vs the lower
-- bound (pages read + creates + deletes needed) and the rate-limit bucket's utilisation
-- (points spent / points the bucket offered: its level at the start + the refill over
-- the run). Not part of the tests; see bench/README.md.
--
--   lua5.4 bench/reconcile.lua [subscriptions=10000] [rate_limit=6000]
--
-- Needs LUA_PATH / LUA_CPATH pointing at lua/ and build/lib/, TWCONDUIT_MOCK at the
-- emulator (as for the specs).
local twconduit = require "twconduit"
local mock = require "twconduit.mock"

local N = math.tointeger(tonumber(arg[1] or "10000"))
local LIMIT = math.tointeger(tonumber(arg[2] or "6000"))
local PAGE = 100
twconduit.set_log_level(0)

local m = assert(mock.start { config = { rate_limit = LIMIT, max_total_cost = 10 * N + 100 } })
local c = assert(twconduit.client { client_id = m.client_id, client_secret = m.client_secret,
  api_base = m.api_base, auth_base = m.auth_base, eventsub_ws = m.eventsub_ws })
local cd = assert(c:conduit { shards = 0, total = 1 })
local id = assert(cd:_wait_id())

local function counters()
  local h = assert(m:helix_calls())
  local r = h.by_route
  return (r["GET /eventsub/subscriptions"] or 0) + (r["POST /eventsub/subscriptions"] or 0)
    + (r["DELETE /eventsub/subscriptions"] or 0), h.by_status["429"] or 0
end

local function pages(n) return math.max(1, (n + PAGE - 1) // PAGE) end

local list = {}
for i = 1, N do
  list[i] = { type = "stream.online", condition = { broadcaster_user_id = tostring(100000 + i) } }
end

local function run(name, bound, start)
  assert(m:set_bucket()) -- a full bucket at the start
  local calls0, r0 = counters()
  local t0 = c:now()
  start()
  assert(cd:reconcile_wait(24 * 3600))
  local secs = c:now() - t0
  local calls, r429 = counters()
  calls, r429 = calls - calls0, r429 - r0
  local offered = LIMIT + secs * LIMIT / 60
  print(("%-22s calls %6d  lower bound %6d  (%s)  429s %d  %.1f s  %.0f calls/s"):format(name, calls,
    bound, calls == bound and "met" or "MISSED", r429, secs, calls / secs))
  if calls > LIMIT then
    print(("%-22s bucket utilisation %.1f %% (%d points spent of %.0f offered: "
      .. "%d at the start + %.1f s x %d/min)")
      :format("", 100 * calls / offered, calls, offered, LIMIT, secs, LIMIT))
  else
    print(("%-22s within the starting bucket (%d points): utilisation not measured"):format("", LIMIT))
  end
end

print(("reconcile: %d subscriptions, bucket %d points/min, page %d"):format(N, LIMIT, PAGE))
run("from empty", 1 + N, function() cd:want(list, { prune = true }) end)

-- drift behind the client's back: DRIFT removed, DRIFT unknown ones added
local st = assert(m:state())
local gone, n = {}, 0
for _, s in ipairs(st.subscriptions) do
  n = n + 1
  if n % 10 == 0 then gone[#gone + 1] = s.id end
end
assert(m:delete_subscriptions(gone))
local extra = {}
for i = 1, #gone do
  extra[i] = { type = "stream.online", condition = { broadcaster_user_id = tostring(900000 + i) },
    transport = { method = "conduit", conduit_id = id } }
end
assert(m:create_subscriptions(extra))
run("after drift (prune)", pages(N) + 2 * #gone, function() cd:reconcile_now() end)
run("no change (re-check)", pages(N), function() cd:reconcile_now() end)
c:close()
m:stop()
