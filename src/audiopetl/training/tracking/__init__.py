"""A run's experiment trackers (config `tracking:`): DVCLive, TensorBoard, Weights & Biases,
MLflow, one module each, found by name through the registry in ``base`` and imported only when
a config names them.

:class:`Tracking` is what the loop holds: it fans each call out to the run's backends and
keeps a failing one from touching the run. A tracker that raises (no network, a full disk, a
server that went away) is reported once, in one line, and dropped; the run goes on and its
results are what they would have been without it. The ids the backends return are kept in the
resume state, so a resumed run continues the same tracker run where the backend allows it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from audiopetl.core.settings import RunSettings
from audiopetl.core.tracking import TrackingSettings
from audiopetl.models.strategies import ParameterCount
from audiopetl.training.run_folder import TRACKING
from audiopetl.training.runtime import memory_figures
from audiopetl.training.state import StepStats, TrainState
from audiopetl.training.tracking.base import Tracker, flat, tracker_class

log = logging.getLogger(__name__)


def _load(name: str) -> None:
    importlib.import_module(f"{__name__}.{name}")


class Tracking:
    def __init__(self, settings: TrackingSettings | None, folder: Path) -> None:
        self.folder = folder
        self.live: dict[str, Tracker] = {}
        self.failed: dict[str, str] = {}
        self.ids: dict[str, str] = {}
        self.settings = settings
        self.clock = time.perf_counter()  # the start of the steps not yet reported

    @property
    def active(self) -> bool:
        return bool(self.live)

    def start(self, resume_ids: Mapping[str, str], params: Mapping[str, Any]) -> None:
        """Open every configured backend, continuing the runs of ``resume_ids``."""
        if self.settings is None or not self.settings.backends:
            return
        values = {k: _text(v) for k, v in flat(params).items()}
        for name in self.settings.backends:
            cls = self._guard(name, tracker_class, name, _load)
            if cls is None:
                continue
            self.live[name] = tracker = cls(self.settings, self.folder)
            run_id = self._call(name, tracker.start, resume_ids.get(name), values)
            if run_id is not None:
                self.ids[name] = run_id

    # -- what the loop reports ----------------------------------------------------------------
    def open_run(self, run: RunSettings, params: ParameterCount, state: TrainState) -> None:
        """Open the trackers (continuing their runs on a resume) with the run's resolved
        settings as parameters; their ids go into the resume state."""
        self.start(
            state.tracking,
            {
                "run": run.names,
                "pretrained": run.pretrained,
                "model": run.model.record(),
                "features": run.features.record(),
                "strategy": run.strategy.record(),
                "training": run.training.record(),
                "parameters": {"trainable": params.trainable, "total": params.total},
            },
        )
        state.tracking = dict(self.ids)
        self.clock = time.perf_counter()

    def steps(
        self,
        pending: list[StepStats],
        losses: list[list[float]],
        norms: list[float | None],
        device: torch.device,
    ) -> None:
        """Each flushed step's loss, gradient norm and learning rate; the interval's samples/s
        and memory with the last of them."""
        if not self.live:
            return
        now = time.perf_counter()
        seconds, self.clock = now - self.clock, now
        samples = sum(sum(stats.sizes) for stats in pending)
        for k, (stats, step_losses, norm) in enumerate(zip(pending, losses, norms, strict=True)):
            loss = sum(v * n for v, n in zip(step_losses, stats.sizes, strict=True))
            values: dict[str, float | None] = {
                "train/loss": loss / sum(stats.sizes),
                "train/grad_norm": norm,
                "train/lr": stats.lr,
            }
            if k == len(pending) - 1:
                values["train/samples_per_s"] = samples / max(seconds, 1e-9)
                values.update(memory_figures(device))
            self.metrics(values, stats.step)

    def epoch(self, row: Mapping[str, Any], metric: str, step: int, device: torch.device) -> None:
        """An epoch's row of history.csv (validation included)."""
        if not self.live:
            return
        values = {
            "epoch/number": row["epoch"],
            "epoch/train_loss": row["train_loss"],
            "epoch/lr": row["lr"],
            "epoch/samples_per_s": row["samples_per_s"],
            "val/loss": row["val_loss"],
            "val/accuracy": row["val_accuracy"],
            f"val/{metric}": row["val_metric"],
        }
        self.metrics({**values, **memory_figures(device)}, step)
        self.clock = time.perf_counter()  # validation is not training time

    def close_run(self, metrics: Mapping[str, Any], run_folder: Path) -> None:
        """The test metrics and the run folder's provenance, then the trackers' files into
        the run folder (tracking/)."""
        if self.live:
            summary = {
                "test": {**metrics["test"], "loss": metrics["test_loss"]},
                "best_epoch": metrics["best_epoch"],
                "params": {
                    "trainable": metrics["trainable_params"],
                    "total": metrics["total_params"],
                    "trainable_percent": metrics["trainable_percent"],
                },
            }
            record = json.loads((run_folder / "run.json").read_text())
            self.finish(summary, {k: v for k, v in record.items() if k != "config"})
        self.move_into(run_folder)

    # -- the backends -------------------------------------------------------------------------
    def metrics(self, values: Mapping[str, float | None], step: int) -> None:
        numbers = {k: float(v) for k, v in values.items() if v is not None}
        for name, tracker in list(self.live.items()):
            self._call(name, tracker.metrics, numbers, step)

    def finish(self, summary: Mapping[str, Any], provenance: Mapping[str, Any]) -> None:
        numbers = {k: float(v) for k, v in flat(summary, sep="/").items() if _is_number(v)}
        tags = {k: _text(v) for k, v in flat(provenance).items() if v is not None}
        for name, tracker in list(self.live.items()):
            self._call(name, tracker.finish, numbers, tags)
        self.live.clear()

    def close(self) -> None:
        """Let go without finishing: the run stopped (a time limit) or failed."""
        for name, tracker in list(self.live.items()):
            self._call(name, tracker.close)
        self.live.clear()

    def record(self) -> dict[str, Any]:
        """What execution.json says of the trackers: their run ids and any failure."""
        if self.settings is None or not self.settings.backends:
            return {}
        return {
            "backends": list(self.settings.backends),
            "run_name": self.settings.run_name,
            "ids": dict(self.ids),
            "failed": dict(self.failed),
        }

    def move_into(self, run_folder: Path) -> None:
        """The trackers' files into the finished run folder (as tracking/)."""
        if not self.folder.is_dir():
            return
        target = run_folder / TRACKING
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(self.folder, target)
        except OSError as err:
            log.warning("tracking: could not move %s into %s (%s)", self.folder, target, err)

    # -- keeping a failing backend away from the run ----------------------------------------
    def _call(self, name: str, call: Callable[..., Any], *args: Any) -> Any:
        if name not in self.live:
            return None
        result = self._guard(name, call, *args)
        if name in self.failed:
            self.live.pop(name, None)
        return result

    def _guard(self, name: str, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as err:  # a tracker's failure must never stop the run
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            self.failed[name] = f"{type(err).__name__}: {first_line}"
            log.warning(
                "tracking: %s failed (%s); the run goes on without it", name, self.failed[name]
            )
            return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return "null" if value is None else str(value)
