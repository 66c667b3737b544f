--- twconduit.log: one line per library event worth it, to a function or stderr.
--
-- The client's `log` option is a function(level, message, fields) (or false: nothing);
-- without it lines go to stderr. `log_level` ("debug", "info", "warn", "error") is the
-- least level passed on: "warn" for stderr, "info" for a given function.
--
-- Lines are made from the client's events (never from notifications: the hot path is
-- untouched), the conduits' operations and alerts, and Helix calls that failed. Fields
-- hold ids, codes and statuses only; every string that goes out is also scrubbed of the
-- client secret, the given token and the app token in use, should one ever get into an
-- error message.
local M = {}

M.LEVELS = { debug = 10, info = 20, warn = 30, error = 40 }

local function fmt_fields(fields)
  local keys = {}
  for k in pairs(fields) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = tostring(fields[k])
    if v:find("[%s\"=]") then v = ("%q"):format(v) end
    out[#out + 1] = k .. "=" .. v
  end
  return table.concat(out, " ")
end

local function stderr_sink(level, message, fields)
  local f = fmt_fields(fields)
  io.stderr:write(("twconduit: %s %s %s%s\n"):format(os.date("!%Y-%m-%dT%H:%M:%SZ"), level, message,
    f ~= "" and (" " .. f) or ""))
  io.stderr:flush()
end

local Log = {}
Log.__index = Log

--- A logger for client (opts: the client's options as given).
function M.new(client, opts)
  if opts.log == false then return nil end
  local fn = opts.log or stderr_sink
  local level = opts.log_level or (opts.log and "info" or "warn")
  local secrets = {}
  for _, k in ipairs { "client_secret", "access_token" } do
    if type(opts[k]) == "string" and #opts[k] >= 4 then secrets[#secrets + 1] = opts[k] end
  end
  return setmetatable({ client = client, fn = fn, min = M.LEVELS[level], secrets = secrets }, Log)
end

function Log:_scrub(s)
  local list = self.secrets
  local tok = not self.client._closed and self.client._core:token()
  for i = 0, #list do
    local sec = i == 0 and tok or list[i]
    if sec and #sec >= 4 then
      local a = s:find(sec, 1, true)
      while a do
        s = s:sub(1, a - 1) .. "[redacted]" .. s:sub(a + #sec)
        a = s:find(sec, a + 10, true)
      end
    end
  end
  return s
end

--- Passes one line on when level is at least the logger's level.
function Log:write(level, message, fields)
  if (M.LEVELS[level] or 0) < self.min then return end
  fields = fields or {}
  local clean = {}
  for k, v in pairs(fields) do
    if v ~= nil then clean[k] = type(v) == "string" and self:_scrub(v) or v end
  end
  local ok, err = pcall(self.fn, level, self:_scrub(message), clean)
  if not ok then
    io.stderr:write("twconduit: error in the log function: ", tostring(err), "\n")
  end
end

local function ids(conduit, shard, f)
  f = f or {}
  if type(conduit) == "table" then f.conduit = conduit.id end
  if type(shard) == "table" then f.shard = shard.id end
  return f
end

local function err_fields(err, f)
  if type(err) == "table" then
    f.code = err.code
    if err.status and err.status ~= 0 then f.status = err.status end
  end
  return f
end

--- One event of the client (kind and the arguments Client:_event gets).
function Log:event(kind, conduit, a, b, c, e)
  if type(conduit) ~= "table" then conduit = nil end
  if kind == "started" then
    self:write("info", "conduit started", ids(conduit, nil,
      { shard_count = conduit and conduit.shard_count }))
  elseif kind == "ready" then
    self:write("info", "conduit ready", ids(conduit))
  elseif kind == "shard_enabled" then
    local s = type(a) == "table" and a or nil
    self:write("info", "shard enabled", ids(conduit, s, { session_id = s and s.session_id }))
  elseif kind == "reconnect" then
    local s = type(a) == "table" and a or nil
    self:write("info", "shard reconnected (session_reconnect)", ids(conduit, s,
      { session_id = s and s.session_id }))
  elseif kind == "shard_disabled" then
    local s = type(a) == "table" and a or nil
    local f = ids(conduit, s, { reason = b })
    if type(c) == "table" then
      f.code = c.code
      f.close_code = c.status ~= 0 and c.status or nil
    end
    self:write("warn", "shard disabled: " .. tostring(type(c) == "table" and c.message or b), f)
  elseif kind == "shard_released" then
    self:write("info", "shard released", ids(conduit, type(a) == "table" and a or nil))
  elseif kind == "shard_lost" then
    local tw = type(b) == "table" and b or {}
    self:write("warn", "shard lost: Twitch points it elsewhere; reassigning unless held",
      ids(conduit, type(a) == "table" and a or nil, { twitch_status = tw.status, twitch_method = tw.method }))
  elseif kind == "error" then
    local err = a
    local level = type(err) == "table" and err.code == "stale_message" and "warn" or "error"
    self:write(level, tostring(type(err) == "table" and err.message or err),
      err_fields(err, ids(conduit, type(b) == "table" and b or nil)))
  elseif kind == "token" then
    self:write("info", "new app token in use", {})
  end
  local _ = e
end

--- An operation's progress (operations.lua fires "operation").
function Log:operation(cd, ev)
  local level = ev.phase == "failed" and "warn" or (ev.phase == "step" and "debug" or "info")
  self:write(level, ("operation %s %s%s"):format(tostring(ev.name), tostring(ev.phase),
    ev.message and ev.message ~= ev.name and (": " .. tostring(ev.message)) or ""),
    { conduit = cd and cd.id, operation = ev.id })
end

--- An alert of the health monitor.
function Log:alert(cd, ev)
  self:write("warn", "alert: " .. tostring(ev.message), { conduit = cd and cd.id, kind = ev.kind,
    shard = ev.shard })
end

--- A Helix call made through client:helix that failed.
function Log:helix_error(method, path, err)
  self:write("warn",
    "helix " .. method .. " " .. (path:match("^[^?]*")) .. " failed: " .. tostring(err and err.message),
    err_fields(err, { endpoint = path:match("^[^?]*") }))
end

return M
