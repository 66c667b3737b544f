--- Handler lists shared by client, conduit, shard and subscription objects.
-- Lists are copy-on-write: on/off build a new array, and an emit in progress keeps
-- iterating the one it started with, so handlers may add or remove handlers.
local errors = require "twconduit.errors"

local M = {}

--- Bumped by every on/off anywhere: dispatch plans built before it are stale.
M.gen = 0

M.library = {
  notification = true, started = true, ready = true, shard_enabled = true,
  shard_disabled = true, reconnect = true, revocation = true, error = true, token = true,
  shard_released = true, shard_lost = true,
  operation = true, alert = true, -- conduit operations and the health monitor (Lua)
}

local function callable(fn)
  if type(fn) == "function" then return true end
  local mt = getmetatable(fn)
  return type(mt) == "table" and mt.__call ~= nil
end

--- Checks an event name; `allowed` (optional) limits the library names.
function M.check(name, fn, fname, allowed, need_fn)
  if type(name) ~= "string" then
    errors.argerror(1, fname, ("string expected, got %s"):format(type(name)), 3)
  end
  local ok
  if allowed then
    ok = allowed[name]
  else
    ok = M.library[name] or name:find(".", 1, true) ~= nil
  end
  if not ok then
    errors.argerror(1, fname, ("unknown event '%s'"):format(name), 3)
  end
  if (need_fn or fn ~= nil) and not callable(fn) then
    errors.argerror(2, fname, ("function expected, got %s"):format(type(fn)), 3)
  end
end

function M.on(h, name, fn)
  local old = h[name]
  local new = {}
  if old then
    for i = 1, #old do new[i] = old[i] end
  end
  new[#new + 1] = fn
  h[name] = new
  M.gen = M.gen + 1
end

--- Removes fn (one registration), or every handler of name when fn is nil.
-- Returns true when something was removed.
function M.off(h, name, fn)
  local old = h[name]
  if not old then return false end
  if fn == nil then
    h[name] = nil
    M.gen = M.gen + 1
    return true
  end
  local new, removed = {}, false
  for i = 1, #old do
    if not removed and old[i] == fn then
      removed = true
    else
      new[#new + 1] = old[i]
    end
  end
  h[name] = #new > 0 and new or nil
  if removed then M.gen = M.gen + 1 end
  return removed
end

--- Gives class the handler methods `on(name, fn)` and `off(name[, fn])` over self._h;
-- `allowed` (optional) limits the event names.
function M.methods(class, allowed)
  function class:on(name, fn)
    M.check(name, fn, "on", allowed, true)
    M.on(self._h, name, fn)
    return self
  end
  function class:off(name, fn)
    M.check(name, fn, "off", allowed)
    return M.off(self._h, name, fn)
  end
end

--- An __index for class: its methods, then the fields read live through getters[k](self).
function M.index(class, getters)
  return function(self, k)
    local m = class[k]
    if m ~= nil then return m end
    local g = getters[k]
    if g then return g(self) end
    return nil
  end
end

return M
