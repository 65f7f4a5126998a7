"""A user's own folder of audio, described by a CSV manifest, a file-name pattern, or laid out
as Hugging Face's ``audiofolder`` (``metadata.csv`` with ``file_name`` and a label column, at the
root or in split subfolders ``train/``, ``validation/``, ``test/``); with only ``root`` set, an
``audiofolder`` layout or a single CSV at the root with a ``path`` column is found by itself.

An official split (``split.scheme: official``) comes from a ``split`` column, a ``(?P<split>...)``
group of the pattern, the split subfolders, or list files (``lists``: the clips of the
validation and test sets, one path per line, every other clip training, as Speech Commands
publishes them). A multi-label task reads several labels per clip from one label column,
separated by ``labels_separator``; a multiclass dataset whose labels hold the separator is an
error (two labels that would silently become one).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audiopetl.core.atomic import atomic_dir, write_json
from audiopetl.core.errors import DataError
from audiopetl.core.settings import DatasetSettings
from audiopetl.data.audio import audio_info
from audiopetl.data.datasets.base import RECORD, DatasetKind, prepare_manifest, register
from audiopetl.data.manifest import SEPARATOR, write_manifest


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
                "split": groups.get("split"),
            }
        )
    if not rows:
        raise DataError(f"{root}: no file name matches folder.pattern {pattern!r}")
    return pd.DataFrame(rows)


# What the roles of a CSV's columns are called unless folder.columns renames them.
ROLES = ("path", "label", "group", "fold", "split")
# What joins the values of several label columns into one label (Fluent Speech Commands'
# intent: action, object and location).
LABEL_JOIN = "_"


def check_columns_used(
    df: pd.DataFrame, used: set[str], metadata: Sequence[str], source: Path
) -> None:
    """Every column of a user's CSV is read, or named as metadata: a fold column called
    `split`, or a second label column, must not vanish silently. A leading unnamed column
    holding 0, 1, 2, ... is pandas' written index, and is let be."""
    unused = [c for c in df.columns if c not in used and c not in metadata]
    first = df.columns[0] if len(df.columns) else None
    index = [str(i) for i in range(len(df))]
    if unused and unused[0] == first and str(first).startswith("Unnamed: ") and (
        df[first].tolist() == index
    ):
        unused = unused[1:]
    if unused:
        names = ", ".join(repr(c) for c in unused)
        raise DataError(
            f"{source}: column(s) {names} not used: name what each holds in folder.columns "
            "(path, label, group, fold, split), or list it in folder.metadata_columns to keep "
            "it out on purpose"
        )


def _from_csv(
    root: Path,
    manifest: Path,
    official: bool,
    columns: Mapping[str, Any] | None = None,
    metadata: Sequence[str] = (),
) -> pd.DataFrame:
    if not manifest.is_file():
        raise DataError(f"{manifest}: folder.manifest not found")
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    named = dict(columns or {})
    if "label" not in named:
        named["label"] = "labels" if "labels" in df.columns else "label"
    given = named["label"]
    labels = [str(c) for c in given] if isinstance(given, list | tuple) else [str(given)]
    wanted = [named.get("path", "path"), *labels]
    missing = [c for c in wanted if c not in df.columns]
    if "label" not in (columns or {}) and "label" in missing:
        missing[missing.index("label")] = "label or labels"
    for role in ("group", "fold", "split"):
        if role in named and named[role] not in df.columns:
            missing.append(f"{named[role]} (folder.columns.{role})")
    # (A split column without an official scheme gets its own error once the rows are read.)
    roles = {named.get(r, r) for r in ("fold", "group", "split")}
    if not official and not roles & set(df.columns):
        missing.append("fold or group")
    if missing:
        raise DataError(f"{manifest}: missing column(s): {', '.join(missing)}")
    used = {named.get(r, r) for r in ("path", "group", "fold", "split")} | set(labels)
    check_columns_used(df, used, metadata, manifest)
    paths = []
    for p in df[named.get("path", "path")]:
        path = Path(p) if Path(p).is_absolute() else root / p
        paths.append(path.relative_to(root).as_posix() if path.is_relative_to(root) else str(p))

    def column(role: str) -> Any:
        name = named.get(role, role)
        return df[name].replace("", None) if name in df.columns else None

    label = df[labels[0]] if len(labels) == 1 else df[labels].agg(LABEL_JOIN.join, axis=1)
    return pd.DataFrame(
        {
            "path": paths,
            "label_name": label,
            "group": column("group"),
            "fold": column("fold"),
            "split": column("split"),
        }
    )


# Hugging Face's names of split folders (datasets' keywords), and the part each is.
SPLIT_FOLDERS = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test", "eval": "test", "evaluation": "test",
}  # fmt: skip
METADATA = "metadata.csv"


