--- twconduit.wsession: plain websocket mode, for bots that need no conduit.
--
-- `client:websocket_session{ access_token = <user token>[, refresh_token =] }` opens one
-- EventSub websocket session; `session:subscribe{...}` creates websocket-transport
-- subscriptions on it with the user token. The C core (csrc/core/wsession.c) validates
-- and refreshes the token and keeps the socket up (backoff, keepalive watchdog,
-- session_reconnect). A new session (any reconnect that was not a session_reconnect)
-- has no subscriptions on Twitch: the ones made here are created again on it.
-- Notifications run the same handlers, views and de-duplication as a conduit's.
-- Fields read live: state, session_id, user_id, login, scopes; client.
local core = require "twconduit.core"
local errors = require "twconduit.errors"
local events = require "twconduit.events"
local async = require "twconduit.async"
local Subscription = require "twconduit.subscription"

local M = {}

local MAX_SUBS = 300 -- enabled subscriptions per websocket session (Twitch)

local WSession = { __name = "twconduit.WSession" }

local getters = {
  state = function(self) return self._ud:state() end,
  session_id = function(self)
    if self._ud:closed() then return nil end
    return self._ud:session_id()
  end,
  user_id = function(self)
    if self._ud:closed() then return self._user_id end
    self._user_id = self._ud:user_id() or self._user_id
    return self._user_id
  end,
  login = function(self)
    if self._ud:closed() then return self._login end
    self._login = self._ud:login() or self._login
    return self._login
  end,
  scopes = function(self)
    if self._ud:closed() then return {} end
    return self._ud:scopes()
  end,
  client = function(self) return self._client end,
}

WSession.__index = events.index(WSession, getters)

-- the session's own events, and any EventSub type (names with a dot)
local ALLOWED = setmetatable({
  notification = true, revocation = true, error = true, reconnect = true,
  session_connected = true, session_disconnected = true, session_token = true,
}, { __index = function(_, k) return type(k) == "string" and k:find(".", 1, true) ~= nil end })
events.methods(WSession, ALLOWED)

local function check_open(self)
  if self._ud:closed() then error("websocket session is closed", 3) end
end

function WSession:__tostring()
  return ("twconduit.websocket_session{session_id=%q,state=%q}"):format(
    tostring(self.session_id), self.state)
end

