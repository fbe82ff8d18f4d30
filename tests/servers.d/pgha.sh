# Replicated PostgreSQL 15 for the pg adapter's failover tests: two throwaway clusters in
# $LEASH_SERVERS_DIR/pgha, run as the postgres user (PostgreSQL refuses root), on 127.0.0.1:
#   node a  15533  the primary
#   node b  15534  a hot standby of a, made with `pg_basebackup -R` (streaming replication over
#                  the unix socket in the same folder)
# Role leash / leash-pg-pw (scram-sha-256 over TCP) owns database leash; postgres logs in through
# the unix socket without a password. Durability is off: the data is disposable.
#
# "start" (from tests/servers.sh) brings back that known topology whatever a test did (a crashed
# or read-only a, a promoted b): a is made a writable primary again and b, unless it is already a
# standby streaming from a, is cloned afresh. Tests drive the nodes by running this file itself:
#   bash tests/servers.d/pgha.sh crash a|b     pg_ctl stop -m immediate
#   bash tests/servers.d/pgha.sh promote a|b   pg_ctl promote (waits until it is done)
#   bash tests/servers.d/pgha.sh readonly a|b  ALTER SYSTEM SET default_transaction_read_only=on
#                                              and reload (a demoted primary still up)
#   bash tests/servers.d/pgha.sh pidfile a|b   prints the postmaster pid file
# Sourced by tests/servers.sh, which runs with `set -euo pipefail`.

pgha_bin=/usr/lib/postgresql/15/bin # full path: /usr/local/bin holds unrelated wrappers
pgha_port_a=15533
pgha_port_b=15534

pgha_dir() { echo "$LEASH_SERVERS_DIR/pgha"; }
pgha_port() { if [ "$1" = a ]; then echo $pgha_port_a; else echo $pgha_port_b; fi; }
pgha_data() { echo "$(pgha_dir)/$1"; }

pgha_as() {
  if [ "$(id -u)" = 0 ]; then
    (cd "$(pgha_dir)" && runuser -u postgres -- "$@")
  else
    (cd "$(pgha_dir)" && "$@")
  fi
}

pgha_log_tail() {
  echo "pgha: last lines of $(pgha_dir)/$1.log:" >&2
  tail -n 20 "$(pgha_dir)/$1.log" >&2 2>/dev/null || true
}

# psql as the superuser on node $1 through the unix socket, bounded so a paused node cannot hang
# the script; the remaining arguments go to psql.
pgha_psql() {
  local n=$1
  shift
  pgha_as timeout 10 "$pgha_bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$(pgha_dir)" \
    -p "$(pgha_port "$n")" -U postgres -d postgres "$@"
}

pgha_running() { pgha_as "$pgha_bin/pg_ctl" -D "$(pgha_data "$1")" status >/dev/null 2>&1; }

pgha_ready() { "$pgha_bin/pg_isready" -q -h 127.0.0.1 -p "$(pgha_port "$1")"; }

# Starts node $1 if it is not running and waits until it accepts connections.
pgha_up() {
  local n=$1 i
  if ! pgha_running "$n"; then
    if ! pgha_as "$pgha_bin/pg_ctl" -D "$(pgha_data "$n")" -l "$(pgha_dir)/$n.log" -w -t 60 \
      start >/dev/null 2>&1; then
      echo "pgha: node $n did not start on 127.0.0.1:$(pgha_port "$n")" >&2
      pgha_log_tail "$n"
      return 1
    fi
  fi
  for ((i = 0; i < 100; i++)); do
    pgha_ready "$n" && return 0
    sleep 0.1
  done
  echo "pgha: node $n (127.0.0.1:$(pgha_port "$n")) does not accept connections" >&2
  pgha_log_tail "$n"
  return 1
}

pgha_down() {
  local d
  d=$(pgha_data "$1")
  [ -s "$d/PG_VERSION" ] || return 0
  pgha_running "$1" || return 0
  pgha_as "$pgha_bin/pg_ctl" -D "$d" -m fast -w -t 30 stop >/dev/null 2>&1 ||
    pgha_as "$pgha_bin/pg_ctl" -D "$d" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
}

# A fresh primary in node a's folder, with role leash and database leash.
pgha_init_a() {
  local d
  d=$(pgha_data a)
  rm -rf "$d"
  if ! pgha_as "$pgha_bin/initdb" -D "$d" -U postgres -E UTF8 --locale=C --no-sync \
    --auth-local=trust --auth-host=scram-sha-256 >"$(pgha_dir)/initdb.log" 2>&1; then
    echo "pgha: initdb failed:" >&2
    tail -n 20 "$(pgha_dir)/initdb.log" >&2
    return 1
  fi
  cat >>"$d/postgresql.conf" <<EOF

# leash replicated test cluster (node a; node b's copy gets its own port below)
listen_addresses = '127.0.0.1'
port = $pgha_port_a
unix_socket_directories = '$(pgha_dir)'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 60
shared_buffers = 16MB
password_encryption = 'scram-sha-256'
wal_level = replica
max_wal_senders = 4
wal_keep_size = 64MB
hot_standby = on
wal_receiver_status_interval = 1s
EOF
  cat >"$d/pg_hba.conf" <<EOF
# leash replicated test cluster: the superuser through the local socket (also for replication),
# everyone else with a password.
local all postgres trust
local replication postgres trust
host  all all 127.0.0.1/32 scram-sha-256
EOF
  pgha_up a
  pgha_psql a -c "CREATE ROLE leash LOGIN PASSWORD 'leash-pg-pw'" \
    -c "CREATE DATABASE leash OWNER leash"
}

