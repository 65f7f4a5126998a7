"""Start-up cost, measured: when this process started, when its real work began, when it ended.

A workflow job is a fresh process that imports torch and transformers before it computes; on a
small study that start-up is most of the wall time. ``execution.json`` records it per run
(``startup_seconds``), and with ``AUDIOPETL_TIMINGS=FILE`` every command appends one JSON line
to FILE when it ends: ``benchmarks/default_study.py`` sums them into the share of a study's job
time that is start-up.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ENV = "AUDIOPETL_TIMINGS"
_marks: dict[str, float] = {}


def process_started() -> float | None:
    """The process's start as epoch seconds (10 ms resolution), from Linux's /proc; None
    elsewhere. Read by hand: psutil does the same, but is not one of our dependencies."""
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        # Field 22, starttime in clock ticks since boot; the name in field 2 may hold spaces.
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


_STARTED = process_started()


def adopt_start(started: float | None) -> None:
    """Count from another process's start: a warm-started command (audiopetl.process.warm) runs in a
    fork, and its start-up began when the command the user ran started."""
    global _STARTED
    if started is not None:
        _STARTED = started


def mark(name: str) -> None:
    """Record the first time ``name`` happens (e.g. the first training step)."""
    _marks.setdefault(name, time.time())


def since_start(name: str) -> float | None:
    if _STARTED is None or name not in _marks:
        return None
    return round(_marks[name] - _STARTED, 3)


def append_record(command: str, code: int) -> None:
    """One JSON line for this process in $AUDIOPETL_TIMINGS, when set."""
    target = os.environ.get(ENV)
    if not target or _STARTED is None:
        return
    record: dict[str, Any] = {
        "command": command,
        "exit": code,
        "pid": os.getpid(),
        "warm_server": os.environ.get("AUDIOPETL_WARM_SERVER"),  # its pid, when warm-started
        "started": _STARTED,
        "ended": time.time(),
        **{name: when for name, when in _marks.items()},
    }
    with open(target, "a") as sink:  # one short write per process: lines stay whole
        sink.write(json.dumps(record) + "\n")
