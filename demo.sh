#!/usr/bin/env bash
# The leash demo, one command on Debian 12: sudo ./demo.sh (or, as root, ./demo.sh).
# Installs what is missing, builds the examples and leash-stat, starts on 127.0.0.1 a Redis
# master with a replica and three sentinels, a PostgreSQL primary with a hot standby, and
# nginx (tests/servers.sh), then runs the orders service while its servers change under it:
# a Redis SENTINEL FAILOVER, then a PostgreSQL switchover (primary stopped, standby
# promoted), watched from outside with leash-stat and plotted at the end (jobs per 100 ms);
# then leak-hunt in both modes. It stops the servers it started, even on failure or Ctrl-C
# (servers that were running before are brought back to their first topology and left
# running). Nothing is left behind but the build folder build-demo/, which keeps the run's
# Prometheus metrics and timeline.
# Environment: DEMO_JOBS (default 4000), DEMO_RATE (jobs arriving a second, default 300),
# DEMO_WORKERS (default 8).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=$(pwd)
jobs=${DEMO_JOBS:-4000}
rate=${DEMO_RATE:-300}
workers=${DEMO_WORKERS:-8}
build=$root/build-demo
servers=(sentinel pgha nginx)
export LEASH_SERVERS_DIR=${LEASH_SERVERS_DIR:-/tmp/leash-servers}
# The demo shows both modes itself, and its dumps belong on the screen.
unset LEASH_STRICT LEASH_STATS_FILE LEASH_STATS_SIGNAL LEASH_METRICS_FILE LEASH_STATS_SHM

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: run it as root (sudo ./demo.sh): it installs packages with apt-get and" \
        "runs each server as its own system user." >&2
    exit 1
fi
case "$jobs$rate$workers" in *[!0-9]*)
    echo "demo.sh: DEMO_JOBS, DEMO_RATE and DEMO_WORKERS are whole numbers" >&2
    exit 2 ;;
esac
if [ "$rate" -lt 1 ] || [ "$workers" -lt 1 ] || [ $((jobs * 10)) -lt $((rate * 110)) ]; then
    echo "demo.sh: the jobs must keep arriving for the two acts: DEMO_JOBS / DEMO_RATE of 11 s" \
        "or more (DEMO_JOBS=$jobs, DEMO_RATE=$rate)" >&2
    exit 2
fi

# The servers of tests/servers.sh: the passwords are the test servers' own, never printed.
sentinel_url='redis-sentinel://:leash-ha-pw@127.0.0.1:16393,127.0.0.1:16394,127.0.0.1:16395/0'
sentinel_url+='?sentinel_password=leash-sentinel-pw#leash-master'
pg_hosts='postgresql://leash:leash-pg-pw@127.0.0.1:15533,127.0.0.1:15534/leash'
write_url="$pg_hosts?target_session_attrs=read-write"
read_url="$pg_hosts?target_session_attrs=prefer-standby"
pgha_sh=$root/tests/servers.d/pgha.sh

bold='' plain=''
if [ -t 1 ]; then bold=$(tput bold 2>/dev/null || true) plain=$(tput sgr0 2>/dev/null || true); fi
step=0
say() {
    step=$((step + 1))
    printf '\n%s==> [%d/9] %s%s\n' "$bold" "$step" "$*" "$plain"
}
note() { printf '    %s\n' "$*"; }

