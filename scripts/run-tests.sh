#!/bin/sh
# Runs every test (C tests of the core, the emulator's own tests, the examples, luacheck,
# scripts/docs-check, the busted specs)
# and ends with one line "N passed, N failed". Exit status is non-zero on any failure.
# Every runner speaks TAP ("ok N ..." / "not ok N ..."); a runner that exits non-zero
# without reporting a failure counts as one failure.
BUILD=${BUILD:-build}
LUA=${LUA:-lua5.4}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 2
pass=0
fail=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

export TWCONDUIT_MOCK="$top/$BUILD/bin/twconduit-mock"
export LUA_PATH="$top/lua/?.lua;$top/lua/?/init.lua;$top/spec/?.lua;;"
export LUA_CPATH="$top/$BUILD/lib/?.so;;"
export TWCONDUIT_TEST_OUT="$top/$BUILD/test-output" # screenshots and other artefacts of the specs
if [ -n "$SANITIZED" ]; then
  ASAN_LIB=$(${CC:-gcc} -print-file-name=libasan.so)
  UBSAN_LIB=$(${CC:-gcc} -print-file-name=libubsan.so)
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
  export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$top/scripts/lsan.supp:print_suppressions=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fi

run() { # name, command...
  name=$1; shift
  "$@" >"$log" 2>&1
  rc=$?
  cat "$log"
  p=$(grep -cE '^ok [0-9]+' "$log")
  f=$(grep -cE '^not ok [0-9]+' "$log")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "# $name exited with status $rc"
    f=1
  fi
  if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then
    echo "# $name ran no test"
    f=1
  fi
  pass=$((pass + p))
  fail=$((fail + f))
}

for t in "$BUILD"/tests/test_* "$BUILD"/tests/mock_*; do
  [ -x "$t" ] || continue
  echo "# $t"
  run "$t" timeout 300 "$t"
done

# the examples are part of the promise: the bot against the emulator, and the C host
examples() {
  n=0
  n=$((n + 1))
  if timeout 120 "$LUA" examples/bot.lua >/tmp/twconduit-example-bot.log 2>&1; then
    echo "ok $n - examples/bot.lua runs against the emulator"
  else
    echo "not ok $n - examples/bot.lua runs against the emulator"; tail -5 /tmp/twconduit-example-bot.log
  fi
  n=$((n + 1))
  if timeout 60 "$LUA" examples/autoscale_bot.lua >/tmp/twconduit-example-autoscale.log 2>&1; then
    echo "ok $n - examples/autoscale_bot.lua scales up and back down against the emulator"
  else
    echo "not ok $n - examples/autoscale_bot.lua scales up and back down against the emulator"; tail -5 /tmp/twconduit-example-autoscale.log
  fi
  n=$((n + 1))
  if [ -x "$BUILD/bin/twconduit-host-example" ] &&
     timeout 120 "$BUILD/bin/twconduit-host-example" examples/host_script.lua >/tmp/twconduit-example-host.log 2>&1; then
    echo "ok $n - examples/host.c drives twconduit from its own poll loop"
  else
    echo "not ok $n - examples/host.c drives twconduit from its own poll loop"; tail -5 /tmp/twconduit-example-host.log
  fi
}
lint() {
  if luacheck --std lua54 lua spec examples bench scripts/docs-check >/tmp/twconduit-luacheck.log 2>&1; then
    echo "ok 1 - luacheck: no warnings in lua, spec, examples, bench, scripts/docs-check"
  else
    echo "not ok 1 - luacheck: no warnings in lua, spec, examples, bench, scripts/docs-check"; grep -v ' OK' /tmp/twconduit-luacheck.log | tail -20
  fi
}
if [ -z "$SANITIZED" ]; then # the sanitized pass runs the same code through the specs
  echo "# examples"
  run examples examples
  echo "# docs-check: docs/api.md and README.md against the code"
  run docs-check "$LUA" scripts/docs-check --self-test
  if command -v luacheck >/dev/null; then
    echo "# luacheck"
    run luacheck lint
  else
    echo "# luacheck is not installed (Debian: lua-check): lint skipped"
  fi
fi

if ls spec/*_spec.lua >/dev/null 2>&1; then
  echo "# busted specs"
  if [ -n "$SANITIZED" ]; then
    run busted env LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" timeout 900 "$LUA" /usr/bin/busted -o TAP spec
  else
    run busted timeout 900 "$LUA" /usr/bin/busted -o TAP spec
  fi
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
