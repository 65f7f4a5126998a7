"""Where every artefact lives; the Snakefile, DVC and the CLI all ask here."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audiopetl.config import feature_id


def raw_dir(cfg: Mapping[str, Any], dataset: str) -> Path:
    return Path(cfg["paths"]["data"]) / "raw" / dataset


def manifest_path(cfg: Mapping[str, Any], dataset: str) -> Path:
    return raw_dir(cfg, dataset) / "manifest.csv"


def cache_path(cfg: Mapping[str, Any], dataset: str) -> Path:
    # The file name carries a hash of the feature settings, so changing them builds a new
    # cache beside the old one and switching back costs nothing.
    return Path(cfg["paths"]["data"]) / "features" / f"{dataset}-{feature_id(cfg, dataset)}.parquet"


def data_report_path(cfg: Mapping[str, Any], dataset: str) -> Path:
    return Path(cfg["paths"]["data"]) / "reports" / f"{dataset}.json"


def experiment_dir(cfg: Mapping[str, Any]) -> Path:
    return Path(cfg["paths"]["results"]) / cfg["experiment"]


# The run folders of a study live in two fixed folders whatever its datasets and models, so
# dvc.yaml can name them as the training stage's outputs (DVC cannot derive outputs from the
# study's settings).
RUNS = "runs"
PRETRAIN = "pretrain"


def runs_dir(cfg: Mapping[str, Any]) -> Path:
    return experiment_dir(cfg) / RUNS


def run_dir(
    cfg: Mapping[str, Any], dataset: str, model: str, strategy: str, fold: int, seed: int
) -> Path:
    return runs_dir(cfg) / dataset / model / strategy / f"seed{seed}" / f"fold{fold}"


def study_runs(cfg: Mapping[str, Any]) -> list[Path]:
    """Every run folder of the configured study matrix, in the study's order."""
    study = cfg["study"]
    return [
        run_dir(cfg, d, m, s, f, seed)
        for d in study["datasets"]
        for m in study["models"]
        for s in study["strategies"]
        for seed in study["seeds"]
        for f in study["folds"]
    ]


def pretrain_dir(cfg: Mapping[str, Any], model: str) -> Path:
    return experiment_dir(cfg) / PRETRAIN / model


def models_dir(cfg: Mapping[str, Any]) -> Path:
    """Local mirrors of hub checkpoints (audiopetl fetch-model)."""
    return Path(cfg["paths"]["data"]) / "models"


def versioned_dirs(cfg: Mapping[str, Any]) -> list[Path]:
    """The folders dvc.yaml names as stage outputs that a study may leave empty (no hub
    checkpoint, no pretraining). The workflow creates them whenever it is loaded, because DVC
    fails on an output that does not exist and has no optional outputs."""
    return [
        Path(cfg["paths"]["data"]) / "raw",
        models_dir(cfg),
        experiment_dir(cfg) / PRETRAIN,
        runs_dir(cfg),
    ]