tmp=$(mktemp -d /tmp/leash-demo.XXXXXX)
started=()  # the servers this run started: stopped again on exit
changed=()  # servers that ran before and whose topology the demo changed: restored on exit
made_dir=0  # the demo made $LEASH_SERVERS_DIR: removed on exit
[ -d "$LEASH_SERVERS_DIR" ] || made_dir=1
orders_pid=
cleanup() {
    local rc=$?
    trap - EXIT
    trap '' INT TERM # a second Ctrl-C must not leave the servers half stopped
    if [ -n "$orders_pid" ] && kill -TERM "$orders_pid" 2>/dev/null; then
        for _ in $(seq 30); do kill -0 "$orders_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$orders_pid" 2>/dev/null || true
    fi
    if [ ${#started[@]} -gt 0 ]; then
        printf '\n%s==> Stopping the servers this demo started: %s%s\n' "$bold" "${started[*]}" \
            "$plain"
        tests/servers.sh stop "${started[@]}" >/dev/null 2>&1 || true
        for s in "${started[@]}"; do rm -rf "${LEASH_SERVERS_DIR:?}/$s"; done
        [ $made_dir = 1 ] && rm -rf "$LEASH_SERVERS_DIR"
    fi
    if [ ${#changed[@]} -gt 0 ]; then
        printf '\n%s==> Bringing back the first topology of %s (they ran before the demo)%s\n' \
            "$bold" "${changed[*]}" "$plain"
        tests/servers.sh start "${changed[@]}" >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
    # Run through sudo: give the build folder back to the user who owns the clone.
    if [ -n "${SUDO_UID:-}" ] && [ -d "$build" ]; then
        chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$build" 2>/dev/null || true
    fi
    if [ $rc = 0 ]; then
        printf '\n%sDemo finished in %d s.%s Run every test suite with: ./tests/run.sh\n' "$bold" \
            "$SECONDS" "$plain"
    else
        printf '\n%sdemo.sh: stopped (status %d); cleaned up.%s\n' "$bold" "$rc" "$plain" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ulimit -c 0 # leak-hunt aborts on purpose in strict mode: no core file

now_ms() { date +%s%3N; }
# Seconds since the orders run started, one decimal: "4.0 s".
at() { awk -v a="$1" -v b="$t0" 'BEGIN { printf "%.1f s", (a - b) / 1000 }'; }
secs() { awk -v d="$1" 'BEGIN { printf "%.2f s", d / 1000 }'; }
sleep_until() { # $1: seconds after the start of the run
    local wait
    wait=$(awk -v due="$1" -v a="$(now_ms)" -v b="$t0" 'BEGIN { w = due - (a - b) / 1000;
        printf "%.3f", (w > 0 ? w : 0) }')
    sleep "$wait"
}
scli() { REDISCLI_AUTH=leash-sentinel-pw redis-cli --no-auth-warning -p 16393 "$@"; }
master_port() { scli SENTINEL get-master-addr-by-name leash-master | tail -n 1; }
mcli() { REDISCLI_AUTH=leash-ha-pw redis-cli --no-auth-warning -p "$(master_port)" "$@"; }
ha_sql() {
    PGPASSWORD=leash-pg-pw psql -X -q -A -t -d "host=127.0.0.1,127.0.0.1 port=15533,15534 \
user=leash dbname=leash target_session_attrs=read-write" -c "$1"
}
# Waits up to $2 s for an event row matching $1 in the timeline; prints its time (unix ms).
await_event() {
    local row
    for _ in $(seq $(($2 * 20))); do
        row=$(grep -m 1 -F -- "$1" "$timeline" 2>/dev/null || true)
        [ -n "$row" ] && { echo "${row%%,*}"; return 0; }
        kill -0 "$orders_pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "demo.sh: orders never said '$1' (within $2 s)" >&2
    return 1
}
# leash-stat PID, from outside the process, cut to the lines about the named pools: where
# their connections are, why they closed, whether the pool is down.
stat_view() {
    local label=$1
    shift
    printf '    %s$ leash-stat %d%s   %s\n' "$bold" "$orders_pid" "$plain" "$label"
    "$bin/../tools/leash-stat/leash-stat" "$orders_pid" 2>&1 |
        awk -v want=" $* " '
            /^=== leash stats/ { print; next }
            /^pool "/ { name = $2; gsub(/"/, "", name); show = index(want, " " name " ") > 0 }
            show && (/^pool "/ || /^  (connections|DOWN|on servers|opened|destroyed by reason|fast failures)/)
            ' | sed 's/^/      /'
}
# What orders logged (stderr) since line $1: the first $2 lines, then how many more.
log_since() {
    local from=$1 max=$2 total
    total=$(wc -l <"$tmp/orders.err")
    [ "$total" -gt "$from" ] || return 0
    sed -n "$((from + 1)),$((from + max))p" "$tmp/orders.err" |
        awk '{ print "      log: " (length($0) > 110 ? substr($0, 1, 107) "..." : $0) }'
    [ $((total - from)) -le "$max" ] || note "  (and $((total - from - max)) more lines)"
}

say "Installing the Debian packages that are missing (tests/deps.sh)"
if ! bash tests/deps.sh; then
    # tests/deps.sh installs for every test suite too; go on if what the demo uses is there.
    need=(build-essential meson ninja-build pkg-config libhiredis-dev libpq-dev
        libcurl4-openssl-dev redis-server postgresql nginx-light prometheus)
    for p in "${need[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            { echo "demo.sh: $p is missing and could not be installed" >&2; exit 1; }
    done
    note "(some packages of the test suites could not be installed; the demo has all it needs)"
fi

say "Building the library, the examples and leash-stat in build-demo/ (meson, ninja)"
if [ ! -f "$build/build.ninja" ]; then
    meson setup "$build" --buildtype=debugoptimized >"$tmp/setup.log" 2>&1 ||
        { cat "$tmp/setup.log" >&2; exit 1; }
fi
if ! meson compile -C "$build" orders orders-seed leak-hunt leash-stat >"$tmp/compile.log" 2>&1
then
    cat "$tmp/compile.log" >&2
    exit 1
fi
note "built: $(tail -n 1 "$tmp/compile.log")"
bin=$build/examples
timeline=$build/demo-timeline.csv
metrics=$build/demo-metrics.prom
rm -f "$timeline" "$metrics"

say "Starting the servers on 127.0.0.1 (tests/servers.sh start ${servers[*]})"
# Whether anything of server $1 runs (in its first topology or not: "status" says only the
# first), by the ports it listens on.
running() {
    local ports p
    case $1 in
    sentinel) ports="16391 16392 16393 16394 16395" ;;
    pgha) ports="15533 15534" ;;
    *) ports=18080 ;;
    esac
    for p in $ports; do
        [ -n "$(ss -Hltn "sport = :$p" 2>/dev/null)" ] && return 0
    done
    return 1
}
for s in "${servers[@]}"; do
    if running "$s"; then
        if [ "$s" = nginx ]; then
            note "$s: already running (left running)"
        else
            note "$s: already running (brought back to its first topology at the end, left running)"
            changed+=("$s")
        fi
    else
        started+=("$s")
    fi
done
tests/servers.sh start "${servers[@]}"
note "Redis: master :16391, its replica :16392, three sentinels :16393-16395 (\"leash-master\")"
note "PostgreSQL: primary :15533, hot standby :15534 (streaming replication); nginx :18080"

say "Running orders: $workers workers, $jobs jobs arriving at $rate a second"
"$bin/orders-seed" -n "$jobs" -q --redis "$sentinel_url" --pg "$write_url" | sed 's/^/    /'
note "each job: BRPOP the id (Redis), load the order (PostgreSQL, from the standby when it"
note "can), GET its price (HTTP), write the result in a transaction (the primary), cache the"
note "total (Redis). Its pools: redis (through the sentinels), pg (read-write over both"
note "PostgreSQL servers), pg-read (prefer-standby), pricing. A job that fails because a"
note "server went away is run again by the example's retry policy (not by leash)."
t0=$(now_ms)
"$bin/orders" -w "$workers" -q --drain --rate "$rate" --redis "$sentinel_url" \
    --pg "$write_url" --pg-read "$read_url" --timeline "$timeline" --metrics "$metrics" \
    >"$tmp/orders.out" 2>"$tmp/orders.err" &
orders_pid=$!
await_event 'redis on ' 10 >/dev/null
sleep_until 2.5
note "t=$(at "$(now_ms)")  the quiet part: every pool on its first server"
stat_view "(before)" redis pg pg-read pricing

say "Act 1: a Redis failover while jobs keep coming (SENTINEL FAILOVER leash-master)"
sleep_until 3.5
log_mark=$(wc -l <"$tmp/orders.err")
t_redis=$(now_ms)
note "t=$(at "$t_redis")  $(scli SENTINEL FAILOVER leash-master | head -n 1): the sentinels promote the replica :16392"
sleep 0.5
note "t=$(at "$(now_ms)")  the sentinels have not named the new master yet: the pool is still on :16391"
stat_view "(during)" redis
t_redis_ok=$(await_event 'redis now on ' 15)
note "t=$(at "$t_redis_ok")  the watcher saw +switch-master and retired every connection:"
log_since "$log_mark" 3
sleep 0.6 # the stats page is refreshed every 0.5 s
stat_view "(after)" redis

say "Act 2: a PostgreSQL switchover (the primary stops, the standby is promoted)"
sleep_until 7.5
log_mark=$(wc -l <"$tmp/orders.err")
t_pg=$(now_ms)
bash -c 'source "$1" && pgha_down a' pgha "$pgha_sh"
note "t=$(at "$t_pg")  primary :15533 stopped (pg_ctl stop -m fast: its last WAL reaches the standby)"
sleep 0.6
note "t=$(at "$(now_ms)")  no server takes writes: the pg pool is down, its acquires fail at once"
stat_view "(during)" pg pg-read
t_promote=$(now_ms)
bash "$pgha_sh" promote b
note "t=$(at "$t_promote")  standby :15534 promoted (pg_ctl promote)"
t_pg_ok=$(await_event 'pg now on ' 15)
note "t=$(at "$t_pg_ok")  the first commit on the new primary; what orders logged meanwhile:"
log_since "$log_mark" 3
sleep 0.6
stat_view "(after)" pg pg-read

say "The whole run: jobs handled per 100 ms, the failovers marked, and the numbers"
note "(the last jobs arrive at t=$(awk -v j="$jobs" -v r="$rate" 'BEGIN { printf "%.1f s", j / r }'); orders stops once the queue is empty and nothing is left to do)"
status=0
wait "$orders_pid" || status=$?
orders_pid=
[ "$status" = 0 ] || { cat "$tmp/orders.err" "$tmp/orders.out" >&2;
    echo "demo.sh: orders exited with status $status" >&2; exit 1; }
# The sparkline: one column per 100 ms, 60 to a row; under it, the marks.
awk -F, -v marks="R=$t_redis r=$t_redis_ok P=$t_pg p=$t_pg_ok" '
    BEGIN { split("▁ ▂ ▃ ▄ ▅ ▆ ▇ █", bar, " ") }
    $1 ~ /^[0-9]+$/ && $2 != "" {
        n++; at[n] = $1; done[n] = $2; failed[n] = $4 + $5 + $6 + $7
        if ($2 > 0) busy[++b] = $2
    }
    END {
        if (!n) exit 1
        # Full height is twice the usual (median) count, so the steady load sits mid-height
        # and the catch-up after an outage stands out; higher counts are drawn full.
        for (i = 2; i <= b; i++) { v = busy[i]; for (j = i - 1; j >= 1 && busy[j] > v; j--)
            busy[j + 1] = busy[j]; busy[j + 1] = v }
        max = b ? 2 * busy[int((b + 1) / 2)] : 8
        if (max < 8) max = 8
        start = at[1] - 100
        k = split(marks, m, " ")
        for (i = 1; i <= k; i++) { split(m[i], kv, "="); col = int((kv[2] - start) / 100) + 1
            if (col < 1) col = 1; if (col > n) col = n; mark[col] = kv[1] }
        printf "    jobs handled per 100 ms (▁ to █: 1 to %d or more; blank: none; · failed requests)\n", max
        for (row = 0; (row * 60) < n; row++) {
            line = ""; under = ""
            for (c = row * 60 + 1; c <= n && c <= row * 60 + 60; c++) {
                h = done[c] >= max ? 8 : int((done[c] - 1) * 8 / max) + 1
                line = line (done[c] ? bar[h] : " ")
                under = under (c in mark ? mark[c] : failed[c] ? "·" : " ")
            }
            printf "    %3ds |%s|\n", row * 6, line
            if (under ~ /[^ ]/) printf "         %s\n", under
        }
        print "    R SENTINEL FAILOVER, r jobs on the new master; P primary stopped, p first commit on"
        print "    the promoted standby"
    }' "$timeline"
counts=$(sed -n 's/.*(priced \([0-9]*\), rejected \([0-9]*\), skipped \([0-9]*\), retried \([0-9]*\),.*/\1 \2 \3 \4/p' \
    "$tmp/orders.out")
read -r priced rejected duplicates retried_jobs <<<"$counts"
retries=$(sed -n 's/.*jobs retried, \([0-9]*\) attempts.*/\1/p' "$tmp/orders.out")
failures=$(sed -n 's/.*failed requests: \(.*\)$/\1/p' "$tmp/orders.out")
repaired=$(sed -n 's/.*sweep: [0-9]* jobs queued again, \([0-9]*\) writes redone.*/\1/p' \
    "$tmp/orders.out")
# Longest stretch of 100 ms ticks with no job handled, between two times (unix ms).
gap() {
    awk -F, -v from="$1" -v to="$2" '$1 ~ /^[0-9]+$/ && $2 != "" && $1 > from && $1 <= to + 100 {
        if ($2 == 0) { run += 100; if (run > max) max = run } else run = 0 }
        END { print max + 0 }' "$timeline"
}
# What PostgreSQL and Redis hold now: every order done once, every total cached.
left=$(ha_sql "SELECT count(*) FROM shop.orders WHERE status = 'new'")
events=$(ha_sql "SELECT count(*) || '/' || count(DISTINCT order_id) FROM shop.order_events")
ha_sql "SELECT id || ' ' || total_cents FROM shop.orders WHERE status = 'priced' ORDER BY id" \
    >"$tmp/want.txt"
