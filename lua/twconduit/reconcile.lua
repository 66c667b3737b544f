--- twconduit.reconcile: declarative subscriptions of a conduit.
--
-- The bot declares the subscriptions it wants (`conduit:want`, `want_add`,
-- `want_remove`); a reconciler per conduit makes Twitch match: it reads what Twitch has
-- (Get EventSub Subscriptions, every page, kept to this conduit), creates what is
-- missing, adopts what exists (a 409 adopts), re-creates revoked subscriptions whose
-- cause can pass, and deletes what is no longer wanted (with `prune = true`, also what
-- was never wanted). Every call goes through the client's one Helix queue at background
-- priority, so bot calls go first and the shared rate-limit bucket paces it.
--
-- Identity of a subscription: (type, version, condition with its keys sorted; empty
-- values count as absent), never the JSON text.
local async = require "twconduit.async"
local errors = require "twconduit.errors"
local core = require "twconduit.core"

local R = {}
R.__index = R

local ACTIVE = { enabled = true, webhook_callback_verification_pending = true }
-- revocation causes that a new subscription cannot pass: reported, dropped from the set
local FINAL_CAUSE = { authorization_revoked = true, user_removed = true }
local TRANSIENT_TRIES = 4
local PATH = "/eventsub/subscriptions"

-- ---------------------------------------------------------------------------------
-- identity

