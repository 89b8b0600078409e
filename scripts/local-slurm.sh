#!/usr/bin/env bash
# A real single-node SLURM on localhost (Debian's slurm-wlm and munge), configured for this machine:
# for CI and for developers who want to try the jobs/ scripts without a cluster. Run as root.
#
#   bash scripts/local-slurm.sh start     # writes /etc/slurm/slurm.conf, starts munged, slurmctld, slurmd
#   bash scripts/local-slurm.sh status    # sinfo
#   bash scripts/local-slurm.sh stop
#
# The node advertises LOCAL_SLURM_GPUS (default 2) GPUs as a generic resource without device files, so
# job scripts that ask for --gpus-per-task run unchanged on a machine with no GPU (ranks then use the CPU).
# Install first: apt-get install slurm-wlm munge (scripts/install.sh does).
set -euo pipefail
action=${1:-start}
STATE=${LOCAL_SLURM_STATE:-/var/lib/landscape-slurm}
GPUS=${LOCAL_SLURM_GPUS:-2}
host=$(hostname -s)

stop() {
  for name in slurmd slurmctld; do
    if [ -f "$STATE/$name.pid" ]; then
      pid=$(cat "$STATE/$name.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -9 "$pid" 2>/dev/null || true   # slurmd may need it
      rm -f "$STATE/$name.pid"
    fi
  done
}

case "$action" in
  stop) stop; exit 0 ;;
  status) sinfo; exit 0 ;;
  start) ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

command -v slurmctld >/dev/null || { echo "slurmctld not found: apt-get install slurm-wlm munge" >&2; exit 1; }
if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  echo "SLURM already running"; sinfo; exit 0
fi
stop
rm -rf "$STATE/ctld" "$STATE/spool"   # a fresh cluster each start: no stale jobs or node states
mkdir -p "$STATE"/{ctld,spool,log} /etc/slurm /run/munge /var/log/munge /var/lib/munge /etc/munge

# munge: a key, and the daemon as user munge (it refuses to run as root)
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
fi

cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > /etc/slurm/slurm.conf <<CONF
# written by landscape-mpi scripts/local-slurm.sh for a single-node test cluster
ClusterName=landscape
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobRequeue=1
GresTypes=gpu
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerParameters=sched_interval=2
MinJobAge=600
KillWait=10
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
# slurmd counts a GPU per character device; links to /dev/null stand in for /dev/nvidiaN here
for i in $(seq 0 $((GPUS - 1))); do ln -sfn /dev/null "$STATE/gpu$i"; done
cat > /etc/slurm/gres.conf <<CONF
AutoDetect=off
NodeName=$host Name=gpu File=$STATE/gpu[0-$((GPUS - 1))]
CONF
# no cgroups in containers: an empty cgroup.conf keeps slurmd from probing them
: > /etc/slurm/cgroup.conf

slurmctld -D > "$STATE/log/slurmctld.out" 2>&1 &
echo $! > "$STATE/slurmctld.pid"
slurmd -D > "$STATE/log/slurmd.out" 2>&1 &
echo $! > "$STATE/slurmd.pid"

for _ in $(seq 60); do
  state=$(sinfo -h -o %T 2>/dev/null || true)
  case "$state" in
    idle*|mixed*|allocated*) sinfo; exit 0 ;;
    drain*|down*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
echo "SLURM did not come up; logs in $STATE/log:" >&2
tail -n 20 "$STATE"/log/*.log "$STATE"/log/*.out >&2 || true
exit 1
