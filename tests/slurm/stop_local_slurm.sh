#!/usr/bin/env bash
# Stop exactly what start_local_slurm.sh started, as listed in $AUDIOPETL_SLURM_DIR/started:
# cancel the private cluster's jobs, stop its daemons (newest first, each only if its pid still
# runs the program recorded for it), remove the /etc/slurm links and folder it made. Safe to run
# twice, and after a start that failed half-way. Leaves the logs in $AUDIOPETL_SLURM_DIR/log.
set -uo pipefail

STATE=${AUDIOPETL_SLURM_DIR:-/tmp/audiopetl-slurm}
LIST=$STATE/started

say() { printf '[stop_local_slurm] %s\n' "$*"; }

[ -s "$LIST" ] || { say "nothing recorded in $LIST: nothing to stop"; exit 0; }

recorded() { grep -q "^pid $1 " "$LIST"; }

# Jobs first, while slurmctld and slurmd can still end them cleanly (their processes belong to
# slurmd's job steps, which stop with them).
if recorded slurmctld && recorded slurmd && scontrol ping >/dev/null 2>&1; then
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        say "cancelling jobs $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for _ in $(seq 1 150); do
            [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi

stop_pid() {  # stop_pid NAME PID: TERM (KILL after 20 s) if PID still runs NAME
    local name=$1 pid=$2
    if ! kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) is no longer running"
        return
    fi
    # The process name, not the executable: Debian installs slurmctld as slurmctld-wlm.
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
        say "pid $pid is no longer $name; left alone"
        return
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { say "stopped $name (pid $pid)"; return; }
        sleep 0.2
    done
    say "$name (pid $pid) ignored SIGTERM for 20 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
}

# Undo in reverse order of the record.
tac "$LIST" | while read -r kind name target; do
    case $kind in
        pid) stop_pid "$name" "$target" ;;
        link)
            if [ -L "$name" ] && [ "$(readlink "$name")" = "$target" ]; then
                rm -f "$name" && say "removed $name"
            fi
            ;;
        dir) rmdir "$name" 2>/dev/null && say "removed $name" ;;
    esac
done
rm -f "$LIST"
