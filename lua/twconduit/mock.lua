--- Start and drive the twconduit-mock emulator from Lua.
-- local mock = require "twconduit.mock"
-- local m = mock.start{ config = { assign_window_s = 2 } }
-- m:trigger{ type = "stream.online", channels = { "1001" } }
-- m:stop()
local core = require "twconduit.core"

local M = {}
local Mock = {}
Mock.__index = Mock

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function file_exists(p)
  local f = io.open(p, "r")
  if f then
    f:close()
    return true
  end
  return false
end

local function find_binary(opts)
  if opts.binary then
    return opts.binary
  end
  local env = os.getenv("TWCONDUIT_MOCK")
  if env and env ~= "" then
    return env
  end
  for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
    local p = dir .. "/twconduit-mock"
    if file_exists(p) then
      return p
    end
  end
  return nil
end

--- Starts the emulator. opts: config (table), binary (path), timeout (seconds for control calls).
function M.start(opts)
  opts = opts or {}
  local bin = find_binary(opts)
  if not bin then
    return nil, "twconduit-mock binary not found (opts.binary, TWCONDUIT_MOCK or PATH)"
  end
  local cfgpath
  local cmd = "exec " .. shell_quote(bin) .. " --port 0 --die-with-parent"
  if opts.config then
    cfgpath = os.tmpname()
    local f = assert(io.open(cfgpath, "w"))
    f:write(core.json_encode(opts.config))
    f:close()
    cmd = cmd .. " --config " .. shell_quote(cfgpath)
  end
  local pipe, perr = io.popen(cmd, "r")
  if not pipe then
    if cfgpath then os.remove(cfgpath) end
    return nil, "cannot start twconduit-mock: " .. tostring(perr)
  end
  local line = pipe:read("l")
  if cfgpath then os.remove(cfgpath) end
  if not line then
    pipe:close()
    return nil, "twconduit-mock exited before printing its address"
  end
  local ok, info = pcall(core.json_decode, line)
  if not ok or type(info) ~= "table" or not info.port then
    pipe:close()
    return nil, "unexpected first line from twconduit-mock: " .. line
  end
  local self = setmetatable({
    port = info.port,
    pid = info.pid,
    api_base = info.api_base,
    auth_base = info.auth_base,
    eventsub_ws = info.eventsub_ws,
    control = info.control,
    client_id = info.client_id,
    client_secret = info.client_secret,
    timeout = opts.timeout or 30,
    _pipe = pipe,
    _stopped = false,
  }, Mock)
  return self
end

--- Calls the control API: m:call("POST", "/trigger", {...}) -> table | nil, err
function Mock:call(method, path, body)
  if self._stopped then
    return nil, "emulator stopped"
  end
  local payload
  if body ~= nil then
    payload = core.json_encode(body)
  elseif method ~= "GET" then
    payload = "{}"
  end
  local status, text, err = core.http_sync(method, self.control .. path, payload, self.timeout)
  if not status then
    return nil, err or text or "request failed"
  end
  local decoded
  if text and text ~= "" then
    local ok, v = pcall(core.json_decode, text)
    if ok then decoded = v end
  end
  if status < 200 or status >= 300 then
    local msg = type(decoded) == "table" and decoded.message or text
    return nil, string.format("HTTP %d: %s", status, tostring(msg)), decoded
  end
  return decoded or {}
end

function Mock:trigger(t) return self:call("POST", "/trigger", t) end
function Mock:stream(t) return self:call("POST", "/stream", t) end
function Mock:stop_stream(id) return self:call("POST", "/stream/stop", id and { stream_id = id } or {}) end
function Mock:blast(t) return self:call("POST", "/blast", t) end
function Mock:blast_status(id) return self:call("GET", "/blast/" .. id) end

function Mock:sessions()
  local r, err = self:call("GET", "/sessions")
  if not r then return nil, err end
  return r.sessions
end

function Mock:close_session(id, code, reason)
  return self:call("POST", "/sessions/" .. id .. "/close", { code = code or 4000, reason = reason })
end
function Mock:reconnect_session(id) return self:call("POST", "/sessions/" .. id .. "/reconnect", {}) end
function Mock:drop_session(id) return self:call("POST", "/sessions/" .. id .. "/drop", {}) end
function Mock:revoke(sub_id, status)
  return self:call("POST", "/subscriptions/" .. sub_id .. "/revoke",
    { status = status or "authorization_revoked" })
end
function Mock:fault(t) return self:call("POST", "/faults", t) end
function Mock:revoke_token(tok) return self:call("POST", "/tokens/revoke", { token = tok }) end
function Mock:revoke_all_tokens() return self:call("POST", "/tokens/revoke", { all = true }) end
function Mock:clock(t) return self:call("POST", "/clock", t) end
function Mock:state() return self:call("GET", "/state") end
function Mock:ledger(since)
  return self:call("GET", "/ledger" .. (since and ("?since=" .. tostring(since)) or ""))
end
function Mock:config(t) return self:call("POST", "/config", t) end
function Mock:reset() return self:call("POST", "/reset", {}) end
--- Helix counters: { total, by_route = {...}, by_status = { ["202"] = n, ... } }
function Mock:helix_calls() return self:call("GET", "/helix_calls") end
--- Subscriptions made / deleted behind the client's back (another process of the app).
function Mock:create_subscriptions(list, client_id)
  return self:call("POST", "/subscriptions", { subscriptions = list, client_id = client_id })
end
--- Sets the app-token bucket of a client (default the first) to level points (nil: full).
function Mock:set_bucket(level, client_id)
  return self:call("POST", "/ratelimit", { level = level, client_id = client_id })
end
function Mock:delete_subscriptions(ids) return self:call("POST", "/subscriptions/delete", { ids = ids }) end

--- Stops the emulator: POST /_mock/shutdown, else kill; then closes the pipe. Idempotent.
function Mock:stop()
  if self._stopped then
    return true
  end
  local ok = pcall(function()
    local status = core.http_sync("POST", self.control .. "/shutdown", "{}", 5)
    if status ~= 200 then error("shutdown failed") end
  end)
  self._stopped = true
  if not ok and self.pid then
    os.execute("kill " .. math.tointeger(self.pid) .. " 2>/dev/null")
  end
  if self._pipe then
    local p = self._pipe
    self._pipe = nil
    -- close() waits for the process to exit
    local closed = pcall(p.close, p)
    if not closed and self.pid then
      os.execute("kill -9 " .. math.tointeger(self.pid) .. " 2>/dev/null")
    end
  end
  return true
end

Mock.__gc = function(self) pcall(Mock.stop, self) end
Mock.__close = function(self) pcall(Mock.stop, self) end

M.Mock = Mock
return M
