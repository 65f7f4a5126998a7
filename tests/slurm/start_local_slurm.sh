#!/usr/bin/env bash
# Start a private single-node SLURM cluster on 127.0.0.1 for the tests:
#   munged -> mariadbd -> slurmdbd (so that sacct works) -> slurmctld -> slurmd,
# with fake GPUs (gres/gpu backed by /dev/null-like files), then wait until the node is idle.
#
# Installs Debian's packages when missing (slurmctld slurmd slurm-client munge slurmdbd
# mariadb-server) without letting their maintainer scripts start any service. Every daemon it
# starts and every file it places outside its state folder is listed, as it happens, in
# $AUDIOPETL_SLURM_DIR/started; stop_local_slurm.sh stops and removes exactly those (also after a
# failure half-way through this script).
#
#   AUDIOPETL_SLURM_DIR      state, config, logs                  (default /tmp/audiopetl-slurm)
#   AUDIOPETL_SLURM_GPUS     fake GPUs on the node, 0-8           (default 2)
#   AUDIOPETL_SLURM_DB_PORT  TCP port of the private MariaDB      (default 33071, 127.0.0.1 only)
#
# Root only. SLURM's ports (6817-6819) and /etc/slurm are machine-wide: one cluster per machine.
# The config must live at /etc/slurm/slurm.conf: inside a job the executor plugin drops every
# SLURM_* variable (SLURM_CONF included) before calling srun, so clients find only the default.
set -euo pipefail

STATE=${AUDIOPETL_SLURM_DIR:-/tmp/audiopetl-slurm}
GPUS=${AUDIOPETL_SLURM_GPUS:-2}
DB_PORT=${AUDIOPETL_SLURM_DB_PORT:-33071}
CLUSTER=audiopetl
ACCOUNT=audiopetl
PARTITION=main
NODE=localhost
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

started_ms=$(($(date +%s%N) / 1000000))
say() {
    local ms=$(($(date +%s%N) / 1000000 - started_ms))
    printf '[start_local_slurm %3d.%ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"
}
fail() { say "ERROR: $*" >&2; exit 1; }
record() { echo "$*" >>"$STATE/started"; }  # what stop_local_slurm.sh undoes, in this order
listening() { timeout 1 bash -c ">/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
wait_until() {  # wait_until SECONDS WHAT COMMAND...: poll COMMAND until it succeeds
    local limit=$1 what=$2 tries
    shift 2
    for ((tries = limit * 5; tries > 0; tries--)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    fail "no $what after ${limit}s; see the logs in $STATE/log"
}
start_daemon() {  # start_daemon NAME PIDFILE COMMAND...: run a self-daemonising COMMAND, record it
    local name=$1 pidfile=$2
    shift 2
    "$@"
    wait_until 20 "$name pid file" test -s "$pidfile"
    record "pid $name $(cat "$pidfile")"
}

[ "$(id -u)" = 0 ] || fail "must run as root (it installs packages and binds SLURM's ports)"
case $STATE in /?*) ;; *) fail "AUDIOPETL_SLURM_DIR must be an absolute path other than /" ;; esac
[[ $GPUS =~ ^[0-8]$ ]] || fail "AUDIOPETL_SLURM_GPUS must be a number from 0 to 8"

# A previous run of ours that was not stopped: stop it first; anything else is in the way.
if [ -s "$STATE/started" ]; then
    say "stopping what a previous start left running"
    "$HERE/stop_local_slurm.sh"
fi
for port in 6817 6818 6819 "$DB_PORT"; do
    if listening "$port"; then fail "port $port is in use: another SLURM or database runs here"; fi
done
for name in slurm.conf gres.conf slurmdbd.conf cgroup.conf; do
    if [ -e "/etc/slurm/$name" ] || [ -L "/etc/slurm/$name" ]; then
        fail "/etc/slurm/$name exists: this machine has a SLURM configuration of its own"
    fi
done

# ---------------------------------------------------------------------------------- packages
missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' \
        || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || fail "missing ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]}"
    # Maintainer scripts must not start system-wide munge, MariaDB or SLURM services: this
    # script starts private ones and stops exactly those.
    policy=/usr/sbin/policy-rc.d
    own_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt=(apt-get -o DPkg::Lock::Timeout=300 -qq)
    status=0
    { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends "${missing[@]}"; } \
        >"/tmp/audiopetl-slurm-apt.log" 2>&1 || status=$?
    if [ -n "$own_policy" ]; then rm -f "$policy"; fi
    [ $status = 0 ] || { tail -n 30 /tmp/audiopetl-slurm-apt.log >&2; fail "apt-get failed"; }
fi
say "SLURM $(dpkg-query -W -f='${Version}' slurmctld), munge $(dpkg-query -W -f='${Version}' munge)"

# ---------------------------------------------------------------------------------- config
MARK=.audiopetl-slurm-state
if [ -e "$STATE" ] && [ ! -e "$STATE/$MARK" ] \
    && ! grep -qs "^# Written by tests/slurm/start_local_slurm.sh" "$STATE/etc/slurm.conf"; then
    fail "$STATE exists but was not made by this script; set AUDIOPETL_SLURM_DIR elsewhere"
