#!/usr/bin/env bash
# Starts and stops the real servers the integration tests and the demo talk to, on
# 127.0.0.1 at unusual ports, each in its own folder under $LEASH_SERVERS_DIR
# (default /tmp/leash-servers). Usage:
#   tests/servers.sh start|stop|restart|status [all|redis|pg|pgbouncer|nginx]...
# Each server lives in tests/servers.d/NAME.sh, which defines NAME_start, NAME_stop and
# NAME_status. "stop" with no server also removes the folder.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LEASH_SERVERS_DIR=${LEASH_SERVERS_DIR:-/tmp/leash-servers}
all=(redis pg pgbouncer nginx pgha sentinel)

usage() { echo "usage: $0 start|stop|restart|status [all|${all[*]// /|}]..." >&2; exit 2; }
[ $# -ge 1 ] || usage
action=$1; shift
case $action in start|stop|restart|status) ;; *) usage ;; esac
names=("$@")
whole=0
if [ ${#names[@]} -eq 0 ] || [ "${names[0]}" = all ]; then names=("${all[@]}"); whole=1; fi

for n in "${names[@]}"; do
  f="$here/servers.d/$n.sh"
  [ -f "$f" ] || { echo "servers.sh: no server '$n' (no $f)" >&2; exit 2; }
  # shellcheck source=/dev/null
  source "$f"
done

# Stop in reverse order, so pgbouncer goes before the PostgreSQL behind it.
reversed=()
for ((i = ${#names[@]} - 1; i >= 0; i--)); do reversed+=("${names[i]}"); done

case $action in
  start)
    mkdir -p "$LEASH_SERVERS_DIR"
    for n in "${names[@]}"; do "${n}_start"; done ;;
  stop)
    for n in "${reversed[@]}"; do "${n}_stop" || true; done
    if [ $whole = 1 ]; then rm -rf "$LEASH_SERVERS_DIR"; fi ;;
  restart)
    for n in "${reversed[@]}"; do "${n}_stop" || true; done
    for n in "${names[@]}"; do "${n}_start"; done ;;
  status)
    rc=0
    for n in "${names[@]}"; do "${n}_status" || rc=1; done
    exit $rc ;;
esac