local function key_of(t, version, cond)
  local keys = {}
  for k, v in pairs(cond) do
    if v ~= "" and v ~= core.null then keys[#keys + 1] = k end
  end
  table.sort(keys)
  local parts = { #t .. ":" .. t, #version .. ":" .. version }
  for _, k in ipairs(keys) do
    local v = tostring(cond[k])
    parts[#parts + 1] = #k .. ":" .. k .. "=" .. #v .. ":" .. v
  end
  return table.concat(parts, "|")
end
R.key = key_of

-- a checked, normalised copy of one wanted subscription, and its key
local function norm(spec, i, fname)
  if type(spec) ~= "table" then
    errors.argerror(1, fname, ("entry %d: table expected, got %s"):format(i, type(spec)), 4)
  end
  for k in pairs(spec) do
    if k ~= "type" and k ~= "version" and k ~= "condition" then
      error(("entry %d: unknown field '%s'"):format(i, tostring(k)), 4)
    end
  end
  if type(spec.type) ~= "string" or spec.type == "" then
    error(("entry %d: type must be a non-empty string"):format(i), 4)
  end
  if spec.version ~= nil and (type(spec.version) ~= "string" or spec.version == "") then
    error(("entry %d: version must be a non-empty string"):format(i), 4)
  end
  if type(spec.condition) ~= "table" then
    error(("entry %d: condition must be a table"):format(i), 4)
  end
  local cond = {}
  for k, v in pairs(spec.condition) do
    if type(k) ~= "string" then error(("entry %d: condition keys must be strings"):format(i), 4) end
    if type(v) ~= "string" then
      error(("entry %d: condition.%s must be a string"):format(i, k), 4)
    end
    if v ~= "" then cond[k] = v end
  end
  local s = { type = spec.type, version = spec.version or "1", condition = cond }
  return key_of(s.type, s.version, cond), s
end

local function norm_list(list, fname)
  if type(list) ~= "table" then
    errors.argerror(1, fname, ("table expected, got %s"):format(type(list)), 3)
  end
  local out = {}
  for i = 1, #list do
    local k, s = norm(list[i], i, fname)
    out[#out + 1] = { k, s }
  end
  return out
end

-- ---------------------------------------------------------------------------------
-- the reconciler object

function R.new(conduit)
  local self = setmetatable({
    conduit = conduit, client = conduit._client,
    wanted = {},       -- key -> spec
    nwanted = 0,
    retired = {},      -- key -> true: wanted once, removed since (deleted when it exists)
    failed = {},       -- key -> err: permanent failure, not retried until wanted again
    existing = {},     -- key -> { id =, status =, cost = } active on this conduit
    by_id = {},        -- id -> key
    extras = {},       -- id -> { key =, cost = }: active here, never wanted (prune)
    seen_revoked = {}, -- id -> true: a revocation already acted on
    prune = false, concurrency = 8, recheck = 900,
    listed = false, need_list = true, dirty = false, running = false,
    total_cost = nil, max_total_cost = nil,
    st = { phase = "done", done = 0, total = 0, calls = 0, eta = 0, errors = {} },
  }, R)
  return self
end

local function copy_status(self)
  local s = self.st
  local errs = {}
  for i, e in ipairs(s.errors) do errs[i] = e end
  return {
    phase = s.phase, done = s.done, total = s.total, calls = s.calls, eta = s.eta,
    errors = errs, pages = s.pages or 0, created = s.created or 0, deleted = s.deleted or 0,
    adopted = s.adopted or 0, wanted = self.nwanted,
    total_cost = self.total_cost, max_total_cost = self.max_total_cost,
    stalled = self.stalled,
  }
end
R.status = copy_status

-- the "reconcile" handlers of the conduit, then of the client
function R:_emit()
  local st = copy_status(self)
  for _, h in ipairs { self.conduit._h, self.client._h } do
    local list = h.reconcile
    if list then
      for i = 1, #list do
        local ok, err = pcall(list[i], st)
        if not ok then
          self.client:_report(errors.new("callback_error", tostring(err)), nil, self.conduit)
        end
      end
    end
  end
  self.conduit:_wake("reconcile")
end

function R:_eta()
  local left = self.st.total - self.st.done
  if left <= 0 then return 0 end
  if self.client._closed then return nil end -- a run ending with its client: no bucket to read
  local rl = self.client._core:ratelimit()
  if not rl.limit or rl.limit <= 0 then return nil end
  local rate = rl.limit / 60
  local have = rl.remaining > 0 and rl.remaining or 0
  if left <= have then return left / math.max(rate, 50) end
  return (left - have) / rate
end

function R:_progress(force)
  local st = self.st
  st.eta = self:_eta()
  local step = math.max(1, st.total // 100)
  if force or st.done % step == 0 then self:_emit() end
end

-- one more subscription settled as `what` (created, deleted, adopted): counted, progress told
function R:_settled(what)
  self.st[what] = self.st[what] + 1
  self.st.done = self.st.done + 1
  self:_progress(false)
end

function R:_phase(p)
  if self.st.phase ~= p then
    self.st.phase = p
    self:_progress(true)
  end
end

function R:_error(err, spec, report)
  if spec then err.subscription = spec end
  local errs = self.st.errors
  errs[#errs + 1] = err
  if report ~= false then self.client:_report(err, nil, self.conduit) end
end

local function note_cost(self, body)
  if type(body) ~= "table" then return end
  if type(body.total_cost) == "number" then self.total_cost = body.total_cost end
  if type(body.max_total_cost) == "number" then self.max_total_cost = body.max_total_cost end
end

-- one Helix call at background priority, counted in the run's calls
function R:_call(method, query, body)
  self.st.calls = self.st.calls + 1
  return self.client:helix(method, PATH, { query = query, body = body, priority = "background" })
end

-- ---------------------------------------------------------------------------------
-- declaring

function R:_set_opts(opts, fname)
  if opts == nil then return end
  if type(opts) ~= "table" then
    errors.argerror(2, fname, ("table expected, got %s"):format(type(opts)), 3)
  end
  for k, v in pairs(opts) do
    if k == "prune" then
      if type(v) ~= "boolean" then error("prune must be a boolean", 3) end
      self.prune = v
    elseif k == "concurrency" then
      if math.type(v) ~= "integer" or v < 1 or v > 64 then
        error("concurrency must be an integer from 1 to 64", 3)
      end
      self.concurrency = v
    elseif k == "recheck" then
      if type(v) ~= "number" or v < 0 then error("recheck must be a non-negative number", 3) end
      self.recheck = v
    else
      error(("unknown option '%s'"):format(tostring(k)), 3)
    end
  end
end

function R:_add(key, spec)
  if not self.wanted[key] then self.nwanted = self.nwanted + 1 end
  self.wanted[key] = spec
  self.retired[key] = nil
  self.failed[key] = nil
end

function R:_remove(key)
  if self.wanted[key] then
    self.nwanted = self.nwanted - 1
    self.wanted[key] = nil
    self.retired[key] = true
  end
  self.failed[key] = nil
end

function R:want(list, opts)
  local items = norm_list(list, "want")
  self:_set_opts(opts, "want")
  local new = {}
  for _, it in ipairs(items) do new[it[1]] = it[2] end
  for k in pairs(self.wanted) do
    if not new[k] then self:_remove(k) end
  end
  for k, s in pairs(new) do self:_add(k, s) end
  self:kick(true) -- the full declaration reads Twitch again
end

function R:want_add(list)
  for _, it in ipairs(norm_list(list, "want_add")) do self:_add(it[1], it[2]) end
  self:kick(false)
end

function R:want_remove(list)
  for _, it in ipairs(norm_list(list, "want_remove")) do self:_remove(it[1]) end
  self:kick(false)
end

--- (Re)starts the reconciler; relist: read Twitch again first.
function R:kick(relist)
  if relist then self.need_list = true end
  self.dirty = true
  self.stalled = nil
  if self.timer then
    self.client._core:cancel_timer(self.timer)
    self.timer = nil
  end
  if self.running or self.client._closed then return end
  self.running = true
  local st = self.st
  st.done, st.total, st.calls, st.errors = 0, 0, 0, {}
  st.pages, st.created, st.deleted, st.adopted = 0, 0, 0, 0
  async.spawn(function()
    local ok, err = xpcall(R._loop, debug.traceback, self)
    self.running = false
    if not ok then
      self.stalled = errors.new("callback_error", tostring(err))
      self.client:_report(self.stalled, nil, self.conduit)
    end
    if self.client._closed or self.conduit._ud:closed() then return end
    if self.dirty then return self:kick(false) end
    self:_schedule()
    if self.stalled then self:_progress(true) else self.conduit:_wake("reconcile") end
  end)
end

-- the periodic re-check (jittered ±10 %); sooner after a transient stall
function R:_schedule()
  local s = self.recheck
  if self.stalled and self.stalled.transient then s = math.min(s, 30) end
  if s <= 0 then return end
  s = s * (0.9 + 0.2 * math.random())
  self.timer = self.client._core:timer(s, function()
    self.timer = nil
    if not self.client._closed and not self.conduit._ud:closed() then self:kick(true) end
  end)
end

--- A revocation of one of this conduit's subscriptions (from the client's dispatcher).
function R:revoked(id, status)
  if type(id) ~= "string" then return end
  local key = self.by_id[id]
  if not key then return end
  self.seen_revoked[id] = true
  local ex = self.existing[key]
  if ex and ex.id == id then self.existing[key] = nil end
  self.by_id[id] = nil
  local spec = self.wanted[key]
  if spec and FINAL_CAUSE[status] then
    self:_drop_final(key, spec, status, id)
  end
  -- a re-check soon (revocations come in bursts: one listing for all of them)
  if not self.revoke_timer and not self.client._closed then
    self.revoke_timer = self.client._core:timer(1, function()
      self.revoke_timer = nil
      if not self.client._closed and not self.conduit._ud:closed() then self:kick(true) end
    end)
  end
end

function R:_drop_final(key, spec, status, id)
  local err = errors.new(status, ("subscription %s (%s) was revoked: %s; dropped from the wanted set")
    :format(tostring(id), spec.type, status), 0, { permanent = true, id = id })
  self.failed[key] = err
  if self.wanted[key] then
    self.wanted[key] = nil
    self.nwanted = self.nwanted - 1
  end
  self:_error(err, spec)
end

-- ---------------------------------------------------------------------------------
-- the run

function R:_list()
  self:_phase("listing")
  local q = {}
  local subs = {}
  for _ = 1, 100000 do
    local body, err = self:_call("GET", q)
    if not body then return nil, err end
    self.st.pages = self.st.pages + 1
    if type(body) ~= "table" then
      return nil, errors.new("bad_response", "expected a JSON body from " .. PATH)
    end
    note_cost(self, body)
    for _, s in ipairs(type(body.data) == "table" and body.data or {}) do
      local t = type(s.transport) == "table" and s.transport or {}
      if t.conduit_id == self.conduit_id and type(s.condition) == "table" then subs[#subs + 1] = s end
    end
    local cursor = type(body.pagination) == "table" and body.pagination.cursor
    if type(cursor) ~= "string" or cursor == "" or cursor == q.after then break end
    q.after = cursor
    self:_progress(false)
  end
  -- rebuild what this conduit has
  self.existing, self.by_id, self.extras = {}, {}, {}
  local revoked = {}
  for _, s in ipairs(subs) do
    local key = key_of(tostring(s.type), tostring(s.version), s.condition)
    if ACTIVE[s.status] then
      if self.existing[key] == nil then
        self.existing[key] = { id = s.id, status = s.status, cost = tonumber(s.cost) or 0 }
        self.by_id[s.id] = key
      else -- a duplicate (deleted with prune)
        self.extras[s.id] = { key = key, cost = tonumber(s.cost) or 0 }
      end
    else
      revoked[#revoked + 1] = { key = key, s = s }
    end
  end
  for _, r in ipairs(revoked) do
    local spec = self.wanted[r.key]
    if spec and not self.existing[r.key] and FINAL_CAUSE[r.s.status] and not self.seen_revoked[r.s.id] then
      self.seen_revoked[r.s.id] = true
      self:_drop_final(r.key, spec, r.s.status, r.s.id)
    end
  end
  self.listed = true
  return true
end

-- what to do now: deletes (ids) and creates (keys)
function R:_plan()
  local creates, deletes = {}, {}
  for key in pairs(self.wanted) do
    if not self.existing[key] and not self.failed[key] then creates[#creates + 1] = key end
  end
  for key, ex in pairs(self.existing) do
    if not self.wanted[key] and ex.id and (self.retired[key] or self.prune) then
      deletes[#deletes + 1] = { id = ex.id, key = key, cost = ex.cost }
    end
  end
  if self.prune then
    for id, x in pairs(self.extras) do
      deletes[#deletes + 1] = { id = id, key = x.key, cost = x.cost, extra = true }
    end
  end
  table.sort(creates)
  table.sort(deletes, function(a, b) return a.id < b.id end)
  return creates, deletes
end

local function is_closed(err) return errors.is(err) and err.code == "closed" end

local function is_auth(err)
  return errors.is(err) and (err.status == 401 or err.code == "auth_failed" or err.code == "unauthorized")
end

local function is_cost(err)
  return errors.is(err) and err.status == 429 and tostring(err.message):lower():find("cost", 1, true) ~= nil
end

-- runs fn(item) for every item of the list in `concurrency` coroutines; fn returns
-- "stop" to end the whole pass. Returns when all are done.
function R:_pool(list, fn)
  local i, active, stopped = 0, 0, false
  local client = self.client
  local n = math.min(self.concurrency, #list)
  if n == 0 then return end
  return async.await(client, function(done)
    local function worker()
      while not stopped do
        i = i + 1
        local item = list[i]
        if item == nil then break end
        local ok, r = xpcall(fn, debug.traceback, item)
        if not ok then -- a bug: the run stops with it instead of hanging
          self.stalled = self.stalled or errors.new("callback_error", tostring(r))
          self.client:_report(self.stalled, nil, self.conduit)
          r = "stop"
        end
        if r == "stop" then stopped = true end
      end
      active = active - 1
      if active == 0 then done(true) end
    end
    active = n
    for _ = 1, n do async.spawn(worker) end
  end, 2)
end

function R:_delete_all(deletes)
  if #deletes == 0 then return end
  self:_phase("deleting")
  local tries = {}
  local queue = deletes
  while #queue > 0 do
    local again = {}
    self:_pool(queue, function(d)
      if self.stalled then return "stop" end
      local ex = self.existing[d.key]
      if not d.extra and (self.wanted[d.key] or not ex or ex.id ~= d.id) then return end -- wanted again
      local ok, err = self:_call("DELETE", { id = d.id })
      if ok or (errors.is(err) and err.status == 404) then
        if not d.extra then self.existing[d.key] = nil end
        self.extras[d.id] = nil
        self.by_id[d.id] = nil
        if ok and self.total_cost then self.total_cost = math.max(0, self.total_cost - (d.cost or 0)) end
        self:_settled("deleted")
        return
      end
      if is_closed(err) then self.stalled = err; return "stop" end
      if is_auth(err) then self.stalled = err; self:_error(err); return "stop" end
      tries[d.id] = (tries[d.id] or 0) + 1
      if tries[d.id] < TRANSIENT_TRIES and (err.status == 0 or err.status >= 500 or err.status == 429) then
        again[#again + 1] = d
      else
        err.transient = true
        self:_error(err, { id = d.id })
        self.stalled = self.stalled or err
      end
    end)
    queue = again
    if #queue > 0 and not self.stalled then self.client:sleep(0.5) end
  end
end

function R:_create_all(creates)
  if #creates == 0 then return end
  self:_phase("creating")
  local tries = {}
  local inflight = 0
  local queue = creates
  local function cost_room()
    if not self.max_total_cost or not self.total_cost then return true end
    return self.total_cost + inflight + 1 <= self.max_total_cost
  end
  while #queue > 0 do
    local again = {}
    self:_pool(queue, function(key)
      if self.stalled then return "stop" end
      local spec = self.wanted[key]
      if not spec or self.existing[key] or self.failed[key] then return end -- no longer needed
      while not cost_room() do
        if inflight == 0 then
          local left = 0
          for _, k in ipairs(queue) do
            if self.wanted[k] and not self.existing[k] and not self.failed[k] then left = left + 1 end
          end
          local short = self.total_cost + left - self.max_total_cost
          local err = errors.new("cost_exceeded", ("%d more subscription(s) would need total cost %d, "
            .. "max_total_cost is %d: %d over"):format(left, self.total_cost + left,
              self.max_total_cost, short), 429, { shortfall = short, total_cost = self.total_cost,
              max_total_cost = self.max_total_cost, missing = left })
          self.stalled = err
          self:_error(err)
          return "stop"
        end
        self.client:sleep(0.02)
        if self.stalled then return "stop" end
      end
      inflight = inflight + 1
      local body, err = self:_call("POST", nil, { type = spec.type, version = spec.version,
        condition = spec.condition, transport = { method = "conduit", conduit_id = self.conduit_id } })
      inflight = inflight - 1
      if body then
        note_cost(self, body)
        local d = type(body) == "table" and type(body.data) == "table" and body.data[1]
        local id = type(d) == "table" and d.id or nil
        self.existing[key] = { id = id, status = d and d.status or "enabled",
          cost = d and tonumber(d.cost) or 1 }
        if id then self.by_id[id] = key end
        self:_settled("created")
        return
      end
      if errors.is(err) and err.status == 409 then -- made meanwhile (another process, a crash): adopt
        self.existing[key] = { status = "enabled", cost = 0, adopted = true }
        self:_settled("adopted")
        return
      end
      if is_closed(err) then self.stalled = err; return "stop" end
      if is_auth(err) then self.stalled = err; self:_error(err); return "stop" end
      if is_cost(err) then -- the ceiling reached by subscriptions made elsewhere meanwhile
        local left = 0
        for _, k in ipairs(queue) do
          if self.wanted[k] and not self.existing[k] and not self.failed[k] then left = left + 1 end
        end
        local e = errors.new("cost_exceeded", ("Twitch refused a subscription at its cost ceiling: "
          .. "%d more would need up to %d more total cost"):format(left, left), 429,
          { shortfall = left, total_cost = self.total_cost, max_total_cost = self.max_total_cost,
            missing = left })
        self.stalled = e
        self:_error(e)
        return "stop"
      end
      local st = errors.is(err) and err.status or 0
      if st == 400 or st == 403 or st == 404 or (st == 429 and err.code == "limit_exceeded") then
        err.permanent = true
        self.failed[key] = err
        self:_error(err, spec)
        self.st.done = self.st.done + 1
        return
      end
      tries[key] = (tries[key] or 0) + 1
      if tries[key] < TRANSIENT_TRIES then
        again[#again + 1] = key
      else
        err.transient = true
        self:_error(err, spec)
        self.stalled = self.stalled or err
      end
    end)
    queue = again
    if #queue > 0 and not self.stalled then self.client:sleep(0.5) end
  end
end

function R:_loop()
  local id, err = self.conduit:_wait_id()
  if not id then
    self.stalled = err
    return
  end
  self.conduit_id = id
  while self.dirty and not self.stalled do
    self.dirty = false
    if self.need_list or not self.listed then
      self.need_list = false
      local ok, lerr = self:_list()
      if not ok then
        self.stalled = lerr
        if not is_closed(lerr) then
          lerr.transient = not is_auth(lerr)
          self:_error(lerr)
        end
        return
      end
    end
    local creates, deletes = self:_plan()
    local st = self.st
    st.total = st.done + #creates + #deletes
    self:_progress(true)
    self:_delete_all(deletes)
    if not self.stalled then self:_create_all(creates) end
    -- whatever changed meanwhile is planned again from what is known (no new listing)
    if not self.dirty and not self.stalled then
      local c2, d2 = self:_plan()
      if #c2 + #d2 > 0 and not self:_only_blocked(c2) then self.dirty = true end
    end
  end
  if not self.stalled then
    self.st.total = self.st.done
    self.st.eta = 0
    self:_phase("done")
  end
end

function R:_only_blocked(creates)
  for _, k in ipairs(creates) do
    if not self.failed[k] then return false end
  end
  return true
end

-- ---------------------------------------------------------------------------------
-- the conduit methods

local function rc(conduit)
  if conduit._ud:closed() then error("conduit is closed", 3) end
  local r = conduit._rc
  if not r then
    r = R.new(conduit)
    conduit._rc = r
  end
  return r
end

-- the conduit methods (R.install copies them into the conduit class)
local Conduit = {}

--- Declares the whole wanted set (replacing the previous one), reads Twitch again and
-- reconciles. opts: prune, concurrency, recheck. Returns at once.
function Conduit:want(list, opts) rc(self):want(list, opts) end
function Conduit:want_add(list) rc(self):want_add(list) end
function Conduit:want_remove(list) rc(self):want_remove(list) end
--- Reads Twitch again and fixes what differs (what the periodic re-check does).
function Conduit:reconcile_now() rc(self):kick(true) end

function Conduit:reconcile_status()
  local r = self._rc
  if not r then
    return { phase = "done", done = 0, total = 0, calls = 0, eta = 0, errors = {}, wanted = 0 }
  end
  return copy_status(r)
end

--- Waits until Twitch matches the wanted set: the status table | nil, err (a stalled
-- run's error: cost_exceeded, auth_failed, ...; timeout; closed). Async.
function Conduit:reconcile_wait(timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    errors.argerror(1, "reconcile_wait", "non-negative number expected")
  end
  if self._ud:closed() then error("conduit is closed", 2) end
  local r = self._rc
  if not r then return self:reconcile_status() end
  return self._client:_wait(function()
    if self._ud:closed() then return nil, errors.new("closed", "conduit is closed") end
    if r.running or r.dirty then return nil end
    if r.stalled then return nil, r.stalled end
    if r.st.phase == "done" then return copy_status(r) end
  end, timeout, self, "the subscriptions to match the wanted set")
end

function R.install(class)
  for k, v in pairs(Conduit) do class[k] = v end
end

return R