# shellcheck disable=SC2046 # one key per word
mcli MGET $(sed 's/ .*//; s/^/orders:total:/' "$tmp/want.txt") >"$tmp/have.txt"
cached=$(paste -d' ' <(sed 's/ .*//' "$tmp/want.txt") "$tmp/have.txt" | cmp -s - "$tmp/want.txt" &&
    echo "every priced order's total cached" || echo "CACHE AND DATABASE DISAGREE")
promtool_says=$(promtool check metrics <"$metrics" >/dev/null 2>&1 && echo "promtool check metrics: OK" ||
    echo "promtool check metrics: FAILED")
once="each once"
[ "$((priced + rejected))" = "$jobs" ] || once="NOT each once (did a server lose writes?)"
echo
printf '    %-16s %s\n' \
    "jobs done:" "$((priced + rejected)) of $jobs, $once: $priced priced, $rejected rejected" \
    "" "(PostgreSQL: $left orders left new, $events events/orders; Redis: $cached)" \
    "duplicates:" "$duplicates deliveries skipped (popped from the old Redis master after its" \
    "" "replica took over: the new master still had them; the job found the order done)" \
    "jobs retried:" "$retried_jobs ($retries attempts, by the example's own policy; cache entries the" \
    "" "end-of-run sweep wrote again: $repaired)" \
    "failed requests:" "$failures" \
    "recovery:" "Redis: jobs on the new master $(secs $((t_redis_ok - t_redis))) after SENTINEL FAILOVER (when" \
    "" "the sentinels announced it); longest stretch with no job handled: $(secs "$(gap "$t_redis" "$t_pg")")" \
    "" "PostgreSQL: first commit on the promoted standby $(secs $((t_pg_ok - t_promote))) after the" \
    "" "promotion, $(secs $((t_pg_ok - t_pg))) after the primary stopped; no job handled for $(secs "$(gap "$t_pg" "$((t_pg_ok + 2000))")")" \
    "leaks:" "$(sed -n 's/^leaks: //p' "$tmp/orders.out") (orders exited 0)" \
    "metrics:" "build-demo/$(basename "$metrics") ($promtool_says)" \
    "timeline:" "build-demo/$(basename "$timeline") (the rows plotted above)"
