"""Dataset kinds, one module each (``synthetic``, ``esc50``, ``folder``), found through a
registry (:mod:`audiopetl.data.datasets.base`); each turns its source into a raw folder with a
checked manifest.

A dataset's raw folder is ``data/raw/{name}-{id}/``, where the id is a hash of the settings that
decide its files (``DatasetSettings.identity``); the folder records those settings in
``dataset.json``, so a folder is never taken for another definition of the dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from audiopetl.core.errors import DataError
from audiopetl.core.settings import DatasetSettings, thaw
from audiopetl.data.datasets.base import (
    DATA_VERSION,
    RECORD,
    DatasetKind,
    get_kind,
    kinds,
    register,
)
from audiopetl.data.manifest import check_manifest, read_manifest
from audiopetl.data.splits import get_scheme

__all__ = [
    "DATA_VERSION",
    "RECORD",
    "DatasetKind",
    "check_record",
    "describe",
    "fetch",
    "get_kind",
    "kinds",
    "load_manifest",
    "register",
    "skipped_files",
]


def _record(dataset: DatasetSettings) -> dict[str, Any]:
    return {"dataset": dataset.name, "id": dataset.data_id, "settings": thaw(dataset.identity)}


def check_record(dataset: DatasetSettings, raw_dir: Path) -> dict[str, Any]:
    """The raw folder's own record, checked against the settings the configuration gives."""
    path = raw_dir / RECORD
    fix = f"run `audiopetl fetch {dataset.name} --force`"
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing, so {raw_dir} cannot be checked; {fix}") from None
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: unreadable ({err}); {fix}") from err
    expected = _record(dataset)
    if recorded.get("settings") != expected["settings"]:
        raise DataError(
            f"{path}: {raw_dir} was made from other settings of dataset {dataset.name!r} "
            f"({recorded.get('settings')} vs {expected['settings']}); {fix}"
        )
    return recorded


def fetch(
    dataset: DatasetSettings,
    raw_dir: Path,
    *,
    downloads: Path,
    skip_bad: bool = False,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Make the dataset's ``manifest.csv`` exist and be verified; return its path.

    The folder appears only when complete: a failure leaves nothing behind. A changed setting
    that decides the dataset's files names another folder, so it is fetched anew.
    """
    target = raw_dir / "manifest.csv"
    if target.is_file() and not force:
        check_record(dataset, raw_dir)
        return target
    get_kind(dataset.kind).make(
        dataset,
        raw_dir,
        _record(dataset),
        downloads=downloads,
        skip_bad=skip_bad,
        progress=progress,
    )
    return target


def load_manifest(dataset: DatasetSettings, raw_dir: Path) -> pd.DataFrame:
    """The dataset's manifest, checked for its task and by its split scheme."""
    path = raw_dir / "manifest.csv"
    df = read_manifest(path, get_kind(dataset.kind).manifest_base(dataset.options))
    df = check_manifest(df, str(path), dataset.folds, dataset.task)
    get_scheme(dataset.scheme).check(df, str(path), dataset.split)
    return df


def skipped_files(raw_dir: Path) -> list[dict[str, str]]:
    """Files the fetch left out (data.skip_bad), with the reason, from the raw folder's record."""
    try:
        return json.loads((raw_dir / RECORD).read_text()).get("skipped", [])
    except (OSError, ValueError):
        return []


def describe(dataset: DatasetSettings, raw_dir: Path) -> str | None:
    """A line for a partial dataset ("subset: 83 of 2000 clips"), None for a whole one."""
    return get_kind(dataset.kind).describe(dataset.options, raw_dir)
