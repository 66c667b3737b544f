-- Per-notification cost from Lua: parse + view + three field reads, against
-- json_decode to full tables + the same reads.
--   LUA_CPATH="build/lib/?.so;;" lua5.4 bench/micro/view_bench.lua [fixture] [iterations]
local core = require "twconduit.core"

local path = arg[1] or "bench/fixtures/chat_message.json"
local n = tonumber(arg[2]) or 200000
local f = assert(io.open(path, "rb"))
local text = f:read("a")
f:close()

local function best(fn)
  local b = math.huge
  for _ = 1, 5 do
    collectgarbage()
    local t0 = os.clock()
    fn()
    local dt = (os.clock() - t0) / n * 1e6
    if dt < b then b = dt end
  end
  return b
end

local sink = 0
local view_us = best(function()
  local json_view = core.json_view
  for _ = 1, n do
    local v = json_view(text)
    local e = v.payload.event
    sink = sink + #e.message.text + #e.chatter_user_login + #v.metadata.message_id
  end
end)
local parse_us = best(function()
  local json_view = core.json_view
  for _ = 1, n do sink = sink + (json_view(text) and 1 or 0) end
end)
local decode_us = best(function()
  local json_decode = core.json_decode
  for _ = 1, n do
    local v = json_decode(text)
    local e = v.payload.event
    sink = sink + #e.message.text + #e.chatter_user_login + #v.metadata.message_id
  end
end)
print(string.format("document: %s (%d bytes), best of 5 x %d", path, #text, n))
print(string.format("json_view only                          %7.3f us", parse_us))
print(string.format("json_view + view + 3 field reads        %7.3f us", view_us))
print(string.format("json_decode (full tables) + 3 reads     %7.3f us", decode_us))
print(string.format("ratio                                   %7.1fx", decode_us / view_us))
assert(sink > 0)