echo
note "orders' own summary (pool stats: acquired, waits, holds, connections made, leaks):"
sed -n '/^orders: [0-9]* jobs in/,$p' "$tmp/orders.out" | sed 's/^/    /'
if [ "$left" != 0 ] || [ "$events" != "$jobs/$jobs" ] || [ "$((priced + rejected))" != "$jobs" ] ||
    [ "${cached#every}" = "$cached" ]; then
    echo "demo.sh: the orders were not all done exactly once" >&2
    exit 1
fi

say "leak-hunt, default mode: a handle leaks on an error path; the guard takes it back"
note "price_order() in examples/leak-hunt/leak-hunt.c returns without releasing its PostgreSQL"
note "handle for orders with quantity 0 (1 in 29). The pool has 4 connections; watch"
note "leaks_reclaimed grow in the dumps while every other order still gets done."
"$bin/orders-seed" -n "$jobs" -q --redis "$sentinel_url" --pg "$write_url" >/dev/null
# Only the PostgreSQL pool's part of each dump, the warning and the summary.
"$bin/leak-hunt" -w 4 --pg-pool 4 --drain --dump-every 1 -q --redis "$sentinel_url" \
    --pg "$write_url" 2>&1 |
    awk '/^=== /   { print; pg = 0; next }
         /^pool "/ { pg = ($0 ~ /^pool "pg"/) }
         pg || /^leash: warning/ || /jobs in/ || /^leaks:/ || /^  pool / || /^  pg / { print }'
note "leak-hunt finished every job: more leaks than the pool has connections, and no hang,"
note "because each guard took its handle back (without leash: 4 leaks, then every worker waits)."

say "leak-hunt, strict mode (LEASH_STRICT=1): the first leak aborts, naming the borrow site"
"$bin/orders-seed" -n 200 --redis "$sentinel_url" --pg "$write_url" >/dev/null
status=0
# (In a subshell, so that the shell's own "Aborted" line does not clutter the screen.)
(LEASH_STRICT=1 "$bin/leak-hunt" -w 2 --drain -q --redis "$sentinel_url" --pg "$write_url" \
    >"$tmp/strict.out" 2>"$tmp/strict.err"
    exit $?) 2>/dev/null || status=$?
sed 's/^/    /' "$tmp/strict.err"
if [ "$status" = 134 ] && grep -q 'leak-hunt.c:' "$tmp/strict.err"; then
    note "aborted (SIGABRT) at the first leak: in a test suite, this is the failing test."
else
    echo "demo.sh: expected leak-hunt to abort in strict mode; status $status" >&2
    exit 1
fi
