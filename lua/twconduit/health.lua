--- twconduit.health: per-shard health of a conduit, a monitor that keeps it, and the
-- policy runtime.
--
-- Nothing here is on the notification path: rates come from sampling the shards'
-- counters on a timer, lag from the fixed-bucket histogram the core counts where the
-- replay guard already reads the message timestamp (shard:stats().lag_buckets).
--
-- The monitor: local detection is the core's (socket close, keepalive miss: the shard
-- reconnects with capped backoff); on top of it Get Conduit Shards is polled every
-- `poll` seconds and `conduit.shard.disabled` is received on a separate transport when
-- one is given (another conduit). A shard Twitch shows disabled while its socket here
-- looks fine is repaired (a make-before-break handover) with capped backoff; `alert`
-- fires when a shard stays down past `alert_after` seconds or two are down at once.
local async = require "twconduit.async"
local errors = require "twconduit.errors"
local ops = require "twconduit.operations"

local M = {}

local NB = 24 -- TW_LAG_BUCKETS

-- the upper bound of lag bucket k (1-based here), seconds
local function bucket_top(k)
  if k == 1 then return 0.001 end
  return (2 ^ (k - 1)) / 1000
end

--- p-quantile (0..1) of a bucket histogram (a list), seconds; nil when empty.
function M.quantile(h, p)
  local total = 0
  for k = 1, NB do total = total + (h[k] or 0) end
  if total == 0 then return nil end
  local want, acc = p * total, 0
  for k = 1, NB do
    acc = acc + (h[k] or 0)
    if acc >= want then return bucket_top(k) end
  end
  return bucket_top(NB)
end

local function hist_diff(a, b)
  local d = {}
  for k = 1, NB do d[k] = (a[k] or 0) - ((b and b[k]) or 0) end
  return d
end

-- ---------------------------------------------------------------------------------
-- the sampler

local function state(cd)
  local h = cd._health
  if not h then
    h = { per = setmetatable({}, { __mode = "k" }), twitch = {}, down_since = {}, alerts = {}, window = 60 }
    cd._health = h
  end
  return h
end

