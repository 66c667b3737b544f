--- Coroutine helpers: `spawn`, and the one way every async call waits.
--
-- Inside a coroutine started by `spawn`, an async call yields until the C core's
-- callback resumes it. At top level with the loop not running, it steps the loop
-- until done (a blocking convenience for scripts). From a plain callback (the loop
-- is running, not in a spawned coroutine) it raises.
local errors = require "twconduit.errors"

local M = {}

local spawned = setmetatable({}, { __mode = "k" }) -- coroutine -> client or true
local pack, unpack = table.pack, table.unpack

-- Set by the client module: report(client_or_nil, err) routes an error of a
-- spawned coroutine to the client's "error" handlers (or stderr).
M.report = function(_, err)
  io.stderr:write("twconduit: ", tostring(err), "\n")
end

-- The client whose events are being dispatched (so that spawn inside a handler
-- knows where to report errors).
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
M.resume = resume

--- Runs fn(...) in a new coroutine at once; async calls inside it yield.
-- Returns the coroutine. Errors are reported through the client's "error" event.
function M.spawn(fn, ...)
  if type(fn) ~= "function" then
    errors.argerror(1, "spawn", ("function expected, got %s"):format(type(fn)))
  end
  local co = coroutine.create(fn)
  spawned[co] = M.current or true
  resume(co, ...)
  return co
end

--- True when running inside a coroutine started by spawn.
function M.in_spawned()
  local co = coroutine.running()
  return spawned[co] ~= nil
end

--- Waits for an operation. start(done) begins it; done(...) is called once with
-- its results (possibly before start returns). Returns those results.
function M.await(client, start, level)
  local co = coroutine.running()
  if spawned[co] then
    spawned[co] = client
    local state, res = "starting", nil
    start(function(...)
      if state == "starting" then
        state, res = "done", pack(...)
      elseif state == "waiting" then
        state = "resumed"
        resume(co, ...)
      end
    end)
    if state == "done" then return unpack(res, 1, res.n) end
    state = "waiting"
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

return M
