#!/usr/bin/env bash
# The leash demo, one command on Debian 12: sudo ./demo.sh (or, as root, ./demo.sh).
# Installs what is missing, builds the examples, starts Redis, PostgreSQL, pgbouncer and
# nginx on 127.0.0.1 (tests/servers.sh), runs the orders service on a few thousand jobs
# with a stats dump halfway through, then leak-hunt in both modes, and stops the servers
# it started. Nothing is left behind but the build folder build-demo/.
# Environment: DEMO_JOBS (default 4000), DEMO_WORKERS (default 8).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=$(pwd)
jobs=${DEMO_JOBS:-4000}
workers=${DEMO_WORKERS:-8}
build=$root/build-demo
servers=(redis pg pgbouncer nginx)
# The demo shows both modes itself, and its dumps belong on the screen.
unset LEASH_STRICT LEASH_STATS_FILE LEASH_STATS_SIGNAL

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: run it as root (sudo ./demo.sh): it installs packages with apt-get and" \
        "runs each server as its own system user." >&2
    exit 1
fi

bold= plain=
if [ -t 1 ]; then bold=$(tput bold 2>/dev/null || true) plain=$(tput sgr0 2>/dev/null || true); fi
step=0
say() {
    step=$((step + 1))
    printf '\n%s==> [%d/8] %s%s\n' "$bold" "$step" "$*" "$plain"
}
note() { printf '    %s\n' "$*"; }

tmp=$(mktemp -d /tmp/leash-demo.XXXXXX)
started=()  # the servers this run started, stopped again on exit
orders_pid=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$orders_pid" ] && kill -TERM "$orders_pid" 2>/dev/null; then
        for _ in $(seq 30); do kill -0 "$orders_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$orders_pid" 2>/dev/null || true
    fi
    if [ ${#started[@]} -gt 0 ]; then
        printf '\n%s==> Stopping the servers this demo started: %s%s\n' "$bold" "${started[*]}" \
            "$plain"
        if [ ${#started[@]} = ${#servers[@]} ]; then
            tests/servers.sh stop >/dev/null 2>&1 || true # all of them, and their folder
        else
            tests/servers.sh stop "${started[@]}" >/dev/null 2>&1 || true
        fi
    fi
    rm -rf "$tmp"
    # Run through sudo: give the build folder back to the user who owns the clone.
    if [ -n "${SUDO_UID:-}" ] && [ -d "$build" ]; then
        chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$build" 2>/dev/null || true
    fi
    if [ $rc = 0 ]; then
        printf '\n%sDemo finished.%s Run every test suite with: ./tests/run.sh\n' "$bold" "$plain"
    else
        printf '\n%sdemo.sh: stopped (status %d); cleaned up.%s\n' "$bold" "$rc" "$plain" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ulimit -c 0 # leak-hunt aborts on purpose in strict mode: no core file

say "Installing the Debian packages that are missing (tests/deps.sh)"
bash tests/deps.sh

say "Building the library and the examples in build-demo/ (meson, ninja)"
if [ ! -f "$build/build.ninja" ]; then
    meson setup "$build" --buildtype=debugoptimized >"$tmp/setup.log" 2>&1 ||
        { cat "$tmp/setup.log" >&2; exit 1; }
fi
if ! meson compile -C "$build" orders orders-seed leak-hunt >"$tmp/compile.log" 2>&1; then
    cat "$tmp/compile.log" >&2
    exit 1
fi
note "built: $(tail -n 1 "$tmp/compile.log")"
bin=$build/examples

say "Starting the servers on 127.0.0.1 (tests/servers.sh start)"
for s in "${servers[@]}"; do
    if tests/servers.sh status "$s" >/dev/null 2>&1; then
        note "$s: already running (left running at the end)"
    else
        started+=("$s")
    fi
done
tests/servers.sh start
note "Redis 127.0.0.1:16379, PostgreSQL 127.0.0.1:15432, pgbouncer :16432, nginx :18080"

say "Seeding $jobs orders in PostgreSQL and queueing their ids in Redis (orders-seed)"
"$bin/orders-seed" -n "$jobs"

say "Running orders: $workers workers on $jobs jobs; a SIGUSR1 halfway through dumps the pools"
note "each job: BRPOP the id (Redis), load the order (PostgreSQL), GET its price (HTTP),"
note "write the result in a transaction (PostgreSQL), cache the total with a TTL (Redis)"
"$bin/orders" -w "$workers" --drain --progress &
orders_pid=$!
half=$((jobs / 2)) dumped=0
while kill -0 "$orders_pid" 2>/dev/null; do
    left=$(redis-cli -p 16379 LLEN orders:jobs 2>/dev/null || echo "$jobs")
    if [ "$dumped" = 0 ] && [ "${left:-$jobs}" -le "$half" ]; then
        printf '\n%s--- demo: kill -USR1 %d (%s jobs still queued) ---%s\n' "$bold" \
            "$orders_pid" "$left" "$plain" >&2
        kill -USR1 "$orders_pid"
        dumped=1
    fi
    sleep 0.02
done
status=0
wait "$orders_pid" || status=$?
orders_pid=
[ "$status" = 0 ] || { echo "demo.sh: orders exited with status $status" >&2; exit 1; }
[ "$dumped" = 1 ] || note "(orders finished before the queue was half empty: no mid-run dump)"
note "orders exited with status 0: every handle came back (leaks: 0)"

say "leak-hunt, default mode: a handle leaks on an error path; the guard takes it back"
note "price_order() in examples/leak-hunt/leak-hunt.c returns without releasing its PostgreSQL"
note "handle for orders with quantity 0 (1 in 29). The pool has 4 connections; watch"
note "leaks_reclaimed grow in the dumps while every other order still gets done."
"$bin/orders-seed" -n "$jobs" -q >/dev/null
# Only the PostgreSQL pool's part of each dump, the warning and the summary.
"$bin/leak-hunt" -w 4 --pg-pool 4 --drain --dump-every 1 -q 2>&1 |
    awk '/^=== /   { print; pg = 0; next }
         /^pool "/ { pg = ($0 ~ /^pool "pg"/) }
         pg || /^leash: warning/ || /jobs in/ || /^leaks:/ || /^  pool / || /^  pg / { print }'
note "leak-hunt finished every job: more leaks than the pool has connections, and no hang,"
note "because each guard took its handle back (without leash: 4 leaks, then every worker waits)."

say "leak-hunt, strict mode (LEASH_STRICT=1): the first leak aborts, naming the borrow site"
"$bin/orders-seed" -n 200 >/dev/null
status=0
# (In a subshell, so that the shell's own "Aborted" line does not clutter the screen.)
(LEASH_STRICT=1 "$bin/leak-hunt" -w 2 --drain -q >"$tmp/strict.out" 2>"$tmp/strict.err"
    exit $?) 2>/dev/null || status=$?
sed 's/^/    /' "$tmp/strict.err"
if [ "$status" = 134 ] && grep -q 'leak-hunt.c:' "$tmp/strict.err"; then
    note "aborted (SIGABRT) at the first leak: in a test suite, this is the failing test."
else
    echo "demo.sh: expected leak-hunt to abort in strict mode; status $status" >&2
    exit 1
fi

if [ ${#started[@]} -gt 0 ]; then
    say "Done: stopping the servers (also done on failure or Ctrl-C, by a trap)"
else
    say "Done: the servers were already running before the demo; they are left as they were"
fi
