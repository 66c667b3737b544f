-- Views over parsed JSON (csrc/binding/view.c), json_decode / json_encode (luajson.c).
local core = require "twconduit.core"
local twconduit = require "twconduit"

local null = core.null

local DOC = [[{"metadata":{"message_id":"m-1","message_type":"notification"},
 "payload":{"event":{"chatter_user_login":"viewer32","message":{"text":"Hi \u00e9 \"q\"",
 "fragments":[{"type":"text","text":"Hi "},{"type":"emote","text":"Kappa","emote":{"id":"25"}}]},
 "count":42,"big":9223372036854775807,"ratio":0.5,"whole":2.0,"ok":true,"no":false,"cheer":null,
 "list":[1,null,3],"empty":[],"eobj":{}}},"z":"last","a":"after z"}]]

describe("twconduit.view", function()
  local v
  before_each(function() v = core.json_view(DOC) end)

  it("indexes objects by string key and nests views", function()
    assert.is_true(core.isview(v))
    assert.are.equal("m-1", v.metadata.message_id)
    assert.are.equal("viewer32", v.payload.event.chatter_user_login)
    assert.are.equal('Hi \u{e9} "q"', v.payload.event.message.text)
    assert.is_true(core.isview(v.payload.event.message))
    assert.is_nil(v.nope)
    assert.is_nil(v.payload.event.nope)
    assert.is_nil(v[1])
    assert.is_nil(v[true])
  end)

  it("keeps integers integers and floats floats", function()
    local e = v.payload.event
    assert.are.equal("integer", math.type(e.count))
    assert.are.equal(42, e.count)
    assert.are.equal(math.maxinteger, e.big)
    assert.are.equal("float", math.type(e.ratio))
    assert.are.equal("float", math.type(e.whole))
    assert.are.equal(2.0, e.whole)
    assert.is_true(e.ok)
    assert.is_false(e.no)
  end)

  it("maps null to the sentinel, never nil", function()
    local e = v.payload.event
    assert.are.equal(null, e.cheer)
    assert.are.equal("twconduit.null", tostring(null))
    assert.are.equal(null, e.list[2])
    assert.are.equal(3, #e.list)
    assert.are.equal(3, e.list[3])
  end)

  it("indexes arrays 1-based and supports ipairs", function()
    local frags = v.payload.event.message.fragments
    assert.are.equal(2, #frags)
    assert.are.equal("text", frags[1].type)
    assert.are.equal("25", frags[2].emote.id)
    assert.is_nil(frags[0])
    assert.is_nil(frags[3])
    assert.is_nil(frags[1.5])
    assert.is_nil(frags["1"])
    local seen = {}
    for i, f in ipairs(frags) do seen[i] = f.text end
    assert.are.same({ "Hi ", "Kappa" }, seen)
  end)

  it("iterates objects in document order with pairs", function()
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    assert.are.same({ "metadata", "payload", "z", "a" }, keys)
    local vals = {}
    for k, x in pairs(v.metadata) do vals[#vals + 1] = k .. "=" .. x end
    assert.are.same({ "message_id=m-1", "message_type=notification" }, vals)
  end)

  it("iterates arrays with pairs, nulls included", function()
    local got = {}
    for i, x in pairs(v.payload.event.list) do got[#got + 1] = { i, x } end
    assert.are.same({ { 1, 1 }, { 2, null }, { 3, 3 } }, got)
    local n = 0
    for _ in pairs(v.payload.event.empty) do n = n + 1 end
    for _ in pairs(v.payload.event.eobj) do n = n + 1 end
    assert.are.equal(0, n)
  end)

  it("reports lengths with #", function()
    assert.are.equal(4, #v)
    assert.are.equal(2, #v.metadata)
    assert.are.equal(0, #v.payload.event.empty)
    assert.are.equal(0, #v.payload.event.eobj)
  end)

  it("is read-only", function()
    assert.has_error(function() v.x = 1 end, "twconduit.view is read-only")
    assert.has_error(function() v.payload.event.list[1] = 2 end, "twconduit.view is read-only")
    assert.has_error(function() rawset(v, "x", 1) end)
    assert.are.equal("twconduit.view", getmetatable(v))
  end)

  it("prints its raw JSON with tostring", function()
    assert.are.equal('{"message_id":"m-1","message_type":"notification"}', tostring(v.metadata))
    assert.are.equal('[1,null,3]', tostring(v.payload.event.list))
    assert.are.equal(DOC, tostring(v))
  end)

  it("compares equal for the same node of the same document", function()
    assert.is_true(v.metadata == v.metadata)
    assert.is_false(v.metadata == v.payload)
    assert.is_false(v.metadata == core.json_view(DOC).metadata)
  end)

  it("stays valid after its parents are collected", function()
    local frag = core.json_view(DOC).payload.event.message.fragments[2]
    local list = core.json_view(DOC).payload.event.list
    v = nil
    collectgarbage()
    collectgarbage()
    assert.are.equal("Kappa", frag.text)
    assert.are.equal("25", frag.emote.id)
    assert.are.equal(3, #list)
  end)

  it("refuses to read once its document was finalized (a finalizer running later)", function()
    local got
    do
      -- the keeper's finalizer runs after the document holder's in the same cycle
      local keeper = setmetatable({}, { __gc = function(t)
        got = { pcall(function() return t.v.a.b end) }
        got.len = { pcall(function() return #t.v end) }
        got.str = tostring(t.v)
        got.isview = { pcall(core.isview, t.v) }
        got.type = { pcall(twconduit.type, t.v) }
      end })
      keeper.v = core.json_view('{"a":{"b":"hello"},"arr":[1,2,3]}')
    end
    collectgarbage()
    collectgarbage()
    assert.is_table(got)
    assert.is_false(got[1])
    assert.matches("collected", tostring(got[2]))
    assert.is_false(got.len[1])
    assert.matches("collected", got.str)
    assert.same({ true, true }, got.isview) -- a predicate never raises
    assert.same({ true, "view" }, got.type)
  end)

  it("survives many views created and dropped", function()
    for _ = 1, 2000 do
      local x = core.json_view(DOC)
      assert.are.equal("m-1", x.metadata.message_id)
    end
    collectgarbage()
    assert.are.equal("last", v.z)
  end)

  it("copies to plain tables with totable", function()
    local t = core.totable(v)
    assert.is_false(core.isview(t))
    assert.are.equal("table", type(t.payload.event.message.fragments))
    assert.is_false(core.isview(t.payload.event.message.fragments))
    assert.are.equal("Kappa", t.payload.event.message.fragments[2].text)
    assert.are.equal("integer", math.type(t.payload.event.count))
    assert.are.equal("float", math.type(t.payload.event.whole))
    assert.are.equal(null, t.payload.event.cheer)
    assert.are.same({ 1, null, 3 }, t.payload.event.list)
    t.payload.x = 1 -- plain tables are writable
    assert.are.same({ 1, null, 3 }, core.totable(v.payload.event.list))
  end)

  it("returns plain values from totable unchanged", function()
    local t = { 1 }
    assert.are.equal(t, core.totable(t))
    assert.are.equal("s", core.totable("s"))
    assert.are.equal(5, core.totable(5))
    assert.are.equal(null, core.totable(null))
  end)

  it("returns scalars for scalar documents", function()
    assert.are.equal("x", core.json_view('"x"'))
    assert.are.equal(7, core.json_view(" 7 "))
    assert.are.equal(null, core.json_view("null"))
  end)

  it("reads the same child twice as two equal views, each valid alone", function()
    local held = { a = v.payload.event.message }
    local b = v.payload.event.message
    assert.is_true(held.a == b)
    assert.is_false(rawequal(held.a, b)) -- two userdata, one node
    assert.is_true(held.a.fragments[2].emote == b.fragments[2].emote)
    held.a = nil
    v = nil
    collectgarbage()
    collectgarbage()
    assert.are.equal("Kappa", b.fragments[2].text)
    assert.are.equal(2, #b.fragments)
  end)

  it("reads nested arrays: index, #, ipairs, pairs, tostring, totable", function()
    local held = { n = core.json_view('{"m":[[1,[2,[3,{"x":[4]}]]],[],[[]],[null,"s"]]}').m }
    local n = held.n
    assert.are.equal(4, #n)
    assert.are.equal(1, n[1][1])
    assert.are.equal(2, n[1][2][1])
    assert.are.equal(3, n[1][2][2][1])
    assert.are.equal(4, n[1][2][2][2].x[1])
    assert.are.equal(0, #n[2])
    assert.are.equal(1, #n[3])
    assert.are.equal(0, #n[3][1])
    assert.are.equal(null, n[4][1])
    assert.are.equal("s", n[4][2])
    assert.is_nil(n[5])
    assert.is_nil(n[0])
    assert.is_nil(n[1.5])
    assert.is_nil(n.x)
    local lens = {}
    for i, e in ipairs(n) do lens[i] = #e end
    assert.same({ 2, 0, 1, 2 }, lens)
    local keys = {}
    for k in pairs(n[1][2]) do keys[#keys + 1] = k end
    assert.same({ 1, 2 }, keys)
    assert.are.equal('[3,{"x":[4]}]', tostring(n[1][2][2]))
    assert.same({ { 1, { 2, { 3, { x = { 4 } } } } }, {}, { {} }, { null, "s" } }, core.totable(n))
    local inner = n[1][2][2][2].x
    held.n = nil
    n = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    assert.are.equal(4, inner[1])
  end)

  it("answers nil for keys of the wrong type, on objects and arrays", function()
    assert.is_nil(v.payload[1])
    assert.is_nil(v.payload[true])
    assert.is_nil(v.payload.event.list["1"])
    assert.is_nil(v.payload.event.list[v])
    assert.are.equal(42, v.payload.event.count)
  end)

  it("reads back every short string exactly, whatever other strings were read before", function()
    -- short and long strings (Lua interns those of up to 40 bytes), lengths around that
    -- limit, embedded NULs, strings differing in one middle byte, read in another order
    -- than they were parsed and again after collections
    local vals = {}
    for i = 1, 300 do vals[#vals + 1] = ("s%d"):format(i) end
    for i = 1, 40 do vals[#vals + 1] = ("%s%d"):format(("x"):rep(i % 30), i) end
    for c = 0, 255 do vals[#vals + 1] = "ab" .. utf8.char(c) .. "yz" end
    for l = 38, 42 do vals[#vals + 1] = ("q"):rep(l) end
    vals[#vals + 1] = "a\0b"
    vals[#vals + 1] = "a\0c"
    vals[#vals + 1] = ""
    local parts = {}
    for i, s in ipairs(vals) do parts[i] = core.json_encode({ v = s }) end
    for round = 1, 3 do
      local docs = {}
      for i = 1, #parts do docs[i] = core.json_view(parts[i]) end
      for i = #docs, 1, -1 do -- reversed: other strings went into the slots meanwhile
        assert.are.equal(vals[i], docs[i].v, ("round %d, string %d"):format(round, i))
        assert.are.equal(#vals[i], #docs[i].v)
      end
      collectgarbage()
    end
  end)

  it("keeps views of many documents kept in a table while the rest are collected", function()
    local n = os.getenv("SANITIZED") and 1000 or 4000
    local kept = {}
    for i = 1, n do
      local d = core.json_view(('{"i":%d,"a":[{"t":"x%d","o":{"k":[%d]}}],"s":"str%d"}'):format(i, i, i, i))
      local frag = d.a[1]
      assert.are.equal(i, frag.o.k[1])
      if i % 7 == 0 then kept[#kept + 1] = { i = i, frag = frag, k = frag.o.k, s = d.s } end
      if i % 500 == 0 then collectgarbage() end
    end
    collectgarbage()
    collectgarbage()
    for _, e in ipairs(kept) do
      assert.are.equal("x" .. e.i, e.frag.t)
      assert.are.equal(e.i, e.k[1])
      assert.are.equal(1, #e.k)
      assert.are.equal("str" .. e.i, e.s)
      assert.are.equal(("[%d]"):format(e.i), tostring(e.k))
    end
  end)
end)

describe("json_decode", function()
  it("builds plain tables with integers and the null sentinel", function()
    local t = core.json_decode('{"a":[1,2.5,"x",true,null,{"b":-3}],"e":{},"n":[]}')
    assert.are.equal("integer", math.type(t.a[1]))
    assert.are.equal("float", math.type(t.a[2]))
    assert.are.same({ 1, 2.5, "x", true, null, { b = -3 } }, t.a)
    assert.are.same({}, t.e)
    assert.are.same({}, t.n)
    assert.is_false(core.isview(t))
  end)

  it("decodes escapes and surrogate pairs", function()
    assert.are.equal("\u{1F600}\n\0/", core.json_decode('"\\ud83d\\ude00\\n\\u0000\\/"'))
  end)

  it("raises with the byte offset on invalid input", function()
    local cases = {
      { "[1,]", "json_decode: .* at byte 3$" },
      { '{"a":1,}', "json_decode: .* at byte 7$" },
      { "01", "leading zero in number at byte 0$" },
      { '"\\ud800"', "lone high surrogate .* at byte 1$" },
      { "[1] x", "trailing .* at byte 4$" },
      { "", "end of input .* at byte 0$" },
      { '"a\1"', "control character .* at byte 2$" },
      { "\"\xff\"", "UTF%-8 .* at byte 1$" },
      { string.rep("[", 65) .. string.rep("]", 65), "nesting deeper than 64 at byte 64$" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(core.json_decode, c[1])
      assert.is_false(ok)
      assert.matches(c[2], err)
    end
    assert.has_error(function() core.json_decode() end)
  end)
end)

describe("json_encode", function()
  local function round(x) return core.json_decode(core.json_encode(x)) end

  it("encodes scalars", function()
    assert.are.equal("null", core.json_encode(null))
    assert.are.equal("null", core.json_encode(nil))
    assert.are.equal("true", core.json_encode(true))
    assert.are.equal("false", core.json_encode(false))
    assert.are.equal("42", core.json_encode(42))
    assert.are.equal("-9223372036854775808", core.json_encode(math.mininteger))
    assert.are.equal("0.1", core.json_encode(0.1))
    assert.are.equal("3.0", core.json_encode(3.0))
    assert.are.equal("1e+300", core.json_encode(1e300))
    assert.are.equal('"a\\"b\\\\c\\n\\u0001\u{e9}"', core.json_encode('a"b\\c\n\1\u{e9}'))
  end)

  it("encodes arrays and objects", function()
    assert.are.equal("[1,2,3]", core.json_encode({ 1, 2, 3 }))
    assert.are.equal("{}", core.json_encode({}))
    assert.are.equal('{"a":1}', core.json_encode({ a = 1 }))
    assert.are.equal("[1,null,3]", core.json_encode({ 1, null, 3 }))
    assert.are.equal([=[[{},{"k":[true]}]]=], core.json_encode({ {}, { k = { true } } }))
  end)

  it("round-trips values", function()
    local t = { s = "x\0y\u{1F600}", i = math.maxinteger, f = 0.1 + 0.2, list = { 1, 2.5, null, "z" },
      nested = { a = { b = { c = {} } } } }
    local r = round(t)
    assert.are.equal(t.s, r.s)
    assert.are.equal(t.i, r.i)
    assert.are.equal("integer", math.type(r.i))
    assert.are.equal(t.f, r.f)
    assert.are.equal("float", math.type(r.list[2]))
    assert.are.same(t.list, r.list)
    assert.are.same({ a = { b = { c = {} } } }, r.nested)
  end)

  it("re-emits views verbatim", function()
    local v = core.json_view('{"a" : [1, 2.50, "\\u00e9"], "b":{}}')
    assert.are.equal('[1, 2.50, "\\u00e9"]', core.json_encode(v.a))
    assert.are.equal('{"x":[1, 2.50, "\\u00e9"]}', core.json_encode({ x = v.a }))
    assert.are.same(core.totable(v), core.json_decode(core.json_encode(v)))
  end)

  it("raises naming the path of unsupported values", function()
    local function err(x)
      local ok, e = pcall(core.json_encode, x)
      assert.is_false(ok)
      return e
    end
    assert.matches("json_encode: unsupported value %(function%) at %.condition%.x$",
      err({ condition = { x = print } }))
    assert.matches("unsupported value %(function%) at %[2%]$", err({ 1, print }))
    assert.matches("unsupported number %(nan%) at %.a%[1%]$", err({ a = { 0 / 0 } }))
    assert.matches("unsupported number %(inf%) at %(root%)$", err(math.huge))
    assert.matches("unsupported value %(thread%)", err({ co = coroutine.create(print) }))
    assert.matches("unsupported value %(userdata%)", err({ f = io.stdout }))
    assert.matches("non%-string key %(number%) in object at %.t$", err({ t = { [1] = 1, x = 2 } }))
    assert.matches("non%-string key %(boolean%) in object", err({ [true] = 1 }))
    assert.matches("non%-string key %(number%)", err({ [1.5] = 1 }))
    assert.matches("invalid UTF%-8 in string at %.s$", err({ s = "\xff" }))
    local cyc = {}
    cyc.self = { back = cyc }
    assert.matches("cycle %(table contains itself%) at %.self%.back$", err(cyc))
    local deep = {}
    local cur = deep
    for _ = 1, 64 do cur[1] = {}; cur = cur[1] end
    assert.matches("nesting deeper than 64", err(deep))
    local ok64 = {}
    cur = ok64
    for _ = 1, 63 do cur[1] = {}; cur = cur[1] end
    assert.are.equal(string.rep("[", 63) .. "{}" .. string.rep("]", 63), core.json_encode(ok64))
  end)

  it("treats sparse or mixed tables as objects (and rejects their numeric keys)", function()
    assert.has_error(function() core.json_encode({ [1] = 1, [3] = 3 }) end)
    assert.has_error(function() core.json_encode({ 1, 2, x = 3 }) end)
  end)

  it("grows its buffer for large output", function()
    local t = {}
    for i = 1, 5000 do t[i] = string.rep("x", 20) .. i end
    local s = core.json_encode(t)
    assert.are.same(t, core.json_decode(s))
  end)
end)
