#!/usr/bin/env bash
# Bring up a real single-node Slurm (slurmctld + slurmd) with MUNGE authentication in a
# private directory, for tests, CI and trying nldist's Slurm backend on one machine.
#
#   bash cluster/slurm/up.sh [DIR]        # DIR defaults to $NLDIST_SLURM_DIR or /tmp/nldist-slurm
#   source DIR/env.sh                     # exports SLURM_CONF for sbatch/squeue/dask-jobqueue
#   bash cluster/slurm/down.sh [DIR]      # stops the daemons by their pid files
#
# Idempotent: when the daemons of DIR already answer it only prints the env file. Installs
# Debian's slurm-wlm and munge with apt-get when they are missing (needs root); exits 3 when
# they are missing and apt-get is not available. Needs no systemd and touches nothing outside
# DIR (the daemons run as root, munged as the munge user).
#
# Environment: NLDIST_SLURM_DIR, NLDIST_SLURMCTLD_PORT (6817), NLDIST_SLURMD_PORT (6818),
# NLDIST_SLURM_CPUS (CPUs declared for the node; default max(nproc, 4) so that a batch job and
# its worker jobs fit on a 2-core test machine), NLDIST_SLURM_MEMORY_MB (4000).
set -euo pipefail

DIR=${1:-${NLDIST_SLURM_DIR:-/tmp/nldist-slurm}}
CTLD_PORT=${NLDIST_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${NLDIST_SLURMD_PORT:-6818}
NPROC=$(nproc)
CPUS=${NLDIST_SLURM_CPUS:-$(( NPROC > 4 ? NPROC : 4 ))}
MEM=${NLDIST_SLURM_MEMORY_MB:-4000}
HOST=$(hostname -s)

say() { echo "slurm-up: $*" >&2; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- packages ------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
    say "slurm-wlm/munge are not installed and apt-get (as root) is not available"
    exit 3
  fi
  say "installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # wait for a dpkg/apt lock held by another apt process instead of failing
  for _ in $(seq 60); do
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 && break
    sleep 10
  done
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends slurm-wlm munge \
    >/dev/null
fi

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
CONF=$DIR/slurm.conf
ENVF=$DIR/env.sh
MUNGE=$DIR/munge
SOCK=$MUNGE/munge.socket.2

# --- already up? ---------------------------------------------------------------------------
if alive "$MUNGE/munged.pid" && alive "$DIR/run/slurmctld.pid" && alive "$DIR/run/slurmd.pid" \
   && SLURM_CONF=$CONF scontrol ping 2>/dev/null | grep -q UP; then
  say "already up in $DIR"
  echo "$ENVF"
  exit 0
fi
# half up (a daemon died, or a stale directory): stop what is left and start clean
bash "$(dirname "$0")/down.sh" "$DIR" >/dev/null 2>&1 || true

mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
chmod 0755 "$DIR"

# --- MUNGE ---------------------------------------------------------------------------------
mkdir -p "$MUNGE"
chown munge:munge "$MUNGE"
chmod 0711 "$MUNGE"  # clients need search (x) permission to reach the socket
if [ ! -s "$MUNGE/munge.key" ]; then
  head -c 1024 /dev/urandom > "$MUNGE/munge.key"
fi
chown munge:munge "$MUNGE/munge.key"
chmod 0400 "$MUNGE/munge.key"
rm -f "$SOCK" "$SOCK.lock"
runuser -u munge -- /usr/sbin/munged --socket="$SOCK" --key-file="$MUNGE/munge.key" \
  --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed"
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
[ -S "$SOCK" ] || { say "munged did not start; see $MUNGE/munged.log"; exit 1; }

# --- Slurm configuration -------------------------------------------------------------------
cat > "$CONF" <<EOF
# Single-node Slurm for nldist tests (written by cluster/slurm/up.sh; edit that, not this)
ClusterName=nldist
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
printf 'export SLURM_CONF=%q\n' "$CONF" > "$ENVF"

# --- daemons -------------------------------------------------------------------------------
export SLURM_CONF=$CONF
slurmctld -c -f "$CONF"
for _ in $(seq 200); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.05; done
scontrol ping 2>/dev/null | grep -q UP || { say "slurmctld not up; see $DIR/log/slurmctld.log"; exit 1; }
slurmd -f "$CONF"
state=""
for _ in $(seq 300); do
  state=$(sinfo -h -N -o %T 2>/dev/null | head -n1 || true)
  case "$state" in idle*|mixed*|allocated*) break ;; esac
  sleep 0.1
done
case "$state" in
  idle*|mixed*|allocated*) ;;
  *) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
     sleep 1
     state=$(sinfo -h -N -o %T 2>/dev/null | head -n1 || true) ;;
esac
case "$state" in
  idle*|mixed*|allocated*) say "up in $DIR (node $HOST: $CPUS CPUs, ${MEM} MB, state $state)" ;;
  *) say "node $HOST is '$state', not idle; see $DIR/log/slurmd.log"; exit 1 ;;
esac
echo "$ENVF"
