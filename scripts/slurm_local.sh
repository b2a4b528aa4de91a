#!/usr/bin/env bash
# A one-node Slurm on this machine, for testing `editbench slurm` against real daemons.
#
#   scripts/slurm_local.sh start DIR   # install slurm-wlm + munge if missing, start munged,
#                                      # slurmctld and slurmd with a generated config under DIR
#   scripts/slurm_local.sh stop DIR    # stop the daemons it started (by the pids under DIR)
#
# No systemd: the daemons run in the foreground of background shells, as root, their pids,
# logs, state and the config in DIR. Job completions go to DIR/jobcomp.txt, which `sacct -c`
# reads (there is no accounting database). Needs root (apt-get, munge's key, slurmd).
set -euo pipefail
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

stop() {
  for daemon in slurmd slurmctld munged; do
    if [ -f "$dir/$daemon.pid" ]; then
      pid=$(cat "$dir/$daemon.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      rm -f "$dir/$daemon.pid"
    fi
  done
  if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$(cd "$dir" && pwd)/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
  fi
}

if [ "$cmd" = stop ]; then
  stop
  echo "slurm stopped ($dir)"
  exit 0
fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "installing slurm-wlm and munge..."
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi
mkdir -p "$dir"/{state,spool,munge} /etc/slurm
dir=$(cd "$dir" && pwd)
host=$(hostname -s)
cpus=$(nproc)
memory=$(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo)

# munge: a key of its own, its socket under DIR.
if [ ! -f "$dir/munge/munge.key" ]; then
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
fi
socket=$dir/munge/munge.socket
munged --key-file="$dir/munge/munge.key" --socket="$socket" --pid-file="$dir/munged.pid" \
  --log-file="$dir/munged.log" --seed-file="$dir/munge/seed" --force

cat > "$dir/slurm.conf" <<EOF
ClusterName=editbench-test
SlurmctldHost=$host
AuthType=auth/munge
AuthInfo=socket=$socket,cred_expire=10
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MinJobAge=600
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
ln -sf "$dir/slurm.conf" /etc/slurm/slurm.conf
export SLURM_CONF=$dir/slurm.conf
slurmctld -i -f "$dir/slurm.conf"
slurmd -f "$dir/slurm.conf"
for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "slurm up on $host ($cpus CPUs), config $dir/slurm.conf"
    exit 0
  fi
  sleep 1
done
echo "error: slurm did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
stop
exit 1
