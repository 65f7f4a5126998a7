"""Where every artefact lives; the Snakefile, DVC and the CLI all ask here."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def raw_dir(cfg: Mapping[str, Any], dataset: str) -> Path:
    return Path(cfg["paths"]["data"]) / "raw" / dataset


def manifest_path(cfg: Mapping[str, Any], dataset: str) -> Path:
    return raw_dir(cfg, dataset) / "manifest.csv"


def cache_path(cfg: Mapping[str, Any], dataset: str) -> Path:
    # The file name carries a hash of the feature settings, so changing them builds a new
    # cache beside the old one and switching back costs nothing.
    from audiopetl.features import feature_id

    return Path(cfg["paths"]["data"]) / "features" / f"{dataset}-{feature_id(cfg, dataset)}.parquet"


def data_report_path(cfg: Mapping[str, Any], dataset: str) -> Path:
    return Path(cfg["paths"]["data"]) / "reports" / f"{dataset}.json"


def experiment_dir(cfg: Mapping[str, Any]) -> Path:
    return Path(cfg["paths"]["results"]) / cfg["experiment"]


def run_dir(
    cfg: Mapping[str, Any], dataset: str, model: str, strategy: str, fold: int, seed: int
) -> Path:
    return experiment_dir(cfg) / dataset / model / strategy / f"seed{seed}" / f"fold{fold}"
