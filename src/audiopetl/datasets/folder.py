"""A user's own folder of audio, described by a CSV manifest or by a file-name pattern.

Folds come from groups (a speaker, a recording session) so that no group sits on both sides of
a split: one fold per group (leave-one-group-out) or groups spread over a fixed number of folds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audiopetl.audio import audio_info
from audiopetl.errors import DataError

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg"}


def _from_pattern(root: Path, pattern: str) -> pd.DataFrame:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise DataError(
            f"folder.pattern {pattern!r}: not a valid regular expression: {err}"
        ) from err
    if "label" not in regex.groupindex:
        raise DataError(f"folder.pattern {pattern!r}: needs a named group (?P<label>...)")
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        rel = path.relative_to(root).as_posix()
        match = regex.fullmatch(path.name) or regex.fullmatch(rel)
        if match is None:
            continue
        groups = match.groupdict()
        rows.append(
            {
                "path": str(path),
                "label_name": groups["label"],
                "group": groups.get("group") or path.stem,
                "fold": int(groups["fold"]) if groups.get("fold") else None,
            }
        )
    if not rows:
        raise DataError(f"{root}: no audio file name matches folder.pattern {pattern!r}")
    return pd.DataFrame(rows)


def _from_csv(root: Path, manifest: Path) -> pd.DataFrame:
    if not manifest.is_file():
        raise DataError(f"{manifest}: folder.manifest not found")
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    missing = [c for c in ("path", "label") if c not in df.columns]
    if "fold" not in df.columns and "group" not in df.columns:
        missing.append("fold or group")
    if missing:
        raise DataError(f"{manifest}: missing column(s): {', '.join(missing)}")
    out = pd.DataFrame(
        {
            "path": [str(p if Path(p).is_absolute() else root / p) for p in df["path"]],
            "label_name": df["label"],
            "group": df["group"] if "group" in df.columns else df["path"],
            "fold": None,
        }
    )
    if "fold" in df.columns:
        bad = [i for i, v in enumerate(df["fold"]) if not v.strip().isdigit()]
        if bad:
            raise DataError(
                f"{manifest}: row {bad[0] + 2}: fold {df['fold'][bad[0]]!r} is not a number"
            )
        out["fold"] = df["fold"].astype(int)
    return out


def assign_folds(groups: pd.Series, n_folds: int | None) -> pd.Series:
    """Fold per clip from its group: one fold per group in name order (scikit-learn's
    LeaveOneGroupOut), or groups spread over ``n_folds`` balancing clips per fold, largest
    groups first (GroupKFold)."""
    from sklearn.model_selection import GroupKFold, LeaveOneGroupOut

    n_groups = groups.nunique()
    if n_folds is not None and n_groups < n_folds:
        raise DataError(f"folder: {n_groups} groups cannot fill {n_folds} folds")
    splitter = LeaveOneGroupOut() if n_folds is None else GroupKFold(n_splits=n_folds)
    folds = np.zeros(len(groups), dtype=int)
    values = groups.to_numpy()
    for k, (_, test) in enumerate(splitter.split(values, groups=values)):
        folds[test] = k + 1
    return pd.Series(folds, index=groups.index)


def folder_manifest(settings: Mapping[str, Any], base: Path = Path(".")) -> pd.DataFrame:
    root = Path(settings["root"])
    root = root if root.is_absolute() else (base / root)
    if not root.is_dir():
        raise DataError(f"{root}: folder.root is not a directory")
    if settings.get("manifest"):
        manifest = Path(settings["manifest"])
        df = _from_csv(root, manifest if manifest.is_absolute() else base / manifest)
    elif settings.get("pattern"):
        df = _from_pattern(root, settings["pattern"])
    else:
        raise DataError("folder: set either folder.manifest or folder.pattern")
    known = settings.get("labels")
    if known:
        unknown = df[~df["label_name"].isin(known)]
        if len(unknown):
            first = unknown.iloc[0]
            raise DataError(
                f"{first.path}: unknown label {first.label_name!r} (folder.labels: {known})"
            )
        names = list(known)
    else:
        names = sorted(df["label_name"].unique())
    df["label"] = df["label_name"].map({n: i for i, n in enumerate(names)}).astype(int)
    if df["fold"].isna().any():
        df["fold"] = assign_folds(df["group"], settings.get("folds"))
    infos = [audio_info(p) for p in df["path"]]
    df["duration"] = [d for d, _ in infos]
    df["sample_rate"] = [sr for _, sr in infos]
    df["clip_id"] = [
        Path(p).relative_to(root).with_suffix("").as_posix()
        if Path(p).is_relative_to(root)
        else Path(p).stem
        for p in df["path"]
    ]
    df["path"] = [str(Path(p).resolve()) for p in df["path"]]
    return df
