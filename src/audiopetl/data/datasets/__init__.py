"""Dataset kinds: each turns its source into a raw folder with a checked manifest.

A dataset's raw folder is ``data/raw/{name}-{id}/``, where the id is a hash of the settings that
decide its files (:func:`audiopetl.core.config.dataset_identity`); the folder records those settings
in ``dataset.json``, so a folder is never taken for another definition of the dataset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from audiopetl.core.atomic import atomic_dir, write_json
from audiopetl.core.config import data_id, dataset_config, dataset_folds, dataset_identity
from audiopetl.core.errors import DataError
from audiopetl.data.manifest import check_manifest, read_manifest, write_manifest
from audiopetl.core.paths import downloads_dir, manifest_path, raw_dir

RECORD = "dataset.json"


def _record(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {
        "dataset": name,
        "id": data_id(cfg, name),
        "settings": dataset_identity(dataset_config(cfg, name)),
    }


def check_record(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The raw folder's own record, checked against the settings the configuration gives."""
    folder = raw_dir(cfg, name)
    path = folder / RECORD
    fix = f"run `audiopetl fetch {name} --force`"
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing, so {folder} cannot be checked; {fix}") from None
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: unreadable ({err}); {fix}") from err
    expected = _record(cfg, name)
    if recorded.get("settings") != expected["settings"]:
        raise DataError(
            f"{path}: {folder} was made from other settings of dataset {name!r} "
            f"({recorded.get('settings')} vs {expected['settings']}); {fix}"
        )
    return recorded


def fetch(cfg: Mapping[str, Any], name: str, *, force: bool = False, progress: bool = True) -> Path:
    """Make the dataset's ``manifest.csv`` exist and be verified; return its path.

    The folder appears only when complete: a failure leaves nothing behind. A changed setting
    that decides the dataset's files names another folder, so it is fetched anew.
    """
    dataset = dataset_config(cfg, name)
    dest = raw_dir(cfg, name)
    target = manifest_path(cfg, name)
    if target.is_file() and not force:
        check_record(cfg, name)
        return target
    record = _record(cfg, name)
    kind = dataset["kind"]
    if kind == "esc50":
        from audiopetl.data.datasets.esc50 import fetch_esc50

        def finish(tmp: Path, source: Mapping[str, Any]) -> None:
            write_json(tmp / RECORD, {**record, "clips": source["clips"]})

        # Replaces an existing copy only once the new one is complete and verified.
        fetch_esc50(
            dataset["esc50"],
            dest,
            progress=progress,
            downloads=downloads_dir(cfg),
            finish=finish,
        )
        return target
    skip_bad = bool(cfg["data"]["skip_bad"])
    with atomic_dir(dest) as tmp:
        manifest, skipped = build_manifest(dataset, tmp, progress=progress, skip_bad=skip_bad)
        write_manifest(manifest, tmp / "manifest.csv")
        write_json(tmp / RECORD, {**record, "clips": len(manifest), "skipped": skipped})
    return target


def build_manifest(
    dataset: Mapping[str, Any], root: Path, *, progress: bool = True, skip_bad: bool = False
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """The manifest of a dataset written into ``root``, and the files left out (skip_bad)."""
    kind = dataset["kind"]
    folds = dataset_folds(dataset)
    if kind == "synthetic":
        from audiopetl.data.datasets.esc50 import esc50_manifest
        from audiopetl.data.datasets.synthetic import generate

        generate(dataset["synthetic"], root, progress=progress)
        return esc50_manifest(root, folds), []
    if kind == "folder":
        from audiopetl.data.datasets.folder import folder_manifest

        scan = folder_manifest(dataset["folder"], skip_bad=skip_bad)
        return check_manifest(scan.manifest, "folder", folds), scan.skipped
    raise ValueError(f"dataset kind {kind!r} has no manifest builder")


def manifest_base(cfg: Mapping[str, Any], name: str) -> Path | None:
    """What a dataset's manifest paths are relative to: a folder dataset's own root (the audio
    stays where the user keeps it), else the raw folder holding the manifest."""
    dataset = dataset_config(cfg, name)
    if dataset["kind"] == "folder":
        from audiopetl.data.datasets.folder import folder_root

        return folder_root(dataset["folder"])
    return None


def load_manifest(cfg: Mapping[str, Any], name: str) -> pd.DataFrame:
    dataset = dataset_config(cfg, name)
    path = manifest_path(cfg, name)
    df = read_manifest(path, manifest_base(cfg, name))
    return check_manifest(df, str(path), dataset_folds(dataset))


def skipped_files(cfg: Mapping[str, Any], name: str) -> list[dict[str, str]]:
    """Files the fetch left out (data.skip_bad), with the reason, from the raw folder's record."""
    try:
        return json.loads((raw_dir(cfg, name) / RECORD).read_text()).get("skipped", [])
    except (OSError, ValueError):
        return []


def describe(cfg: Mapping[str, Any], name: str) -> str | None:
    """A line for a partial dataset ("subset: 83 of 2000 clips"), None for a whole one."""
    dataset = dataset_config(cfg, name)
    if dataset["kind"] != "esc50" or not dataset["esc50"].get("subset"):
        return None
    from audiopetl.data.datasets.esc50 import SOURCE_RECORD

    try:
        source = json.loads((raw_dir(cfg, name) / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return "subset"
    return f"subset: {source['clips']} of {source['index_clips']} clips"
