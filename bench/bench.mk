# Benchmarks: C clients in $(BUILD)/bench/, the runner bench/run.lua.
# `make bench` runs everything (~15 min); `make bench BENCH_QUICK=1` is a short smoke run.
BENCH_BIN := $(BUILD)/bench/twbench

$(BUILD)/bench/%: bench/%.c bench/bench_util.h $(CORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Icsrc/core -Ibench $< -o $@ $(LDFLAGS_ALL) $(CORE_LIB) $(PKG_LIBS) -lm

.PHONY: bench-bin bench-webhook
bench-bin: $(BENCH_BIN)

# the webhook receiver alone (bench/webhook_load.c): verified notifications/s, CPU each
bench-webhook: $(BUILD)/bench/webhook_load
	$(BUILD)/bench/webhook_load $(if $(BENCH_QUICK),--n 50000)

bench: module mock $(BENCH_BIN) $(BUILD)/bench/webhook_load
	$(BUILD)/bench/webhook_load $(if $(BENCH_QUICK),--n 50000) | tee $(BUILD)/bench/webhook.json
	BUILD=$(BUILD) BENCH_QUICK=$(BENCH_QUICK) TWCONDUIT_MOCK=$(CURDIR)/$(MOCK_BIN) \
	  LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" LUA_CPATH="$(CURDIR)/$(BUILD)/lib/?.so;;" \
	  $(LUA) bench/run.lua $(BENCH_ARGS)

# The chaos soak (scripts/soak): `make soak SOAK_S=120 [SOAK_SEED=n]`.
SOAK_S ?= 120
.PHONY: soak
soak: module mock
	TWCONDUIT_MOCK=$(CURDIR)/$(MOCK_BIN) LUA=$(LUA) \
	  LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" LUA_CPATH="$(CURDIR)/$(BUILD)/lib/?.so;;" \
	  $(LUA) scripts/soak --seconds $(SOAK_S) $(if $(SOAK_SEED),--seed $(SOAK_SEED))