# Makes node a a writable primary: started, not read-only by configuration, not in recovery.
pgha_primary_a() {
  local d
  d=$(pgha_data a)
  if [ ! -s "$d/PG_VERSION" ] || [ -f "$d/standby.signal" ]; then
    pgha_init_a
    return
  fi
  pgha_up a
  if [ "$(pgha_psql a -tAc "SHOW default_transaction_read_only")" != off ]; then
    pgha_psql a -c "ALTER SYSTEM RESET default_transaction_read_only" -c "SELECT pg_reload_conf()" \
      >/dev/null
    local i
    for ((i = 0; i < 50; i++)); do
      [ "$(pgha_psql a -tAc "SHOW default_transaction_read_only")" = off ] && break
      sleep 0.1
    done
  fi
  [ "$(pgha_psql a -tAc "SELECT pg_is_in_recovery()")" = f ] || pgha_init_a
}

# 0 when node b is a running hot standby streaming from node a.
pgha_b_streams() {
  pgha_running b && pgha_ready b || return 1
  [ "$(pgha_psql b -tAc "SELECT pg_is_in_recovery()" 2>/dev/null)" = t ] || return 1
  [ "$(pgha_psql a -tAc "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'" \
    2>/dev/null)" = 1 ]
}

# Clones node a into node b's folder (pg_basebackup -R writes standby.signal and
# primary_conninfo) and starts it as a hot standby.
pgha_clone_b() {
  local d
  d=$(pgha_data b)
  pgha_down b
  rm -rf "$d"
  if ! pgha_as "$pgha_bin/pg_basebackup" -h "$(pgha_dir)" -p $pgha_port_a -U postgres -D "$d" \
    -R -X stream -c fast --no-sync >"$(pgha_dir)/basebackup.log" 2>&1; then
    echo "pgha: pg_basebackup failed:" >&2
    tail -n 20 "$(pgha_dir)/basebackup.log" >&2
    return 1
  fi
  printf '\nport = %s\n' $pgha_port_b | pgha_as tee -a "$d/postgresql.auto.conf" >/dev/null
  pgha_up b
  local i
  for ((i = 0; i < 100; i++)); do
    pgha_b_streams && return 0
    sleep 0.1
  done
  echo "pgha: node b does not stream from node a" >&2
  pgha_log_tail b
  return 1
}

pgha_start() {
  local d
  d=$(pgha_dir)
  mkdir -p "$d"
  chmod 755 "$d"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$d"
  pgha_primary_a
  pgha_b_streams || pgha_clone_b
  ln -sf a/postmaster.pid "$d/a.pid" # first line: the postmaster's pid
  ln -sf b/postmaster.pid "$d/b.pid"
}

pgha_stop() {
  pgha_down b
  pgha_down a
}

# Up when a is a writable primary and b a standby streaming from it.
pgha_status() {
  [ -s "$(pgha_data a)/PG_VERSION" ] || return 1
  pgha_running a && pgha_ready a || return 1
  [ "$(pgha_psql a -tAc "SELECT pg_is_in_recovery()::text || current_setting('default_transaction_read_only')" \
    2>/dev/null)" = falseoff ] || return 1
  pgha_b_streams
}

# ---- commands for the tests (this file run as a script) ----

pgha_node() {
  case "${1:-}" in a | b) ;; *) echo "pgha: node must be a or b, not '${1:-}'" >&2 && return 2 ;; esac
}

pgha_cmd_crash() {
  pgha_as "$pgha_bin/pg_ctl" -D "$(pgha_data "$1")" -m immediate -w -t 30 stop >/dev/null
}

pgha_cmd_promote() {
  pgha_as "$pgha_bin/pg_ctl" -D "$(pgha_data "$1")" -w -t 30 promote >/dev/null
}

pgha_cmd_readonly() {
  pgha_psql "$1" -c "ALTER SYSTEM SET default_transaction_read_only = on" \
    -c "SELECT pg_reload_conf()" >/dev/null
}

pgha_cmd_pidfile() { echo "$(pgha_data "$1")/postmaster.pid"; }

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  export LEASH_SERVERS_DIR=${LEASH_SERVERS_DIR:-/tmp/leash-servers}
  case "${1:-}" in
  crash | promote | readonly | pidfile) ;;
  *) echo "usage: $0 crash|promote|readonly|pidfile a|b" >&2 && exit 2 ;;
  esac
  pgha_node "${2:-}"
  "pgha_cmd_$1" "$2"
fi
