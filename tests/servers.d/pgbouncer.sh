# pgbouncer for the pg adapter's tests: Debian's pgbouncer (1.18) on 127.0.0.1:16432 in
# transaction pooling mode, in front of the test PostgreSQL on 127.0.0.1:15432 (tests/servers.d/
# pg.sh) as database leash, and of node a of the replicated pair (tests/servers.d/pgha.sh,
# 127.0.0.1:15533) as database leash_ha. Clients log in as role leash / leash-pg-pw
# (scram-sha-256, plain text in the auth file so pgbouncer can answer the server's SCRAM too).
# Its config, pid and log live in $LEASH_SERVERS_DIR/pgbouncer; it runs as the postgres user
# (pgbouncer refuses root). A running pgbouncer whose config changed is reloaded by "start".
# Sourced by tests/servers.sh, which runs with `set -euo pipefail`.

pgbouncer_port=16432

pgbouncer_dir() { echo "$LEASH_SERVERS_DIR/pgbouncer"; }

pgbouncer_pid() {
  local f pid
  f="$(pgbouncer_dir)/pgbouncer.pid"
  [ -s "$f" ] || return 0
  pid=$(cat "$f" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

pgbouncer_as() {
  if [ "$(id -u)" = 0 ]; then
    (cd "$(pgbouncer_dir)" && runuser -u postgres -- "$@")
  else
    (cd "$(pgbouncer_dir)" && "$@")
  fi
}

# Writes the config to $1/pgbouncer.ini; returns 1 when it changed.
pgbouncer_config() {
  local d=$1
  cat >"$d/pgbouncer.ini.new" <<EOF
[databases]
leash = host=127.0.0.1 port=15432 dbname=leash
leash_ha = host=127.0.0.1 port=15533 dbname=leash

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pgbouncer_port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $d/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 200
pidfile = $d/pgbouncer.pid
logfile = $d/pgbouncer.log
ignore_startup_parameters = extra_float_digits
server_reset_query =
EOF
  printf '"leash" "leash-pg-pw"\n' >"$d/userlist.txt"
  chmod 600 "$d/userlist.txt"
  local changed=0
  cmp -s "$d/pgbouncer.ini.new" "$d/pgbouncer.ini" || changed=1
  mv "$d/pgbouncer.ini.new" "$d/pgbouncer.ini"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$d/pgbouncer.ini" "$d/userlist.txt"; fi
  return $changed
}

pgbouncer_start() {
  local d i
  d=$(pgbouncer_dir)
  if pgbouncer_status; then
    pgbouncer_config "$d" || kill -HUP "$(pgbouncer_pid)" # SIGHUP: reload the config
    return 0
  fi
  mkdir -p "$d"
  chmod 755 "$d"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$d"
  pgbouncer_config "$d" || true
  rm -f "$d/pgbouncer.pid"
  if ! pgbouncer_as /usr/sbin/pgbouncer -d -q "$d/pgbouncer.ini" >/dev/null 2>&1; then
    echo "pgbouncer: failed to start" >&2
    tail -n 20 "$d/pgbouncer.log" >&2 2>/dev/null || true
    return 1
  fi
  for ((i = 0; i < 100; i++)); do
    pgbouncer_status && return 0
    sleep 0.1
  done
  echo "pgbouncer: 127.0.0.1:$pgbouncer_port does not accept connections" >&2
  tail -n 20 "$d/pgbouncer.log" >&2 2>/dev/null || true
  return 1
}

pgbouncer_stop() {
  local pid i
  pid=$(pgbouncer_pid)
  [ -n "$pid" ] || return 0
  kill -INT "$pid" 2>/dev/null || true # SIGINT: shut down once clients are gone
  for ((i = 0; i < 20; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -TERM "$pid" 2>/dev/null || true # SIGTERM: immediate shutdown
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# Up when the process runs and answers a startup packet on its port.
pgbouncer_status() {
  [ -n "$(pgbouncer_pid)" ] || return 1
  /usr/lib/postgresql/15/bin/pg_isready -q -h 127.0.0.1 -p "$pgbouncer_port" -d leash -U leash
}