local function sample(cd)
  local h = state(cd)
  local now = cd._client:now()
  local here = {}
  for _, s in ipairs(cd:shards()) do
    here[s.id] = true
    local p = h.per[s._ud]
    if not p then
      p = { ring = {}, first = now }
      h.per[s._ud] = p
    end
    local st = s:stats()
    local ring = p.ring
    ring[#ring + 1] = { t = now, n = st.notifications, h = st.lag_buckets }
    if st.notifications ~= p.last_n then p.last_n, p.last_event = st.notifications, now end
    p.reconnects = st.reconnects + st.outages
    -- keep one sample older than the window, drop the rest
    while #ring > 2 and now - ring[2].t >= h.window do table.remove(ring, 1) end
    -- down tracking (ours)
    if s.state ~= "enabled" then
      h.down_since[s.id] = h.down_since[s.id] or now
    else
      h.down_since[s.id] = nil
    end
  end
  for id in pairs(h.down_since) do -- shards that left (released, resized away) are not down
    if not here[id] then h.down_since[id] = nil end
  end
  for id in pairs(h.twitch) do
    if not here[id] then h.twitch[id] = nil end
  end
end
M.sample = sample

--- The health of cd: { status = "healthy" | "degraded" | "down", shards = {...},
-- rate = events/s (all shards), down = {ids}, operation = name | nil }.
function M.health(cd)
  if cd._ud:closed() then error("conduit is closed", 2) end
  local h = state(cd)
  local now = cd._client:now()
  local out = { shards = {}, down = {}, rate = 0, shard_count = cd.shard_count, at = now }
  local op = ops.current(cd)
  out.operation = op and op.name or nil
  local nlive = 0
  for _, s in ipairs(cd:shards()) do
    local p = h.per[s._ud]
    local st = s:stats()
    local rate, lag_h = nil, st.lag_buckets
    if p and #p.ring >= 1 then
      local first = p.ring[1]
      local dt = now - first.t
      if dt > 0 then rate = (st.notifications - first.n) / dt end
      lag_h = hist_diff(st.lag_buckets, first.h)
    end
    local t = s:_transport()
    local tw = h.twitch[s.id]
    -- Twitch's view counts for the session the shard is on now (or while it is down)
    if tw and tw.session_id ~= s.session_id and s.state == "enabled" then tw = nil end
    local row = {
      id = s.id, status = s.state, twitch_status = tw and tw.status or s.status,
      transport = t.method, session = s.session_id, assigned = t.assigned,
      connected_at = h.connected_at and h.connected_at[s._ud] or nil,
      rate = rate or 0, last_event = p and p.last_event or nil,
      reconnects = st.reconnects + st.outages, notifications = st.notifications,
      lag = { p50 = M.quantile(lag_h, 0.5), p99 = M.quantile(lag_h, 0.99) },
      down_since = h.down_since[s.id],
    }
    out.rate = out.rate + row.rate
    out.shards[#out.shards + 1] = row
    local down = s.state ~= "enabled" or (tw ~= nil and tw.status ~= "enabled")
    if down then out.down[#out.down + 1] = s.id else nlive = nlive + 1 end
  end
  if nlive == 0 and #out.shards > 0 then out.status = "down"
  elseif #out.down > 0 then out.status = "degraded"
  else out.status = "healthy" end
  return out
end

-- ---------------------------------------------------------------------------------
-- the monitor

local function alert(cd, kind, message, extra)
  local ev = { kind = kind, message = message, conduit = cd, at = cd._client:now() }
  for k, v in pairs(extra or {}) do ev[k] = v end
  local h = state(cd)
  h.alerts[#h.alerts + 1] = ev
  if #h.alerts > 100 then table.remove(h.alerts, 1) end
  ops.fire(cd, "alert", ev)
end

-- A shard Twitch shows disabled on the session it should be on, while the socket here
-- looks fine: repair it with a handover (capped backoff between attempts).
local function repair(cd, mon, id, why)
  local r = mon.repairs[id] or { attempt = 0, next_at = 0 }
  mon.repairs[id] = r
  local now = cd._client:now()
  if r.running or now < r.next_at then return end
  r.running = true
  async.spawn(function()
    local ok, err = ops.handover(cd, id)
    r.running = false
    if ok then
      mon.repairs[id] = nil
      state(cd).twitch[id] = nil
    else
      r.attempt = r.attempt + 1
      r.next_at = cd._client:now() + math.min(mon.backoff_max, mon.backoff_min * 2 ^ (r.attempt - 1))
      cd._client:_report(errors.new(err and err.code or "error",
        ("repairing shard %s (%s) failed: %s"):format(id, why, tostring(err))), nil, cd)
    end
  end)
end

local function check_down(cd, mon)
  local h = state(cd)
  local now = cd._client:now()
  local n = 0
  local ids = {}
  for id, since in pairs(h.down_since) do
    n = n + 1
    ids[#ids + 1] = id
    if now - since >= mon.alert_after and not mon.alerted[id] then
      mon.alerted[id] = true
      alert(cd, "shard_down", ("shard %s has been down for %.0f s"):format(id, now - since), { shard = id })
    end
  end
  for id in pairs(mon.alerted) do
    if not h.down_since[id] then mon.alerted[id] = nil end
  end
  table.sort(ids)
  if n >= 2 then
    if not mon.two_down then
      mon.two_down = true
      local text = "%d shards are down at once (%s): Twitch retries on one other shard only"
      alert(cd, "two_down", text:format(
        n, table.concat(ids, ", ")), { shards = ids })
    end
  else
    mon.two_down = false
  end
end

local function on_twitch_view(cd, mon, id, status, session)
  local h = state(cd)
  h.twitch[id] = { status = status, session_id = session, checked_at = cd._client:now() }
  local s = cd:shard(id)
  if not s or status == "enabled" then return end
  -- ours looks enabled on the very session Twitch disabled: a silent loss (a webhook shard
  -- has no session, nor a socket to hand over: the core reassigns it)
  local t = s._ud:closed() and {} or s:_transport()
  if (t.method or "websocket") ~= "websocket" then return end
  if s.state == "enabled" and s.session_id == session and not ops.current(cd) then
    h.down_since[id] = h.down_since[id] or cd._client:now()
    repair(cd, mon, id, status)
  end
end

local function poll(cd, mon)
  if mon.polling or cd._ud:closed() then return end
  mon.polling = true
  async.spawn(function()
    local list = cd._client:conduit_shards(cd.id)
    mon.polling = false
    if not list or cd._ud:closed() then return end
    for _, sh in ipairs(list) do
      on_twitch_view(cd, mon, sh.id, sh.status, sh.transport and sh.transport.session_id)
    end
  end)
end

--- conduit:monitor{ sample = 1, window = 60, poll = 30, transport = other_conduit,
--   alert_after = 30, backoff_min = 1, backoff_max = 60 }: starts the health monitor
-- (once; again: new options). Returns the conduit.
function M.monitor(cd, opts)
  if cd._ud:closed() then error("conduit is closed", 2) end
  opts = opts or {}
  if type(opts) ~= "table" then errors.argerror(1, "monitor", "table expected") end
  local known = { sample = 1, window = 1, poll = 1, transport = 1, alert_after = 1, backoff_min = 1,
    backoff_max = 1 }
  for k in pairs(opts) do
    if not known[k] then error(("unknown option '%s'"):format(tostring(k)), 2) end
  end
  for _, k in ipairs { "sample", "window", "poll", "alert_after", "backoff_min", "backoff_max" } do
    local v = opts[k]
    if v ~= nil and (type(v) ~= "number" or v < 0) then error(k .. " must be a non-negative number", 2) end
  end
  if opts.transport ~= nil and (type(opts.transport) ~= "table" or not opts.transport._ud) then
    error("transport must be another conduit", 2)
  end
  M.unmonitor(cd)
  local client = cd._client
  local h = state(cd)
  h.window = opts.window or 60
  h.connected_at = h.connected_at or setmetatable({}, { __mode = "k" })
  local mon = {
    sample = math.max(opts.sample or 1, 0.05), poll = opts.poll or 30, alert_after = opts.alert_after or 30,
    backoff_min = opts.backoff_min or 1, backoff_max = opts.backoff_max or 60,
    repairs = {}, alerted = {}, timers = {}, last_poll = client:now(),
  }
  cd._monitor = mon
  local core = client._core
  local function tick()
    if cd._monitor ~= mon or cd._ud:closed() then return end
    sample(cd)
    check_down(cd, mon)
    if mon.poll > 0 and client:now() - mon.last_poll >= mon.poll then
      mon.last_poll = client:now()
      poll(cd, mon)
    end
    mon.timer = core:timer(mon.sample, tick)
  end
  mon.on_enabled = function(s) h.connected_at[s._ud] = client:now() end
  cd:on("shard_enabled", mon.on_enabled)
  for _, s in ipairs(cd:shards()) do
    if s.state == "enabled" then h.connected_at[s._ud] = h.connected_at[s._ud] or client:now() end
  end
  if opts.transport then
    -- conduit.shard.disabled for this conduit, delivered through another conduit
    local other = opts.transport
    mon.transport = other
    mon.on_disabled = function(ev)
      if ev.conduit_id ~= cd.id then return end
      local t = ev.transport
      on_twitch_view(cd, mon, tostring(ev.shard_id), ev.status, t and t.session_id)
    end
    other:on("conduit.shard.disabled", mon.on_disabled)
    async.spawn(function()
      local id = cd:_wait_id()
      if not id or cd._monitor ~= mon then return end
      local sub, err = other:subscribe { type = "conduit.shard.disabled", version = "1",
        condition = { client_id = client._opts.client_id, conduit_id = id } }
      if not sub then client:_report(err, nil, cd) end
      mon.subscription = sub
    end)
  end
  tick()
  return cd
end

function M.unmonitor(cd)
  local mon = cd._monitor
  if not mon then return end
  cd._monitor = nil
  if mon.timer and not cd._client._closed then cd._client._core:cancel_timer(mon.timer) end
  cd:off("shard_enabled", mon.on_enabled)
  if mon.transport and mon.on_disabled then mon.transport:off("conduit.shard.disabled", mon.on_disabled) end
end

-- ---------------------------------------------------------------------------------
-- policies

--- The snapshot a policy sees.
function M.snapshot(cd, pol)
  local hl = M.health(cd)
  local snap = {
    now = hl.at, shard_count = cd.shard_count, shards = hl.shards, rate = hl.rate,
    disabled = hl.down, status = hl.status, operation = hl.operation,
    range = ops.range(cd), conduit = cd,
    helix = { remaining = cd._client:stats().ratelimit_remaining },
    subscriptions = pol and pol.subs or nil,
    last_action = pol and pol.last_action or nil, last_action_at = pol and pol.last_at or nil,
  }
  local n = 0
  for _ in ipairs(hl.shards) do n = n + 1 end
  snap.running = n
  return snap
end

local ACTIONS = {
  resize = function(cd, v) return ops.resize(cd, v) end,
  handover = function(cd, v) return ops.handover(cd, v) end,
  remove_shard = function(cd, v) return ops.remove_shard(cd, v) end,
  rebalance = function(cd) return ops.rebalance(cd) end,
  handover_all = function(cd, v) return ops.handover_all(cd, type(v) == "table" and v or nil) end,
}

--- conduit:policy(p[, {interval = 1, cooldown = 60, subscriptions_every = 60}]): calls
-- p(snapshot) (or p:tick(snapshot)) every interval and after health events; runs the
-- first action it returns, one at a time, never while an operation runs, and none within
-- `cooldown` seconds of the last. Starts the monitor when it is not running. Returns a
-- handle with :stop() and .actions (the list of actions run).
function M.policy(cd, p, opts)
  if cd._ud:closed() then error("conduit is closed", 2) end
  local fn
  if type(p) == "function" then fn = p
  elseif type(p) == "table" and type(p.tick) == "function" then fn = function(s) return p:tick(s) end
  else errors.argerror(1, "policy", "function or table with tick expected") end
  opts = opts or {}
  if type(opts) ~= "table" then errors.argerror(2, "policy", "table expected") end
  local client = cd._client
  if not cd._monitor then M.monitor(cd) end
  local pol = { actions = {}, interval = opts.interval or 1, cooldown = opts.cooldown or 60,
    subs_every = opts.subscriptions_every or 60, stopped = false }
  local function fetch_subs()
    if pol.subs_busy or not cd.id then return end
    pol.subs_busy = true
    async.spawn(function()
      local r = client:helix("GET", "/eventsub/subscriptions", { query = { conduit_id = cd.id } })
      pol.subs_busy = false
      if type(r) == "table" then
        pol.subs = { total = r.total, total_cost = r.total_cost, max_total_cost = r.max_total_cost }
      end
      pol.subs_at = client:now()
    end)
  end
  local function evaluate()
    if pol.stopped or cd._ud:closed() or pol.running then return end
    local due = not pol.subs_at or client:now() - pol.subs_at >= pol.subs_every
    if pol.subs_every > 0 and due then fetch_subs() end
    if ops.current(cd) then return end
    if pol.last_at and client:now() - pol.last_at < pol.cooldown then return end
    local ok, actions = pcall(fn, M.snapshot(cd, pol))
    if not ok then
      client:_report(errors.new("callback_error", tostring(actions)), nil, cd)
      return
    end
    if type(actions) ~= "table" then return end
    local a = actions[1] or actions
    if type(a) ~= "table" then return end
    for name, v in pairs(a) do
      local run = ACTIONS[name]
      if run then
        pol.running = true
        pol.last_at = client:now()
        pol.last_action = { [name] = v }
        pol.actions[#pol.actions + 1] = { [name] = v, at = client:now() }
        async.spawn(function()
          local r, err = run(cd, v)
          pol.running = false
          pol.last_at = client:now()
          if not r then client:_report(err, nil, cd) end
        end)
        return
      end
    end
  end
  local function tick()
    if pol.stopped or cd._ud:closed() then return end
    evaluate()
    pol.timer = client._core:timer(pol.interval, tick)
  end
  pol.on_event = function() if not pol.stopped then client._core:timer(0, evaluate) end end
  cd:on("alert", pol.on_event)
  cd:on("shard_disabled", pol.on_event)
  function pol.stop()
    if pol.stopped then return end
    pol.stopped = true
    if pol.timer and not client._closed then client._core:cancel_timer(pol.timer) end
    cd:off("alert", pol.on_event)
    cd:off("shard_disabled", pol.on_event)
  end
  pol.timer = client._core:timer(pol.interval, tick)
  return pol
end

return M
