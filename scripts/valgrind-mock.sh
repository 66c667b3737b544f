#!/bin/sh
# Runs the emulator's own tests with the emulator under valgrind (memcheck): every
# emulator process must end with no error and no definite or indirect leak. Prints TAP
# like the other runners; exits non-zero on any failure.
BUILD=${BUILD:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/mock" <<WRAP
#!/bin/sh
exec valgrind --error-exitcode=3 --leak-check=full --errors-for-leak-kinds=definite,indirect \
  --show-leak-kinds=definite,indirect --log-file="$work/vg.%p.log" "$top/$BUILD/bin/twconduit-mock" "\$@"
WRAP
chmod +x "$work/mock"
n=0
fail=0
for t in mock_helix mock_ws mock_webhook mock_shards mock_http mock_users mock_types mock_subctl; do
  n=$((n + 1))
  if TWCONDUIT_MOCK="$work/mock" timeout 600 "$BUILD/tests/$t" >"$work/$t.out" 2>&1; then
    echo "ok $n - $t passes with the emulator under valgrind ($(grep -c '^ok' "$work/$t.out") checks)"
  else
    echo "not ok $n - $t passes with the emulator under valgrind"
    grep '^not ok' "$work/$t.out" | head -5
    fail=$((fail + 1))
  fi
done
n=$((n + 1))
logs=$(ls "$work"/vg.*.log 2>/dev/null | wc -l)
# each emulator must have exited on its own (a killed one writes no summary) with no
# error; definite and indirect leaks count as errors (--errors-for-leak-kinds)
bad=$(for f in "$work"/vg.*.log; do
  [ -f "$f" ] || continue
  grep -q "ERROR SUMMARY: 0 errors" "$f" || echo "$f"
done)
if [ "$logs" -gt 0 ] && [ -z "$bad" ]; then
  echo "ok $n - $logs emulator processes under valgrind: no errors, no leaks"
else
  echo "not ok $n - emulator processes under valgrind ($logs logs)"
  for f in $bad; do grep -v '^==[0-9]*== *$' "$f" | sed 's/^/# /' | tail -40; done
  fail=$((fail + 1))
fi
echo "1..$n"
[ "$fail" -eq 0 ]
