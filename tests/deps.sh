#!/usr/bin/env bash
# Installs every Debian package leash needs to build, test, benchmark and run its demo.
# Idempotent: installs only what is missing. Run as root (or with sudo available).
set -euo pipefail
pkgs=(
  build-essential g++ meson ninja-build pkg-config git
  libcmocka-dev libhiredis-dev libpq-dev libcurl4-openssl-dev
  redis-server postgresql pgbouncer nginx-light openssl curl procps iproute2
  libaprutil1-dev prometheus valgrind clang libclang-rt-14-dev
)
# Only the Sentinel benchmark's ioredis comparison uses Node.js: best effort. A machine whose
# node comes from elsewhere (e.g. nodesource, with npm bundled, which conflicts with Debian's
# npm package) keeps what it has.
optional=()
command -v node >/dev/null 2>&1 || optional+=(nodejs)
command -v npm >/dev/null 2>&1 || optional+=(npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ] &&
  { echo "deps: all ${#pkgs[@]} packages present"; exit 0; }
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ${#optional[@]} -gt 0 ]; then
  echo "deps: installing ${optional[*]} (optional: the Sentinel benchmark's ioredis run)"
  $SUDO apt-get install -y -qq --no-install-recommends "${optional[@]}" >/dev/null 2>&1 ||
    echo "deps: ${optional[*]} not installed; bench-sentinel will run leash alone"
fi
echo "deps: done"
