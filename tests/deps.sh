#!/usr/bin/env bash
# Installs every Debian package leash needs to build, test, benchmark and run its demo.
# Idempotent: installs only what is missing. Run as root (or with sudo available).
set -euo pipefail
pkgs=(
  build-essential g++ meson ninja-build pkg-config git
  libcmocka-dev libhiredis-dev libpq-dev libcurl4-openssl-dev
  redis-server postgresql pgbouncer nginx-light openssl curl procps iproute2
  libaprutil1-dev prometheus valgrind clang libclang-rt-14-dev
  nodejs npm
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && { echo "deps: all ${#pkgs[@]} packages present"; exit 0; }
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: done"
