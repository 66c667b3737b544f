--- twconduit.state: what a process needs to restart without recreating anything: the
-- conduit id, the shard range it runs and its subscriptions.
--
-- `client:conduit{ state = "path" }` keeps it in a JSON file written atomically (write,
-- fsync, rename, fsync of the directory); `state = store` takes any object with
-- `load()` (-> table or nil) and `save(table)` (-> true | nil, err).
local core = require "twconduit.core"
local errors = require "twconduit.errors"

local M = {}

--- A store over a JSON file at path.
function M.file(path)
  if type(path) ~= "string" or path == "" then error("state path must be a non-empty string", 2) end
  local store = { path = path }
  function store.load()
    local f = io.open(path, "rb")
    if not f then return nil end
    local text = f:read("a")
    f:close()
    if text == "" then return nil end
    local ok, data = pcall(core.json_decode, text)
    if not ok or type(data) ~= "table" then
      return nil, errors.new("bad_state", ("state file %s is not a JSON object"):format(path))
    end
    return data
  end
  function store.save(data)
    return core.write_atomic(path, core.json_encode(data))
  end
  return store
end

--- The store for a `state` option: a path or an object with load and save.
function M.store(opt)
  if type(opt) == "string" then return M.file(opt) end
  local mt = type(opt) == "table" or (type(opt) == "userdata" and getmetatable(opt))
  if mt and type(opt.load) == "function" and type(opt.save) == "function" then return opt end
  error("state must be a path or an object with load and save", 3)
end

local function sub_key(t, version, cond)
  local keys = {}
  for k in pairs(cond or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = { t, version or "1" }
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. tostring(cond[k]) end
  return table.concat(parts, "\0")
end

--- A conduit's state: the table saved, plus helpers.
local State = {}
State.__index = State

--- Loads the state for a conduit about to open. Returns the state object (data may be
-- empty) | raises on a broken store.
function M.open(opt)
  local store = M.store(opt)
  local data, err = store.load()
  if data == nil and err then error(tostring(err), 3) end
  local self = setmetatable({ store = store, data = data or {}, restored = data ~= nil and data.conduit_id ~= nil },
    State)
  self.data.subscriptions = self.data.subscriptions or {}
  self.index = {}
  for _, s in ipairs(self.data.subscriptions) do
    self.index[sub_key(s.type, s.version, s.condition)] = s
  end
  return self
end

--- The conduit options the state gives (explicit options win).
function State:merge(opts)
  local d = self.data
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.state = nil
  if o.id == nil then o.id = d.conduit_id end
  if d.shards ~= nil and (o.id == d.conduit_id) then o.shards = d.shards end -- the last resize wins
  if o.offset == nil then o.offset = d.offset end
  if o.total == nil then o.total = d.total end
  return o
end

function State:save()
  local ok, err = self.store.save(self.data)
  if not ok then return nil, err or errors.new("io_error", "the state store refused the save") end
  return true
end

--- Records the conduit (id and range) once known.
function State:conduit(id, open)
  local d = self.data
  d.conduit_id = id
  d.shards, d.offset, d.total = open.shards, open.offset, open.total
  return self:save()
end

--- Records the shard count this process runs (after a resize).
function State:shards(n)
  if self.data.shards == n then return true end
  self.data.shards = n
  return self:save()
end

function State:find(t, version, cond) return self.index[sub_key(t, version, cond)] end

function State:remember(sub)
  local key = sub_key(sub.type, sub.version, sub.condition)
  if self.index[key] then return true end
  local rec = { id = sub.id, type = sub.type, version = sub.version, condition = sub.condition,
    status = sub.status, cost = sub.cost, created_at = sub.created_at }
  self.index[key] = rec
  local list = self.data.subscriptions
  list[#list + 1] = rec
  return self:save()
end

function State:forget(id)
  local list = self.data.subscriptions
  for i, s in ipairs(list) do
    if s.id == id then
      table.remove(list, i)
      self.index[sub_key(s.type, s.version, s.condition)] = nil
      return self:save()
    end
  end
  return true
end

M.State = State
return M
