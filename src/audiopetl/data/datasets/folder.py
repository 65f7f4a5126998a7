"""A user's own folder of audio, described by a CSV manifest or by a file-name pattern.

Folds come from groups (a speaker, a recording session) so that no group sits on both sides of
a split: one fold per group (leave-one-group-out), groups spread over a fixed number of folds,
or folds given per file (a `fold` column or a `(?P<fold>...)` group), checked against the groups.
Every file the pattern matches either lands in the manifest or is reported with the reason it
could not (decoded by the installed libsndfile: WAV, FLAC, OGG, MP3 from 1.1, and more).
Paths in the manifest are relative to the dataset's root, so a dataset shared through DVC works
wherever the root sits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audiopetl.core.atomic import atomic_dir, write_json
from audiopetl.core.errors import DataError
from audiopetl.core.settings import DatasetSettings
from audiopetl.data.audio import audio_info
from audiopetl.data.datasets.base import RECORD, DatasetKind, register
from audiopetl.data.manifest import check_manifest, write_manifest


@dataclass
class FolderScan:
    manifest: pd.DataFrame  # paths relative to the root
    skipped: list[dict[str, str]] = field(default_factory=list)  # path, reason


def folder_root(settings: Mapping[str, Any], base: Path = Path(".")) -> Path:
    root = Path(settings["root"])
    return root if root.is_absolute() else base / root


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
    # Every file, whatever its suffix: what matches is meant to be a clip.
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        match = regex.fullmatch(path.name) or regex.fullmatch(rel)
        if match is None:
            continue
        groups = match.groupdict()
        rows.append(
            {
                "path": rel,
                "label_name": groups["label"],
                "group": groups.get("group"),
                "fold": groups.get("fold"),
            }
        )
    if not rows:
        raise DataError(f"{root}: no file name matches folder.pattern {pattern!r}")
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
    paths = []
    for p in df["path"]:
        path = Path(p) if Path(p).is_absolute() else root / p
        paths.append(path.relative_to(root).as_posix() if path.is_relative_to(root) else str(p))
    return pd.DataFrame(
        {
            "path": paths,
            "label_name": df["label"],
            "group": df["group"].replace("", None) if "group" in df.columns else None,
            "fold": df["fold"].replace("", None) if "fold" in df.columns else None,
        }
    )


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


def _folds(df: pd.DataFrame, settings: Mapping[str, Any], source: str) -> pd.Series:
    """Each clip's fold: given per file, or from its group; never one fold per clip by
    accident, never a group on both sides of a split."""
    given = df["fold"].notna()
    if given.any() and not given.all():
        first = df.loc[~given, "path"].iloc[0]
        raise DataError(
            f"{source}: a fold is given for {int(given.sum())} of {len(df)} files but not for "
            f"{first} (and {int((~given).sum()) - 1} more): give it for every file or none"
        )
    if given.all():
        bad = [v for v in df["fold"] if not str(v).strip().isdigit()]
        if bad:
            row = df.index[df["fold"] == bad[0]][0]
            raise DataError(
                f"{source}: row {row + 2} ({df.at[row, 'path']}): fold {bad[0]!r} is not a number"
            )
        folds = df["fold"].astype(int)
        if df["group"].notna().all():
            spread = df.assign(fold=folds).groupby("group")["fold"].nunique()
            leaking = spread[spread > 1]
            if len(leaking):
                group = leaking.index[0]
                in_folds = sorted(int(f) for f in folds[df["group"] == group].unique())
                raise DataError(
                    f"{source}: group {group!r} spans folds {in_folds} ({len(leaking)} group(s) "
                    "do): its clips would sit on both sides of a split (leakage)"
                )
        return folds
    if df["group"].isna().any():
        if settings.get("folds") is None:
            raise DataError(
                f"{source}: no group, no fold and folder.folds is null: that would make one "
                "fold per clip. Capture a group ((?P<group>...) or a `group` column) or set "
                "folder.folds to spread the clips over that many folds"
            )
        # No groups: every clip is its own, spread over the configured folds.
        df["group"] = df["group"].fillna(df["path"].map(lambda p: Path(p).stem))
    return assign_folds(df["group"], settings.get("folds"))


def folder_manifest(
    settings: Mapping[str, Any], base: Path = Path("."), *, skip_bad: bool = False
) -> FolderScan:
    root = folder_root(settings, base)
    if not root.is_dir():
        raise DataError(f"{root}: folder.root is not a directory")
    if settings.get("manifest"):
        manifest = Path(settings["manifest"])
        source = str(manifest)
        df = _from_csv(root, manifest if manifest.is_absolute() else base / manifest)
    elif settings.get("pattern"):
        source = f"{root} (folder.pattern)"
        df = _from_pattern(root, settings["pattern"])
    else:
        raise DataError("folder: set either folder.manifest or folder.pattern")
    known = settings.get("labels")
    if known:
        unknown = df[~df["label_name"].isin(known)]
        if len(unknown):
            first = unknown.iloc[0]
            raise DataError(
                f"{root / first.path}: unknown label {first.label_name!r} (folder.labels: {known})"
            )
        names = list(known)
    else:
        names = sorted(df["label_name"].unique())
    df["label"] = df["label_name"].map({n: i for i, n in enumerate(names)}).astype(int)
    df["fold"] = _folds(df, settings, source)
    df["group"] = df["group"].astype(str)
    infos, skipped = [], []
    for rel in df["path"]:
        try:
            infos.append(audio_info(root / rel))
        except DataError as err:
            if not skip_bad:
                raise
            infos.append(None)
            skipped.append({"path": str(root / rel), "reason": str(err)})
    keep = [info is not None for info in infos]
    if skipped and not any(keep):
        raise DataError(f"{source}: no file could be read; the first: {skipped[0]['reason']}")
    df = df[keep].reset_index(drop=True)
    kept = [info for info in infos if info is not None]
    df["duration"] = [d for d, _ in kept]
    df["sample_rate"] = [sr for _, sr in kept]
    df["clip_id"] = [
        Path(p).stem if Path(p).is_absolute() else Path(p).with_suffix("").as_posix()
        for p in df["path"]
    ]
    return FolderScan(df, skipped)


@register("folder")
class Folder(DatasetKind):
    """A user's own folder: the audio stays where it is; the raw folder holds the manifest."""

    identity_keys = ("root", "manifest", "pattern", "folds", "labels")
    # Skipping unreadable files decides which of a user's files the folder lists.
    skip_bad_decides_files = True

    def folds(self, options: Mapping[str, Any]) -> int | None:
        return None if options["folds"] is None else int(options["folds"])

    def make(
        self,
        dataset: DatasetSettings,
        dest: Path,
        record: Mapping[str, Any],
        *,
        downloads: Path,
        skip_bad: bool,
        progress: bool,
    ) -> None:
        with atomic_dir(dest) as tmp:
            scan = folder_manifest(dataset.options, skip_bad=skip_bad)
            manifest = check_manifest(scan.manifest, "folder", dataset.folds)
            write_manifest(manifest, tmp / "manifest.csv")
            write_json(tmp / RECORD, {**record, "clips": len(manifest), "skipped": scan.skipped})

    def manifest_base(self, options: Mapping[str, Any]) -> Path | None:
        # The audio stays where the user keeps it; manifest paths are relative to its root.
        return folder_root(options)
