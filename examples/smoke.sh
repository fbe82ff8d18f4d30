#!/usr/bin/env bash
# Smoke tests of the examples against the real servers of tests/servers.sh: each mode runs
# one program to the end and checks its exit status, its output and what it left in
# PostgreSQL and Redis. Usage: smoke.sh MODE BUILD_DIR SOURCE_DIR
#   example-redis | example-pg | example-http   the per-adapter examples
#   example-orders          orders (strict mode) on 300 jobs; SIGUSR1 dump; SIGTERM stop
#   example-orders-failover orders (strict mode) on 500 jobs over Redis Sentinel and a
#                           PostgreSQL primary + standby, through a SENTINEL FAILOVER and a
#                           switchover (primary stopped, standby promoted); every job done
#                           exactly once, watched from outside with leash-stat
#   example-leak-hunt       leak-hunt, default mode: guards reclaim, the service finishes
#   example-leak-hunt-strict  leak-hunt, LEASH_STRICT=1: aborts at the first leak, naming it
set -euo pipefail
mode=$1 bin=$2 src=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
servers=${LEASH_SERVERS_SH:-$here/../tests/servers.sh}
export LEASH_SERVERS_DIR=${LEASH_SERVERS_DIR:-/tmp/leash-servers} # as tests/servers.sh
leash_stat=${LEASH_STAT:-$bin/../tools/leash-stat/leash-stat}
tmp=$(mktemp -d)
pid=
restore=() # servers whose topology this test changed: started again (restored) at exit
cleanup() {
  if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  if [ ${#restore[@]} -gt 0 ]; then
    bash "$servers" start "${restore[@]}" >/dev/null 2>&1 || true
  fi
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
# Start what this mode needs and is not running (idempotent; "start" also brings a
# replicated pair back to its initial topology); other servers are left alone.
case $mode in
example-redis) need=(redis) ;;
example-pg) need=(pg) ;;
example-http) need=(nginx) ;;
example-orders-failover) need=(sentinel pgha nginx) ;;
*) need=(redis pg nginx) ;;
esac
bash "$servers" start "${need[@]}" >/dev/null 2>"$tmp/servers.err" ||
  bash "$servers" status "${need[@]}" >/dev/null ||
  { cat "$tmp/servers.err" >&2; fail "the test servers ${need[*]} are not running"; }

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

