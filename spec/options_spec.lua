-- Client options and their defaults, documented events and results, tokens, logging.
local twconduit = require "twconduit"
local H = require "support.helper"

describe("options", function()
  local m
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  local DOCUMENTED = {
    keepalive = 0, keepalive_slack = 5, dedupe_window = 600, dedupe_max = 1000000,
    max_age = 600, backoff_min = 0.25, backoff_max = 30, http_timeout = 15,
    http_retries = 4, http_max_inflight = 16, patch_batch = 100,
    validate_interval = 3600, verify_interval = 300, max_message_bytes = 1048576,
    tls_handshakes = 32,
    welcome_timeout = 15, reconnect_welcome_timeout = 30,
  }

  it("have one set of defaults: the core's, as documented", function()
    assert.same(DOCUMENTED, twconduit.defaults())
    local c = assert(twconduit.client { client_id = "x", client_secret = "y" })
    finally(function() c:close() end)
    local o = c:options()
    for k, v in pairs(DOCUMENTED) do assert.equal(v, o[k], k) end
    assert.equal("https://api.twitch.tv/helix", o.api_base)
    assert.is_nil(o.client_secret)
  end)

  it("take 0 as 0", function()
    local c = assert(twconduit.client { client_id = "x", client_secret = "y", http_retries = 0,
      keepalive_slack = 0, max_age = 0, validate_interval = 0, verify_interval = 0 })
    finally(function() c:close() end)
    local o = c:options()
    assert.equal(0, o.http_retries)
    assert.equal(0, o.keepalive_slack)
    assert.equal(0, o.max_age)
    assert.equal(0, o.validate_interval)
    assert.equal(0, o.verify_interval)
  end)

  it("http_retries = 0 sends a failing request once", function()
    local c = H.client(m, { http_retries = 0 })
    finally(function() c:close() end)
    assert(c:conduits()) -- the token, and one request
    local before = c:stats()
    assert(m:fault { helix = { { status = 503, count = 3 } } })
    local list, err = c:conduits()
    assert.is_nil(list)
    assert.equal("server_error", err.code)
    local after = c:stats()
    assert.equal(1, after.helix_requests - before.helix_requests)
    assert.equal(0, after.helix_retries - before.helix_retries)
  end)

  it("refuse values out of range, and a negative http_retries", function()
    local function new(k, v)
      return function() twconduit.client { client_id = "x", client_secret = "y", [k] = v } end
    end
    assert.has_error(new("http_retries", -1), "http_retries must be an integer >= 0")
    assert.has_error(new("verify_interval", -1), "verify_interval must be a number >= 0")
    assert.has_error(new("tls_handshakes", -1), "tls_handshakes must be an integer >= 0")
    assert.has_error(new("tls_handshakes", 1.5), "tls_handshakes must be an integer >= 0")
    assert.has_error(new("welcome_timeout", 0), "welcome_timeout must be a number > 0 and <= 600")
    assert.has_error(new("reconnect_welcome_timeout", 601),
      "reconnect_welcome_timeout must be a number > 0 and <= 600")
    assert.has_error(new("welcome_timeout", "5"), "welcome_timeout must be a number > 0 and <= 600")
    local c = assert(twconduit.client { client_id = "x", client_secret = "y", welcome_timeout = 2.5,
      reconnect_welcome_timeout = 4 })
    finally(function() c:close() end)
    assert.equal(2.5, c:options().welcome_timeout)
    assert.equal(4, c:options().reconnect_welcome_timeout)
  end)
end)

describe("documented behaviour", function()
  local m
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  it("on('started') is accepted and runs before ready", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local order = {}
    c:on("started", function(cd) order[#order + 1] = "started " .. tostring(cd.id ~= nil) end)
    c:on("ready", function() order[#order + 1] = "ready" end)
    H.ready_conduit(c, { shards = 1 })
    assert.same({ "started true", "ready" }, order)
  end)

  it("create_conduit, update_conduit, create_subscription: nil, bad_response on a bodiless 2xx", function()
    local c = H.client(m)
    finally(function() c:close() end)
    c.helix = function() return { data = {} }, 200 end -- a 2xx body with no element
    local v, err = c:create_conduit(1)
    assert.is_nil(v)
    assert.equal("bad_response", err.code)
    v, err = c:update_conduit("x", 2)
    assert.is_nil(v)
    assert.equal("bad_response", err.code)
    c.helix = function() return true, 204 end -- no body at all
    v, err = c:create_subscription { type = "stream.online", version = "1",
      condition = { broadcaster_user_id = "1" }, transport = { method = "conduit", conduit_id = "x" } }
    assert.is_nil(v)
    assert.equal("bad_response", err.code)
  end)

  it("validates a token obtained with the client secret at once, then every validate_interval", function()
    local c = H.client(m, { validate_interval = 0.2 })
    finally(function() c:close() end)
    assert(c:conduits())
    H.wait_until(c, function() return c:stats().token_validations >= 1 end, 5, "the first validation")
    local fetches = c:stats().token_fetches
    local tokens = 0
    c:on("token", function() tokens = tokens + 1 end)
    assert(m:revoke_all_tokens())
    -- no Helix call: the periodic validation finds the token revoked and gets a new one
    H.wait_until(c, function() return tokens >= 1 end, 5, "a new token")
    assert.is_true(c:stats().token_fetches > fetches)
    assert.is_true(c:stats().token_validations >= 2)
  end)

  it("validates a token obtained with the client secret even with validate_interval = 0", function()
    local c = H.client(m, { validate_interval = 0 })
    finally(function() c:close() end)
    assert(c:conduits())
    H.wait_until(c, function() return c:stats().token_validations == 1 end, 5, "the validation")
  end)

  it("require 'twconduit.core' leaves libwebsockets' log level alone; set_log_level changes it", function()
    local function run(code)
      local p = assert(io.popen(("%s -e %q 2>&1"):format("lua5.4", code)))
      local out = p:read("a")
      p:close()
      return out
    end
    local make = 'local core = require "twconduit.core"; %s '
      .. 'local c = core.client{client_id="x", client_secret="y"}; c:close()'
    assert.matches("LWS: ", run(make:format("")))
    assert.equal("", run(make:format("core.set_log_level(0);")))
  end)
end)
