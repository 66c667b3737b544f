# Fuzzing (included from the Makefile).
#   make fuzz FUZZ_S=n [FUZZ_PAR=k] [FUZZ_ONLY=target]
# builds EVERY fuzz/*.c with clang's libFuzzer, AddressSanitizer and UBSan against all
# of the core's sources (build-fuzz/) and runs each target for FUZZ_S seconds on its
# committed corpus (fuzz/corpus/<target>/, read only: new finds go to
# build-fuzz/corpus/<target>/) with its dictionary (fuzz/<target>.dict), FUZZ_PAR at once.
# A crash leaves build-fuzz/crash-<target>-*; copied into fuzz/corpus/<target>/ it becomes a
# regression test: `make test` replays every corpus through the same targets built with
# the normal compiler and no libFuzzer ($(BUILD)/tests/test_fuzz_<target>).
FUZZ_S   ?= 60
FUZZ_PAR ?= 1
FUZZ_CC  ?= clang
FUZZ_DIR := build-fuzz
FUZZ_SRC := $(wildcard fuzz/*.c)
FUZZ_TARGETS := $(FUZZ_SRC:fuzz/%.c=%)
FUZZ_BINS := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/%)
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -O1 -g $(WARN) $(PKG_CFLAGS) -DTW_API= -Icsrc/core
FUZZ_CORE_OBJ := $(CORE_SRC:csrc/core/%.c=$(FUZZ_DIR)/obj/%.o)
FUZZ_REPLAY := $(FUZZ_TARGETS:%=$(BUILD)/tests/test_fuzz_%)

.PHONY: fuzz fuzz-build
.SECONDARY: $(FUZZ_CORE_OBJ)
all: $(FUZZ_REPLAY)

$(FUZZ_DIR)/obj/%.o: csrc/core/%.c $(wildcard csrc/core/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_DIR)/%: fuzz/%.c $(FUZZ_CORE_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer $< $(FUZZ_CORE_OBJ) -o $@ $(PKG_LIBS) -lm

fuzz-build: $(FUZZ_BINS)

fuzz: fuzz-build
	FUZZ_DIR=$(FUZZ_DIR) sh scripts/fuzz-run $(FUZZ_S) $(FUZZ_PAR) $(if $(FUZZ_ONLY),$(FUZZ_ONLY),$(FUZZ_TARGETS))

# the corpus replay: a plain driver (fuzz/replay/main.c) calls the target on every file
$(BUILD)/tests/test_fuzz_%: fuzz/%.c fuzz/replay/main.c $(CORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Icsrc/core -DFUZZ_NAME='"$*"' $< fuzz/replay/main.c -o $@ $(LDFLAGS_ALL) $(CORE_LIB) $(PKG_LIBS) -lm
