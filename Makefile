# twconduit build. `make` builds the Lua module, the emulator and the C tests;
# `make test` runs every test; `make asan` / `make test-asan` do the same under
# AddressSanitizer + UBSan in build-asan/; `make bench` runs the benchmarks.

CC       ?= gcc
CXX      ?= g++
BUILD    ?= build
LUA      ?= lua5.4
LUA_INCDIR ?= /usr/include/lua5.4
PKGS     := libwebsockets libuv libcjson libcurl openssl hiredis
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

OPT      ?= -O2
WARN     := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
CFLAGS_ALL := -std=c11 -D_GNU_SOURCE $(OPT) -g -fPIC $(WARN) $(PKG_CFLAGS) $(SANFLAGS) $(EXTRA_CFLAGS)
LDFLAGS_ALL := $(SANFLAGS) $(EXTRA_LDFLAGS)
LIBFLAG  ?= -shared

CORE_SRC := $(wildcard csrc/core/*.c)
BIND_SRC := $(wildcard csrc/binding/*.c)
MOCK_SRC := $(wildcard csrc/mock/*.c)
CTEST_SRC := $(wildcard tests/c/test_*.c)

CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/obj/%.o)
BIND_OBJ := $(BIND_SRC:%.c=$(BUILD)/obj/%.o)
MOCK_OBJ := $(MOCK_SRC:%.c=$(BUILD)/obj/%.o)

MODULE   := $(BUILD)/lib/twconduit/core.so
MOCK_BIN := $(BUILD)/bin/twconduit-mock
CTESTS   := $(CTEST_SRC:tests/c/%.c=$(BUILD)/tests/%)
CORE_LIB := $(BUILD)/libtwconduit.a

.PHONY: all module mock ctests test asan test-asan bench clean install lint rock valgrind example host-example
all: module mock ctests $(BUILD)/bin/twconduit-host-example

module: $(MODULE)
mock: $(MOCK_BIN)
ctests: $(CTESTS)

$(BUILD)/obj/csrc/core/%.o: csrc/core/%.c $(wildcard csrc/core/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -fvisibility=hidden -DTW_API= -Icsrc/core -c $< -o $@

$(BUILD)/obj/csrc/binding/%.o: csrc/binding/%.c $(wildcard csrc/binding/*.h csrc/core/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -fvisibility=hidden -Icsrc/core -Icsrc/binding -I$(LUA_INCDIR) -c $< -o $@

$(BUILD)/obj/csrc/mock/%.o: csrc/mock/%.c $(wildcard csrc/mock/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Icsrc/mock -c $< -o $@

$(CORE_LIB): $(CORE_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

# Never link liblua into the module: the interpreter has Lua built in.
$(MODULE): $(CORE_OBJ) $(BIND_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) $(LDFLAGS_ALL) -o $@ $^ $(PKG_LIBS) -lm

$(MOCK_BIN): $(MOCK_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PKG_LIBS) -lm

$(BUILD)/tests/%: tests/c/%.c $(CORE_LIB) $(wildcard tests/c/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Icsrc/core -Itests/c $< -o $@ $(LDFLAGS_ALL) $(CORE_LIB) $(PKG_LIBS) -lm

# The emulator's own tests and the benchmarks keep their rules beside their code.
-include csrc/mock/mock.mk
-include bench/bench.mk
-include fuzz/fuzz.mk

test: all $(EXTRA_TEST_DEPS)
	BUILD=$(BUILD) LUA=$(LUA) bash scripts/run-tests.sh

ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
asan:
	$(MAKE) BUILD=build-asan OPT=-O1 SANFLAGS="$(ASAN_FLAGS)" all
test-asan:
	$(MAKE) BUILD=build-asan OPT=-O1 SANFLAGS="$(ASAN_FLAGS)" SANITIZED=1 test

# the example bot: against the bundled emulator unless TWITCH_CLIENT_ID is set
LUA_ENV = LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" LUA_CPATH="$(CURDIR)/$(BUILD)/lib/?.so;;" \
          TWCONDUIT_MOCK="$(CURDIR)/$(MOCK_BIN)"
example: module mock
	$(LUA_ENV) $(LUA) examples/bot.lua

# a C program hosting Lua and twconduit in its own poll loop
HOST_BIN := $(BUILD)/bin/twconduit-host-example
$(HOST_BIN): examples/host.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -I$(LUA_INCDIR) $< -o $@ $(LDFLAGS_ALL) -llua5.4 -lm
host-example: $(HOST_BIN) module mock
	$(LUA_ENV) $(HOST_BIN) examples/host_script.lua

# under valgrind, no leaks and no errors: the core driven from C (no Lua), then the
# emulator's own tests with the emulator under valgrind
valgrind: $(BUILD)/tests/test_core $(BUILD)/tests/test_wsession mock mock-tests $(BUILD)/tests/test_webhook
	TWCONDUIT_MOCK=$(MOCK_BIN) valgrind --error-exitcode=3 --leak-check=full --errors-for-leak-kinds=definite,indirect \
	  --show-leak-kinds=definite,indirect -q $(BUILD)/tests/test_core
	TWCONDUIT_MOCK=$(MOCK_BIN) valgrind --error-exitcode=3 --leak-check=full --errors-for-leak-kinds=definite,indirect \
	  --show-leak-kinds=definite,indirect -q $(BUILD)/tests/test_wsession
	TWCONDUIT_MOCK=$(MOCK_BIN) valgrind --error-exitcode=3 --leak-check=full --errors-for-leak-kinds=definite,indirect \
	  --show-leak-kinds=definite,indirect -q $(BUILD)/tests/test_webhook
	BUILD=$(BUILD) sh scripts/valgrind-mock.sh

rock: module mock

lint:
	luacheck --std lua54 lua spec examples bench scripts/docs-check

# luarocks (build.type = "make") calls `make` then `make install` with these set.
INST_LIBDIR ?= $(BUILD)/install/lib
INST_LUADIR ?= $(BUILD)/install/lua
INST_BINDIR ?= $(BUILD)/install/bin
install: rock
	mkdir -p $(INST_LIBDIR)/twconduit $(INST_LUADIR)/twconduit $(INST_BINDIR)
	cp $(MODULE) $(INST_LIBDIR)/twconduit/core.so
	cp -r lua/twconduit/. $(INST_LUADIR)/twconduit/
	cp $(MOCK_BIN) $(INST_BINDIR)/twconduit-mock

clean:
	rm -rf build build-asan build-rock build-fuzz
