--- twconduit.webhook: webhook servers, webhook shards, webhook subscriptions and the
-- webhook maintenance of conduits. Adds methods to the client, conduit and shard classes:
--   client:webhook_server{...}            -> server object
--   client:subscribe{transport = "webhook", ...} -> subscription (async)
--   conduit:add_webhook_shard{...}        -> shard (async)
--   conduit:webhook_offline(shard), conduit:webhook_online(shard) (async)
--   shard:rotate_secret(secret, {grace = s}) (async), shard.webhook (its route's details)
local errors = require "twconduit.errors"
local Client = require "twconduit.client"
local Conduit = require "twconduit.conduit"
local Shard = require "twconduit.shard"

local M = {}

-- ---------------------------------------------------------------------------------
-- servers

local Server = { __name = "twconduit.WebhookServer" }
local server_getters = {
  port = function(self) return self._port end,
  url = function(self) return self._url end,
  tls = function(self) return self._tls end,
  client = function(self) return self._client end,
}
Server.__index = function(self, k)
  local g = server_getters[k]
  if g then return g(self) end
  return Server[k]
end
M.Server = Server

local SERVER_OPTS = { host = true, port = true, path = true, tls = true, public_url = true,
  max_body = true, max_header_bytes = true, max_headers = true, max_conns = true,
  request_timeout = true, idle_timeout = true }

local function check_path(p, what)
  if type(p) ~= "string" or p:sub(1, 1) ~= "/" or p:find("[%s?#]") then
    error(("%s must be a path starting with '/' (no spaces, '?' or '#')"):format(what), 3)
  end
end

--- Starts an HTTP server for webhooks on the client's loop. Returns the server | nil, err.
function Client:webhook_server(opts)
  if self._closed then error("client is closed", 2) end
  if type(opts) ~= "table" then
    errors.argerror(1, "webhook_server", ("table expected, got %s"):format(type(opts)))
  end
  for k in pairs(opts) do
    if not SERVER_OPTS[k] then error(("unknown option '%s'"):format(tostring(k)), 2) end
  end
  local base = opts.path or ""
  if base ~= "" then check_path(base, "path") end
  base = base:gsub("/+$", "")
  if opts.tls ~= nil and (type(opts.tls) ~= "table" or type(opts.tls.cert) ~= "string"
      or type(opts.tls.key) ~= "string") then
    error("tls must be a table {cert = file, key = file}", 2)
  end
  if opts.public_url ~= nil and (type(opts.public_url) ~= "string"
      or not opts.public_url:match("^https?://[^/]+")) then
    error("public_url must be an http(s):// URL", 2)
  end
  local host = opts.host or "127.0.0.1"
  if type(host) ~= "string" then error("host must be a string", 2) end
  local ud, err = self._core:webhook_server {
    host = host, port = opts.port, tls_cert = opts.tls and opts.tls.cert,
    tls_key = opts.tls and opts.tls.key, max_body = opts.max_body,
    max_header_bytes = opts.max_header_bytes, max_headers = opts.max_headers,
    max_conns = opts.max_conns, request_timeout = opts.request_timeout,
    idle_timeout = opts.idle_timeout }
  if not ud then return nil, err end
  local port = ud:port()
  local tls = ud:tls()
  local shown = host:find(":") and ("[" .. host .. "]") or host
  local url = opts.public_url and opts.public_url:gsub("/+$", "")
    or ("%s://%s:%d"):format(tls and "https" or "http", shown, port)
  local srv = setmetatable({ _client = self, _ud = ud, _port = port, _tls = tls,
    _base = base, _url = url .. base, _origin = url, _routes = {} }, Server)
  self._webhook_servers = self._webhook_servers or {}
  self._webhook_servers[srv] = true
  return srv
end

function Server:__tostring()
  return ("twconduit.webhook_server{url=%q}"):format(self._url)
end

function Server:closed() return self._ud:closed() end

--- Stops listening and closes its connections (its routes go with it). Idempotent.
function Server:close()
  for _, r in pairs(self._routes) do r:close() end
  self._routes = {}
  self._ud:close()
  if self._client._webhook_servers then self._client._webhook_servers[self] = nil end
end
Server.__close = Server.close

--- Counters of the listener: connections, requests, refusals by status (see docs/api.md).
function Server:stats()
  if self._ud:closed() then error("webhook server is closed", 2) end
  local s = self._ud:stats()
  local routes = {}
  for path, r in pairs(self._routes) do
    if not r:closed() then routes[path] = r:stats() end
  end
  s.routes = routes
  return s
end

--- The full path and public URL for a route path relative to the server's base path
-- (or a random one).
function Server:_place(path)
  if path == nil then
    path = ("/wh-%08x%08x"):format(math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  end
  check_path(path, "path")
  local full = self._base .. path
  return full, self._origin .. full
end

--- A webhook route at full path (internal): verification with secret, deliveries named
-- after conduit/shard.
function Server:_route(full, secret, conduit, shard_id, on_challenge)
  if self._ud:closed() then return nil, errors.new("closed", "the webhook server is closed") end
  if self._routes[full] and not self._routes[full]:closed() then
    return nil, errors.new("invalid_argument", ("path %s already has a webhook here"):format(full))
  end
  local r, err = self._ud:webhook { path = full, secret = secret, conduit = conduit,
    shard = shard_id, on_challenge = on_challenge }
  if not r then return nil, err end
  self._routes[full] = r
  return r
end

local function callback_path(cb)
  return type(cb) == "string" and cb:match("^https?://[^/]+(/[^?#]*)$")
end

local function secret_ok(s)
  if type(s) ~= "string" then error(("secret must be a string, got %s"):format(type(s)), 3) end
  return #s >= 10 and #s <= 100 and not s:find("[^\32-\126]")
end

local function secret_error()
  return errors.new("invalid_argument", "the webhook secret must be 10 to 100 ASCII characters")
end

-- where a webhook shard or subscription listens: returns full path, callback | nil, err
local function placement(spec, fname)
  local srv = spec.server
  if getmetatable(srv) ~= Server then
    error(fname .. ": server must be a webhook server (client:webhook_server{...})", 3)
  end
  if spec.path ~= nil and spec.callback ~= nil then
    error(fname .. ": give path or callback, not both", 3)
  end
  if spec.callback ~= nil then
    local p = callback_path(spec.callback)
    if not p then error(fname .. ": callback must be an http(s):// URL with a path", 3) end
    return p, spec.callback
  end
  if spec.path ~= nil then check_path(spec.path, "path") end
  return srv:_place(spec.path)
end

-- ---------------------------------------------------------------------------------
-- webhook shards

local SHARD_SPEC = { id = true, server = true, path = true, callback = true, secret = true,
  timeout = true }

local function wait_enabled(conduit, shard, timeout, what)
  local before = conduit._last_error
  return conduit._client:_wait(function()
    if shard._ud:closed() then
      local e = conduit._last_error
      if e ~= before and errors.is(e) then return nil, e end
      return nil, errors.new("closed", "the shard was closed before it was enabled")
    end
    local t = shard._ud:_transport()
    if t.assigned and t.status == "enabled" then return shard end
    local e = conduit._last_error
    if e ~= before and errors.is(e) and e.code == "shard_assign_failed"
        and tostring(e.message):find("shard " .. shard.id .. ":", 1, true) then
      return nil, e
    end
  end, timeout, conduit, what)
end

-- Twitch marks a callback enabled once it has read the challenge's answer, a moment
-- after it was written: confirm with Get Conduit Shards (pred(list) -> done?).
local function confirm(client, fetch, pred, timeout, what)
  local deadline = client:now() + (timeout or 30)
  while true do
    local list, err = fetch()
    if not list then return nil, err end
    if pred(list) then return true end
    if client:now() > deadline then
      return nil, errors.new("timeout", ("timed out waiting for Twitch to enable %s"):format(what))
    end
    client:sleep(0.02)
  end
end

local function wait_twitch_enabled(conduit, shard, timeout, what)
  local s, err = wait_enabled(conduit, shard, timeout, what)
  if not s then return nil, err end
  local ok
  ok, err = confirm(conduit._client, function() return conduit._client:conduit_shards(conduit.id) end,
    function(list)
      for _, x in ipairs(list) do
        if x.id == shard.id then return x.status == "enabled" end
      end
    end, timeout, "shard " .. shard.id)
  if not ok then return nil, err end
  return shard
end

--- Adds a webhook shard to the conduit (async): the shard once Twitch enabled it (the
-- challenge was answered), or nil, err.
function Conduit:add_webhook_shard(spec)
  if type(spec) ~= "table" then
    errors.argerror(1, "add_webhook_shard", ("table expected, got %s"):format(type(spec)))
  end
  for k in pairs(spec) do
    if not SHARD_SPEC[k] then error(("unknown option '%s'"):format(tostring(k)), 2) end
  end
  if spec.id ~= nil and (math.type(spec.id) ~= "integer" or spec.id < 0) then
    error("id must be a non-negative integer", 2)
  end
  if spec.timeout ~= nil and (type(spec.timeout) ~= "number" or spec.timeout < 0) then
    error("timeout must be a non-negative number", 2)
  end
  if self._ud:closed() then error("conduit is closed", 2) end
  local full, callback = placement(spec, "add_webhook_shard")
  if not secret_ok(spec.secret) then return nil, secret_error() end
  local id, err = self:_wait_id()
  if not id then return nil, err end
  local route
  route, err = spec.server:_route(full, spec.secret, self._ud, nil)
  if not route then return nil, err end
  local ud
  ud, err = self._ud:add_webhook_shard(spec.id or -1, callback, spec.secret)
  if not ud then
    route:close()
    return nil, err
  end
  local s = Shard.wrap(self._client, self, ud)
  route:bind(self._ud, s.id)
  rawset(s, "_webhook", { server = spec.server, route = route, path = full, callback = callback,
    secret = spec.secret })
  return wait_twitch_enabled(self, s, spec.timeout or 30, "the webhook shard to be enabled")
end

--- Webhook details of a webhook shard run here: {server, path, callback}, else nil.
function Shard:webhook_info()
  local w = rawget(self, "_webhook")
  if not w then return nil end
  return { server = w.server, path = w.path, callback = w.callback }
end

--- Serves the shard's callback path on `server` again (after its previous server was
-- closed, e.g. a restart on the same port). true | nil, err.
function Shard:webhook_attach(server)
  local w = rawget(self, "_webhook")
  if not w then error("webhook_attach: not a webhook shard of this process", 2) end
  if getmetatable(server) ~= Server then error("webhook_attach: a webhook server expected", 2) end
  if self._ud:closed() then error("shard is closed", 2) end
  if not w.route:closed() then w.route:close() end
  local route, err = server:_route(w.path, w.secret, self._conduit._ud, self.id)
  if not route then return nil, err end
  w.route, w.server = route, server
  return true
end

--- Rotates the shard's secret (async): the new one is PATCHed to Twitch, and both are
-- accepted for `grace` seconds (default 600: covers Twitch's retries). true | nil, err.
function Shard:rotate_secret(secret, opts)
  local w = rawget(self, "_webhook")
  if not w then error("rotate_secret: not a webhook shard of this process", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("rotate_secret: opts must be a table", 2) end
  local grace = opts and opts.grace or 600
  if type(grace) ~= "number" or grace < 0 then error("grace must be a non-negative number", 2) end
  if not secret_ok(secret) then return nil, secret_error() end
  local ok, err = w.route:rotate(secret, grace)
  if not ok then return nil, err end
  ok, err = self._ud:_set_webhook(w.callback, secret)
  if not ok then return nil, err end
  w.secret = secret
  local s
  s, err = wait_twitch_enabled(self._conduit, self, opts and opts.timeout or 30,
    "the new secret to be verified")
  if not s then return nil, err end
  return true
end

-- ---------------------------------------------------------------------------------
-- webhook maintenance: Twitch retries a webhook message on the same shard only, so a
-- webhook shard k whose receiver goes down for maintenance first gets another shard's
-- transport: the last shard's is copied into k and the conduit shrinks by one (the last
-- slot's traffic rehashes over the rest); coming back, the conduit grows, the last slot
-- gets its transport again, then k its own.

local function wait_count(conduit, n, timeout)
  return conduit._client:_wait(function()
    if conduit.shard_count == n then return true end
  end, timeout, nil, "the conduit's shard count") -- polled: a resize emits no event
end

local function maintenance_pair(conduit, shard, fname)
  if getmetatable(shard) ~= Shard or shard._conduit ~= conduit then
    error(fname .. ": a shard of this conduit expected", 3)
  end
  if not rawget(shard, "_webhook") then
    error(fname .. ": the shard must be a webhook shard of this process", 3)
  end
end

--- Takes webhook shard k offline without loss (async): true | nil, err. The last shard
-- of the conduit must be a webhook shard run here; afterwards k's receiver may stop.
function Conduit:webhook_offline(shard, timeout)
  maintenance_pair(self, shard, "webhook_offline")
  timeout = timeout or 30
  local n = self.shard_count
  local last = self:shard(tostring(n - 1))
  if not last or not rawget(last, "_webhook") then
    return nil, errors.new("invalid_argument",
      "the conduit's last shard must be a webhook shard run here (its transport is copied)")
  end
  if last ~= shard then
    local ok, err = shard._ud:_point_at(last._ud)
    if not ok then return nil, err end
    local s
    s, err = wait_twitch_enabled(self, shard, timeout,
      "shard " .. shard.id .. " to take the last shard's callback")
    if not s then return nil, err end
  end
  last._ud:_hold(true) -- its slot goes: verification only reports it meanwhile
  local ok, err = self:_resize(n - 1)
  if not ok then return nil, err end
  ok, err = wait_count(self, n - 1, timeout)
  if not ok then return nil, err end
  rawset(self, "_webhook_maint", { shard = shard, last = last, count = n })
  return true
end

--- Brings webhook shard k back (async): the conduit grows again, the last slot gets its
-- transport, then k its own (its receiver must be up). true | nil, err.
function Conduit:webhook_online(shard, timeout)
  maintenance_pair(self, shard, "webhook_online")
  timeout = timeout or 30
  local st = rawget(self, "_webhook_maint")
  if not st or st.shard ~= shard then
    return nil, errors.new("invalid_argument", "the shard was not taken offline by webhook_offline")
  end
  local ok, err = self:_resize(st.count)
  if not ok then return nil, err end
  ok, err = wait_count(self, st.count, timeout)
  if not ok then return nil, err end
  local lw = st.last._webhook
  ok, err = st.last._ud:_set_webhook(lw.callback, lw.secret)
  if not ok then return nil, err end
  ok, err = wait_twitch_enabled(self, st.last, timeout, "the last shard to be back")
  if not ok then return nil, err end
  if shard ~= st.last then
    local w = shard._webhook
    ok, err = shard._ud:_set_webhook(w.callback, w.secret)
    if not ok then return nil, err end
    ok, err = wait_twitch_enabled(self, shard, timeout, "shard " .. shard.id .. " to be back on its callback")
    if not ok then return nil, err end
  end
  rawset(self, "_webhook_maint", nil)
  return true
end

-- ---------------------------------------------------------------------------------
-- webhook subscriptions (no conduit)

local SUB_SPEC = { type = true, version = true, condition = true, transport = true,
  server = true, path = true, callback = true, secret = true, timeout = true }

--- Subscribes with Twitch calling this process directly (async): the subscription once
-- its challenge was answered, or nil, err. spec: type, version?, condition, transport =
-- "webhook", server, path | callback, secret, timeout?
function Client:subscribe(spec)
  if self._closed then error("client is closed", 2) end
  if type(spec) ~= "table" then
    errors.argerror(1, "subscribe", ("table expected, got %s"):format(type(spec)))
  end
  for k in pairs(spec) do
    if not SUB_SPEC[k] then error(("unknown option '%s'"):format(tostring(k)), 2) end
  end
  if spec.transport ~= "webhook" then
    error("subscribe: transport = \"webhook\" expected "
      .. "(websocket and conduit subscriptions: conduit:subscribe)", 2)
  end
  if type(spec.type) ~= "string" or spec.type == "" then error("type must be a string", 2) end
  if spec.version ~= nil and type(spec.version) ~= "string" then error("version must be a string", 2) end
  if type(spec.condition) ~= "table" then error("condition must be a table", 2) end
  local full, callback = placement(spec, "subscribe")
  if not secret_ok(spec.secret) then return nil, secret_error() end
  local challenged = {}
  local route, err = spec.server:_route(full, spec.secret, nil, nil, function(kind, id)
    if kind == "challenge" and id then challenged[id] = true end
  end)
  if not route then return nil, err end
  local data
  data, err = self:create_subscription { type = spec.type, version = spec.version or "1",
    condition = spec.condition,
    transport = { method = "webhook", callback = callback, secret = spec.secret } }
  if not data then
    route:close()
    return nil, err
  end
  local sub = self:_subscription(data)
  rawset(sub, "_webhook", { server = spec.server, route = route, path = full, callback = callback })
  local ok
  ok, err = self:_wait(function()
    if challenged[data.id] then return true end
  end, spec.timeout or 30, nil, "the subscription's challenge")
  if not ok then return nil, err end
  ok, err = confirm(self, function() return self:subscriptions { subscription_id = data.id } end,
    function(list) return list[1] and list[1].status == "enabled" end, spec.timeout, "the subscription")
  if not ok then return nil, err end
  sub.status = "enabled"
  return sub
end

return M
