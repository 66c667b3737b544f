--- twconduit.operations: the conduit operations (resize, remove_shard, handover,
-- handover_all, maintain, rebalance), written as coroutines over the shard-lifecycle
-- verbs of the C core (conduit:_resize, shard:_point_at, _handover, _hold, _renumber,
-- release, add_shards).
--
-- Rules every operation follows:
--   * one operation at a time per conduit; concurrent calls queue (in call order);
--   * `operation` events: start, step (what it is doing), done, failed;
--   * at most one websocket shard without a live, assigned socket at any moment:
--     shards are taken out of service by pointing them at a sibling's socket first
--     (the sibling serves both ids), never by closing a socket Twitch still routes to;
--     what would take a second shard down is refused (`unsafe`);
--   * a socket is closed only with the close handshake (frames Twitch already wrote are
--     read until the server's close frame).
local async = require "twconduit.async"
local errors = require "twconduit.errors"

local M = {}

local MAX_SHARDS = 20000

-- ---------------------------------------------------------------------------------
-- events

local function fire(cd, name, ...)
  local log = cd._client._log -- twconduit.log: one line per operation step and alert
  if log and (name == "operation" or name == "alert") then log[name](log, cd, ...) end
  local lists = { cd._h[name], cd._client._h[name] }
  for _, list in ipairs(lists) do
    for i = 1, #list do
      local fn = list[i]
      async.spawn(function(...) return fn(...) end, ...)
    end
  end
end
M.fire = fire

local function emit(op, phase, message)
  op.phase, op.message = phase, message
  local ev = { id = op.id, name = op.name, phase = phase, message = message, args = op.args,
    error = op.error, conduit = op.conduit, steps = op.steps, at = op.conduit._client:now() }
  if phase == "step" then op.steps = op.steps + 1 end
  fire(op.conduit, "operation", ev)
end

local function step(op, fmt, ...) emit(op, "step", fmt:format(...)) end

-- ---------------------------------------------------------------------------------
-- the queue: one operation at a time

local function queue(cd)
  local q = cd._opq
  if not q then
    q = { waiting = {}, busy = false, n = 0 }
    cd._opq = q
  end
  return q
end

--- Runs body(op) as the conduit's operation `name` once the ones before it are done.
-- body returns true (or a value) | nil, err. Returns the same.
local function run(cd, name, args, body)
  local q = queue(cd)
  local client = cd._client
  if q.busy then
    local ok, err = async.await(client, function(done) q.waiting[#q.waiting + 1] = done end, 3)
    if not ok then return nil, err end
  end
  q.busy = true
  q.n = q.n + 1
  local op = { id = q.n, name = name, args = args, conduit = cd, steps = 0 }
  q.current = op
  emit(op, "start", name)
  local ok, res, err = pcall(body, op)
  if not ok then
    res, err = nil, errors.is(res) and res or errors.new("error", tostring(res))
  end
  q.current = nil
  if res then
    emit(op, "done", name)
  else
    op.error = err
    emit(op, "failed", tostring(err))
  end
  local nxt = table.remove(q.waiting, 1)
  if nxt and not client._closed then
    client._core:timer(0, function() nxt(true) end)
  else
    q.busy = false
  end
  if res then return res end
  return nil, err
end
M.run = run

--- The running operation of cd (a table: id, name, args, phase), or nil.
function M.current(cd) return cd._opq and cd._opq.current end

-- ---------------------------------------------------------------------------------
-- helpers

local function fail(code, fmt, ...) return nil, errors.new(code, fmt:format(...)) end

local function sid(x)
  if type(x) == "number" then x = tostring(math.tointeger(x) or x) end
  return x
end

local function check_id(id, fname)
  id = sid(id)
  if type(id) ~= "string" then
    errors.argerror(1, fname, ("shard id (string or integer) expected, got %s"):format(type(id)), 3)
  end
  return id
end

local function check_open(cd)
  if cd._ud:closed() then error("conduit is closed", 3) end
end

local function method_of(s)
  local t = s._ud:closed() and {} or s:_transport()
  return t.method or "websocket", t
end

local function is_live(s)
  return not s._ud:closed() and s.state == "enabled"
end

--- The range this process runs: { offset, count, all } (all: it owns every shard).
function M.range(cd)
  local o = cd._open or {}
  local all = o.offset == nil and o.total == nil
  return { offset = o.offset or 0, count = o.shards or 1, all = all }
end

--- Websocket shards run here that have no live, assigned socket (but `except`).
local function down_shards(cd, except)
  local out = {}
  for _, s in ipairs(cd:shards()) do
    if s ~= except and method_of(s) == "websocket" and not is_live(s) then out[#out + 1] = s end
  end
  return out
end

--- Refuses an operation that would take a websocket shard off a socket (even for one
-- round trip) while another is down: Twitch retries a notification on one other shard.
local function check_safe(cd, what, except)
  local down = down_shards(cd, except)
  if #down > 0 then
    return fail("unsafe", "%s refused: shard %s is down (%s); Twitch retries a notification on one " ..
      "other shard only, so a second shard without a socket could lose events", what, down[1].id,
      down[1].state)
  end
  return true
end

-- Waits until pred() gives a value (or nil, err): checked after every event of the
-- conduit and every 10 ms (not every completion of the core's verbs is an event).
local function wait(cd, pred, timeout, what)
  local v, e = pred()
  if v then return v end
  if e then return nil, e end
  local client = cd._client
  local core = client._core
  return async.await(client, function(done)
    local finished, poll_id, deadline_id = false, nil, nil
    local check, watcher
    local function finish(...)
      if finished then return end
      finished = true
      if poll_id then core:cancel_timer(poll_id) end
      if deadline_id then core:cancel_timer(deadline_id) end
      cd:_unwatch(watcher)
      done(...)
    end
    check = function()
      if finished then return end
      local ok, err = pred()
      if ok then finish(ok) elseif err then finish(nil, err) end
    end
    local function poll()
      poll_id = nil
      if finished then return end
      check()
      if not finished and not core:closed() then poll_id = core:timer(0.01, poll) end
    end
    -- an event wakes the check from the loop, never inside the core's emit (the verb that
    -- emitted it has not finished there: a shard_enabled comes before its point completes)
    local soon = false
    watcher = function()
      if soon or finished then return end
      soon = true
      core:timer(0, function() soon = false; check() end)
    end
    cd:_watch(watcher)
    poll_id = core:timer(0.01, poll)
    deadline_id = core:timer(timeout, function()
      deadline_id = nil
      finish(nil, errors.new("timeout", ("timed out after %gs waiting for %s"):format(timeout, what)))
    end)
  end, 3)
end

local function op_timeout(cd) return cd._client._opts.http_timeout * 4 + 10 end

--- Waits until s is assigned to the transport it wants and enabled (or fails).
local function wait_assigned(cd, s, want_session, what)
  local before = cd._last_error
  return wait(cd, function()
    if s._ud:closed() then return nil, errors.new("closed", ("shard %s was closed"):format(s.id)) end
    local t = s:_transport()
    if t.assigned and s.state == "enabled" and (want_session == nil or t.session_id == want_session) then
      return true
    end
    local e = cd._last_error
    if e ~= before and errors.is(e) and (e.code == "handover_failed" or e.code == "shard_assign_failed") then
      return nil, e
    end
  end, op_timeout(cd), what)
end

--- Sets the conduit's shard count on Twitch and waits for the answer.
local function set_count(cd, n)
  if cd.shard_count == n then return true end
  local before = cd._last_error
  local ok, err = cd:_resize(n)
  if not ok then return nil, err end
  return wait(cd, function()
    if cd.shard_count == n then return true end
    local e = cd._last_error
    if e ~= before and errors.is(e) then return nil, e end
  end, op_timeout(cd), "Update Conduits")
end

--- Reads Get Conduit Shards and checks it has exactly n shards, each pointing where
-- check(id, shard) says (optional). Twitch has had a bug where a shrink after a
-- disconnect did not drop the top shard: the shrink is sent again once.
local function verify_count(cd, op, n, check)
  local client = cd._client
  for attempt = 1, 2 do
    local list, err = client:conduit_shards(cd.id)
    if not list then return nil, err end
    local extra
    for _, sh in ipairs(list) do
      if tonumber(sh.id) >= n then extra = sh.id end
    end
    if not extra and #list == n then
      if check then
        for _, sh in ipairs(list) do
          local ok, why = check(sh.id, sh)
          if not ok then return fail("verify_failed", "Twitch shows shard %s %s", sh.id, why) end
        end
      end
      return true
    end
    if attempt == 2 then
      return fail("verify_failed", "Twitch still lists %d shards (shard %s) after shrinking to %d",
        #list, tostring(extra), n)
    end
    step(op, "Twitch lists %d shards after the shrink to %d: shrinking again", #list, n)
    local ok, e2 = cd:_resize(n)
    if not ok then return nil, e2 end
    client:sleep(0.5)
  end
end

-- ---------------------------------------------------------------------------------
-- resize

--- Takes the shards `top` (a list, run here) out of service and removes them: each
-- websocket shard is first pointed at a live sibling among `keep` (round robin), so it
-- is never without a socket; webhook shards just go.
local function retire(cd, op, top, keep)
  local targets = {}
  for _, s in ipairs(keep) do
    if is_live(s) and method_of(s) == "websocket" and not s:_held() then targets[#targets + 1] = s end
  end
  local pointed = {}
  for i, s in ipairs(top) do
    if method_of(s) == "websocket" then
      if #targets == 0 then return fail("unsafe", "no live websocket shard to move shard %s to", s.id) end
      local t = targets[(i - 1) % #targets + 1]
      local ok, err = s:_point_at(t)
      if not ok then return nil, err end
      pointed[#pointed + 1] = { s = s, session = t.session_id }
    end
  end
  if #pointed > 0 then
    step(op, "pointing %d shard(s) at siblings (%s -> %s ...)", #pointed, pointed[1].s.id,
      tostring(pointed[1].session))
    local ok, err = wait(cd, function()
      for _, p in ipairs(pointed) do
        if p.s._ud:closed() then return nil, errors.new("closed", "shard " .. p.s.id .. " was closed") end
        local t = p.s:_transport()
        if not (t.assigned and t.session_id == p.session) then
          if p.s:_held() == false then -- the point was refused: the shard is back on its own
            return nil, cd._last_error or errors.new("shard_assign_failed", "shard " .. p.s.id)
          end
          return false
        end
      end
      return true
    end, op_timeout(cd) + #pointed / 10, "the shards to be pointed at siblings")
    if not ok then return nil, err end
  end
  step(op, "releasing %d shard(s) here", #top)
  for _, s in ipairs(top) do
    if not s._ud:closed() then
      local ok, err = s:release(op_timeout(cd))
      if not ok then return nil, err end
    end
  end
  return true
end

local function grow(cd, op, k)
  local ok, err = check_safe(cd, "growing the conduit")
  if not ok then return nil, err end
  step(op, "adding %d shard(s): sockets first, then Update Conduits and batched PATCHes", k)
  local list
  list, err = cd:add_shards(k, op_timeout(cd) + k / 20)
  if not list then return nil, err end
  return true
end

local function shrink(cd, op, n, range)
  local shards = cd:shards()
  local keep, top = {}, {}
  for i, s in ipairs(shards) do
    if i <= n then keep[#keep + 1] = s else top[#top + 1] = s end
  end
  table.sort(top, function(a, b) return tonumber(a.id) > tonumber(b.id) end)
  local ok, err = retire(cd, op, top, keep)
  if not ok then return nil, err end
  if range.all then
    step(op, "Update Conduits: shard_count %d", n)
    ok, err = set_count(cd, n)
    if not ok then return nil, err end
    step(op, "verifying Get Conduit Shards")
    return verify_count(cd, op, n)
  end
  return true
end

local function check_count(n, fname)
  if math.type(n) ~= "integer" or n < 1 or n > MAX_SHARDS then
    errors.argerror(1, fname, ("a shard count in 1..%d expected"):format(MAX_SHARDS), 3)
  end
end

local resize_body

--- conduit:resize(n): scale to n shards. Async: true | nil, err.
function M.resize(cd, n)
  check_count(n, "resize")
  check_open(cd)
  return run(cd, "resize", { n = n }, function(op)
    local ok, err = resize_body(cd, op, n)
    if ok and M.range(cd).all then
      cd._open.shards = #cd:shards() -- a range process keeps its range; this one is all shards
      if cd._state then cd._state:shards(#cd:shards()) end
    end
    return ok, err
  end)
end

resize_body = function(cd, op, n)
  do
    local range = M.range(cd)
    local here = #cd:shards()
    if not range.all then
      if n > range.count then
        return fail("out_of_range", "this process runs shards %d..%d (offset %d, %d shards): it resizes " ..
          "within that range only (asked for %d)", range.offset, range.offset + range.count - 1,
          range.offset, range.count, n)
      end
      if n > here then return grow(cd, op, n - here) end
      if n < here then return shrink(cd, op, n, range) end
      return true
    end
    local cur = cd.shard_count
    if n > cur or n > here then
      if here < cur then
        return fail("unsafe", "Twitch has %d shards and %d run here: rebalance() first", cur, here)
      end
      return grow(cd, op, n - here)
    end
    if n < cur then return shrink(cd, op, n, range) end
    return true
  end
end

-- ---------------------------------------------------------------------------------
-- remove_shard

function M.remove_shard(cd, id)
  id = check_id(id, "remove_shard")
  check_open(cd)
  return run(cd, "remove_shard", { id = id }, function(op)
    local range = M.range(cd)
    local s = cd:shard(id)
    if not s then return fail("not_found", "shard %s does not run here", id) end
    local n = cd.shard_count
    local last = cd:shard(tostring(n - 1))
    if not range.all or not last then
      return fail("out_of_range", "removing a shard needs the conduit's last shard (%d) here", n - 1)
    end
    if n <= 1 then return fail("invalid_argument", "a conduit keeps at least one shard") end
    if s == last then return shrink(cd, op, n - 1, range) end
    if method_of(last) ~= "websocket" or method_of(s) ~= "websocket" then
      -- webhook (per the notes): copy the last shard into it, then shrink
      if method_of(last) ~= "websocket" then
        return fail("invalid_argument", "only websocket shards are removed from the middle here")
      end
    end
    if not is_live(last) then return fail("unsafe", "the last shard (%s) is down", last.id) end
    local target_session = last.session_id
    step(op, "pointing shard %s at shard %s's socket (%s)", id, last.id, tostring(target_session))
    local ok, err = s:_point_at(last)
    if not ok then return nil, err end
    ok, err = wait_assigned(cd, s, target_session, "shard " .. id .. " to take the last shard's socket")
    if not ok then return nil, err end
    step(op, "releasing shard %s here (its socket closes with the handshake)", id)
    ok, err = s:release(op_timeout(cd))
    if not ok then return nil, err end
    step(op, "shard %s's socket now serves id %s", last.id, id)
    ok, err = last:_renumber(id)
    if not ok then return nil, err end
    last.id = id
    step(op, "Update Conduits: shard_count %d", n - 1)
    ok, err = set_count(cd, n - 1)
    if not ok then return nil, err end
    step(op, "verifying Get Conduit Shards")
    return verify_count(cd, op, n - 1, function(sh_id, sh)
      if sh_id ~= id then return true end
      local t = sh.transport or {}
      if t.session_id == target_session then return true end
      return false, ("pointing at %s, not %s"):format(tostring(t.session_id), tostring(target_session))
    end)
  end)
end

-- ---------------------------------------------------------------------------------
-- handover

M.default_handover = "direct"

-- direct: a new socket, the shard PATCHed to it, the old socket kept until traffic
-- arrives on the new one (one keepalive interval at most), then closed with the handshake
local function handover_direct(cd, _, s)
  local old = s.session_id
  local ok, err = s:_handover()
  if not ok then return nil, err end
  local before = cd._last_error
  return wait(cd, function()
    if s._ud:closed() then return nil, errors.new("closed", "shard " .. s.id .. " was closed") end
    local t = s:_transport()
    if t.assigned and t.session_id ~= old and s.state == "enabled" then return true end
    local e = cd._last_error
    if e ~= before and errors.is(e) and e.code == "handover_failed" then return nil, e end
  end, op_timeout(cd), "the handover of shard " .. s.id)
end

-- spare: grow by one, assign a new socket to the spare shard, swap the two shards'
-- transports in one PATCH, shrink (the spare id, now on the old socket, goes), then
-- close the old socket with the handshake
local function handover_spare(cd, op, s)
  local client = cd._client
  local range = M.range(cd)
  if not range.all then
    return fail("out_of_range",
      "the spare-shard handover grows the conduit: only a process running every shard")
  end
  local ok, err = check_safe(cd, "the spare-shard handover")
  if not ok then return nil, err end
  local n = cd.shard_count
  if #cd:shards() ~= n then return fail("unsafe", "Twitch has %d shards and %d run here", n, #cd:shards()) end
  step(op, "growing to %d shards with a spare on a new socket", n + 1)
  local list
  list, err = cd:add_shards(1, op_timeout(cd))
  if not list then return nil, err end
  local spare = list[1]
  local old_session, new_session = s.session_id, spare.session_id
  s:_hold(true)
  spare:_hold(true)
  step(op, "swapping shards %s and %s in one PATCH", s.id, spare.id)
  local res
  res, err = client:update_shards(cd.id, {
    { id = s.id, transport = { method = "websocket", session_id = new_session } },
    { id = spare.id, transport = { method = "websocket", session_id = old_session } },
  })
  if res and res.errors and #res.errors > 0 then
    err, res = errors.new("shard_assign_failed", tostring(res.errors[1].message)), nil
  end
  if not res then
    -- undo: the spare goes again
    s:_hold(false)
    local r1 = spare:release(op_timeout(cd))
    local r2 = set_count(cd, n)
    if not (r1 and r2) then step(op, "undoing the spare failed: rebalance() repairs it") end
    return nil, err
  end
  -- locally the two objects trade ids: the spare's socket now serves s.id
  local id, spare_id = s.id, spare.id
  ok, err = s:_renumber(tostring(MAX_SHARDS - 1))
  if ok then ok, err = spare:_renumber(id) end
  if ok then ok, err = s:_renumber(spare_id) end
  if not ok then return nil, err end
  s.id, spare.id = spare_id, id
  spare:_hold(false)
  step(op, "Update Conduits: shard_count %d (the spare id goes)", n)
  ok, err = set_count(cd, n)
  if not ok then return nil, err end
  step(op, "closing the old socket %s with the handshake", tostring(old_session))
  ok, err = s:release(op_timeout(cd))
  if not ok then return nil, err end
  return verify_count(cd, op, n, function(sh_id, sh)
    if sh_id ~= id then return true end
    if (sh.transport or {}).session_id == new_session then return true end
    return false, "not on the new socket"
  end)
end

local function handover_one(cd, op, s, method)
  if method_of(s) ~= "websocket" then
    return fail("invalid_argument", "shard %s is not a websocket shard", s.id)
  end
  if not is_live(s) then
    return fail("unsafe", "shard %s has no live socket to hand over (%s)", s.id, s.state)
  end
  if method == "spare" then return handover_spare(cd, op, s) end
  return handover_direct(cd, op, s)
end

local function check_method(m, fname)
  if m ~= nil and m ~= "direct" and m ~= "spare" then
    errors.argerror(2, fname, "method must be \"direct\" or \"spare\"", 3)
  end
  return m or M.default_handover
end

--- conduit:handover(id[, {method = "direct" | "spare"}]). Async: true | nil, err.
function M.handover(cd, id, opts)
  id = check_id(id, "handover")
  if opts ~= nil and type(opts) ~= "table" then errors.argerror(2, "handover", "table expected") end
  local method = check_method(opts and opts.method, "handover")
  check_open(cd)
  return run(cd, "handover", { id = id, method = method }, function(op)
    local s = cd:shard(id)
    if not s then return fail("not_found", "shard %s does not run here", id) end
    step(op, "%s handover of shard %s (session %s)", method, id, tostring(s.session_id))
    return handover_one(cd, op, s, method)
  end)
end

--- conduit:handover_all{concurrency = 20}: every websocket shard run here gets a new
-- socket (make-before-break, so several roll at once). Async: true | nil, err.
function M.handover_all(cd, opts)
  if opts ~= nil and type(opts) ~= "table" then errors.argerror(1, "handover_all", "table expected") end
  opts = opts or {}
  local conc = opts.concurrency or 20
  if math.type(conc) ~= "integer" or conc < 1 then
    errors.argerror(1, "handover_all", "concurrency must be a positive integer")
  end
  check_open(cd)
  return run(cd, "handover_all", { concurrency = conc }, function(op)
    local list = {}
    for _, s in ipairs(cd:shards()) do
      if method_of(s) == "websocket" then list[#list + 1] = s end
    end
    local old = {}
    for _, s in ipairs(list) do old[s] = s.session_id end
    local done, active, failed, nxt = 0, 0, nil, 1
    local before = cd._last_error
    step(op, "rolling %d shard(s), %d at a time", #list, conc)
    local ok, err = wait(cd, function()
      -- completions
      for s, st in pairs(old) do
        if st ~= true and st ~= false and s._started then
          if s._ud:closed() then
            old[s] = false
            active = active - 1
            failed = failed or errors.new("closed", "shard " .. s.id .. " was closed")
          else
            local t = s:_transport()
            if t.assigned and t.session_id ~= st and s.state == "enabled" then
              old[s] = true
              active, done = active - 1, done + 1
              if done % 100 == 0 then step(op, "%d of %d handed over", done, #list) end
            end
          end
        end
      end
      local e = cd._last_error
      if e ~= before and errors.is(e) and e.code == "handover_failed" then
        before = e
        failed = failed or e
        -- the failed shard keeps its old socket: count it as finished
        for s, st in pairs(old) do
          if st ~= true and st ~= false and s._started and not s._ud:closed() and s:_transport().assigned
            and s.session_id == st and s.state == "enabled" then
            old[s] = false
            active = active - 1
            break
          end
        end
      end
      if failed then return nil, failed end
      while active < conc and nxt <= #list do
        local s = list[nxt]
        nxt = nxt + 1
        if not s._ud:closed() then
          if not is_live(s) then
            return fail("unsafe", "shard %s is down (%s): not handing over", s.id, s.state)
          end
          local r, herr = s:_handover()
          if not r then return nil, herr end
          s._started = true
          active = active + 1
        end
      end
      if active == 0 and nxt > #list then return true end
    end, op_timeout(cd) + #list, "the handovers")
    for _, s in ipairs(list) do s._started = nil end
    if not ok then return nil, err end
    return true
  end)
end

-- ---------------------------------------------------------------------------------
-- maintain

--- conduit:maintain(id, fn): takes the shard out of service (websocket: its traffic moves
-- to a sibling's socket first; webhook: the last shard is copied into it and the conduit
-- shrinks), runs fn(shard), and puts it back the way it was. Async: fn's first result
-- (true when it returns nothing) | nil, err.
function M.maintain(cd, id, fn)
  id = check_id(id, "maintain")
  if type(fn) ~= "function" then errors.argerror(2, "maintain", "function expected") end
  check_open(cd)
  return run(cd, "maintain", { id = id }, function(op)
    local s = cd:shard(id)
    if not s then return fail("not_found", "shard %s does not run here", id) end
    if method_of(s) ~= "websocket" then
      return fail("invalid_argument", "maintenance of webhook shards is not available yet")
    end
    if not is_live(s) then return fail("unsafe", "shard %s is down (%s)", id, s.state) end
    local sibling
    for _, x in ipairs(cd:shards()) do
      if x ~= s and is_live(x) and method_of(x) == "websocket" and not x:_held() then sibling = x; break end
    end
    if not sibling then return fail("unsafe", "no live sibling to take shard %s's traffic", id) end
    step(op, "moving shard %s's traffic to shard %s's socket", id, sibling.id)
    local target = sibling.session_id
    local ok, err = s:_point_at(sibling)
    if not ok then return nil, err end
    ok, err = wait_assigned(cd, s, target, "shard " .. id .. " to move to its sibling")
    if not ok then return nil, err end
    -- the sibling may get a new session meanwhile (a reconnect): follow it
    local function follow()
      if s._ud:closed() or sibling._ud:closed() then return end
      local now = sibling.session_id
      if sibling.state == "enabled" and now and now ~= target and sibling:_transport().assigned then
        if s:_point_at(sibling) then target = now end
      end
    end
    cd:_watch(follow)
    step(op, "running the maintenance function")
    local fok, res, ferr = pcall(fn, s)
    cd:_unwatch(follow)
    if not fok then
      ferr = errors.new("callback_error", tostring(res))
      res = nil
    end
    step(op, "bringing shard %s back onto a socket of its own", id)
    ok, err = s:_hold(false) -- unheld and pointed nowhere of its own: it connects again
    if not ok then return nil, err end
    ok, err = wait(cd, function()
      if s._ud:closed() then return nil, errors.new("closed", "shard " .. id .. " was closed") end
      local t = s:_transport()
      return t.assigned and s.state == "enabled" and t.session_id ~= target and t.session_id ~= nil
    end, op_timeout(cd), "shard " .. id .. " back on its own socket")
    if not ok then return nil, err end
    if res == nil and ferr then return nil, ferr end
    if res == nil then return true end
    return res
  end)
end

-- ---------------------------------------------------------------------------------
-- rebalance

--- conduit:rebalance(): compares Get Conduit Shards with the shards run here and repairs,
-- one at a time: a shard of ours Twitch points elsewhere (or at a closed session) is
-- reassigned; a shard in our range that does not run here is added; for a process that
-- runs every shard, Twitch shards beyond the ones run here are removed and a conduit
-- smaller than them is grown. Async: a report {repaired = n, ...} | nil, err.
function M.rebalance(cd)
  check_open(cd)
  return run(cd, "rebalance", {}, function(op)
    local client = cd._client
    local ok, err = wait(cd, function()
      local st = cd.state
      if st == "ready" then return true end
      if st == "failed" or st == "closed" then return nil, cd._last_error or errors.new("closed", st) end
    end, op_timeout(cd), "the conduit to be ready")
    if not ok then return nil, err end
    local list
    list, err = client:conduit_shards(cd.id)
    if not list then return nil, err end
    local twitch = {}
    for _, sh in ipairs(list) do twitch[sh.id] = sh end
    local report = { repaired = 0, reassigned = {}, added = 0, removed = 0 }
    local range = M.range(cd)
    -- shards of ours Twitch points elsewhere
    for _, s in ipairs(cd:shards()) do
      local tw = twitch[s.id]
      local t = s:_transport()
      local tws = tw and tw.transport and tw.transport.session_id
      local elsewhere = tw and (tws ~= t.session_id or tw.status ~= "enabled")
      if elsewhere and t.method == "websocket" and is_live(s) then
        step(op, "shard %s: Twitch shows %s (%s), reassigning", s.id, tostring(tws), tostring(tw.status))
        if s:_held() then s:_hold(false) end
        local old = s.session_id
        ok, err = s:_handover() -- make-before-break: a new socket, PATCHed, then the old one goes
        if not ok then return nil, err end
        ok, err = wait(cd, function()
          local x = s:_transport()
          return x.assigned and s.state == "enabled" and s.session_id ~= old
        end, op_timeout(cd), "shard " .. s.id .. " to be reassigned")
        if not ok then return nil, err end
        report.reassigned[#report.reassigned + 1] = s.id
        report.repaired = report.repaired + 1
      end
    end
    local here = #cd:shards()
    if range.all then
      local n = #list -- Twitch's count, as read (another process or a crash may have changed it)
      if here < n then
        -- shards on Twitch that nothing here serves (a crash mid-operation): shrink to ours
        local top = -1
        for _, s in ipairs(cd:shards()) do top = math.max(top, tonumber(s.id)) end
        if top + 1 == here then
          step(op, "Twitch has %d shards, %d run here: shrinking to %d", n, here, here)
          ok, err = cd:_resize(here)
          if not ok then return nil, err end
          for _ = 1, 50 do
            list, err = client:conduit_shards(cd.id)
            if not list then return nil, err end
            if #list == here then break end
            client:sleep(0.1)
          end
          if #list ~= here then
            return fail("verify_failed", "Twitch still lists %d shards after shrinking to %d", #list, here)
          end
          report.removed = n - here
          report.repaired = report.repaired + 1
        else
          step(op, "shards missing among 0..%d here: adding them", n - 1)
          return fail("unsafe", "shard ids here have gaps (%d run, highest %d)", here, top)
        end
      end
    elseif here < range.count then
      step(op, "the range has %d shards, %d run here: adding %d", range.count, here, range.count - here)
      local added
      added, err = cd:add_shards(range.count - here, op_timeout(cd))
      if not added then return nil, err end
      report.added = #added
      report.repaired = report.repaired + 1
    end
    return report
  end)
end

return M
