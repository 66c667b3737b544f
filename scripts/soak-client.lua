--- The client side of scripts/soak: one process running a 16-shard conduit with a chat
-- bot's handler, started by scripts/soak with the emulator's addresses in SOAK_* variables.
-- It writes into SOAK_DIR:
--   handled   one message id per line for every notification its handlers got
--   stale     ids the replay guard refused (stale_message errors)
--   status    key=value lines, rewritten every half second (rss_kb, fds, handled, ...)
--   ready     once the conduit is ready and subscribed
-- and exits when SOAK_DIR/stop appears.
-- luacheck: no max line length
local twconduit = require "twconduit"

local function env(k) return os.getenv(k) or error(k .. " is not set (scripts/soak sets it)") end
local DIR = env("SOAK_DIR")
local SHARDS = math.tointeger(tonumber(os.getenv("SOAK_SHARDS") or "16"))
local CHANNELS = math.tointeger(tonumber(os.getenv("SOAK_CHANNELS") or "500"))
local CHAN0 = 40000

local function read_all(p)
  local f = io.open(p)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
local PID = read_all("/proc/self/stat"):match("^(%d+)")

local function rss_kb() return tonumber(read_all("/proc/self/status"):match("VmRSS:%s*(%d+)")) end
-- open fds, and how many of each kind (socket, pipe, anon_inode:[eventfd], a path...)
local function fds()
  local p = io.popen("ls -l /proc/" .. PID .. "/fd")
  local n, kinds = 0, {}
  for target in p:read("a"):gmatch("%-> ([^\n]+)") do
    local k = target:match("^(%a+):%[") and target:gsub("%[%d+%]", "") or target:match("^anon_inode:.*") or "file"
    kinds[k] = (kinds[k] or 0) + 1
    n = n + 1
  end
  p:close()
  kinds["pipe:"] = (kinds["pipe:"] or 1) - 1 -- the pipe of this popen
  local t = {}
  for k, v in pairs(kinds) do if v > 0 then t[#t + 1] = k .. "=" .. v end end
  table.sort(t)
  return n - 1, table.concat(t, ",")
end

local client = assert(twconduit.client {
  client_id = env("SOAK_CLIENT_ID"), client_secret = env("SOAK_CLIENT_SECRET"),
  api_base = env("SOAK_API_BASE"), auth_base = env("SOAK_AUTH_BASE"), eventsub_ws = env("SOAK_EVENTSUB_WS"),
  keepalive = 10, keepalive_slack = 1, backoff_min = 0.1, backoff_max = 2,
  verify_interval = 20, validate_interval = 30, http_timeout = 5,
  -- the de-duplication memory (32 bytes an id for the window) reaches its steady size
  -- within the warm-up; with the default 600 s it grows for 10 minutes, by design
  dedupe_window = 20,
})

local handled_f = assert(io.open(DIR .. "/handled", "w"))
local stale_f = assert(io.open(DIR .. "/stale", "w"))
handled_f:setvbuf("full", 1 << 16)
local handled, errors, err_codes = 0, 0, {}
local mentions, replies = 0, 0
local null = twconduit.null

client:on("error", function(err)
  errors = errors + 1
  local code = tostring(err.code)
  err_codes[code] = (err_codes[code] or 0) + 1
  if code ~= "stale_message" then -- kept for the record: the soak's faults cause many
    io.stderr:write(("soak-client: %.3f error %s: %s\n"):format(client:now(), code, tostring(err.message)))
  end
  if code == "stale_message" then
    local id = tostring(err.message):match("message (%S+) is older")
    if id then stale_f:write(id, "\n") end
  end
end)

local conduit = assert(client:conduit { shards = SHARDS })
assert(conduit:wait_ready(60))

-- a chat bot's handler: text length, fragment types, badges, chatter, reply
local function on_chat(event, msg)
  local m = event.message
  local n = #m.text
  local frags = m.fragments
  for i = 1, #frags do
    if frags[i].type == "mention" then mentions = mentions + 1 end
  end
  n = n + #event.badges + #event.chatter_user_login
  if event.reply ~= null then replies = replies + 1 end
  handled = handled + 1
  handled_f:write(msg.id, "\n")
  return n
end
conduit:on("channel.chat.message", on_chat)
conduit:on("channel.follow", function(event, msg)
  local _ = #event.user_login
  handled = handled + 1
  handled_f:write(msg.id, "\n")
end)

for i = 0, CHANNELS - 1 do
  assert(conduit:subscribe { type = "channel.chat.message", version = "1",
    condition = { broadcaster_user_id = tostring(CHAN0 + i), user_id = "1" } })
end
for i = 0, CHANNELS // 5 - 1 do
  assert(conduit:subscribe { type = "channel.follow", version = "2",
    condition = { broadcaster_user_id = tostring(CHAN0 + i), moderator_user_id = tostring(CHAN0 + i) } })
end

local function write_status()
  local enabled = 0
  for _, s in ipairs(conduit:shards()) do
    if s.state == "enabled" then enabled = enabled + 1 end
  end
  local st = client:stats()
  local codes = {}
  for k, v in pairs(err_codes) do codes[#codes + 1] = k .. ":" .. v end
  table.sort(codes)
  local nfd, fd_kinds = fds()
  local t = {
    ("handled=%d"):format(handled), ("rss_kb=%d"):format(rss_kb()), ("fds=%d"):format(nfd), ("fd_kinds=%s"):format(fd_kinds),
    ("lua_kb=%d"):format(math.floor(collectgarbage("count"))), ("enabled=%d"):format(enabled),
    ("duplicates=%d"):format(st.duplicates), ("stale=%d"):format(st.stale), ("bad_messages=%d"):format(st.bad_messages),
    ("ws_connects=%d"):format(st.ws_connects), ("helix_requests=%d"):format(st.helix_requests),
    ("helix_retries=%d"):format(st.helix_retries), ("token_fetches=%d"):format(st.token_fetches),
    ("errors=%d"):format(errors), ("error_codes=%s"):format(table.concat(codes, ",")),
    ("mentions=%d"):format(mentions), ("replies=%d"):format(replies), ("now=%.3f"):format(client:now()),
  }
  local f = assert(io.open(DIR .. "/status.tmp", "w"))
  f:write(table.concat(t, "\n"), "\n")
  f:close()
  os.rename(DIR .. "/status.tmp", DIR .. "/status")
end

collectgarbage()
write_status()
local f = assert(io.open(DIR .. "/ready", "w"))
f:write(conduit.id, "\n")
f:close()

while true do
  client:sleep(0.5)
  handled_f:flush()
  stale_f:flush()
  write_status()
  if read_all(DIR .. "/stop") then break end
end
handled_f:close()
stale_f:close()
client:close()
os.exit(0, false)
