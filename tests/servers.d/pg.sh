# PostgreSQL 15 for the pg adapter's tests: a throwaway cluster in $LEASH_SERVERS_DIR/pg, run as
# the postgres user (PostgreSQL refuses root), on 127.0.0.1:15432 with its unix socket in the
# same folder. Role leash / password leash-pg-pw (scram-sha-256 over TCP) owns database leash;
# the superuser postgres logs in through the unix socket without a password. Durability is off
# (fsync, synchronous_commit, full_page_writes): the data is disposable.
# Sourced by tests/servers.sh, which runs with `set -euo pipefail`.

pg_bin=/usr/lib/postgresql/15/bin # full path: /usr/local/bin holds unrelated wrappers
pg_port=15432

pg_dir() { echo "$LEASH_SERVERS_DIR/pg"; }

# Runs a command as the postgres user from the cluster folder (root cannot run PostgreSQL;
# another user runs it as itself).
pg_as() {
  if [ "$(id -u)" = 0 ]; then
    (cd "$(pg_dir)" && runuser -u postgres -- "$@")
  else
    (cd "$(pg_dir)" && "$@")
  fi
}

pg_log_tail() {
  echo "pg: last lines of $(pg_dir)/postgres.log:" >&2
  tail -n 20 "$(pg_dir)/postgres.log" >&2 2>/dev/null || true
}

pg_init() {
  local d=$1
  [ -s "$d/data/PG_VERSION" ] && return 0
  rm -rf "$d/data"
  if ! pg_as "$pg_bin/initdb" -D "$d/data" -U postgres -E UTF8 --locale=C --no-sync \
    --auth-local=trust --auth-host=scram-sha-256 >"$d/initdb.log" 2>&1; then
    echo "pg: initdb failed:" >&2
    tail -n 20 "$d/initdb.log" >&2
    return 1
  fi
  cat >>"$d/data/postgresql.conf" <<EOF

# leash test cluster
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$d'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 120
password_encryption = 'scram-sha-256'
EOF
  cat >"$d/data/pg_hba.conf" <<EOF
# leash test cluster: the superuser through the local socket, everyone else with a password.
local all postgres trust
host  all all 127.0.0.1/32 scram-sha-256
EOF
}

# Creates role leash and database leash when missing (idempotent).
pg_roles() {
  local d=$1 psql
  psql=("$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$d" -p "$pg_port" -U postgres -d postgres)
  if [ "$(pg_as "${psql[@]}" -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'leash'")" != 1 ]; then
    pg_as "${psql[@]}" -c "CREATE ROLE leash LOGIN PASSWORD 'leash-pg-pw'"
  fi
  if [ "$(pg_as "${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = 'leash'")" != 1 ]; then
    pg_as "${psql[@]}" -c "CREATE DATABASE leash OWNER leash"
  fi
}

pg_start() {
  local d
  d=$(pg_dir)
  pg_status && return 0
  mkdir -p "$d"
  chmod 755 "$d"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$d"
  pg_init "$d"
  # -w waits until the server accepts connections (bounded by -t).
  if ! pg_as "$pg_bin/pg_ctl" -D "$d/data" -l "$d/postgres.log" -w -t 30 start >/dev/null 2>&1; then
    echo "pg: the server did not start on 127.0.0.1:$pg_port" >&2
    pg_log_tail
    return 1
  fi
  local i
  for ((i = 0; i < 100; i++)); do
    "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" && break
    sleep 0.1
  done
  if ! "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"; then
    echo "pg: 127.0.0.1:$pg_port does not accept connections" >&2
    pg_log_tail
    return 1
  fi
  pg_roles "$d"
  ln -sf data/postmaster.pid "$d/pg.pid" # first line: the postmaster's pid
}

pg_stop() {
  local d
  d=$(pg_dir)
  [ -s "$d/data/PG_VERSION" ] || return 0
  pg_as "$pg_bin/pg_ctl" -D "$d/data" status >/dev/null 2>&1 || return 0
  pg_as "$pg_bin/pg_ctl" -D "$d/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
    pg_as "$pg_bin/pg_ctl" -D "$d/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
}

pg_status() {
  local d
  d=$(pg_dir)
  [ -s "$d/data/PG_VERSION" ] || return 1
  pg_as "$pg_bin/pg_ctl" -D "$d/data" status >/dev/null 2>&1 || return 1
  "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"
}
