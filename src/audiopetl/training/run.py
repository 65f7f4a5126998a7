"""Running a training job: set the run up, resume or start it, train, write its folder, then
(in the workflow) score it again from its files; a failure a retry cannot change is recorded
so the next attempt fails at once; the resume state goes once everything is written."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from audiopetl.core import compat, provenance
from audiopetl.core.atomic import write_json
from audiopetl.core.errors import DataError, TrainingError
from audiopetl.core.failures import writing
from audiopetl.core.paths import PRETRAINED
from audiopetl.core.settings import RunSettings
from audiopetl.training.determinism import make_deterministic
from audiopetl.training.signals import StopRequested
from audiopetl.training.trainer import Trainer


def train_run(
    run: RunSettings,
    progress: bool = False,
    after: Callable[[Trainer], None] | None = None,
) -> dict[str, Any]:
    return run_trainer(run, progress, after=after).metrics


def run_trainer(
    run: RunSettings,
    progress: bool = False,
    extra_outputs: Callable[[Path, nn.Module], None] | None = None,
    after: Callable[[Trainer], None] | None = None,
) -> Trainer:
    """Train, write the run folder, then ``after`` (the workflow's evaluation from the files).
    The resume state goes only once all of it is done: a stop or a kill before that costs a
    rerun of the rest, never of the training."""
    wall_started = time.perf_counter()
    trainer = Trainer(run, progress)
    t = run.training
    trainer.determinism = make_deterministic(run.seed, t.threads, t.deterministic, trainer.device)
    # From here on a SLURM warning is kept for the loop to act on, even when it comes while
    # the data and the model are still loading (a short attempt gets it early).
    with StopRequested() as stop:
        trainer.load_data()
        trainer.build()
        marker = FailureMarker(run, trainer.identity_parts())
        marker.refuse_a_repeat()
        try:
            state = trainer.try_resume()
            trainer.tracking.open_run(run, trainer.params, state)
            state = trainer.fit(state, stop)
            # A stop asked for from here on waits: what is left is short.
            trainer.release_optimizer()
            trainer.metrics = trainer.finish(state, wall_started, extra_outputs)
            trainer.tracking.close_run(trainer.metrics, run.out)
            if after is not None:
                after(trainer)
        except (TrainingError, DataError) as err:
            marker.record(err)
            raise
        finally:
            trainer.tracking.close()  # a stop or a failure: let the trackers go unfinished
    shutil.rmtree(run.resume_dir, ignore_errors=True)
    marker.clear()
    return trainer


class FailureMarker:
    """A run that failed for a reason a retry cannot change (a NaN loss, the at-chance guard)
    fails again at once on the next attempt, with the original reason, instead of training
    for hours to fail the same way: the workflow retries every failure, time limits included.
    It is the same run when its settings, data, starting weights and code are."""

    def __init__(self, run: RunSettings, identity: Mapping[str, str]) -> None:
        self.path = run.out.parent / f".{run.out.name}.failed.json"
        self.identity = {**identity, "code": provenance.code_fingerprint()}

    def refuse_a_repeat(self) -> None:
        try:
            previous = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if previous.get("identity") == self.identity:
            raise TrainingError(
                f"{previous.get('error')} [the previous attempt failed so; a retry cannot "
                f"change that; after a change that could, or to try anyway, remove {self.path}]"
            )
        self.clear()

    def record(self, err: Exception) -> None:
        write_json(self.path, {"identity": self.identity, "error": str(err)})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def pretrain(run: RunSettings, progress: bool = False) -> Path:
    """Train a model on its source task (``run``: Study.pretrain_run) and save it in
    save_pretrained form under ``run.out/pretrained``, beside the source run's own metrics and
    provenance."""

    def save_pretrained(folder: Path, trained: nn.Module) -> None:
        with writing(folder / PRETRAINED):
            compat.save_pretrained(trained, folder / PRETRAINED)

    run_trainer(run, progress, save_pretrained)
    return run.out / PRETRAINED