example-orders-failover)
  # Bad input tried: the servers under the service change role twice while it works (a
  # Redis master replaced by its replica, a PostgreSQL primary stopped and its standby
  # promoted); a request sent at the wrong moment fails, and the job must still be done
  # exactly once (not lost, not priced twice, its cache entry right), with nothing leaked.
  n=500 q=smoke:failover
  command -v promtool >/dev/null || fail "promtool is missing (tests/deps.sh installs prometheus)"
  pgha_sh=$(dirname "$servers")/servers.d/pgha.sh
  s_url='redis-sentinel://:leash-ha-pw@127.0.0.1:16393,127.0.0.1:16394,127.0.0.1:16395/0'
  s_url+='?sentinel_password=leash-sentinel-pw#leash-master'
  pg_hosts='postgresql://leash:leash-pg-pw@127.0.0.1:15533,127.0.0.1:15534/leash'
  w_url="$pg_hosts?target_session_attrs=read-write"
  r_url="$pg_hosts?target_session_attrs=prefer-standby"
  ha_sql() {
    PGPASSWORD=leash-pg-pw psql -X -q -A -t -d "host=127.0.0.1,127.0.0.1 port=15533,15534 \
user=leash dbname=leash target_session_attrs=read-write" -c "$1"
  }
  scli() { REDISCLI_AUTH=leash-sentinel-pw redis-cli --no-auth-warning -p 16393 "$@"; }
  master_port() { scli SENTINEL get-master-addr-by-name leash-master | tail -n 1; }
  mcli() { REDISCLI_AUTH=leash-ha-pw redis-cli --no-auth-warning -p "$(master_port)" "$@"; }
  # Waits up to $2 seconds for the timeline to have a line matching $1.
  await() {
    for _ in $(seq $(($2 * 10))); do
      grep -q -- "$1" "$tmp/timeline.csv" 2>/dev/null && return 0
      kill -0 $pid 2>/dev/null || fail "orders exited while waiting for '$1'"
      sleep 0.1
    done
    fail "no '$1' in the timeline after $2 s"
  }

  "$bin/orders-seed" -n $n --queue $q --redis "$s_url" --pg "$w_url" \
    >"$tmp/seed.out" 2>"$tmp/seed.err" || fail "seed failed"
  restore=(sentinel pgha)
  # 50 jobs a second: the run lasts 10 s; both failovers take 2-4 s.
  LEASH_STRICT=1 "$bin/orders" -w 4 --queue $q --redis "$s_url" --pg "$w_url" \
    --pg-read "$r_url" --drain --rate 50 --timeline "$tmp/timeline.csv" \
    --metrics "$tmp/metrics.prom" >"$tmp/run.out" 2>"$tmp/run.err" &
  pid=$!
  await 'redis on 127.0.0.1:16391' 10
  await 'pg on 127.0.0.1:15533' 10
  sleep 0.6 # the stats page is refreshed every 0.5 s
  "$leash_stat" $pid >"$tmp/stat-before.out" 2>"$tmp/stat-before.err" || fail "leash-stat $pid"
  for pool in redis pg pg-read pricing; do expect_in "$tmp/stat-before.out" "pool \"$pool\""; done
  expect_in "$tmp/stat-before.out" "(master 127.0.0.1:16391)"
  pass "leash-stat $pid shows the four pools from outside"

  [ "$(scli SENTINEL FAILOVER leash-master)" = OK ] || fail "SENTINEL FAILOVER refused"
  await 'redis now on 127.0.0.1:16392 (was 127.0.0.1:16391)' 20
  pass "Redis: jobs go to the new master 127.0.0.1:16392"
  # A switchover: the primary stopped cleanly (its last WAL reaches the standby), the
  # standby promoted.
  bash -c 'source "$1" && pgha_down a' pgha "$pgha_sh" || fail "could not stop the primary"
  bash "$pgha_sh" promote b || fail "could not promote the standby"
  await 'pg now on 127.0.0.1:15534 (was 127.0.0.1:15533)' 20
  pass "PostgreSQL: jobs commit on the promoted standby 127.0.0.1:15534"
  sleep 0.6
  "$leash_stat" $pid >"$tmp/stat-after.out" 2>"$tmp/stat-after.err" || fail "leash-stat $pid"
  expect_in "$tmp/stat-after.out" "(master 127.0.0.1:16392)"
  grep -A3 '^pool "pg" ' "$tmp/stat-after.out" | grep -q 'on servers: 127.0.0.1:15534' ||
    fail "leash-stat: the pg pool is not on 127.0.0.1:15534"
  pass "leash-stat shows the pools on the new servers"

  for _ in $(seq 600); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  kill -0 $pid 2>/dev/null && fail "orders still running 60 s after the failovers"
  st=0
  wait $pid || st=$?
  pid=
  [ $st = 0 ] || fail "orders exited with status $st"
  expect_in "$tmp/run.out" "leaks: 0 handles outstanding"
  expect_in "$tmp/run.out" ", failed 0)"
  pass "orders exited 0 in strict mode; leaks: 0"

  [ "$(ha_sql "SELECT count(*) FROM shop.orders WHERE status = 'new'")" = 0 ] ||
    fail "orders left unprocessed"
  [ "$(ha_sql "SELECT count(*) || ' ' || count(DISTINCT order_id) FROM shop.order_events")" = \
    "$n $n" ] || fail "not one event per order"
  [ "$(ha_sql "SELECT count(*) FROM shop.orders
               WHERE (status = 'rejected') <> (qty = 0 OR sku = 'SKU-404')")" = 0 ] ||
    fail "wrong verdicts"
  [ "$(ha_sql "SELECT count(*) FROM shop.orders WHERE status = 'priced' AND
               (unit_cents <> 100 * substr(sku, 5)::int + 99 OR total_cents <> unit_cents * qty)")" \
    = 0 ] || fail "wrong prices"
  # Each order counted done once, by the job that did it (a duplicate delivery is skipped).
  priced=$(ha_sql "SELECT count(*) FROM shop.orders WHERE status = 'priced'")
  rejected=$(ha_sql "SELECT count(*) FROM shop.orders WHERE status = 'rejected'")
  expect_in "$tmp/run.out" "(priced $priced, rejected $rejected,"
  # Every priced order's total in the cache, on the master the sentinels name now.
  ha_sql "SELECT id || ' ' || total_cents FROM shop.orders WHERE status = 'priced' ORDER BY id" \
    >"$tmp/want.txt"
  # shellcheck disable=SC2046 # one key per word
  mcli MGET $(sed 's/ .*//; s/^/orders:total:/' "$tmp/want.txt") >"$tmp/have.txt"
  paste -d' ' <(sed 's/ .*//' "$tmp/want.txt") "$tmp/have.txt" >"$tmp/cached.txt"
  cmp -s "$tmp/want.txt" "$tmp/cached.txt" ||
    fail "cache and database disagree: $(diff "$tmp/want.txt" "$tmp/cached.txt" | head -n 5)"
  [ "$(mcli LLEN $q)" = 0 ] || fail "queue not empty"
  pass "$n orders done exactly once: $priced priced and cached, $rejected rejected, one event each"

  expect_in "$tmp/metrics.prom" "orders_jobs_total{service=\"orders\",result=\"priced\"} $priced"
  expect_in "$tmp/metrics.prom" 'leash_pool_acquired_total{pool="pg-read"'
  promtool check metrics <"$tmp/metrics.prom" >"$tmp/promtool.out" 2>&1 ||
    fail "promtool rejects the metrics: $(cat "$tmp/promtool.out")"
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
