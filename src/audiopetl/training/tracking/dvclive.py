"""DVCLive: metrics as files `dvc exp show` and `dvc plots` read, in the run folder's
tracking/dvclive. It is told not to write or change the project's dvc.yaml and not to save a
DVC experiment: the pipeline's own dvc.yaml stays the one source of its stages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audiopetl.training.tracking.base import Tracker, register


@register
class DvcLiveTracker(Tracker):
    name = "dvclive"

    def start(self, resume_id: str | None, params: Mapping[str, str]) -> str | None:
        from dvclive import Live

        self.live: Any = Live(
            dir=str(self.folder / "dvclive"),
            resume=resume_id is not None,
            report=None,
            save_dvc_exp=False,
            dvcyaml=None,  # never the project's dvc.yaml
            monitor_system=False,
        )
        if resume_id is None:
            self.live.log_params(dict(params))
        return "dvclive"  # the folder itself is the run: a resume reopens it

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        self.live.step = step
        for key, value in values.items():
            self.live.log_metric(key, value)
        self.live.make_summary()

    def finish(self, summary: Mapping[str, float], tags: Mapping[str, str]) -> None:
        for key, value in summary.items():  # into metrics.json only, not the step plots
            self.live.log_metric(key, value, plot=False)
        self.live.log_params({f"provenance.{k}": v for k, v in tags.items()})
        self.live.make_summary()
        self.live.end()
