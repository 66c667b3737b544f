--- twconduit.policies.autoscale: keeps the events/s per shard near a target.
--
--   conduit:policy(require("twconduit.policies.autoscale") { target = 500 })
--
-- Scales up when the average rate per shard exceeds `up` (80 %, like Discordeno's
-- resharding) of `target`, down when it falls below `down` (40 %); the new count puts
-- the average at `aim` (60 %) of the target, between the two, so one step does not
-- trigger the opposite one (hysteresis). A condition must hold for `sustain` seconds,
-- and no scaling happens within `cooldown` seconds (default 300) of the last one.
-- `min` and `max` bound the count. Only a process running every shard (or its range)
-- resizes: the action is { resize = n }.
local M = {}

local DEFAULTS = { target = 500, up = 0.8, down = 0.4, aim = 0.6, min = 1, max = 20000, sustain = 30,
  cooldown = 300 }

local function check(o)
  for k, v in pairs(o) do
    if DEFAULTS[k] == nil then error(("unknown option '%s'"):format(tostring(k)), 3) end
    if type(v) ~= "number" or v < 0 then error(k .. " must be a non-negative number", 3) end
  end
  local r = {}
  for k, v in pairs(DEFAULTS) do r[k] = o[k] or v end
  if r.target <= 0 then error("target must be > 0", 3) end
  if not (r.down < r.aim and r.aim < r.up) then error("down < aim < up expected", 3) end
  if r.min < 1 or r.max < r.min then error("1 <= min <= max expected", 3) end
  return r
end

--- A new policy (a table with tick) for options o.
function M.new(o)
  local p = check(o or {})
  p.decisions = {}
  function p:tick(snap)
    local n = snap.running
    if n == 0 or snap.operation then return nil end
    local now = snap.now
    if self.last_at and now - self.last_at < self.cooldown then return nil end
    local avg = snap.rate / n
    local want
    if avg > self.up * self.target or avg < self.down * self.target then
      want = math.ceil(snap.rate / (self.aim * self.target))
      if want < self.min then want = math.floor(self.min) end
      if want > self.max then want = math.floor(self.max) end
    end
    if not want or want == n then
      self.since, self.pending = nil, nil
      return nil
    end
    -- the same direction must hold for `sustain` seconds
    local dir = want > n and "up" or "down"
    if self.pending ~= dir then
      self.pending, self.since = dir, now
      return nil
    end
    if now - self.since < self.sustain then return nil end
    self.pending, self.since, self.last_at = nil, nil, now
    self.decisions[#self.decisions + 1] = { at = now, from = n, to = want, rate = snap.rate }
    return { resize = want }
  end
  return p
end

return setmetatable(M, { __call = function(_, o) return M.new(o) end })
