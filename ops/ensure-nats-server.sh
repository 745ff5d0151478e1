#!/usr/bin/env bash
# Makes sure DriftLock has a nats-server it works well with, >= 2.10: 2.9 stalls once its
# event stream holds a few hundred thousand subjects (100,000 streams per node). Order:
#   1. $DRIFTLOCK_NATS_SERVER, the operator's own choice (>= 2.9 accepted);
#   2. the project's copy, .venv/bin/nats-server;
#   3. Debian 13's nats-server package, downloaded with apt, which checks it against
#      Debian's archive keyring, and unpacked into .venv/bin: the system is not changed;
#   4. without that (no network), a nats-server >= 2.9 on PATH, with a warning.
set -euo pipefail

project_copy=".venv/bin/nats-server"
debian_suite="trixie"

version_at_least() {  # binary major minor
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\.[0-9]*\).*/\1/p') || return 1
  [ -n "$v" ] || return 1
  local major=${v%%.*} minor=${v#*.}
  [ "$major" -gt "$2" ] || { [ "$major" -eq "$2" ] && [ "$minor" -ge "$3" ]; }
}

if [ -n "${DRIFTLOCK_NATS_SERVER:-}" ]; then
  version_at_least "$DRIFTLOCK_NATS_SERVER" 2 9 && exit 0
  echo "DRIFTLOCK_NATS_SERVER=$DRIFTLOCK_NATS_SERVER is not a nats-server >= 2.9" >&2
  exit 1
fi
[ -x "$project_copy" ] && version_at_least "$project_copy" 2 10 && exit 0

fetch_debian_package() {
  local work keyring
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -r "$keyring" ] || { echo "no Debian archive keyring at $keyring" >&2; return 1; }
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  echo "deb [signed-by=$keyring] http://deb.debian.org/debian $debian_suite main" \
    > "$work/sources.list"
  local apt=(apt-get -qq -o "Dir::Etc::sourcelist=$work/sources.list"
    -o "Dir::Etc::sourceparts=-" -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache" -o "APT::Sandbox::User=root")
  "${apt[@]}" update >/dev/null
  (cd "$work" && "${apt[@]}" download nats-server >/dev/null)
  dpkg-deb -x "$work"/nats-server_*.deb "$work/root"
  install -m 0755 "$work/root/usr/sbin/nats-server" "$project_copy"
}

echo "installing Debian $debian_suite's nats-server into $project_copy" >&2
if fetch_debian_package && version_at_least "$project_copy" 2 10; then
  "$project_copy" --version >&2
  exit 0
fi
if command -v nats-server >/dev/null 2>&1 && version_at_least "$(command -v nats-server)" 2 9; then
  echo "could not fetch it; using $(command -v nats-server), which stalls beyond ~100,000 streams" >&2
  exit 0
fi
echo "no nats-server: set DRIFTLOCK_NATS_SERVER to a nats-server >= 2.10 binary" >&2
exit 1
