# The emulator's own tests: tests/mock/mock_*.c -> $(BUILD)/tests/mock_*
MOCK_TEST_SRC := $(wildcard tests/mock/mock_*.c)
MOCK_TESTS := $(MOCK_TEST_SRC:tests/mock/%.c=$(BUILD)/tests/%)
MOCK_TEST_HDR := $(wildcard tests/mock/*.h)
MOCK_TEST_LIB := $(wildcard tests/mock/lib_*.c)

all: $(MOCK_TESTS)

.PHONY: mock-tests
mock-tests: $(MOCK_TESTS) $(MOCK_BIN)

$(BUILD)/tests/mock_%: tests/mock/mock_%.c $(MOCK_TEST_LIB) $(MOCK_TEST_HDR) $(MOCK_BIN)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Itests/mock $< $(MOCK_TEST_LIB) -o $@ $(LDFLAGS_ALL) $(PKG_LIBS) -lpthread -lm
