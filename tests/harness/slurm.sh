#!/usr/bin/env bash
# tests/harness/slurm.sh -- bnstudy's single-node Slurm cluster for the `--slurm` tests and CI.
#
# Debian 12 (Slurm 22.05), no systemd needed, must run as root. Idempotent: re-running only
# (re)starts what is not running or whose config changed, so CI and developers can call it before
# every test run. Adapted from /work/shared/tools/setup_slurm.sh, with the project's choices:
#
# * slurmdbd + MariaDB (default, WITH_SLURMDBD=1): `sacct` works, which (a) is the slurm
#   executor plugin's default job-status command and (b) lets the tests read job states and
#   start/end times. Without accounting, `sacct` exists but fails ("accounting storage is
#   disabled"); the plugin then never learns that a job finished and Snakemake waits forever.
#   WITH_SLURMDBD=0 is supported for quick experiments only: then Snakemake must be given
#   `--slurm-status-command squeue` (MinJobAge=3600 keeps finished jobs visible to squeue), and
#   tests/test_slurm.py's sacct assertions cannot run.
# * FAKE_GPUS=2 (default): the node advertises GRES gpu:fake:2 backed by /dev/null clones, so the
#   profile's `gpu: 1` requests (sbatch --gpus=1) are scheduled exactly as on a GPU cluster, two
#   train/analyze jobs at a time, while the jobs themselves run on the CPU (torch sees no CUDA).
#   The GPU type is "fake": a `gpu_model` other than GPU_TYPE cannot be scheduled here.
# * An account (SLURM_ACCOUNT, default "bnstudy") that root and the calling user belong to, so
#   the profile's `slurm_account` is validated by the plugin (sacctmgr) as on a real cluster.
#
#   bash tests/harness/slurm.sh            # install (apt) if needed, start, wait until usable
#   bash tests/harness/slurm.sh selftest   # start, then sbatch a trivial job and wait for COMPLETED
#   bash tests/harness/slurm.sh status     # exit 0 iff the cluster is up and accounting works
#   bash tests/harness/slurm.sh stop       # stop the daemons this script started (pid files)
#
# Environment: WITH_SLURMDBD (1), FAKE_GPUS (2), GPU_TYPE (fake), SLURM_CLUSTER (ci),
#   SLURM_PARTITION (debug), SLURM_ACCOUNT (bnstudy), SLURM_DB_PASS, USE_CGROUPS (0).
# Logs: /var/log/slurm/{slurmctld,slurmd,slurmdbd}.log
set -euo pipefail

WITH_SLURMDBD=${WITH_SLURMDBD:-1}
FAKE_GPUS=${FAKE_GPUS:-2}
USE_CGROUPS=${USE_CGROUPS:-0}
GPU_TYPE=${GPU_TYPE:-fake}
CLUSTER=${SLURM_CLUSTER:-ci}
PARTITION=${SLURM_PARTITION:-debug}
ACCOUNT=${SLURM_ACCOUNT:-bnstudy}
DBPASS=${SLURM_DB_PASS:-slurmdbpass}
H=$(hostname -s)
export DEBIAN_FRONTEND=noninteractive
CONF=/etc/slurm/slurm.conf
RUN=/run/slurm

log() { echo "[slurm.sh $(date +%T)] $*"; }
die() {
  echo "[slurm.sh] FAILED: $*" >&2
  for f in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log /var/log/slurm/slurmdbd.log; do
    [ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}
trap 'die "line $LINENO: $BASH_COMMAND"' ERR
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop_pidfile() {
  if alive "$1"; then
    local p; p=$(cat "$1"); kill "$p"
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$1"
}
wait_for() { # wait_for <seconds> <cmd...>
  local t=$1; shift
  for _ in $(seq $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "timeout waiting for: $*" >&2; return 1
}
node_ready() { sinfo -h -n "$H" -o %t | grep -Eq '^(idle|mix|alloc)$'; }
cluster_ok() {
  scontrol ping 2>/dev/null | grep -q UP || return 1
  node_ready || return 1
  if [ "$WITH_SLURMDBD" = 1 ]; then sacct -n -X -S now-1minutes >/dev/null 2>&1 || return 1; fi
}

case "${1:-start}" in
  stop)
    trap - ERR
    stop_pidfile $RUN/slurmd.pid; stop_pidfile $RUN/slurmctld.pid; stop_pidfile $RUN/slurmdbd.pid
    if [ -x /etc/init.d/mariadb ] && mysqladmin ping >/dev/null 2>&1; then
      /etc/init.d/mariadb stop >/dev/null || true
    fi
    stop_pidfile /run/munge/munged.pid
    log "stopped"; exit 0 ;;
  status)
    trap - ERR
    if cluster_ok; then sinfo; exit 0; else echo "slurm cluster is not (fully) up" >&2; exit 1; fi ;;
  start|selftest) ;;
  *) echo "usage: $0 [start|selftest|status|stop]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

