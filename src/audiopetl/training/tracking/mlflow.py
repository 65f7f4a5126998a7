"""MLflow: metrics, parameters and tags through its client, to the configured tracking URI or
by default a file store in results/mlruns. A resumed run continues the same MLflow run: its
id is kept in the resume state.

MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE is set; audiopetl sets it for a
file URI on purpose: a file store needs no server or database, and unlike SQLite it takes
many SLURM jobs writing at once on a shared filesystem."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from audiopetl.training.tracking.base import Tracker, register

# MLflow's limits: a batch holds at most 100 parameters (1000 metrics); a value 6000 chars.
PARAM_BATCH = 100
VALUE_CHARS = 6000


@register
class MlflowTracker(Tracker):
    name = "mlflow"

    def start(self, resume_id: str | None, params: Mapping[str, str]) -> str | None:
        from mlflow.tracking import MlflowClient

        settings = self.settings.mlflow
        if settings.tracking_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client: Any = MlflowClient(tracking_uri=settings.tracking_uri)
        if resume_id is not None:
            self.run_id = resume_id
            self.client.update_run(resume_id, status="RUNNING")
            return resume_id
        found = self.client.get_experiment_by_name(settings.experiment)
        experiment = (
            found.experiment_id
            if found is not None
            else self.client.create_experiment(settings.experiment)
        )
        run = self.client.create_run(experiment, run_name=self.settings.run_name)
        self.run_id = run.info.run_id
        self._params(params)
        return self.run_id

    def _params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:VALUE_CHARS]) for k, v in params.items()]
        for start in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + PARAM_BATCH])

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(key, float(value), stamp, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def finish(self, summary: Mapping[str, float], tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.metrics(summary, 0)
        items = [RunTag(k, str(v)[:VALUE_CHARS]) for k, v in tags.items()]
        for start in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(self.run_id, tags=items[start : start + PARAM_BATCH])
        self.client.set_terminated(self.run_id, "FINISHED")

    def close(self) -> None:
        if getattr(self, "run_id", None) is not None:
            self.client.set_terminated(self.run_id, "KILLED")