def _from_audiofolder(root: Path, metadata: Sequence[str] = ()) -> pd.DataFrame:
    """An audiofolder: ``metadata.csv`` (``file_name`` relative to it, a ``label`` or ``labels``
    column) at the root, or one per split subfolder, whose name is the clip's part."""
    tables = []
    for meta in sorted(root.rglob(METADATA)):
        where = meta.parent.relative_to(root)
        df = pd.read_csv(meta, dtype=str, keep_default_na=False)
        label = "labels" if "labels" in df.columns else "label"
        missing = [c for c in ("file_name", label) if c not in df.columns]
        if missing:
            raise DataError(f"{meta}: an audiofolder metadata.csv needs {', '.join(missing)}")
        check_columns_used(df, {"file_name", label, "group", "fold"}, metadata, meta)
        part = None
        if where.parts:
            part = SPLIT_FOLDERS.get(where.parts[0].lower())
            if part is None:
                raise DataError(
                    f"{meta}: {where.parts[0]!r} is not a split folder name "
                    f"({', '.join(sorted(set(SPLIT_FOLDERS)))})"
                )
        tables.append(
            pd.DataFrame(
                {
                    "path": [(where / f).as_posix() for f in df["file_name"]],
                    "label_name": df[label],
                    "group": df["group"].replace("", None) if "group" in df.columns else None,
                    "fold": df["fold"].replace("", None) if "fold" in df.columns else None,
                    "split": part,
                }
            )
        )
    return pd.concat(tables, ignore_index=True)


def _discover(
    root: Path, official: bool, columns: Mapping[str, Any] | None, metadata: Sequence[str]
) -> tuple[pd.DataFrame, str]:
    """Only ``root`` given: an audiofolder, or the one CSV at the root with a path column."""
    if any(root.rglob(METADATA)):
        return _from_audiofolder(root, metadata), f"{root} (audiofolder)"
    candidates = [
        p for p in sorted(root.glob("*.csv")) if "path" in pd.read_csv(p, nrows=0).columns
    ]
    if len(candidates) == 1:
        return _from_csv(root, candidates[0], official, columns, metadata), str(candidates[0])
    found = ", ".join(p.name for p in candidates) or "none"
    raise DataError(
        f"{root}: set folder.manifest or folder.pattern, or lay the folder out as an "
        f"audiofolder (metadata.csv); CSVs at its root with a path column: {found}"
    )


def _from_lists(root: Path, df: pd.DataFrame, lists: Mapping[str, str]) -> pd.Series:
    """The part of each clip from list files (Speech Commands' validation_list.txt and
    testing_list.txt): a clip in neither is training; a listed clip that is not there is an
    error."""
    part = pd.Series("train", index=df.index, dtype=object)
    known = {p: i for i, p in zip(df.index, df["path"], strict=True)}
    for name, listed in lists.items():
        path = root / listed
        if not path.is_file():
            raise DataError(f"{path}: folder.lists.{name} not found")
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            clip = line.strip()
            if not clip:
                continue
            if clip not in known:
                raise DataError(
                    f"{path}: line {number}: {clip!r} is not a clip of {root} (folder.lists)"
                )
            part[known[clip]] = name
    return part


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


def _own_group(path: str) -> str:
    return Path(path).with_suffix("").as_posix()


