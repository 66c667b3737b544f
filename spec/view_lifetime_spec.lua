-- Views of notifications kept past their handler while many more messages go through the
-- client's recycled document memory (csrc/binding/view.c, message.c): what a kept view
-- reads must be its own message, never a later one written into the same memory.
local twconduit = require "twconduit"
local H = require "support.helper"

local N = os.getenv("SANITIZED") and 150 or 600

describe("views kept across many messages", function()
  local m
  lazy_setup(function() m = H.start_mock() end)
  lazy_teardown(function() if m then m:stop() end end)
  before_each(function() assert(m:reset()) end)

  it("read their own message after the rest were collected and their memory reused", function()
    local c = H.client(m)
    finally(function() c:close() end)
    local cd = H.ready_conduit(c, { shards = 1 })
    H.subscribe_all(cd, "channel.chat.message", { "779" })
    local f = assert(io.open("bench/fixtures/chat_variants.json"))
    local variants = twconduit.json_decode(f:read("a"))
    f:close()
    local kept, n, null = {}, 0, twconduit.null
    cd:on("channel.chat.message", function(event, msg)
      n = n + 1
      local frags = event.message.fragments
      local types = {}
      for i = 1, #frags do types[i] = frags[i].type end
      if n % 5 == 0 then -- keep views at every level, the message, and what they read now
        kept[#kept + 1] = { msg = msg, id = msg.id, event = event, raw = tostring(event),
          frags = frags, frags_raw = tostring(frags),
          last = frags[#frags], badges = event.badges, types = types,
          text = event.message.text, login = event.chatter_user_login,
          reply = event.reply ~= null and event.reply or nil }
      end
      if n % 50 == 0 then collectgarbage() end
    end)
    local function blast(count)
      local r = assert(m:call("POST", "/blast", { type = "channel.chat.message", channels = { "779" },
        count = count, variants = variants }))
      return r.total
    end
    local want = blast(N // #variants)
    H.wait_until(c, function() return n >= want end, 30, "the first blast")
    for _ = 1, 2 do collectgarbage() end
    local first = #kept
    local want2 = want + blast(N // #variants) -- written into the memory the others gave back
    H.wait_until(c, function() return n >= want2 end, 30, "the second blast")
    for _ = 1, 2 do collectgarbage() end
    assert.equal(want2, n)
    assert.is_true(first > 0 and #kept > first)
    local ids, replies = {}, 0
    for i, k in ipairs(kept) do
      -- the documents behind the kept views are still these messages'
      assert.equal(k.raw, tostring(k.event), "message " .. i)
      assert.equal(k.frags_raw, tostring(k.frags))
      assert.equal(k.id, k.msg.id)
      assert.is_nil(ids[k.id], "each message once")
      ids[k.id] = true
      assert.equal(#k.types, #k.frags)
      for j, t in ipairs(k.types) do assert.equal(t, k.frags[j].type) end
      assert.is_true(k.last == k.frags[#k.frags])
      assert.equal(k.types[#k.types], k.last.type)
      local joined = {}
      for _, fr in ipairs(k.frags) do joined[#joined + 1] = fr.text end
      assert.equal(k.text, table.concat(joined))
      assert.equal(k.text, k.event.message.text)
      assert.equal(k.login, k.event.chatter_user_login)
      assert.equal(#k.event.badges, #k.badges)
      if k.reply then
        replies = replies + 1
        assert.is_string(k.reply.parent_message_id)
        assert.is_true(k.reply == k.event.reply)
      end
    end
    assert.is_true(replies > 0, "a reply among the kept")
  end)
end)
