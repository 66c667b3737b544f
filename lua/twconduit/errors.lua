--- Errors of the outside world: tables `{ code = , status = , message = }`.
-- They share the metatable of the C core's errors (`twconduit.Error`), so
-- `tostring(err)`, `"x" .. err` and `assert(nil, err)` all print
-- `code (status): message`.
local core = require "twconduit.core"

local M = {}

M.mt = core.Error

--- A new error. `status` defaults to 0.
function M.new(code, message, status, extra)
  local e = { code = code, status = status or 0, message = message or code }
  if extra then
    for k, v in pairs(extra) do e[k] = v end
  end
  return setmetatable(e, M.mt)
end

--- True when v is a twconduit error.
function M.is(v)
  return type(v) == "table" and getmetatable(v) == M.mt
end

--- Raises a misuse error naming the argument, in the format of luaL_argerror.
function M.argerror(n, fname, msg, level)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), (level or 2) + 1)
end

--- Checks the type of an argument the way luaL_check* does.
function M.argcheck(v, n, fname, expected, level)
  local t = type(v)
  if t ~= expected then
    M.argerror(n, fname, ("%s expected, got %s"):format(expected, t), (level or 2) + 1)
  end
  return v
end

return M
