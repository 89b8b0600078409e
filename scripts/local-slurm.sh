#!/usr/bin/env bash
# A real single-node SLURM on localhost (Debian's slurm-wlm and munge), configured for this machine:
# for CI and for developers who want to try the jobs/ scripts without a cluster. Run as root.
#
#   bash scripts/local-slurm.sh start     # configure and start munged, slurmctld, slurmd in the state folder
#   eval "$(bash scripts/local-slurm.sh env)"   # export SLURM_CONF for sbatch, srun, squeue, scontrol
#   bash scripts/local-slurm.sh status    # sinfo
#   bash scripts/local-slurm.sh stop      # stop the daemons this state folder started
#
# Everything lives in one state folder (LOCAL_SLURM_STATE, default /var/lib/landscape-slurm): the
# configuration (etc/slurm.conf, gres.conf, cgroup.conf), a private munge key and socket, the daemons' state,
# spool, pid files and logs. Nothing is written to /etc: the clients and daemons find the configuration
# through SLURM_CONF, so a cluster that is already configured on the machine is left alone. Two state folders
# with different LOCAL_SLURM_PORT (slurmctld's port; slurmd uses the next one) are two independent clusters:
# the tests start their own in a temporary folder and stop it at the end.
#
# The node advertises LOCAL_SLURM_GPUS (default 2) GPUs as a generic resource without device files, so
# job scripts that ask for --gpus-per-task run unchanged on a machine with no GPU (ranks then use the CPU).
# Install first: apt-get install slurm-wlm munge (scripts/install.sh does).
set -euo pipefail
action=${1:-start}
STATE=${LOCAL_SLURM_STATE:-/var/lib/landscape-slurm}
GPUS=${LOCAL_SLURM_GPUS:-2}
PORT=${LOCAL_SLURM_PORT:-6817}
host=$(hostname -s)
export SLURM_CONF="$STATE/etc/slurm.conf"
MUNGE_SOCKET="$STATE/munge/munge.socket"

stop_pid() {  # stop_pid NAME: the daemon whose pid is in $STATE/NAME.pid, TERM then KILL
  local name=$1 pid
  [ -f "$STATE/$name.pid" ] || return 0
  pid=$(cat "$STATE/$name.pid")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true   # slurmd may need it
  fi
  rm -f "$STATE/$name.pid"
}

stop() {
  # jobs first: slurmstepd and the job's processes outlive slurmd by design
  if [ -f "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 300); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.1; done
    fi
  fi
  stop_pid slurmd
  stop_pid slurmctld
  stop_pid munged
}

running() {  # our own daemons answer (not some other cluster configured on this machine)
  [ -f "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null &&
    sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

case "$action" in
  stop) stop; exit 0 ;;
  status) sinfo; exit 0 ;;
  env) echo "export SLURM_CONF=$SLURM_CONF"; exit 0 ;;
  start) ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac

command -v slurmctld >/dev/null || { echo "slurmctld not found: apt-get install slurm-wlm munge" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "$0 start: run as root (slurmd starts jobs as their users)" >&2; exit 1; }
if running; then
  echo "SLURM already running from $STATE"; sinfo; echo "export SLURM_CONF=$SLURM_CONF"; exit 0
fi
stop
rm -rf "$STATE/ctld" "$STATE/spool"   # a fresh cluster each start: no stale jobs or node states
mkdir -p "$STATE"/{ctld,spool,log,etc,munge}

# munge: a private key and socket in the state folder, the daemon as user munge (it refuses to run as
# root); munged checks that its folders are not writable by others.
chmod 0755 "$STATE"
if [ ! -s "$STATE/munge/munge.key" ]; then
  dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
fi
chown -R munge:munge "$STATE/munge"
chmod 0755 "$STATE/munge"; chmod 0400 "$STATE/munge/munge.key"
runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" --key-file="$STATE/munge/munge.key" \
  --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" --seed-file="$STATE/munge/munged.seed"
for _ in $(seq 50); do [ -s "$STATE/munge/munged.pid" ] && break; sleep 0.1; done
cp "$STATE/munge/munged.pid" "$STATE/munged.pid"

cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$SLURM_CONF" <<CONF
# written by landscape-mpi scripts/local-slurm.sh for a single-node test cluster (state in $STATE)
ClusterName=landscape
SlurmctldHost=$host
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
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
SlurmctldPidFile=$STATE/slurmctld.daemon.pid
SlurmdPidFile=$STATE/slurmd.daemon.pid
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
cat > "$STATE/etc/gres.conf" <<CONF
AutoDetect=off
NodeName=$host Name=gpu File=$STATE/gpu[0-$((GPUS - 1))]
CONF
# no cgroups in containers: an empty cgroup.conf keeps slurmd from probing them
: > "$STATE/etc/cgroup.conf"

slurmctld -D -f "$SLURM_CONF" > "$STATE/log/slurmctld.out" 2>&1 &
echo $! > "$STATE/slurmctld.pid"
slurmd -D -f "$SLURM_CONF" > "$STATE/log/slurmd.out" 2>&1 &
echo $! > "$STATE/slurmd.pid"

for _ in $(seq 120); do
  state=$(sinfo -h -o %T 2>/dev/null || true)
  case "$state" in
    idle*|mixed*|allocated*) sinfo; echo "export SLURM_CONF=$SLURM_CONF"; exit 0 ;;
    drain*|down*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
echo "SLURM did not come up; logs in $STATE/log:" >&2
tail -n 20 "$STATE"/log/*.log "$STATE"/log/*.out "$STATE/munge/munged.log" >&2 || true
stop
exit 1
