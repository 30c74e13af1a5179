#!/usr/bin/env bash
# Stop the single-node Slurm + MUNGE that cluster/slurm/up.sh started in DIR, by pid files
# only (never by process name). Cancels its jobs first. Keeps DIR (logs); pass --purge to
# delete it too.
#
#   bash cluster/slurm/down.sh [DIR] [--purge]
set -uo pipefail

PURGE=0
ARGS=()
for a in "$@"; do
  if [ "$a" = --purge ]; then PURGE=1; else ARGS+=("$a"); fi
done
DIR=${ARGS[0]:-${NLDIST_SLURM_DIR:-/tmp/nldist-slurm}}
[ -d "$DIR" ] || exit 0
DIR=$(cd "$DIR" && pwd)

stop() {  # stop PIDFILE: TERM, wait up to 5 s, then KILL
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
}

if [ -f "$DIR/slurm.conf" ] && [ -f "$DIR/run/slurmctld.pid" ] && command -v scancel >/dev/null; then
  SLURM_CONF=$DIR/slurm.conf timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
  sleep 0.5
fi
stop "$DIR/run/slurmd.pid"
stop "$DIR/run/slurmctld.pid"
stop "$DIR/munge/munged.pid"
echo "slurm-down: stopped daemons of $DIR" >&2
if [ "$PURGE" = 1 ]; then
  rm -rf "$DIR"
fi