fi
rm -rf "$STATE"
mkdir -p "$STATE"/{etc,run,log,spool/ctld,spool/d,munge,gpu}
: >"$STATE/$MARK"
: >"$STATE/started"
chmod 700 "$STATE/munge"

cpus=$(nproc)
memory_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)
node_gres=
gres_types=
if [ "$GPUS" -gt 0 ]; then
    # Fake GPUs: SLURM needs a device file per GPU; it never opens them with task/none.
    for ((i = 0; i < GPUS; i++)); do : >"$STATE/gpu/nvidia$i"; done
    printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s/gpu/nvidia[0-%d]\n' \
        "$NODE" "$STATE" $((GPUS - 1)) >"$STATE/etc/gres.conf"
    node_gres=" Gres=gpu:$GPUS"
    gres_types="GresTypes=gpu
AccountingStorageTRES=gres/gpu"
fi
cat >"$STATE/etc/slurm.conf" <<EOF
# Written by tests/slurm/start_local_slurm.sh: a private single-node cluster for the tests.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldParameters=enable_configless
SlurmdParameters=config_overrides
# No cgroups: portable to any container; limits are recorded, not enforced.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it a job that asks for no memory would take the whole node.
DefMemPerCPU=500
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
# squeue keeps finished jobs for 5 minutes (the executor plugin's squeue mode needs that).
MinJobAge=300
# As on most clusters: SIGTERM, then SIGKILL 30 s later, when a job reaches its time limit.
KillWait=30
Waittime=0
$gres_types
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb$node_gres State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$STATE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=audiopetl-test
StorageLoc=slurm_acct_db
EOF
chmod 600 "$STATE/etc/slurmdbd.conf"

if [ ! -d /etc/slurm ]; then
    mkdir /etc/slurm
    record "dir /etc/slurm"
fi
for name in slurm.conf slurmdbd.conf $([ "$GPUS" -gt 0 ] && echo gres.conf); do
    ln -s "$STATE/etc/$name" "/etc/slurm/$name"
    record "link /etc/slurm/$name $STATE/etc/$name"
done

# ---------------------------------------------------------------------------------- daemons
if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "using the munged already running on this machine"
else
    mungekey --create --keyfile="$STATE/munge/munge.key"
    chmod 400 "$STATE/munge/munge.key"
    if [ ! -d /run/munge ]; then
        mkdir /run/munge
        record "dir /run/munge"
    fi
    start_daemon munged "$STATE/run/munged.pid" munged --key-file="$STATE/munge/munge.key" \
        --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" \
        --seed-file="$STATE/munge/munged.seed"
    wait_until 10 munged bash -c 'munge -n </dev/null | unmunge'
fi

mariadb-install-db --no-defaults --user=root --datadir="$STATE/db" --skip-test-db \
    >"$STATE/log/mariadb-install.log" 2>&1 \
    || { cat "$STATE/log/mariadb-install.log" >&2; fail "mariadb-install-db failed"; }
# mariadbd does not daemonise: detach it (setsid, no inherited output) so that it outlives
# this script's caller, and record it through its pid file.
setsid mariadbd --no-defaults --user=root --datadir="$STATE/db" --bind-address=127.0.0.1 \
    --port="$DB_PORT" --socket="$STATE/run/mariadb.sock" --pid-file="$STATE/run/mariadbd.pid" \
    --log-error="$STATE/log/mariadbd.log" --innodb-buffer-pool-size=64M \
    </dev/null >/dev/null 2>&1 &
wait_until 30 "mariadbd pid file" test -s "$STATE/run/mariadbd.pid"
record "pid mariadbd $(cat "$STATE/run/mariadbd.pid")"
wait_until 30 "answer from mariadbd" \
    mariadb-admin --no-defaults --socket="$STATE/run/mariadb.sock" ping
mariadb --no-defaults --socket="$STATE/run/mariadb.sock" -uroot -e "
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'audiopetl-test';
    CREATE USER 'slurm'@'localhost' IDENTIFIED BY 'audiopetl-test';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
say "mariadbd up on 127.0.0.1:$DB_PORT"

start_daemon slurmdbd "$STATE/run/slurmdbd.pid" slurmdbd
wait_until 30 "answer from slurmdbd" sacctmgr -n list cluster
sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=tests Organization=audiopetl \
    >/dev/null
sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null
say "slurmdbd up; account $ACCOUNT"

start_daemon slurmctld "$STATE/run/slurmctld.pid" slurmctld
wait_until 30 "answer from slurmctld" scontrol ping
start_daemon slurmd "$STATE/run/slurmd.pid" slurmd -N "$NODE"
wait_until 60 "idle node" bash -c "[ \"\$(sinfo -h -n $NODE -o %t)\" = idle ]"
sinfo -o '%P %a %l %D %t %c %m %G %N'
say "cluster $CLUSTER ready: partition $PARTITION, $cpus CPUs, $memory_mb MB, $GPUS fake GPUs"
