#!/usr/bin/env bash
# Runs every test (C tests of the core, the emulator's own tests, the examples, luacheck,
# scripts/docs-check, the busted specs)
# and ends with one line "N passed, N failed". Exit status is non-zero on any failure.
# Every runner speaks TAP ("ok N ..." / "not ok N ..."); a runner that exits non-zero
# without reporting a failure counts as one failure.
# Runners (each C test binary, each spec file, the examples, the checks) run TEST_JOBS at
# a time (default: 2 per core): most of them wait on the emulator's timers and rate
# limits, not on the CPU. Each one's output is printed whole, in the listed order, with
# the seconds it took; TEST_JOBS=1 runs them one after the other.
BUILD=${BUILD:-build}
LUA=${LUA:-lua5.4}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 2
pass=0
fail=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
JOBS=${TEST_JOBS:-$(( $(nproc 2>/dev/null || echo 1) * 2 ))}

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

names=()   # the runners, in the order their output is printed
n_printed=0

start() { # name, command...: runs it in the background once a slot is free
  local i=${#names[@]}
  names+=("$1"); shift
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n 2>/dev/null || true; flush; done
  ( s=$(date +%s.%N); "$@" >"$work/$i.log" 2>&1; rc=$?
    if [ "$rc" -ne 0 ] && grep -q "LeakSanitizer has encountered a fatal error" "$work/$i.log" &&
       ! grep -qE '^not ok [0-9]+' "$work/$i.log"; then
      # LeakSanitizer's own tracer failed at exit (not a leak, not a test): once more, the
      # first run's output kept as comments
      mv "$work/$i.log" "$work/$i.first"
      "$@" >"$work/$i.log" 2>&1; rc=$?
      { echo "# LeakSanitizer itself failed at the end of a first run, which was run again; that run said:"
        sed 's/^/#   /' "$work/$i.first"; cat "$work/$i.log"; } >"$work/$i.both"
      mv "$work/$i.both" "$work/$i.log"
    fi
    echo "$rc" >"$work/$i.rc.tmp"
    awk -v s="$s" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", e - s }' >"$work/$i.time"
    mv "$work/$i.rc.tmp" "$work/$i.rc" ) &
  flush
}

flush() { # prints every finished runner whose predecessors are printed
  local i name rc p f
  while [ "$n_printed" -lt "${#names[@]}" ] && [ -f "$work/$n_printed.rc" ]; do
    i=$n_printed; name=${names[$i]}
    rc=$(cat "$work/$i.rc")
    echo "# $name ($(cat "$work/$i.time") s)"
    cat "$work/$i.log"
    p=$(grep -cE '^ok [0-9]+' "$work/$i.log")
    f=$(grep -cE '^not ok [0-9]+' "$work/$i.log")
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
    n_printed=$((n_printed + 1))
  done
}

# the examples are part of the promise: the bot against the emulator, and the C host
examples() {
  n=0
  n=$((n + 1))
  if timeout 120 "$LUA" examples/bot.lua >"$work/example-bot.log" 2>&1; then
    echo "ok $n - examples/bot.lua runs against the emulator"
  else
    echo "not ok $n - examples/bot.lua runs against the emulator"; tail -5 "$work/example-bot.log"
  fi
  n=$((n + 1))
  if timeout 60 "$LUA" examples/autoscale_bot.lua >"$work/example-autoscale.log" 2>&1; then
    echo "ok $n - examples/autoscale_bot.lua scales up and back down against the emulator"
  else
    echo "not ok $n - examples/autoscale_bot.lua scales up and back down against the emulator"; tail -5 "$work/example-autoscale.log"
  fi
  n=$((n + 1))
  if [ -x "$BUILD/bin/twconduit-host-example" ] &&
     timeout 120 "$BUILD/bin/twconduit-host-example" examples/host_script.lua >"$work/example-host.log" 2>&1; then
    echo "ok $n - examples/host.c drives twconduit from its own poll loop"
  else
    echo "not ok $n - examples/host.c drives twconduit from its own poll loop"; tail -5 "$work/example-host.log"
  fi
}
lint() {
  if luacheck --std lua54 lua spec examples bench scripts/docs-check >"$work/luacheck.log" 2>&1; then
    echo "ok 1 - luacheck: no warnings in lua, spec, examples, bench, scripts/docs-check"
  else
    echo "not ok 1 - luacheck: no warnings in lua, spec, examples, bench, scripts/docs-check"; grep -v ' OK' "$work/luacheck.log" | tail -20
  fi
}
# the slowest runners start first, so that none of them finishes last alone
slow_c="test_review test_reconnect_unread"
for t in $slow_c; do
  [ -x "$BUILD/tests/$t" ] && start "$BUILD/tests/$t" timeout 300 "$BUILD/tests/$t"
done

# the busted specs, one process a file
if ls spec/*_spec.lua >/dev/null 2>&1; then
  if [ -n "$SANITIZED" ]; then
    preload=(env LD_PRELOAD="$ASAN_LIB $UBSAN_LIB")
  else
    preload=()
  fi
  slow="restart reconcile lifecycle queue autoscale operations webhook_queue status_page"
  specs=()
  for s in $slow; do [ -f "spec/${s}_spec.lua" ] && specs+=("spec/${s}_spec.lua"); done
  for f in spec/*_spec.lua; do
    case " $slow " in *" $(basename "$f" _spec.lua) "*) ;; *) specs+=("$f") ;; esac
  done
  for f in "${specs[@]}"; do
    start "busted $f" "${preload[@]}" timeout 600 "$LUA" /usr/bin/busted -o TAP "$f"
  done
fi


for t in "$BUILD"/tests/test_* "$BUILD"/tests/mock_*; do
  [ -x "$t" ] || continue
  case " $slow_c " in *" $(basename "$t") "*) continue ;; esac
  start "$t" timeout 300 "$t"
done

if [ -z "$SANITIZED" ]; then # the sanitized pass runs the same code through the specs
  start "examples" examples
  start "docs-check: docs/api.md and README.md against the code" "$LUA" scripts/docs-check --self-test
  if command -v luacheck >/dev/null; then
    start "luacheck" lint
  else
    echo "# luacheck is not installed (Debian: lua-check): lint skipped"
  fi
fi

while [ "$n_printed" -lt "${#names[@]}" ]; do
  wait -n 2>/dev/null || sleep 0.2
  flush
  if [ -z "$(jobs -rp)" ] && [ "$n_printed" -lt "${#names[@]}" ] && [ ! -f "$work/$n_printed.rc" ]; then
    : >>"$work/$n_printed.log" # (it may have died before it made its log: counted all the same)
    echo 125 >"$work/$n_printed.rc"; echo 0 >"$work/$n_printed.time" # its shell died: a failure
  fi
done

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
