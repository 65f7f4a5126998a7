"""Where every artefact lives; the Snakefile, DVC and the CLI all ask here.

Every function also builds the Snakemake pattern of its path when given wildcards as its
arguments (``run_dir(cfg, "{dataset}", ...)``), so the rules and the code cannot disagree on
a path. Paths are normalised (``./data`` and ``data`` are the same folder) because Snakemake
matches outputs as strings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audiopetl.core.config import data_id, feature_id


def data_root(cfg: Mapping[str, Any]) -> Path:
    return Path(os.path.normpath(cfg["paths"]["data"]))


def results_root(cfg: Mapping[str, Any]) -> Path:
    return Path(os.path.normpath(cfg["paths"]["results"]))


def raw_dir(cfg: Mapping[str, Any], dataset: str, did: str | None = None) -> Path:
    # The folder name carries a hash of the dataset's settings (config.data_id): presets that
    # define a dataset differently keep separate copies, and switching back costs nothing.
    did = data_id(cfg, dataset) if did is None else did
    return data_root(cfg) / "raw" / f"{dataset}-{did}"


def manifest_path(cfg: Mapping[str, Any], dataset: str, did: str | None = None) -> Path:
    return raw_dir(cfg, dataset, did) / "manifest.csv"


def downloads_dir(cfg: Mapping[str, Any]) -> Path:
    """Downloads being resumed; shared by every copy of a dataset."""
    return data_root(cfg) / "raw" / ".downloads"


def cache_path(
    cfg: Mapping[str, Any], dataset: str, fid: str | None = None, model: str | None = None
) -> Path:
    """The cache of the front end ``model`` reads (AST's fbank when None)."""
    # The name carries a hash of the data and the feature settings (config.feature_id), so
    # changing either builds a new cache beside the old one and switching back costs nothing.
    fid = feature_id(cfg, dataset, model) if fid is None else fid
    return data_root(cfg) / "features" / f"{dataset}-{fid}.parquet"


def study_caches(cfg: Mapping[str, Any]) -> list[Path]:
    """Every feature cache the study's runs and pretrainings read, once each."""
    caches = []
    for model in cfg["study"]["models"]:
        pretrain = (cfg["models"].get(model) or {}).get("pretrain")
        datasets = [*cfg["study"]["datasets"], *([pretrain["dataset"]] if pretrain else [])]
        caches += [cache_path(cfg, d, model=model) for d in datasets]
    return list(dict.fromkeys(caches))


def data_report_path(cfg: Mapping[str, Any], dataset: str, fid: str | None = None) -> Path:
    """The report describes a dataset's raw folder and its cache: named like the cache."""
    fid = feature_id(cfg, dataset) if fid is None else fid
    return data_root(cfg) / "reports" / f"{dataset}-{fid}.json"


def models_dir(cfg: Mapping[str, Any]) -> Path:
    """Local mirrors of hub checkpoints (audiopetl fetch-model)."""
    return data_root(cfg) / "models"


def mirror_dir(cfg: Mapping[str, Any], model: str) -> Path:
    return models_dir(cfg) / model


def experiment_dir(cfg: Mapping[str, Any], experiment: str | None = None) -> Path:
    return results_root(cfg) / (cfg["experiment"] if experiment is None else experiment)


def logs_dir(cfg: Mapping[str, Any]) -> Path:
    return experiment_dir(cfg) / "logs"


# The run folders of a study live in two fixed folders whatever its datasets and models, so
# dvc.yaml can name them as the training stage's outputs (DVC cannot derive outputs from the
# study's settings).
RUNS = "runs"
PRETRAIN = "pretrain"


def runs_dir(cfg: Mapping[str, Any]) -> Path:
    return experiment_dir(cfg) / RUNS


def run_dir(
    cfg: Mapping[str, Any],
    dataset: str,
    model: str,
    strategy: str,
    fold: int | str,
    seed: int | str,
) -> Path:
    return runs_dir(cfg) / dataset / model / strategy / f"seed{seed}" / f"fold{fold}"


def run_log(dataset: str, model: str, strategy: str, fold: int | str, seed: int | str) -> Path:
    """A run's log, relative to the folder of its rule's logs."""
    return Path(dataset) / model / strategy / f"seed{seed}" / f"fold{fold}.log"


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


def study_datasets(cfg: Mapping[str, Any]) -> list[str]:
    """Every dataset the study reads: its own, and its models' source tasks."""
    models = [cfg["models"][m] for m in cfg["study"]["models"] if m in cfg["models"]]
    sources = [m["pretrain"]["dataset"] for m in models if m.get("pretrain")]
    return list(dict.fromkeys([*cfg["study"]["datasets"], *sources]))


def pretrain_dir(cfg: Mapping[str, Any], model: str) -> Path:
    return experiment_dir(cfg) / PRETRAIN / model


def versioned_dirs(cfg: Mapping[str, Any]) -> list[Path]:
    """The folders dvc.yaml names as stage outputs that a study may leave empty (no hub
    checkpoint, no pretraining). The workflow creates them whenever it is loaded, because DVC
    fails on an output that does not exist and has no optional outputs."""
    return [
        data_root(cfg) / "raw",
        models_dir(cfg),
        experiment_dir(cfg) / PRETRAIN,
        runs_dir(cfg),
    ]
