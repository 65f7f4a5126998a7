"""Dataset kinds: each turns its source into ``data/raw/{name}/`` with a checked manifest."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from audiopetl.atomic import atomic_dir
from audiopetl.config import dataset_config, dataset_folds
from audiopetl.manifest import check_manifest, read_manifest, write_manifest
from audiopetl.paths import manifest_path, raw_dir


def fetch(cfg: Mapping[str, Any], name: str, *, force: bool = False, progress: bool = True) -> Path:
    """Make ``data/raw/{name}/manifest.csv`` exist and be verified; return its path.

    The folder appears only when complete: a failure leaves nothing behind.
    """
    dataset = dataset_config(cfg, name)
    dest = raw_dir(cfg, name)
    target = manifest_path(cfg, name)
    if target.is_file() and not force:
        return target
    kind = dataset["kind"]
    if kind == "esc50":
        from audiopetl.datasets.esc50 import fetch_esc50

        # Replaces an existing copy only once the new one is complete and verified.
        fetch_esc50(dataset["esc50"], dest, progress=progress)
        return target
    with atomic_dir(dest) as tmp:
        manifest = build_manifest(dataset, tmp, progress=progress)
        write_manifest(manifest, tmp / "manifest.csv")
    return target


def build_manifest(dataset: Mapping[str, Any], root: Path, progress: bool = True) -> pd.DataFrame:
    kind = dataset["kind"]
    folds = dataset_folds(dataset)
    if kind == "synthetic":
        from audiopetl.datasets.esc50 import esc50_manifest
        from audiopetl.datasets.synthetic import generate

        generate(dataset["synthetic"], root, progress=progress)
        return esc50_manifest(root, folds)
    if kind == "folder":
        from audiopetl.datasets.folder import folder_manifest

        return check_manifest(folder_manifest(dataset["folder"]), "folder", folds)
    raise ValueError(f"dataset kind {kind!r} has no manifest builder")


def load_manifest(cfg: Mapping[str, Any], name: str) -> pd.DataFrame:
    dataset = dataset_config(cfg, name)
    df = read_manifest(manifest_path(cfg, name))
    return check_manifest(df, str(manifest_path(cfg, name)), dataset_folds(dataset))
