#!/usr/bin/env bash
# Smoke tests of the examples against the real servers of tests/servers.sh: each mode runs
# one program to the end and checks its exit status, its output and what it left in
# PostgreSQL and Redis. Usage: smoke.sh MODE BUILD_DIR SOURCE_DIR
#   example-redis | example-pg | example-http   the per-adapter examples
#   example-orders          orders (strict mode) on 300 jobs; SIGUSR1 dump; SIGTERM stop
#   example-leak-hunt       leak-hunt, default mode: guards reclaim, the service finishes
#   example-leak-hunt-strict  leak-hunt, LEASH_STRICT=1: aborts at the first leak, naming it
set -euo pipefail
mode=$1 bin=$2 src=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
servers=${LEASH_SERVERS_SH:-$here/../tests/servers.sh}
tmp=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "FAIL ($mode): $*" >&2
  for f in "$tmp"/*.out "$tmp"/*.err; do
    [ -s "$f" ] && { echo "--- $(basename "$f") (last 40 lines)"; tail -n 40 "$f"; } >&2
  done
  exit 1
}
pass() { echo "ok: $*"; }

sql() { PGPASSWORD=leash-pg-pw psql -X -q -A -t -h 127.0.0.1 -p 15432 -U leash -d leash -c "$1"; }
rcli() { redis-cli -h 127.0.0.1 -p 16379 "$@"; }
expect_in() { grep -qF -- "$2" "$1" || fail "expected '$2' in $(basename "$1")"; }
# The line of the deliberate leak's borrow site in leak-hunt.c.
leak_site() { echo "leak-hunt.c:$(grep -n 'LEASH_GUARD leash_handle \*db = leash_acquire' \
  "$src/leak-hunt/leak-hunt.c" | head -n 1 | cut -d: -f1)"; }

ulimit -c 0 # the strict run aborts: no core file
# Start what is not running (idempotent); a start that fails is fine if all are up anyway.
bash "$servers" start >/dev/null 2>"$tmp/servers.err" || bash "$servers" status >/dev/null ||
  { cat "$tmp/servers.err" >&2; fail "the test servers are not running"; }

case $mode in
example-redis)
  "$bin/example-redis" >"$tmp/run.out" 2>"$tmp/run.err" || fail "exit status $?"
  expect_in "$tmp/run.out" "visits of home:"
  expect_in "$tmp/run.out" "pool cache: 3 borrows over 1 connection(s)"
  pass "three borrows reused one Redis connection" ;;

example-pg)
  "$bin/example-pg" >"$tmp/run.out" 2>"$tmp/run.err" || fail "exit status $?"
  expect_in "$tmp/run.out" "alice: 70"
  expect_in "$tmp/run.out" "bob: 30"
  [ "$(sql "SELECT sum(balance) FROM example_accounts")" = 100 ] || fail "money was lost"
  pass "the transfer committed" ;;

example-http)
  "$bin/example-http" >"$tmp/run.out" 2>"$tmp/run.err" || fail "exit status $?"
  [ "$(grep -c 'GET /small: HTTP 200, 13 bytes' "$tmp/run.out")" = 3 ] || fail "three GETs"
  expect_in "$tmp/run.out" "pool api: 3 requests over 1 connection(s)"
  pass "three requests over one kept-alive connection" ;;

example-orders)
  n=300 q=smoke:orders
  "$bin/orders-seed" -n $n --queue $q >"$tmp/seed.out" 2>"$tmp/seed.err" || fail "seed failed"
  expect_in "$tmp/seed.out" "$n orders seeded"
  # Strict mode: a leak, a dirty return or a misuse anywhere aborts the run.
  LEASH_STRICT=1 "$bin/orders" -w 4 --queue $q --metrics "$tmp/metrics.prom" \
    >"$tmp/run.out" 2>"$tmp/run.err" &
  pid=$!
  for _ in $(seq 100); do grep -q 'kill -USR1' "$tmp/run.out" && break; sleep 0.1; done
  expect_in "$tmp/run.out" "kill -USR1"
  for _ in $(seq 600); do
    [ "$(sql "SELECT count(*) FROM shop.orders WHERE status = 'new'")" = 0 ] && break
    sleep 0.1
  done
  kill -USR1 $pid
  sleep 0.5
  kill -0 $pid 2>/dev/null || fail "orders died on SIGUSR1"
  expect_in "$tmp/run.err" "pricing" # the dump names every pool
  kill -TERM $pid
  st=0
  wait $pid || st=$?
  pid=
  [ $st = 0 ] || fail "orders exited with status $st after SIGTERM"
  pass "SIGUSR1 dumped the pools, SIGTERM stopped the service with status 0"
  expect_in "$tmp/run.out" "leaks: 0 handles outstanding"

  [ "$(sql "SELECT count(*) FROM shop.orders WHERE status = 'new'")" = 0 ] ||
    fail "orders left unprocessed"
  # Rejected exactly when the quantity is 0 or the product has no price.
  [ "$(sql "SELECT count(*) FROM shop.orders
            WHERE (status = 'rejected') <> (qty = 0 OR sku = 'SKU-404')")" = 0 ] ||
    fail "wrong verdicts"
  # The price is the one the pricing service published (100 * n + 99 cents for SKU-n).
  [ "$(sql "SELECT count(*) FROM shop.orders WHERE status = 'priced' AND
            (unit_cents <> 100 * substr(sku, 5)::int + 99 OR total_cents <> unit_cents * qty)")" \
    = 0 ] || fail "wrong prices"
  [ "$(sql "SELECT count(*) FROM shop.order_events")" = $n ] || fail "one event per order"
  priced=$(sql "SELECT count(*) FROM shop.orders WHERE status = 'priced'")
  expect_in "$tmp/run.out" "$n jobs in"
  expect_in "$tmp/run.out" "priced $priced,"
  pass "$n orders in the database: $priced priced, the rest rejected, one event each"

  id=$(sql "SELECT min(id) FROM shop.orders WHERE status = 'priced'")
  [ "$(rcli GET "orders:total:$id")" = "$(sql "SELECT total_cents FROM shop.orders WHERE id = $id")" ] ||
    fail "cache and database disagree on order $id"
  ttl=$(rcli TTL "orders:total:$id")
  [ "$ttl" -gt 0 ] && [ "$ttl" -le 3600 ] || fail "cache TTL $ttl"
  [ "$(rcli LLEN $q)" = 0 ] || fail "queue not empty"
  pass "the cache holds the totals with a TTL; the queue is empty"

  expect_in "$tmp/metrics.prom" "orders_jobs_total{service=\"orders\",result=\"priced\"} $priced"
  if command -v promtool >/dev/null; then
    promtool check metrics <"$tmp/metrics.prom" >"$tmp/promtool.out" 2>&1 ||
      fail "promtool rejects the metrics: $(cat "$tmp/promtool.out")"
  fi
  pass "the Prometheus file is valid" ;;

example-leak-hunt)
  n=300 q=smoke:leak
  "$bin/orders-seed" -n $n --queue $q >"$tmp/seed.out" 2>"$tmp/seed.err" || fail "seed failed"
  st=0
  env -u LEASH_STRICT "$bin/leak-hunt" -w 4 --pg-pool 4 --drain --dump-every 1 -q --queue $q \
    >"$tmp/run.out" 2>"$tmp/run.err" || st=$?
  [ $st = 0 ] || fail "leak-hunt exited with status $st"
  leaked=$(sql "SELECT count(*) FROM shop.orders WHERE qty = 0")
  # More leaks than the pool has connections: without the guards the pool would be empty
  # and the run would hang; with them every other order gets done.
  [ "$leaked" -gt 4 ] || fail "the seed should make more bad orders than connections"
  [ "$(sql "SELECT count(*) FROM shop.orders WHERE status = 'new' AND qty > 0")" = 0 ] ||
    fail "good orders left unprocessed"
  expect_in "$tmp/run.out" "$leaked leaks caught by guards"
  expect_in "$tmp/run.out" "leaks: 0 handles outstanding"
  expect_in "$tmp/run.err" "$(leak_site)"
  pass "$leaked leaks reclaimed at $(leak_site); the service finished its $n jobs" ;;

example-leak-hunt-strict)
  n=100 q=smoke:leak
  "$bin/orders-seed" -n $n --queue $q >"$tmp/seed.out" 2>"$tmp/seed.err" || fail "seed failed"
  st=0
  LEASH_STRICT=1 timeout 60 "$bin/leak-hunt" -w 2 --drain -q --queue $q \
    >"$tmp/run.out" 2>"$tmp/run.err" || st=$?
  [ $st = 134 ] || fail "expected an abort (status 134), got $st"
  expect_in "$tmp/run.err" "$(leak_site)"
  expect_in "$tmp/run.err" "price_order"
  if grep -q 'leaks: ' "$tmp/run.out"; then fail "it ran to the end instead of aborting"; fi
  pass "strict mode aborted at the first leak, naming $(leak_site) in price_order" ;;

*) echo "smoke.sh: unknown mode $mode" >&2; exit 2 ;;
esac
