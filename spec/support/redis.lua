--- A private redis-server for the specs: unix socket in a temporary folder, AOF on, no
-- RDB snapshots; never a system service. start() waits until it answers PING. Redis's
-- own programs run without the sanitizers' preload.
local R = {}
R.__index = R

local function sh(cmd) return os.execute(cmd) end

local function cli(self, ...)
  local args = {}
  for i, a in ipairs { ... } do args[i] = "'" .. tostring(a):gsub("'", "'\\''") .. "'" end
  local p = io.popen(("env -u LD_PRELOAD redis-cli -s '%s' %s 2>/dev/null")
    :format(self.socket, table.concat(args, " ")))
  local out = p:read("a")
  p:close()
  return (out:gsub("%s+$", ""))
end
R.cli = cli

--- Starts redis-server in dir (a new temporary folder when nil). Returns the server.
function R.start(dir)
  if not dir then
    local p = io.popen("mktemp -d /tmp/twq-redis.XXXXXX")
    dir = p:read("l")
    p:close()
  end
  local sock = dir .. "/redis.sock"
  local self = setmetatable({ dir = dir, socket = sock, url = "unix:" .. sock }, R)
  self:_spawn()
  return self
end

function R:_spawn()
  assert(sh(("env -u LD_PRELOAD redis-server --port 0 --unixsocket '%s' --appendonly yes --dir '%s' " ..
    "--save '' --daemonize yes --pidfile '%s/redis.pid' --logfile '%s/redis.log'")
    :format(self.socket, self.dir, self.dir, self.dir)),
    "cannot start redis-server")
  local t0 = os.time()
  while cli(self, "PING") ~= "PONG" do
    assert(os.time() - t0 < 10, "redis-server did not answer within 10 s (see " .. self.dir .. "/redis.log)")
    sh("sleep 0.05")
  end
  local f = io.open(self.dir .. "/redis.pid")
  self.pid = f and tonumber(f:read("l"))
  if f then f:close() end
  self.running = true
end

--- Stops it (SHUTDOWN: the AOF is flushed) and waits for the process to be gone.
function R:stop()
  if not self.running then return end
  self.running = false
  cli(self, "SHUTDOWN")
  if self.pid then
    local t0 = os.time()
    while sh(("kill -0 %d 2>/dev/null"):format(self.pid)) do
      if os.time() - t0 > 10 then sh(("kill -9 %d 2>/dev/null"):format(self.pid)) break end
      sh("sleep 0.05")
    end
  end
end

function R:restart() self:_spawn() end

--- Stops it and removes its folder.
function R:destroy()
  self:stop()
  sh(("rm -rf '%s'"):format(self.dir))
end

return R
