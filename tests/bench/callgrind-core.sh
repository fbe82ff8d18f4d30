#!/usr/bin/env bash
# Instructions per uncontended acquire+release cycle, counted with callgrind (deterministic,
# unlike time on a shared machine): leash, apr_reslist, a bare mutex pair, and the pair with
# the two clock reads that timing a borrow exactly takes ("timed").
#   tests/bench/callgrind-core.sh [BUILD_DIR]     (default: build)
set -euo pipefail
bin=${1:-build}/tests/bench/bench-core
[ -x "$bin" ] || { echo "callgrind-core: build first ($bin missing)" >&2; exit 2; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
count() { # impl n -> total instructions inside cycles_<impl>
  valgrind --tool=callgrind --callgrind-out-file="$tmp/$1.$2" --collect-atstart=no \
    --toggle-collect="cycles_$1" "$bin" --cycles "$1" "$2" >/dev/null 2>&1
  awk '/^(summary|totals):/ {print $2; exit}' "$tmp/$1.$2"
}
for impl in leash apr mutex timed; do
  a=$(count "$impl" 100000); b=$(count "$impl" 200000)
  echo "$impl: $(( (b - a) / 100000 )) instructions per cycle"
done
