#!/usr/bin/env bash
# bench/setup.sh — install the peer tools bench/snapshot.mjs compares casa
# against (Debian/Ubuntu; run as root or with sudo). Safe to re-run: does
# nothing when everything is already there. Prints the versions found.
#
#   restic      restic backup/restore (repo format v2, --compression auto)
#   borgbackup  borg init/create/extract (repokey, zstd,3)
#   age zstd sqlite3   the "no special tool" pipeline: .backup | zstd -3 | age
#   time        GNU time, for peak RSS (/usr/bin/time -f %M)
set -eu
pkgs="restic borgbackup age zstd sqlite3 time"
missing=""
for c in restic borg age age-keygen zstd sqlite3 /usr/bin/time; do
  command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
done
if [ -n "$missing" ]; then
  echo "bench/setup.sh: missing:$missing — installing $pkgs with apt-get" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $pkgs
fi
{
  echo "node $(node --version)"
  echo "sqlite3 $(sqlite3 --version | cut -d' ' -f1)"
  zstd --version
  echo "age $(age --version)"
  restic version
  borg --version
  echo "cores $(nproc)"
} 2>&1
