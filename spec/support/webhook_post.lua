--- Signed webhook requests sent with curl in the background, for the specs of the
-- receiver (the loop keeps running to answer them). Signatures come from the emulator's
-- POST /_mock/sign, never from the client's own code.
local H = require "support.helper"

local W = {}

--- Runs curl with args in the background; returns a function that gives the HTTP status
-- once curl has one (nil until then).
function W.curl_bg(args)
  local out = os.tmpname()
  os.execute(("env -u LD_PRELOAD curl -s -o /dev/null -w '%%{http_code}' --max-time 30 %s > %s"
    .. " 2>/dev/null &"):format(args, out))
  return function()
    local f = io.open(out)
    local s = f and f:read("a")
    if f then f:close() end
    if s and #s == 3 then
      os.remove(out)
      return tonumber(s)
    end
  end
end

function W.iso(t) return os.date("!%Y-%m-%dT%H:%M:%S", t) .. ".000000000Z" end

--- The emulator's signature of (id, ts, body) with secret.
function W.sign(m, secret, id, ts, body)
  return assert(m:call("POST", "/sign", { secret = secret, message_id = id, timestamp = ts, body = body }))
    .signature
end

W.BODY = '{"subscription":{"id":"s","type":"stream.online","version":"1","status":"enabled"},'
  .. '"event":{"broadcaster_user_id":"42"}}'

--- A poster for url: post(id[, ts[, sig_secret[, file]]]) sends a signed notification
-- (body W.BODY unless file is given) and returns curl_bg's status function; done()
-- removes the body file.
function W.poster(m, url, secret)
  local bodyfile = os.tmpname()
  local f = assert(io.open(bodyfile, "w"))
  f:write(W.BODY)
  f:close()
  return function(id, ts, sig_secret, file)
    ts = ts or W.iso(os.time())
    local sig = W.sign(m, sig_secret or secret, id, ts, W.BODY)
    return W.curl_bg(("-X POST -H 'Content-Type: application/json' -H 'Expect:' "
      .. "-H 'Twitch-Eventsub-Message-Id: %s' -H 'Twitch-Eventsub-Message-Timestamp: %s' "
      .. "-H 'Twitch-Eventsub-Message-Type: notification' -H 'Twitch-Eventsub-Message-Signature: %s' "
      .. "--data-binary @%s %s"):format(id, ts, sig, file or bodyfile, url))
  end, function() os.remove(bodyfile) end
end

--- Steps c until pending() gives a status; returns it.
function W.answer(c, pending, what)
  local st
  H.wait_until(c, function()
    st = pending()
    return st ~= nil
  end, 30, what)
  return st
end

function W.need_curl()
  assert(os.execute("command -v curl >/dev/null") == true, "curl is required (scripts/install-deps.sh)")
end

return W
