"""Stopping cleanly on a scheduler's warning: SIGTERM/SIGUSR1 (what SLURM sends before a time
limit) are recorded, and the loop saves its state at the next step boundary and exits with 75
(EX_TEMPFAIL: "try again"); a rerun resumes it."""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

from audiopetl.training.state import TrainState


class StopRequested:
    """Records SIGTERM/SIGUSR1 so the loop can save at the next step boundary and exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def interruption(signum: int, state: TrainState) -> dict[str, Any]:
    """Where a process stopped on a signal: part of the run's provenance once it resumes."""
    return {
        "signal": signal.Signals(signum).name,
        "stop": "asked to stop (a time limit's warning): saved at once",
        "epoch": state.epoch + 1,
        "batch": state.batch_pos,
        "global_step": state.global_step,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def unclean_stop(state: TrainState) -> dict[str, Any]:
    """A resume from a state saved at an epoch's end, not on a signal: the process was killed
    without a clean stop and its later steps are redone."""
    return {
        "signal": None,
        "stop": "killed without a clean stop (SIGKILL, out of memory, a node "
        "failure or a crash): resumed from the state saved at the end of an epoch",
        "epoch": state.epoch,
        "batch": state.batch_pos,
        "global_step": state.global_step,
        "slurm_job_id": None,
    }
