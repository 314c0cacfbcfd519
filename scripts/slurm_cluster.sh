#!/usr/bin/env bash
# A throwaway single-node SLURM cluster with accounting, on this machine (Debian, as root).
#
#   scripts/slurm_cluster.sh start [DIR]   start munge, MariaDB, slurmdbd, slurmctld, slurmd;
#                                          state, logs and pid files live in DIR (default: a new
#                                          temporary folder); prints the line to eval:
#                                          export SLURM_CONF=DIR/slurm.conf
#   scripts/slurm_cluster.sh stop DIR      stop each daemon by the PID in its pid file (reverse
#                                          order), then remove DIR
#
# Needs: apt-get install slurm-wlm munge slurmdbd mariadb-server (what .ci/run installs).
# What it configures and why: docs/slurm_test_cluster.md. In short: cons_tres without
# cgroups, accounting through slurmdbd (submitit reads job states with sacct), and
# AuthInfo=cred_expire=10 so that a requeued job restarts after ~11 s instead of 121 s.
# Ports are chosen free at start, so a stray daemon elsewhere does not break it.
set -euo pipefail

die() { echo "slurm_cluster: $*" >&2; exit 1; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "timed out after ${limit}s waiting for $what (logs in $DIR)"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
stop_pidfiles() {  # stop_pidfiles FILE...: SIGTERM the PIDs in the FILEs, wait up to 10 s, then SIGKILL
  local file pid pids=()
  for file in "$@"; do
    [ -s "$file" ] || continue
    pid=$(cat "$file")
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$file"
  done
  for _ in $(seq 100); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "slurm_cluster: pid $pid ignored SIGTERM; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

stop() {
  DIR=${1:?usage: slurm_cluster.sh stop DIR}
  [ -d "$DIR" ] || return 0
  # jobs first, while slurmd can still hear their completion (else slurmstepd lingers)
  if [ -s "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    local jobs
    jobs=$(SLURM_CONF="$DIR/slurm.conf" squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      # shellcheck disable=SC2086
      SLURM_CONF="$DIR/slurm.conf" scancel $jobs 2>/dev/null || true
    fi
    for _ in $(seq 150); do
      [ -z "$(SLURM_CONF="$DIR/slurm.conf" squeue -h 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
  # reverse start order, each daemon by the PID in its pid file (munged.pid exists only
  # when this script started munged; a munged that was already running is left alone)
  stop_pidfiles "$DIR/slurmd.pid" "$DIR/slurmctld.pid"
  stop_pidfiles "$DIR/slurmdbd.pid"
  stop_pidfiles "$DIR/db/mariadb.pid" "$DIR/munged.pid"
  case "$DIR" in
    /tmp/*|/var/tmp/*|"${TMPDIR:-/tmp}"/*) rm -rf "$DIR" ;;
    *) [ -e "$DIR/.invbench-slurm" ] && rm -rf "$DIR" ;;
  esac
}

start() {
  [ "$(id -u)" = 0 ] || die "must run as root (the daemons run as root, munge and mysql)"
  for b in munged slurmctld slurmd slurmdbd mariadbd mariadb-install-db sinfo sacctmgr; do
    command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || die "$b is missing: apt-get install slurm-wlm munge slurmdbd mariadb-server"
  done
  export PATH="$PATH:/usr/sbin:/sbin"
  DIR=${1:-$(mktemp -d /tmp/invbench-slurm.XXXXXX)}
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  touch "$DIR/.invbench-slurm"
  chmod 755 "$DIR"
  STARTED=0
  trap '[ "$STARTED" = 1 ] || { echo "slurm_cluster: start failed; stopping what started" >&2; stop "$DIR"; }' EXIT

  # 1. munge: reuse a running munged, else start one and remember its pid
  mkdir -p /run/munge && chown munge:munge /run/munge
  if ! (munge -n | unmunge) >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/invbench-munged.pid
    wait_for 10 munged sh -c 'munge -n | unmunge'
    cp /run/munge/invbench-munged.pid "$DIR/munged.pid" && rm -f /run/munge/invbench-munged.pid
  fi

  # 2. MariaDB on its own data folder and a free port
  local db_port dbd_port ctld_port d_port
  db_port=$(free_port); dbd_port=$(free_port); ctld_port=$(free_port); d_port=$(free_port)
  # (its socket, pid and log files in a folder the mysql user owns)
  mkdir -p "$DIR/db/data" && chown -R mysql:mysql "$DIR/db"
  mariadb-install-db --user=mysql --datadir="$DIR/db/data" --auth-root-authentication-method=socket \
    >"$DIR/mariadb-install.log" 2>&1
  mariadbd --no-defaults --user=mysql --datadir="$DIR/db/data" --socket="$DIR/db/mysql.sock" \
    --pid-file="$DIR/db/mariadb.pid" --bind-address=127.0.0.1 --port="$db_port" \
    --log-error="$DIR/db/mariadb.log" >/dev/null 2>&1 &
  wait_for 30 MariaDB mariadb --socket="$DIR/db/mysql.sock" -u root -e 'SELECT 1'
  mariadb --socket="$DIR/db/mysql.sock" -u root -e "
    CREATE USER 'slurm'@'localhost' IDENTIFIED BY 'invbench';
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'invbench';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

  # 3. configuration
  cat >"$DIR/slurm.conf" <<CONF
ClusterName=testcluster
SlurmctldHost=localhost
SlurmUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
SchedulerType=sched/backfill
# look at pending jobs every second (defaults: 60 and 30 s): a requeued job starts once it may
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/slurmd
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  cat >"$DIR/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$dbd_port
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=invbench
StorageLoc=slurm_acct_db
LogFile=$DIR/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
CONF
  chmod 600 "$DIR/slurmdbd.conf"
  mkdir -p "$DIR/state" "$DIR/slurmd"
  export SLURM_CONF="$DIR/slurm.conf"

  # 4. slurmdbd, then the controller (clean state) and the node daemon
  slurmdbd
  wait_for 30 slurmdbd sacctmgr -n show cluster
  slurmctld -c
  slurmd -N localhost
  wait_for 30 "the node to be idle" sh -c 'sinfo -h -o %t | grep -qx idle'
  STARTED=1
  echo "export SLURM_CONF=$DIR/slurm.conf"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 start [DIR] | stop DIR" >&2; exit 2 ;;
esac
