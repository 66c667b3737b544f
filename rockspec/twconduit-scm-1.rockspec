package = "twconduit"
version = "scm-1"
source = {
  url = "git+https://example.invalid/twconduit.git",
}
description = {
  summary = "Twitch EventSub conduits for Lua 5.4: a C core with websocket shards, Helix and an emulator",
  detailed = [[
twconduit runs Twitch EventSub conduits: it creates or reuses a conduit, runs its
websocket shards, keeps them assigned, and hands every notification to Lua handlers
as a read-only view decoded on access. It bundles twconduit-mock, a local Twitch
emulator with real conduit semantics.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4",
}
external_dependencies = {
  CURL = { library = "curl" },
  LWS = { header = "libwebsockets.h", library = "websockets" },
  UV = { header = "uv.h", library = "uv" },
  CJSON = { header = "cjson/cJSON.h", library = "cjson" },
  OPENSSL = { header = "openssl/ssl.h", library = "ssl" },
  HIREDIS = { header = "hiredis/hiredis.h", library = "hiredis" },
}
build = {
  type = "make",
  build_target = "rock",
  build_variables = {
    LUA_INCDIR = "$(LUA_INCDIR)",
    LIBFLAG = "$(LIBFLAG)",
    BUILD = "build-rock",
  },
  install_target = "install",
  install_variables = {
    BUILD = "build-rock",
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
    INST_BINDIR = "$(BINDIR)",
  },
}
