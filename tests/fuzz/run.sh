#!/usr/bin/env bash
# Builds leash's libFuzzer targets with clang (every source instrumented, ASan+UBSan) in
# their own build folder and runs each for a bounded time from the committed seed corpus in
# tests/fuzz/corpus/NAME. Fails on a crash, a sanitizer report, a leak, a timeout or an
# oracle failure (a fragment of a password in an output, a password split); the input that
# did it is left in BUILD/fuzz-artifacts/ (add it to the corpus once fixed).
# Usage: tests/fuzz/run.sh [SECONDS [TARGET...]]   (default 30 s each, every target)
# LEASH_FUZZ_BUILD=dir: the build folder (default build-fuzz).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
secs=${1:-30}
[ $# -gt 0 ] && shift
dir=${LEASH_FUZZ_BUILD:-build-fuzz}

opts=(-Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false
      -Dc_args=-fsanitize=fuzzer-no-link -Dtests=disabled -Dexamples=false -Dbench=false
      -Dbuildtype=debugoptimized -Dwerror=false) # -Werror is the other builds' job
if [ -d "$dir" ]; then CC=clang meson setup --reconfigure "$dir" "${opts[@]}" >/dev/null
else CC=clang meson setup "$dir" "${opts[@]}" >/dev/null; fi
if ! meson compile -C "$dir" >"$dir/fuzz-build.log" 2>&1; then
  grep -E 'error|FAILED' "$dir/fuzz-build.log" | head -20 >&2
  echo "fuzz: the build failed (the whole log: $dir/fuzz-build.log)" >&2
  exit 1
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for exe in "$dir"/tests/fuzz/fuzz-*; do
    [ -x "$exe" ] && [ -f "$exe" ] && targets+=("${exe##*/fuzz-}")
  done
  # leash-stat's page parser lives with its tool
  [ -x "$dir/tools/leash-stat/fuzz-page" ] && targets+=(page)
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:halt_on_error=1}
export UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1
mkdir -p "$dir/fuzz-artifacts"
failed=()
for t in "${targets[@]}"; do
  exe="$dir/tests/fuzz/fuzz-$t"
  corpus="tests/fuzz/corpus/$t"
  if [ "$t" = page ]; then
    exe="$dir/tools/leash-stat/fuzz-page"
    corpus="tools/leash-stat/fuzz-seeds"
  fi
  [ -x "$exe" ] || { echo "fuzz: no target $t" >&2; failed+=("$t"); continue; }
  # New inputs go to a scratch folder (listed first), never into the committed corpus.
  work=$(mktemp -d)
  log="$dir/fuzz-artifacts/$t.log"
  echo "fuzz: $t for ${secs}s"
  extra=()
  # Pools closed by the pg target stay allocated until its periodic leash_shutdown, so each
  # input would set off libFuzzer's per-input leak check (~20 ms): leaks are still checked
  # when the process ends.
  [ "$t" = pg-conninfo ] && extra+=(-detect_leaks=0)
  rc=0
  "$exe" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
    -artifact_prefix="$dir/fuzz-artifacts/$t-" -print_final_stats=1 "${extra[@]}" \
    "$work" "$corpus" >"$log" 2>&1 || rc=$?
  rm -rf "$work"
  grep -E '^stat::number_of_executed_units|^Done|^#[0-9]+ *DONE' "$log" | tail -2 | sed "s/^/fuzz: $t: /"
  if [ $rc -ne 0 ]; then
    echo "fuzz: $t FAILED (exit $rc); from $log:" >&2
    grep -a -A6 '^=== fuzz-' "$log" | head -8 >&2 || true
    grep -a -E '^(SUMMARY|==[0-9]+==ERROR)|runtime error|Test unit written' "$log" | head -5 >&2 || true
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${secs}s each, nothing found"
