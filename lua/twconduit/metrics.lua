--- twconduit.metrics: Prometheus metrics, the status JSON and the live status page, on
-- one HTTP listener of the client's loop. Adds client:serve_metrics{...}.
--
--   /metrics  the Prometheus text format (version 0.0.4), rendered by the core from its
--             counters (tw_metrics_render), plus what only Lua knows: subscriptions by
--             status and cost, webhook routes, HTTP listeners, operations in progress
--   /status   JSON: every conduit and shard run here, next to what Twitch reports for the
--             whole conduit (Get Conduit Shards, cached and refreshed on a timer: never
--             one Helix call per page view), subscriptions, Helix budget, operations,
--             recent alerts
--   /         one self-contained HTML page polling /status
--
-- Read-only; bound to 127.0.0.1 unless told otherwise; with `token`, every path wants
-- `Authorization: Bearer <token>` (or `?token=<token>`, for a browser) and answers 401
-- without it.
local core = require "twconduit.core"
local errors = require "twconduit.errors"
local async = require "twconduit.async"
local Client = require "twconduit.client"

local M = {}

local NB = 24 -- TW_LAG_BUCKETS

local MetricsServer = { __name = "twconduit.MetricsServer" }
local metrics_getters = {
  port = function(self) return self._port end,
  url = function(self) return self._url end,
  client = function(self) return self._client end,
}
MetricsServer.__index = function(self, k)
  local g = metrics_getters[k]
  if g then return g(self) end
  return MetricsServer[k]
end
M.MetricsServer = MetricsServer

local OPTS = { host = true, port = true, token = true, server = true, interval = true,
  twitch_interval = true, subscriptions_interval = true }

-- ---------------------------------------------------------------------------------
-- sampling: rates and lag from the shards' counters, on a timer

-- the upper bound of lag bucket k (1-based), seconds
local function bucket_top(k) return k == 1 and 0.001 or (2 ^ (k - 1)) / 1000 end

local function median(h)
  local total = 0
  for k = 1, NB do total = total + h[k] end
  if total == 0 then return nil end
  local acc = 0
  for k = 1, NB do
    acc = acc + h[k]
    if acc * 2 >= total then return bucket_top(k) end
  end
end

local function sample(self)
  local client = self._client
  local now = client:now()
  local seen = {}
  for _, cd in ipairs(client:open_conduits()) do
    for _, s in ipairs(cd:shards()) do
      local ok, st = pcall(s.stats, s)
      if ok then
        local p = self._per[s]
        seen[s] = true
        if p then
          local dt = now - p.t
          if dt > 0 then
            p.eps = (st.notifications - p.n) / dt
            local d = {}
            for k = 1, NB do d[k] = st.lag_buckets[k] - p.h[k] end
            p.lag = median(d) or p.lag
          end
          p.t, p.n, p.h = now, st.notifications, st.lag_buckets
        else
          self._per[s] = { t = now, n = st.notifications, h = st.lag_buckets }
        end
      end
    end
    -- a conduit not yet looked up on Twitch: now
    if cd.id and not self._twitch[cd.id] and not self._fetching[cd.id] then self:_fetch_twitch(cd.id) end
  end
  for s in pairs(self._per) do
    if not seen[s] then self._per[s] = nil end
  end
end

function MetricsServer:_fetch_twitch(id)
  self._fetching[id] = true
  async.spawn(function()
    local list, err = self._client:conduit_shards(id)
    self._fetching[id] = nil
    if self._closed then return end
    local entry = { at = os.time() }
    if list then
      local shards = {}
      for i, sh in ipairs(list) do
        local t = type(sh.transport) == "table" and sh.transport or {}
        shards[i] = { id = sh.id, status = sh.status, method = t.method, session_id = t.session_id,
          callback = t.callback }
      end
      entry.shards = shards
    else
      local prev = self._twitch[id]
      entry.shards = prev and prev.shards or {}
      entry.error = { code = err.code, message = err.message }
    end
    self._twitch[id] = entry
  end)
end

function MetricsServer:_fetch_subscriptions()
  if self._subs_fetching then return end
  self._subs_fetching = true
  async.spawn(function()
    local list, err = self._client:subscriptions()
    self._subs_fetching = false
    if self._closed then return end
    local s = { at = os.time(), by_status = {} }
    if list then
      for _, sub in ipairs(list) do
        local st = tostring(sub.status)
        s.by_status[st] = (s.by_status[st] or 0) + 1
      end
      s.count = #list
      s.total, s.total_cost, s.max_total_cost = list.total, list.total_cost, list.max_total_cost
    else
      s.error = { code = err.code, message = err.message }
      local prev = self._subs
      if prev then
        s.by_status, s.count, s.total, s.total_cost, s.max_total_cost = prev.by_status, prev.count,
          prev.total,
          prev.total_cost, prev.max_total_cost
      end
    end
    self._subs = s
  end)
