--- Coroutine helpers: `spawn`, and the one way every async call waits.
--
-- Inside a coroutine started by `spawn`, or a handler (handlers run in coroutines of
-- their own, see client.lua), an async call yields until the C core's callback resumes
-- it. At top level with the loop not running, it steps the loop until done (a blocking
-- convenience for scripts). From a plain callback of the loop that is neither (a
-- function given to the C core directly) it raises. When the client is closed, every
-- call still waiting returns nil, err (`closed`).
local errors = require "twconduit.errors"

local M = {}

local spawned = setmetatable({}, { __mode = "k" }) -- coroutine -> client or true
local pack, unpack = table.pack, table.unpack

-- Set by the client module: report(client_or_nil, err) routes an error of a
-- spawned coroutine to the client's "error" handlers (or stderr).
M.report = function(_, err)
  io.stderr:write("twconduit: ", tostring(err), "\n")
end

-- The client whose events are being dispatched (so that spawn inside a callback knows
-- where to report errors; inside a handler or coroutine, its own client is known).
M.current = nil

local function resume(co, ...)
  local ok, err = coroutine.resume(co, ...)
  if not ok then
    local owner = spawned[co]
    spawned[co] = nil
    local tb = debug.traceback(co, tostring(err))
    M.report(type(owner) == "table" and owner or nil,
      errors.new("callback_error", tb))
  elseif coroutine.status(co) == "dead" then
    spawned[co] = nil
  end
end

--- Marks co (a handler runner of client) as a coroutine async calls may yield in.
function M.adopt(co, client) spawned[co] = client end
function M.disown(co) spawned[co] = nil end

--- Runs fn(...) in a new coroutine at once; async calls inside it yield.
-- Returns the coroutine. Errors are reported through the client's "error" event.
function M.spawn(fn, ...)
  if type(fn) ~= "function" then
    errors.argerror(1, "spawn", ("function expected, got %s"):format(type(fn)))
  end
  -- the client whose handler (or coroutine) is running, for error reports
  local owner = spawned[coroutine.running()]
  local co = coroutine.create(fn)
  spawned[co] = (type(owner) == "table" and owner) or M.current or true
  resume(co, ...)
  return co
end

--- Waits for an operation. start(done) begins it; done(...) is called once with
-- its results (possibly before start returns). Returns those results.
function M.await(client, start, level)
  local co = coroutine.running()
  if spawned[co] then
    spawned[co] = client
    local state, res = "starting", nil
    local waiting = client._waiting
    local function done(...)
      if state == "starting" then
        state, res = "done", pack(...)
      elseif state == "waiting" then
        state = "resumed"
        waiting[done] = nil
        resume(co, ...)
      end
    end
    start(done)
    if state == "done" then return unpack(res, 1, res.n) end
    state = "waiting"
    waiting[done] = true
    return coroutine.yield()
  end
  local core = client._core
  if core:running() then
    error("call this from twconduit.spawn", (level or 2) + 1)
  end
  if core:closed() then return nil, errors.new("closed", "client is closed") end
  local done, res = false, nil
  start(function(...)
    if not done then done, res = true, pack(...) end
  end)
  while not done do
    if core:closed() then return nil, errors.new("closed", "client is closed") end
    local ok, err = core:step(0.25)
    if not ok then return nil, err end
  end
  return unpack(res, 1, res.n)
end

--- Ends every call of client still waiting with nil, err (`closed`).
function M.close_waiting(client)
  local list = {}
  for done in pairs(client._waiting) do list[#list + 1] = done end
  for _, done in ipairs(list) do done(nil, errors.new("closed", "client is closed")) end
end

return M
