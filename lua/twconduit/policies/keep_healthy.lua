--- twconduit.policies.keep_healthy: repairs what the health monitor sees.
--
--   conduit:policy(require("twconduit.policies.keep_healthy") { lag_p99 = 5 })
--
-- A shard Twitch shows disabled while this process has it enabled on that very
-- session, or whose p99 lag over the window exceeds `lag_p99` seconds, gets a handover
-- (a new socket, make-before-break); shards run here that Twitch does not know, or a
-- count that does not match, get a rebalance. One action per tick; the runtime runs
-- one at a time with its cool-down.
local M = {}

function M.new(o)
  o = o or {}
  for k in pairs(o) do
    if k ~= "lag_p99" then error(("unknown option '%s'"):format(tostring(k)), 2) end
  end
  local p = { lag_p99 = o.lag_p99 or 10 }
  function p:tick(snap)
    if snap.operation then return nil end
    for _, s in ipairs(snap.shards) do
      if s.status == "enabled" and s.transport == "websocket" then
        if s.twitch_status and s.twitch_status ~= "enabled" and s.twitch_status ~= "unknown" then
          return { handover = s.id }
        end
        if s.lag and s.lag.p99 and s.lag.p99 > self.lag_p99 then return { handover = s.id } end
      end
    end
    if snap.range and snap.range.all and snap.shard_count ~= snap.running then return { rebalance = true } end
    return nil
  end
  return p
end

return setmetatable(M, { __call = function(_, o) return M.new(o) end })