end

-- ---------------------------------------------------------------------------------
-- /status

local function wall_of(client, t) -- a loop time (client:now()) as epoch seconds
  if not t then return nil end
  return math.floor((os.time() - (client:now() - t)) * 1000) / 1000
end

local function transport_of(s)
  local ok, info = pcall(function() return s:webhook_info() end)
  if ok and info then return "webhook", info.callback end
  return "websocket", nil
end

function MetricsServer:status()
  local client = self._client
  local out = { version = core.VERSION, generated_at = os.time(), conduits = {}, operations = {},
    alerts = {} }
  local ops = package.loaded["twconduit.operations"]
  for _, cd in ipairs(client:open_conduits()) do
    local c = { id = cd.id or core.null, shard_count = cd.shard_count, state = cd.state, shards = {} }
    for _, s in ipairs(cd:shards()) do
      local ok, st = pcall(s.stats, s)
      if ok then
        local p = self._per[s] or {}
        local tr, cb = transport_of(s)
        c.shards[#c.shards + 1] = {
          id = s.id, state = s.state, status = s.status, transport = tr,
          session_id = s.session_id or core.null, callback = cb or core.null,
          connected_at = s.state == "enabled" and wall_of(client, st.enabled_at) or core.null,
          last_message_at = wall_of(client, st.last_message_at) or core.null,
          events_per_s = p.eps or 0, lag_s = p.lag or core.null,
          reconnects = st.reconnects, outages = st.outages, notifications = st.notifications,
          last_close_code = st.last_close_code,
        }
      end
    end
    local tw = cd.id and self._twitch[cd.id]
    c.twitch = tw and tw.shards or {}
    c.twitch_at = tw and tw.at or core.null
    c.twitch_error = tw and tw.error or core.null
    out.conduits[#out.conduits + 1] = c
    local op = ops and ops.current(cd)
    if op then
      out.operations[#out.operations + 1] = { conduit = cd.id, id = op.id, name = op.name, phase = op.phase,
        message = op.message, steps = op.steps }
    end
    local h = cd._health
    if h and h.alerts then
      for i = math.max(1, #h.alerts - 19), #h.alerts do
        local a = h.alerts[i]
        out.alerts[#out.alerts + 1] = { conduit = cd.id, kind = a.kind, message = a.message, shard = a.shard,
          at = wall_of(client, a.at) }
      end
    end
  end
  local st = client:stats()
  out.helix = { ratelimit_remaining = st.ratelimit_remaining, requests = st.helix_requests,
    retries = st.helix_retries, rate_waits = st.helix_rate_waits }
  local subs = self._subs or {}
  out.subscriptions = { count = subs.count or core.null, total = subs.total or core.null,
    total_cost = subs.total_cost or core.null, max_total_cost = subs.max_total_cost or core.null,
    by_status = subs.by_status or {}, at = subs.at or core.null, error = subs.error or core.null }
  out.client = { notifications = st.notifications, duplicates = st.duplicates, stale = st.stale }
  return out
end

-- ---------------------------------------------------------------------------------
-- /metrics: the core's text plus what only Lua knows

local function fam(list, name, type_, help)
  local f = { name = name, type = type_, help = help, samples = {} }
  list[#list + 1] = f
  return f
end

local function add(f, value, ...)
  f.samples[#f.samples + 1] = { value = value, labels = select("#", ...) > 0 and { ... } or nil }
end

local WEBHOOK_REASONS = { "notifications", "revocations", "challenges", "duplicates", "bad_request",
  "bad_signature",
  "stale", "future" }

function MetricsServer:families()
  local client = self._client
  local list = {}
  local subs = self._subs
  local f = fam(list, "twconduit_subscriptions", "gauge", "Subscriptions of the app by status (last read).")
  if subs then
    local keys = {}
    for k in pairs(subs.by_status) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do add(f, subs.by_status[k], "status", k) end
  end
  f = fam(list, "twconduit_subscriptions_cost", "gauge", "total_cost of the app's subscriptions (last read).")
  if subs and subs.total_cost then add(f, subs.total_cost) end
  f = fam(list, "twconduit_subscriptions_max_cost", "gauge", "max_total_cost of the app (last read).")
  if subs and subs.max_total_cost then add(f, subs.max_total_cost) end
  -- webhook routes and HTTP listeners
  local servers = {}
  for srv in pairs(client._webhook_servers or {}) do servers[#servers + 1] = srv end
  if self._own_ud then servers[#servers + 1] = { _own = self._own_ud } end
  local wf = fam(list, "twconduit_webhook_requests_total", "counter",
    "Webhook requests by route and result (reason: the message type, duplicates, or why it was refused).")
  local hc = fam(list, "twconduit_http_connections_total", "counter",
    "Connections accepted by the HTTP listeners.")
  local hr = fam(list, "twconduit_http_requests_total", "counter", "Requests read by the HTTP listeners.")
  local hx = fam(list, "twconduit_http_refused_total", "counter",
    "Requests or connections refused, by reason.")
  local ho = fam(list, "twconduit_http_open_connections", "gauge", "Connections open on the HTTP listeners.")
  local tot = { connections = 0, requests = 0, open_conns = 0, refused_conns = 0, bad_requests = 0,
    too_large = 0,
    headers_too_large = 0, timeouts = 0, not_found = 0, tls_errors = 0 }
  local paths = {}
  for _, srv in ipairs(servers) do
    local ud = srv._own or srv._ud
    if not ud:closed() then
      local s = ud:stats()
      for k in pairs(tot) do tot[k] = tot[k] + (s[k] or 0) end
      for path, r in pairs(srv._routes or {}) do
        if not r:closed() then paths[#paths + 1] = { path, r:stats() } end
      end
    end
  end
  table.sort(paths, function(a, b) return a[1] < b[1] end)
  for _, p in ipairs(paths) do
    for _, k in ipairs(WEBHOOK_REASONS) do
      if (p[2][k] or 0) > 0 then add(wf, p[2][k], "endpoint", p[1], "reason", k) end
    end
  end
  add(hc, tot.connections)
  add(hr, tot.requests)
  add(ho, tot.open_conns)
  for _, k in ipairs { "refused_conns", "bad_requests", "too_large", "headers_too_large", "timeouts",
    "not_found",
      "tls_errors" } do
    add(hx, tot[k], "reason", k)
  end
  -- operations
  local ops = package.loaded["twconduit.operations"]
  f = fam(list, "twconduit_operation_running", "gauge", "1 while a conduit operation runs.")
  for _, cd in ipairs(client:open_conduits()) do
    if cd.id then add(f, (ops and ops.current(cd)) and 1 or 0, "conduit", cd.id) end
  end
  return list
end

function MetricsServer:render()
  return self._client._core:metrics(self:families())
end

-- ---------------------------------------------------------------------------------
-- the routes

local function page() return require "twconduit.status_page" end

local function token_of(query, auth)
  if auth then
    local t = auth:match("^[Bb]earer%s+(.+)$")
    if t then return t end
  end
  if query then
    for k, v in query:gmatch("([^&=]+)=([^&]*)") do
      if k == "token" then return (v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h,
        16)) end)) end
    end
  end
end

local function same(a, b) -- compares without stopping at the first difference
  if type(a) ~= "string" or #a ~= #b then return false end
  local d = 0
  for i = 1, #a do d = d | (a:byte(i) ~ b:byte(i)) end
  return d == 0
end

function MetricsServer:_handler(kind)
  return function(method, _, query, auth)
    if self._closed then return 503, "text/plain", "closed\n" end
    if self._token and not same(token_of(query, auth), self._token) then
      return 401, "text/plain", "unauthorized\n", 'WWW-Authenticate: Bearer realm="twconduit"\r\n'
    end
    if method ~= "GET" and method ~= "HEAD" then
      return 405, "text/plain", "method not allowed\n", "Allow: GET, HEAD\r\n"
    end
    local ok, body, ctype = pcall(function()
      if kind == "metrics" then return self:render(), "text/plain; version=0.0.4; charset=utf-8" end
      if kind == "status" then return core.json_encode(self:status()), "application/json" end
      return page(), "text/html; charset=utf-8"
    end)
    if not ok then
      self._client:_report(errors.new("error", "metrics: " .. tostring(body)))
      return 500, "text/plain", "internal error\n"
    end
    return 200, ctype, method == "HEAD" and "" or body, "Cache-Control: no-store\r\n"
  end
end

local function num_opt(opts, k, def, lo)
  local v = opts[k]
  if v == nil then return def end
  if type(v) ~= "number" or v ~= v or v < lo then error(("%s must be a number >= %g"):format(k, lo), 3) end
  return v
end

--- Serves /metrics, /status and / on a new listener ({host, port}) or on an existing
-- webhook server ({server =}). Returns the metrics server | nil, err.
function Client:serve_metrics(opts)
  if self._closed then error("client is closed", 2) end
  opts = opts or {}
  if type(opts) ~= "table" then errors.argerror(1, "serve_metrics",
    ("table expected, got %s"):format(type(opts))) end
  for k in pairs(opts) do
    if not OPTS[k] then error(("unknown option '%s'"):format(tostring(k)), 2) end
  end
  if opts.token ~= nil and (type(opts.token) ~= "string" or opts.token == "") then
    error("token must be a non-empty string", 2)
  end
  local interval = num_opt(opts, "interval", 1, 0.05)
  local twitch_interval = num_opt(opts, "twitch_interval", 15, 0.1)
  local subs_interval = num_opt(opts, "subscriptions_interval", 60, 0.1)
  local self_ = setmetatable({ _client = self, _token = opts.token, _per = setmetatable({}, { __mode = "k" }),
    _twitch = {}, _fetching = {}, _routes = {}, _closed = false }, MetricsServer)
  local ud, host
  if opts.server ~= nil then
    if opts.host ~= nil or opts.port ~= nil then error("give server, or host and port", 2) end
    local srv = opts.server
    if type(srv) ~= "table" or not srv._ud or srv._client ~= self then
      error("server must be a webhook server of this client", 2)
    end
    ud = srv._ud
    self_._url = srv._origin
  else
    host = opts.host or "127.0.0.1"
    if type(host) ~= "string" then error("host must be a string", 2) end
    local err
    ud, err = self._core:webhook_server { host = host, port = opts.port }
    if not ud then return nil, err end
    self_._own_ud = ud
    local shown = host:find(":") and ("[" .. host .. "]") or host
    self_._url = ("http://%s:%d"):format(shown, ud:port())
  end
  self_._ud = ud
  self_._port = ud:port()
  for path, kind in pairs { ["/metrics"] = "metrics", ["/status"] = "status", ["/"] = "page" } do
    local r, err = ud:route(path, self_:_handler(kind))
    if not r then
      self_:close()
      return nil, err
    end
    self_._routes[#self_._routes + 1] = r
  end
  -- timers: sampling, Twitch's view, subscriptions
  local cd = self._core
  local last_twitch, last_subs = self:now(), self:now()
  local function tick()
    self_._timer = nil
    if self_._closed or self._closed then return end
    sample(self_)
    local now = self:now()
    if now - last_twitch >= twitch_interval then
      last_twitch = now
      local open = {}
      for _, c in ipairs(self:open_conduits()) do
        if c.id then
          open[c.id] = true
          if not self_._fetching[c.id] then self_:_fetch_twitch(c.id) end
        end
      end
      for id in pairs(self_._twitch) do -- conduits closed here meanwhile
        if not open[id] then self_._twitch[id] = nil end
      end
    end
    if now - last_subs >= subs_interval then
      last_subs = now
      self_:_fetch_subscriptions()
    end
    self_._timer = cd:timer(interval, tick)
  end
  sample(self_)
  self_:_fetch_subscriptions()
  self_._timer = cd:timer(interval, tick)
  self._metrics_servers = self._metrics_servers or {}
  self._metrics_servers[self_] = true
  return self_
end

function MetricsServer:__tostring() return ("twconduit.metrics_server{url=%q}"):format(self._url) end

function MetricsServer:closed() return self._closed end

--- Stops serving: removes the routes (and closes the listener it opened). Idempotent.
function MetricsServer:close()
  if self._closed then return end
  self._closed = true
  local client = self._client
  if self._timer and not client._closed then client._core:cancel_timer(self._timer) end
  self._timer = nil
  for _, r in ipairs(self._routes) do r:close() end
  self._routes = {}
  if self._own_ud then self._own_ud:close() end
  if client._metrics_servers then client._metrics_servers[self] = nil end
end
MetricsServer.__close = MetricsServer.close

--- Refreshes Twitch's view of every open conduit and the subscriptions now (async
-- fetches; the next /status shows them once answered).
function MetricsServer:refresh()
  if self._closed then error("metrics server is closed", 2) end
  for _, cd in ipairs(self._client:open_conduits()) do
    if cd.id and not self._fetching[cd.id] then self:_fetch_twitch(cd.id) end
  end
  self:_fetch_subscriptions()
  return true
end

return M