-- watchers: internal functions told about every non-notification event (as a conduit's)
function WSession:_watch(fn) self._watchers[fn] = true end
function WSession:_unwatch(fn) self._watchers[fn] = nil end
function WSession:_wake()
  local list = {}
  for fn in pairs(self._watchers) do list[#list + 1] = fn end
  for _, fn in ipairs(list) do
    local ok, err = pcall(fn)
    if not ok then io.stderr:write("twconduit: ", tostring(err), "\n") end
  end
end

local function state_error(self)
  local e = not self._ud:closed() and self._ud:error()
  if e then return e end
  if errors.is(self._last_error) and self.state ~= "closed" then return self._last_error end
  return errors.new("closed", ("websocket session is %s"):format(self.state))
end

--- Waits until the session is welcomed (the token validated, the socket up).
-- Returns true | nil, err (async).
function WSession:wait_ready(timeout)
  check_open(self)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    errors.argerror(1, "wait_ready", "non-negative number expected")
  end
  return self._client:_wait(function()
    local st = self.state
    if st == "connected" then return true end
    if st == "failed" or st == "closed" or st == "closing" then return nil, state_error(self) end
  end, timeout, self, "the websocket session to be connected")
end

--- The counters of the session (see docs/api.md).
function WSession:stats()
  check_open(self)
  return self._ud:stats()
end

--- The tokens in use: access_token, refresh_token (refresh tokens rotate: store the
-- new ones after a `session_token` event).
function WSession:tokens()
  check_open(self)
  return self._ud:tokens()
end

local METHODS = { GET = true, POST = true, PATCH = true, PUT = true, DELETE = true }

--- One Helix call with the session's user token (the client's queue: Client-Id,
-- retries; a 401 refreshes the token once when a refresh token was given).
-- Returns the decoded body, true for an empty 2xx body, or nil, err (async).
function WSession:helix(method, path, opts)
  check_open(self)
  if type(method) ~= "string" then
    errors.argerror(1, "helix", ("string expected, got %s"):format(type(method)))
  end
  method = method:upper()
  if not METHODS[method] then errors.argerror(1, "helix", "unknown HTTP method " .. method) end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
    errors.argerror(2, "helix", "a path starting with '/' expected")
  end
  if opts ~= nil and type(opts) ~= "table" then
    errors.argerror(3, "helix", ("table expected, got %s"):format(type(opts)))
  end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "query" and k ~= "body" then error(("unknown option '%s'"):format(tostring(k)), 2) end
  end
  local full = path
  if opts.query ~= nil then
    if type(opts.query) ~= "table" then error("query must be a table", 2) end
    local q = self._client._encode_query(opts.query)
    if q ~= "" then full = full .. (full:find("?", 1, true) and "&" or "?") .. q end
  end
  local body = opts.body
  if type(body) == "table" then
    body = core.json_encode(body)
  elseif body ~= nil and type(body) ~= "string" then
    error("body must be a table or a string", 2)
  end
  local ud = self._ud
  return async.await(self._client, function(done)
    local id, err = ud:helix(method, full, body, function(status, resp, e)
      if e then
        if type(resp) == "table" then e.body = resp end
        done(nil, e)
      elseif resp == nil then
        done(true, status)
      else
        done(resp, status)
      end
    end)
    if not id then done(nil, err) end
  end, 2)
end

-- subscriptions kept here and made again on a new session: not deleted, not revoked
local KEEP = { enabled = true }
local function kept(sub)
  local st = sub.status
  return st == nil or KEEP[st] or (type(st) == "string" and st:find("^websocket_") ~= nil)
end

local function active_count(self)
  local n = 0
  for _, s in ipairs(self._subs) do
    if kept(s) then n = n + 1 end
  end
  return n
end

local function same_condition(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do
    if tostring(b[k]) ~= tostring(v) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil and b[k] ~= "" and b[k] ~= core.null then return false end
  end
  return true
end

-- Creates spec on session id sid; returns Twitch's data | nil, err. A 409 resolves to
-- the existing subscription of this session (type + version + condition).
function WSession:_create(spec, sid)
  local body, err = self:helix("POST", "/eventsub/subscriptions", { body = {
    type = spec.type, version = spec.version, condition = spec.condition,
    transport = { method = "websocket", session_id = sid } } })
  if body then
    local d = type(body) == "table" and type(body.data) == "table" and body.data[1]
    if type(d) == "table" then return d end
    return nil, errors.new("bad_response", "no subscription in the response")
  end
  if not (errors.is(err) and err.status == 409) then return nil, err end
  local list = self:helix("GET", "/eventsub/subscriptions", { query = { type = spec.type } })
  for _, s in ipairs(type(list) == "table" and type(list.data) == "table" and list.data or {}) do
    local t = type(s.transport) == "table" and s.transport or {}
    if s.version == spec.version and t.session_id == sid and same_condition(spec.condition, s.condition) then
      return s
    end
  end
  return nil, err
end

-- the subscription object takes Twitch's data for its (new) id
function WSession:_adopt(sub, data)
  local subs = self._client._subs
  if sub.id and subs[sub.id] == sub then subs[sub.id] = nil end
  sub:_update(data)
  subs[data.id] = sub
end

--- Subscribes this session to an EventSub type with the user token. Waits for the
-- session's welcome. Returns a subscription object | nil, err (async). At most 300
-- per session (`too_many_subscriptions`).
function WSession:subscribe(spec)
  check_open(self)
  local client = self._client
  client:_check_sub_spec(spec, "subscribe", false)
  local n = active_count(self) + self._creating
  if n >= MAX_SUBS then
    return nil, errors.new("too_many_subscriptions",
      ("a websocket session holds at most %d subscriptions; this one has %d%s"):format(MAX_SUBS,
        active_count(self), self._creating > 0 and (" and %d being made"):format(self._creating) or ""))
  end
  self._creating = self._creating + 1
  local sub, err = self:_subscribe(spec)
  self._creating = self._creating - 1
  return sub, err
end

function WSession:_subscribe(spec)
  local client = self._client
  local want = { type = spec.type, version = spec.version or "1", condition = spec.condition }
  for _ = 1, 3 do
    local ok, err = self:wait_ready(client._opts.http_timeout * 4)
    if not ok then return nil, err end
    local sid = self.session_id
    local data
    data, err = self:_create(want, sid)
    if data then
      local known = client._subs[data.id]
      if known and known._session == self then -- already made here (a 409)
        known:_update(data)
        return known
      end
      local sub = Subscription.new(client, data, nil)
      sub._session, sub._spec = self, want
      self._subs[#self._subs + 1] = sub
      client._subs[data.id] = sub
      if self.session_id ~= sid and self.state ~= "closed" then
        -- a new session started while this was made: it goes onto that one too
        self:_recreate_one(sub, self.session_id)
      end
      return sub
    end
    -- the session ended meanwhile: once it is back, try again on the new one
    if not (errors.is(err) and err.code == "session_not_connected") then return nil, err end
    if self.session_id == sid and self.state == "connected" then return nil, err end
  end
  return nil, errors.new("session_not_connected", "the websocket session kept changing")
end

function WSession:_recreate_one(sub, sid)
  local data, err = self:_create(sub._spec, sid)
  if data then
    self:_adopt(sub, data)
    return true
  end
  self._client:_report(err, sub, self)
  return nil, err
end

-- a new session: every subscription kept here is created on it
function WSession:_recreate(sid)
  for _, sub in ipairs(self._subs) do
    if self._ud:closed() or self.session_id ~= sid then return end -- a newer session took over
    if kept(sub) then self:_recreate_one(sub, sid) end
  end
  self._recreated = sid
end

--- This session's subscription objects (those made here and not deleted).
function WSession:subscriptions()
  check_open(self)
  local out = {}
  for _, s in ipairs(self._subs) do
    if s.status ~= "deleted" then out[#out + 1] = s end
  end
  return out
end

-- sub:delete() of a subscription of this session: with the user token
function WSession:_delete(sub)
  if self._ud:closed() then return nil, errors.new("closed", "websocket session is closed") end
  local ok, err = self:helix("DELETE", "/eventsub/subscriptions", { query = { id = sub.id } })
  if not ok and not (errors.is(err) and err.status == 404) then return nil, err end
  sub.status = "deleted"
  if self._client._subs[sub.id] == sub then self._client._subs[sub.id] = nil end
  for i, s in ipairs(self._subs) do
    if s == sub then table.remove(self._subs, i); break end
  end
  return true
end

--- Closes the socket with a close handshake; the subscriptions end with it on
-- Twitch. Idempotent; safe in callbacks (also `__close`).
function WSession:close()
  if not self._ud:closed() then
    self._user_id, self._login = self.user_id, self.login
    self._ud:close()
  end
  self._client:_forget_wsession(self)
end
WSession.__close = WSession.close

-- ---------------------------------------------------------------------------------
-- the client's side

--- Events of sessions, from the client's dispatcher: returns true when handled.
function M.event(client, kind, obj, a, b)
  if type(obj) ~= "table" or not obj._session then return false end
  local chain = client._chain
  if kind == "session_connected" then
    if obj._connected_once then
      for _, s in ipairs(obj._subs) do
        if kept(s) then s.status = "websocket_disconnected" end
      end
      local sid = obj.session_id
      async.spawn(function() obj:_recreate(sid) end)
    end
    obj._connected_once = true
    chain(client, nil, obj, kind, obj)
  elseif kind == "session_disconnected" then
    obj._last_error = b
    for _, s in ipairs(obj._subs) do
      if kept(s) then s.status = a or "websocket_disconnected" end
    end
    chain(client, nil, obj, kind, obj, a, b)
  elseif kind == "reconnect" or kind == "session_token" then
    chain(client, nil, obj, kind, obj)
  else
    return false
  end
  if not client._closed then obj:_wake(kind) end
  return true
end

local SESSION_OPTS = { access_token = true, refresh_token = true }

--- client:websocket_session{ access_token =, refresh_token = }: a session object |
-- nil, err. The token is validated first (`wait_ready` waits for the welcome).
function M.open(client, opts)
  if client._closed then error("client is closed", 2) end
  if type(opts) ~= "table" then
    errors.argerror(1, "websocket_session", ("table expected, got %s"):format(type(opts)))
  end
  for k, v in pairs(opts) do
    if not SESSION_OPTS[k] then error(("unknown option '%s'"):format(tostring(k)), 2) end
    if type(v) ~= "string" or v == "" then error(("%s must be a non-empty string"):format(k), 2) end
  end
  if opts.access_token == nil then error("access_token must be a non-empty string", 2) end
  local ud, err = client._core:open_wsession(opts)
  if not ud then return nil, err end
  local self = setmetatable({ _client = client, _ud = ud, _h = {}, _watchers = {}, _subs = {},
    _creating = 0, _session = true }, WSession)
  ud:bind(self)
  client._wsessions[#client._wsessions + 1] = self
  return self
end

M.WSession = WSession
return M
