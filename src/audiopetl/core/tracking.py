"""The `tracking:` settings: which experiment trackers a run reports to, resolved once from the
validated config into typed objects (the backends themselves live in
audiopetl.training.tracking, each imported only when named).

A tracker is a view of a run, never part of it: these settings are left out of a run's
identity, its rule's params and the config its run.json records, so turning a tracker on or
off reruns nothing and changes no result file.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from audiopetl.core.paths import Layout

# Backend name -> the module it needs (what `pip install` names differs for MLflow: the
# lighter mlflow-skinny is what the lock files pin; the full mlflow provides the same module).
BACKENDS: dict[str, str] = {
    "dvclive": "dvclive",
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
}
INSTALL_HINTS: dict[str, str] = {
    "dvclive": "pip install dvclive (not in the legacy environment: DVCLive needs DVC, which "
    "needs newer libraries than torch 1.13's stack), or remove it from the list",
    "tensorboard": "pip install tensorboard, or remove it from the list",
    "wandb": "pip install wandb, or remove it from the list",
    "mlflow": "pip install mlflow-skinny (or mlflow), or remove it from the list",
}
# What a run's name template may use: the run's wildcards and its experiment.
NAME_FIELDS = ("experiment", "dataset", "model", "strategy", "split", "seed")
DEFAULT_NAME = "{experiment}/{dataset}/{model}/{strategy}/{split}/seed{seed}"


@dataclass(frozen=True)
class WandbSettings:
    project: str
    entity: str | None
    mode: str  # offline | online


@dataclass(frozen=True)
class MlflowSettings:
    tracking_uri: str  # resolved: the configured URI, else a file store in results/mlruns
    experiment: str


@dataclass(frozen=True)
class TrackingSettings:
    """One run's trackers: the backends, in config order, and the run's resolved name."""

    backends: tuple[str, ...]
    run_name: str
    wandb: WandbSettings
    mlflow: MlflowSettings

    @classmethod
    def of(
        cls,
        block: Mapping[str, Any] | None,
        layout: Layout,
        dataset: str,
        model: str,
        strategy: str,
        split: str,
        seed: int | str,
    ) -> TrackingSettings:
        """One run's trackers from the validated `tracking` block (absent: none), its name
        filled in from the run's wildcards and experiment."""
        block = block or {}
        names = {"experiment": layout.experiment, "dataset": dataset, "model": model,
                 "strategy": strategy, "split": split, "seed": seed}  # fmt: skip
        template = str(block.get("run_name", DEFAULT_NAME))
        wandb = block.get("wandb") or {}
        mlflow = block.get("mlflow") or {}
        uri = mlflow.get("tracking_uri") or layout.mlflow_store.absolute().as_uri()
        return cls(
            backends=tuple(block.get("backends") or ()),
            run_name=template.format(**names),
            wandb=WandbSettings(
                project=str(wandb.get("project", "audiopetl")),
                entity=wandb.get("entity"),
                mode=str(wandb.get("mode", "offline")),
            ),
            mlflow=MlflowSettings(
                tracking_uri=str(uri), experiment=str(mlflow.get("experiment", "audiopetl"))
            ),
        )


def missing_backends(backends: list[str] | tuple[str, ...]) -> list[str]:
    """The named backends whose package this environment lacks."""
    return [name for name in backends if importlib.util.find_spec(BACKENDS[name]) is None]


def template_errors(template: str) -> list[str]:
    """What is wrong with a run name template: a field it may not use, or bad syntax."""
    try:
        template.format(**{k: k for k in NAME_FIELDS})
    except KeyError as err:
        return [f"field {{{err.args[0]}}} is not one of {', '.join(NAME_FIELDS)}"]
    except (ValueError, IndexError) as err:
        return [f"{err}"]
    return []
