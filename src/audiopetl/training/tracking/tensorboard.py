"""TensorBoard: event files in the run folder's tracking/tensorboard, so `tensorboard --logdir
results/EXPERIMENT/runs` shows every run of a study side by side. torch's SummaryWriter writes
them (it needs the tensorboard package, in both environments)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from audiopetl.training.tracking.base import Tracker, register


@register
class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def start(self, resume_id: str | None, params: Mapping[str, str]) -> str | None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run appends a new event file to the same folder: one run in TensorBoard.
        self.writer: Any = SummaryWriter(log_dir=str(self.folder / "tensorboard"))
        if resume_id is None:
            self.writer.add_text("settings", _table(params), 0)
        return "tensorboard"

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, summary: Mapping[str, float], tags: Mapping[str, str]) -> None:
        for key, value in summary.items():
            self.writer.add_scalar(key, value, 0)
        self.writer.add_text("provenance", _table(tags), 0)
        self.writer.add_text("summary", json.dumps(dict(summary), indent=1), 0)
        self.writer.close()

    def close(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()


def _table(values: Mapping[str, Any]) -> str:
    """A Markdown table, which TensorBoard's text tab renders."""
    rows = [f"| {key} | {value} |" for key, value in values.items()]
    return "\n".join(["| setting | value |", "|---|---|", *rows])
