#!/usr/bin/env bash
# The one test command. On Debian 12 as root (or with sudo), from a fresh clone:
# installs what is missing, builds leash three ways, starts the real servers on loopback,
# runs every suite, stops the servers:
#   build-ci       plain build, -Werror: every suite (unit, integration)
#   build-asan     AddressSanitizer + UndefinedBehaviorSanitizer: every suite
#   build-tsan     ThreadSanitizer: the core's unit suite
#   build-fuzz     libFuzzer targets (tests/fuzz/run.sh), LEASH_FUZZ_SECONDS each (default 30)
# Usage: tests/run.sh [--quick]   (--quick: plain build only)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
quick=0; [ "${1:-}" = --quick ] && quick=1
start=$(date +%s)
say() { printf '\n=== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

say "dependencies"
tests/deps.sh

# The servers outlive nothing: stopped on every exit path.
trap 'say "stopping servers"; tests/servers.sh stop || true' EXIT
say "starting servers (redis, PostgreSQL, pgbouncer, nginx on 127.0.0.1)"
tests/servers.sh start

setup() { # dir, meson options...
  local dir=$1; shift
  if [ -d "$dir" ]; then meson setup --reconfigure "$dir" "$@" >/dev/null
  else meson setup "$dir" "$@" >/dev/null; fi
  meson compile -C "$dir"
}

results=()
run_suite() { # dir, meson test args...
  local dir=$1; shift
  local rc=0
  meson test -C "$dir" --print-errorlogs "$@" || rc=$?
  results+=("$dir")
  return $rc
}

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1:print_summary=1
export UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:die_after_fork=0
failed=0

say "plain build (-Werror)"
setup build-ci -Dwerror=true -Dbuildtype=debugoptimized
say "plain build: every suite"
run_suite build-ci || failed=1

if [ $quick = 0 ]; then
  say "ASan+UBSan build"
  setup build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false -Dbench=false
  say "ASan+UBSan: every suite"
  run_suite build-asan || failed=1

  say "TSan build (clang: its runtime also lets a forked child start threads)"
  CC=clang setup build-tsan -Dwerror=true -Db_sanitize=thread -Db_lundef=false -Dbench=false \
    -Dexamples=false
  say "TSan: the core's unit suite"
  run_suite build-tsan --suite unit || failed=1

  say "fuzzing: libFuzzer targets, ${LEASH_FUZZ_SECONDS:-30} s each (clang, ASan+UBSan)"
  tests/fuzz/run.sh "${LEASH_FUZZ_SECONDS:-30}" || failed=1
fi

# One closing line for people and for CI: every meson test of every build.
pass=0; fail=0
for d in "${results[@]}"; do
  p=$(grep -c '"result": "OK"' "$d/meson-logs/testlog.json" || true)
  f=$(grep -c '"result": "\(FAIL\|TIMEOUT\|ERROR\|UNEXPECTEDPASS\)"' "$d/meson-logs/testlog.json" || true)
  echo "$d: $p passed, $f failed"
  pass=$((pass + p)); fail=$((fail + f))
done
say "done"
echo "tests: $pass passed, $fail failed"
[ $failed = 0 ] && [ $fail = 0 ]