def folder_manifest(
    settings: Mapping[str, Any],
    base: Path = Path("."),
    *,
    skip_bad: bool = False,
    task: str = "multiclass",
    scheme: str = "folds",
) -> FolderScan:
    root = folder_root(settings, base)
    if not root.is_dir():
        raise DataError(f"{root}: folder.root is not a directory")
    official = scheme == "official"
    metadata = [str(c) for c in settings.get("metadata_columns") or ()]
    manifests = settings.get("manifest")
    if isinstance(manifests, Mapping):
        # One CSV per part (Fluent Speech Commands' train_data.csv, valid_data.csv, ...).
        parts = []
        for part, name in manifests.items():
            path = Path(name) if Path(name).is_absolute() else base / name
            found = _from_csv(root, path, True, settings.get("columns"), metadata)
            if found["split"].notna().any():
                raise DataError(f"{path}: a split column in the CSV of part {part!r}")
            parts.append(found.assign(split=part))
        df = pd.concat(parts, ignore_index=True)
        source = ", ".join(str(p) for p in manifests.values())
    elif manifests:
        manifest = Path(manifests)
        source = str(manifest)
        csv = manifest if manifest.is_absolute() else base / manifest
        df = _from_csv(root, csv, official, settings.get("columns"), metadata)
    elif settings.get("pattern"):
        source = f"{root} (folder.pattern)"
        df = _from_pattern(root, settings["pattern"])
    else:
        df, source = _discover(root, official, settings.get("columns"), metadata)
    if settings.get("lists"):
        if df["split"].notna().any():
            raise DataError(f"{source}: the split is given twice (folder.lists and the data)")
        df["split"] = _from_lists(root, df, settings["lists"])
    df = _labelled(df, settings, source, root, task)
    given = df["split"].notna()
    if given.any() and not official:
        numbers = df.loc[given, "split"].astype(str).str.fullmatch(r"\d+").all()
        hint = " (its values are numbers: folds? name the column fold)" if numbers else ""
        raise DataError(
            f"{source}: the data gives each clip a split{hint}; for an official split (train, "
            "validation, test) set the dataset's split.scheme: official"
        )
    if official:
        if not given.all():
            first = df.loc[~given, "path"].iloc[0]
            raise DataError(
                f"{source}: an official split needs a part for every clip, {first} has none "
                "(a split column, the pattern's (?P<split>...), split folders or folder.lists)"
            )
        df["fold"] = 0
    else:
        df = df.drop(columns="split")
        df["fold"] = _folds(df, settings, source)
    # A clip without a group (folds or parts given per file) is a group of its own.
    df["group"] = df["group"].where(df["group"].notna(), df["path"].map(_own_group))
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


def _labelled(
    df: pd.DataFrame, settings: Mapping[str, Any], source: str, root: Path, task: str
) -> pd.DataFrame:
    """Label indices from label names: one per clip (multiclass) or several, split at the
    separator (multilabel); names checked against folder.labels when given."""
    separator = str(settings.get("labels_separator") or ",")
    raw = df["label_name"].astype(str)
    if task == "multilabel":
        sets = [[n.strip() for n in value.split(separator) if n.strip()] for value in raw]
    else:
        several = raw[raw.str.contains(separator, regex=False)]
        if len(several):
            row = several.index[0]
            raise DataError(
                f"{source}: row {row + 2} ({df.at[row, 'path']}): label {several.iloc[0]!r} "
                f"holds the separator {separator!r}: several labels? Set the dataset's task: "
                "multilabel (or folder.labels_separator, if the name really holds it)"
            )
        sets = [[value] for value in raw]
    empty = [i for i, s in enumerate(sets) if not s]
    if empty:
        raise DataError(f"{source}: row {empty[0] + 2} ({df.at[empty[0], 'path']}): no label")
    known = settings.get("labels")
    found = sorted({n for s in sets for n in s})
    if known:
        unknown = [(i, n) for i, s in enumerate(sets) for n in s if n not in known]
        if unknown:
            row, name = unknown[0]
            raise DataError(
                f"{root / df.at[row, 'path']}: unknown label {name!r} (folder.labels: {known})"
            )
        names = list(known)
    else:
        names = found
    bad = [n for n in names if SEPARATOR in n]
    if task == "multilabel" and bad:
        raise DataError(f"{source}: label {bad[0]!r} holds {SEPARATOR!r}, which manifests use")
    index = {n: i for i, n in enumerate(names)}
    out = df.copy()
    if task == "multilabel":
        ordered = [sorted(set(s), key=index.__getitem__) for s in sets]
        out["labels"] = [SEPARATOR.join(str(index[n]) for n in s) for s in ordered]
        out["label_name"] = [SEPARATOR.join(s) for s in ordered]
        out["label"] = -1
    else:
        out["label"] = [index[s[0]] for s in sets]
    return out


@register("folder")
class Folder(DatasetKind):
    """A user's own folder: the audio stays where it is; the raw folder holds the manifest."""

    identity_keys = ("root", "manifest", "pattern", "folds", "labels")
    optional_identity_keys = ("lists", "labels_separator", "columns", "metadata_columns")
    # Skipping unreadable files decides which of a user's files the folder lists.
    skip_bad_decides_files = True
    tasks = ("multiclass", "multilabel")
    schemes = ("folds", "official", "session_speaker")

    def folds(self, options: Mapping[str, Any]) -> int | None:
        return None if options.get("folds") is None else int(options["folds"])

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
            scan = folder_manifest(
                dataset.options, skip_bad=skip_bad, task=dataset.task, scheme=dataset.scheme
            )
            manifest = prepare_manifest(dataset, scan.manifest, "folder")
            write_manifest(manifest, tmp / "manifest.csv")
            write_json(tmp / RECORD, {**record, "clips": len(manifest), "skipped": scan.skipped})

    def manifest_base(self, options: Mapping[str, Any]) -> Path | None:
        # The audio stays where the user keeps it; manifest paths are relative to its root.
        return folder_root(options)
