"""A job's log file when the workflow runs a command: every attempt appended, each opened by a
line that says which attempt and which SLURM job it is, and closed by how it ended; the one
line that says why a job failed also goes to the job's own stderr, where Snakemake and SLURM
show it.

Why not the shell's `> {log} 2>&1`: it truncates the log at each retry, losing the attempt
that failed or was stopped, and hides the cause from everything but the log.

Snakemake deletes a job's log before every attempt. So the attempts are written to a hidden
hard link beside the log (`.NAME.attempts`, the same file under a second name): the deletion
removes one name, the next attempt links the log to the other again and appends, and an attempt
that ends well removes the hidden name. Even an attempt killed outright keeps what it wrote.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

HEADER = "==== audiopetl"
ENDED = "==== ended"


def _attempt(previous: str) -> int:
    """1 + the attempts since the job last ended well."""
    lines = previous.splitlines()
    last_success = max(
        (i for i, line in enumerate(lines) if line.startswith(ENDED) and "exit 0" in line),
        default=-1,
    )
    return 1 + sum(line.startswith(HEADER) for line in lines[last_success + 1 :])


class JobLog:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so libraries' output
    too) to ``path``, appended; keep the original stderr for the final line."""

    def __init__(self, path: Path, command: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.attempts = _link_attempts(path)
        previous = path.read_text(errors="replace") if path.exists() else ""
        self.attempt = _attempt(previous)
        sys.stdout.flush()
        sys.stderr.flush()
        self.original_stderr = os.dup(2)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        slurm = os.environ.get("SLURM_JOB_ID")
        print(
            f"{HEADER} {command}: attempt {self.attempt}"
            f"{f', SLURM job {slurm}' if slurm else ''}, {platform.node()}, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}",
            flush=True,
        )

    def end(self, code: int, line: str | None) -> None:
        """Close the attempt; ``line`` (why it failed) also goes to the original stderr."""
        if line:
            print(line, file=sys.stderr, flush=True)
            os.write(self.original_stderr, (line + "\n").encode())
        print(f"{ENDED} (exit {code}), {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
        if code == 0 and self.attempts is not None:
            self.attempts.unlink(missing_ok=True)  # ended well: the next run starts afresh


def attempts_path(path: Path) -> Path:
    return path.parent / f".{path.name}.attempts"


def _link_attempts(path: Path) -> Path | None:
    """Give ``path`` and its hidden twin one file: the earlier attempts, if Snakemake deleted
    the log, else the log as it is. None where the file system has no hard links (then a
    retry's log holds only its own attempt)."""
    twin = attempts_path(path)
    try:
        if twin.exists() and not path.exists():
            os.link(twin, path)  # the earlier attempts, back under the log's name
        elif not twin.exists() or not os.path.samefile(twin, path):
            path.touch()
            twin.unlink(missing_ok=True)
            os.link(path, twin)
    except OSError:
        return None
    return twin
