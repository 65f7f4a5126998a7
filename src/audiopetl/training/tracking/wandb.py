"""Weights & Biases: offline by default (the run folder's tracking/wandb, uploaded later with
`wandb sync`), online when the config says so. A resumed run continues the same W&B run: its
id is kept in the resume state and passed back with resume="allow"."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from audiopetl.training.tracking.base import Tracker, register

# W&B tags are short labels (at most 64 characters): the provenance goes there as
# `key:value` for its few headline fields, and whole into the run's config.
TAG_FIELDS = ("git.commit", "environment.name", "versions.torch", "hardware.device")


@register
class WandbTracker(Tracker):
    name = "wandb"

    def start(self, resume_id: str | None, params: Mapping[str, str]) -> str | None:
        import wandb

        settings = self.settings.wandb
        # A fresh id per fresh run (a rerun is a new W&B run); a resume keeps its own.
        run_id = resume_id or uuid.uuid4().hex[:12]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run: Any = wandb.init(
            project=settings.project,
            entity=settings.entity,
            mode=settings.mode,
            dir=str(self.folder),
            name=self.settings.run_name,
            id=run_id,
            resume="allow",
            config=dict(params),
            # The run's own log is audiopetl's: W&B neither captures the console nor samples
            # the machine (its system metrics would make an offline folder grow all run).
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
            reinit="create_new",
        )
        return run_id

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def finish(self, summary: Mapping[str, float], tags: Mapping[str, str]) -> None:
        self.run.summary.update(dict(summary))
        self.run.config.update({"provenance": dict(tags)}, allow_val_change=True)
        self.run.tags = tuple(
            f"{key.split('.')[-1]}:{tags[key]}"[:64] for key in TAG_FIELDS if key in tags
        )
        self.run.finish()

    def close(self) -> None:
        run = getattr(self, "run", None)
        if run is not None:
            run.finish(exit_code=1)