# ---- 1. packages -----------------------------------------------------------
PKGS="slurmctld slurmd slurm-client munge"
[ "$WITH_SLURMDBD" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
MISSING=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || MISSING="$MISSING $p"
done
if [ -n "$MISSING" ]; then
  log "installing:$MISSING"
  apt-get update -q >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $MISSING >/dev/null
fi

# ---- 2. host name must resolve (slurmd looks itself up) ---------------------
getent hosts "$H" >/dev/null || echo "127.0.0.1 $H" >> /etc/hosts

# ---- 3. munge -------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --force --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 sh -c 'munge -n | unmunge'
fi

# ---- 4. slurm.conf ----------------------------------------------------------
install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm $RUN
install -d /var/spool/slurmd
# CPUs/memory from slurmd's own view of the machine; ~5% memory headroom (else the node drains)
read -r CPUS MEM < <(slurmd -C | awk '/^NodeName/{for(i=1;i<=NF;i++){split($i,a,"=");
   if(a[1]=="CPUs")c=a[2]; if(a[1]=="RealMemory")m=a[2]}} END{print c, m}')
MEM=$((MEM * 95 / 100))
GRES_NODE="" GRES_TYPES=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  GRES_TYPES="GresTypes=gpu"; GRES_NODE="Gres=gpu:${GPU_TYPE}:${FAKE_GPUS}"
  FILES=""
  for i in $(seq 0 $((FAKE_GPUS - 1))); do
    # gres needs character devices; clone /dev/null's major/minor
    [ -c /dev/fakegpu$i ] || mknod /dev/fakegpu$i c 1 3
    FILES="${FILES:+$FILES,}/dev/fakegpu$i"
  done
  echo "NodeName=$H Name=gpu Type=$GPU_TYPE File=$FILES" > /etc/slurm/gres.conf.new
else
  : > /etc/slurm/gres.conf.new
fi
if [ "$USE_CGROUPS" = 1 ]; then
  PROCTRACK="ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity"
  printf 'CgroupPlugin=autodetect\nConstrainCores=yes\nConstrainRAMSpace=yes\n' > /etc/slurm/cgroup.conf
else
  # no cgroups: works in any container
  PROCTRACK="ProctrackType=proctrack/linuxproc
TaskPlugin=task/none"
  rm -f /etc/slurm/cgroup.conf
