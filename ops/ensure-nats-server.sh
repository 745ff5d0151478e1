#!/usr/bin/env bash
# Makes sure a nats-server >= 2.9 is available. Order: $DRIFTLOCK_NATS_SERVER, nats-server
# on PATH, else Debian's package through apt (the only source this project trusts).
set -euo pipefail

min_major=2
min_minor=9

version_ok() {
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\.[0-9]*\).*/\1/p') || return 1
  [ -n "$v" ] || return 1
  local major=${v%%.*} minor=${v#*.}
  [ "$major" -gt "$min_major" ] || { [ "$major" -eq "$min_major" ] && [ "$minor" -ge "$min_minor" ]; }
}

if [ -n "${DRIFTLOCK_NATS_SERVER:-}" ]; then
  version_ok "$DRIFTLOCK_NATS_SERVER" && exit 0
  echo "DRIFTLOCK_NATS_SERVER=$DRIFTLOCK_NATS_SERVER is not a nats-server >= $min_major.$min_minor" >&2
  exit 1
fi
if command -v nats-server >/dev/null 2>&1 && version_ok "$(command -v nats-server)"; then
  exit 0
fi

echo "nats-server >= $min_major.$min_minor not found; installing Debian's nats-server package" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq nats-server >/dev/null
version_ok "$(command -v nats-server)" || {
  echo "the installed nats-server is older than $min_major.$min_minor; set DRIFTLOCK_NATS_SERVER" >&2
  exit 1
}