fi
if [ "$WITH_SLURMDBD" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$H
AccountingStorageTRES=gres/gpu
# keep sbatch --comment in the accounting DB: the plugin puts rule_<rule>_wildcards_... there
AccountingStoreFlags=job_comment"
else
  ACCT="AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log"
fi
cat > $CONF.new <<CONF_EOF
ClusterName=$CLUSTER
SlurmctldHost=$H
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$PROCTRACK
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((MEM / CPUS))
ReturnToService=2
# a cancelled or preempted job gets SIGTERM, then KillWait seconds before SIGKILL
KillWait=10
# keep finished jobs visible to squeue for 1h (the plugin's squeue status mode)
MinJobAge=3600
$ACCT
$GRES_TYPES
NodeName=$H CPUs=$CPUS RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=$PARTITION Nodes=$H Default=YES MaxTime=INFINITE State=UP
CONF_EOF
CHANGED=0
cmp -s $CONF.new $CONF || { mv $CONF.new $CONF; CHANGED=1; }
rm -f $CONF.new
if cmp -s /etc/slurm/gres.conf.new /etc/slurm/gres.conf 2>/dev/null; then
  rm -f /etc/slurm/gres.conf.new
else
  mv /etc/slurm/gres.conf.new /etc/slurm/gres.conf; CHANGED=1
fi

# ---- 5. MariaDB + slurmdbd (accounting: sacct) --------------------------------
if [ "$WITH_SLURMDBD" = 1 ]; then
  if ! mysqladmin ping >/dev/null 2>&1; then
    log "starting mariadb"
    /etc/init.d/mariadb start >/dev/null
    wait_for 30 mysqladmin ping
  fi
  mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > /etc/slurm/slurmdbd.conf.new <<DBD_EOF
AuthType=auth/munge
DbdHost=$H
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
DBD_EOF
  DBD_CHANGED=0
  cmp -s /etc/slurm/slurmdbd.conf.new /etc/slurm/slurmdbd.conf || DBD_CHANGED=1
  mv /etc/slurm/slurmdbd.conf.new /etc/slurm/slurmdbd.conf
  chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 0600 /etc/slurm/slurmdbd.conf
  if [ $DBD_CHANGED = 1 ] || ! alive $RUN/slurmdbd.pid; then
    log "(re)starting slurmdbd"
    stop_pidfile $RUN/slurmdbd.pid
    slurmdbd
  fi
  wait_for 30 sacctmgr -n list cluster
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    CHANGED=1  # slurmctld must register with the new cluster entry
  fi
  # the account the tests (and profile's slurm_account) use; root and the sudo caller join it
  sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT" \
    || sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" Description=bnstudy Organization=bnstudy >/dev/null
  for u in root ${SUDO_USER:-}; do
    sacctmgr -n -P list assoc user="$u" account="$ACCOUNT" format=user | grep -qx "$u" \
      || sacctmgr -i add user "$u" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
  done
fi

# ---- 6. slurmctld + slurmd -------------------------------------------------
if [ $CHANGED = 1 ] || ! alive $RUN/slurmctld.pid || ! alive $RUN/slurmd.pid; then
  log "(re)starting slurmctld and slurmd"
  stop_pidfile $RUN/slurmd.pid
  stop_pidfile $RUN/slurmctld.pid
  slurmctld
  wait_for 30 sh -c 'scontrol ping | grep -q UP'
  slurmd
fi
if ! wait_for 30 node_ready; then
  scontrol update nodename="$H" state=resume || true
  wait_for 15 node_ready || die "node $H did not become idle: $(sinfo -h -n "$H" -o '%t %E')"
fi
if [ "$WITH_SLURMDBD" = 1 ]; then
  wait_for 30 sacct -n -X -S now-1minutes || die "sacct does not work (slurmdbd/MariaDB)"
fi
log "cluster '$CLUSTER' ready: partition '$PARTITION', account '$ACCOUNT', node $H, CPUs=$CPUS," \
    "RealMemory=$MEM, GPUs=${FAKE_GPUS} (type $GPU_TYPE), accounting=$([ "$WITH_SLURMDBD" = 1 ] && echo slurmdbd || echo none)"
sinfo

# ---- 7. optional self test ---------------------------------------------------
if [ "${1:-start}" = selftest ]; then
  GPU_ARG=""; [ "$FAKE_GPUS" -gt 0 ] && GPU_ARG="--gpus=1"
  ACCOUNT_ARG=""; [ "$WITH_SLURMDBD" = 1 ] && ACCOUNT_ARG="-A $ACCOUNT"
  # shellcheck disable=SC2086
  JOB=$(sbatch --parsable -p "$PARTITION" $ACCOUNT_ARG $GPU_ARG --mem 100 -t 1 -J bnstudy-selftest \
        -o /tmp/bnstudy-selftest-%j.out --wrap 'echo hello from $SLURM_JOB_ID on $(hostname) gpus=${CUDA_VISIBLE_DEVICES:-none}')
  log "submitted self-test job $JOB"
  done_ok() {
    if [ "$WITH_SLURMDBD" = 1 ]; then sacct -n -X -P -j "$JOB" -o State | grep -qx COMPLETED
    else squeue -h --states=all -j "$JOB" -o %T | grep -qx COMPLETED; fi
  }
  wait_for 60 done_ok || die "self-test job $JOB did not complete: $(scontrol show job "$JOB" 2>&1 | head -5)"
  cat /tmp/bnstudy-selftest-"$JOB".out
  rm -f /tmp/bnstudy-selftest-"$JOB".out
  log "self test passed"
fi
