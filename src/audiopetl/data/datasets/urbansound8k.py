"""UrbanSound8K (Salamon, Jacoby and Bello, 2014): 8732 excerpts (<= 4 s) of urban sounds, 10
classes, in 10 official folds. Download (or a local archive), verify, describe as a manifest.

Its folds are never re-split: the excerpts of one Freesound recording (``fsID``) sit in one
fold, and results are only comparable over the official folds. The study's `folds` scheme
rotates them (test fold i, validation fold i+1, training the other 8); the reference study
trained on 9 folds and selected epochs on the test fold: a test-set selection, offered only by
``training.split: train_select_on_test`` (the urbansound8k-reference-protocol preset), named so
wherever its numbers appear.

Facts, from the publisher's Zenodo record 1203745 and soundata's UrbanSound8K loader (its
REMOTES entry): the archive ``UrbanSound8K.tar.gz`` and its md5
9aa69802bbf37fb986f71ec1483a196e; the layout ``UrbanSound8K/metadata/UrbanSound8K.csv``
(slice_file_name, fsID, start, end, salience, fold, classID, class) and
``UrbanSound8K/audio/fold{1..10}/``; the fold sizes below (the metadata file's counts).

Verification: the archive's md5 decides that the files are the publisher's (the archive is
published with it); then the metadata must be consistent and list exactly the files present
(a missing, unlisted or misplaced excerpt is an error). A ``subset: true`` copy (a partial
archive or folder) cannot match the archive's md5: its structure is verified and every command
says that it is a subset and that its clips are not checked against the publisher's checksum.
The sha256 of every file is recorded (``SHA256SUMS`` in the raw folder) for later checks.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from audiopetl.core.atomic import atomic_dir, write_json, write_text
from audiopetl.core.checksums import file_digest
from audiopetl.core.errors import DataError
from audiopetl.core.settings import DatasetSettings
from audiopetl.data.archive import BrokenArchive, extract_folders, open_archive, safe_name
from audiopetl.data.audio import audio_info
from audiopetl.data.datasets.base import RECORD, DatasetKind, register, subset_line
from audiopetl.data.download import obtain_archive
from audiopetl.data.manifest import COLUMNS, check_manifest, write_manifest
from audiopetl.data.verify import problems_file, raise_problems, write_sums

META = "metadata/UrbanSound8K.csv"
SOURCE_RECORD = "source.json"
SUMS = "SHA256SUMS"
REQUIRED_COLUMNS = ("slice_file_name", "fsID", "fold", "classID", "class")
FOLDS = 10
# Clips per official fold (UrbanSound8K.csv): 8732 in all.
FOLD_SIZES = {1: 873, 2: 888, 3: 925, 4: 990, 5: 936, 6: 823, 7: 838, 8: 806, 9: 816, 10: 837}
CLASSES = 10
PROBLEM_ORDER = ("archive md5", "missing", "unlisted", "misplaced", "metadata")


def _check_archive(settings: Mapping[str, Any], archive: Path, cached: bool) -> dict[str, Any]:
    digest = file_digest(archive, "md5")
    expected = settings.get("md5")
    if not settings.get("subset") and expected and digest != expected:
        if cached:
            archive.unlink(missing_ok=True)  # a damaged download: the next call fetches anew
        raise DataError(
            f"{archive}: UrbanSound8K verification failed: archive md5 {digest} differs from "
            f"the publisher's {expected} (urbansound8k.md5): a damaged or other archive; "
            + ("the download was deleted, rerun to fetch it again" if cached else
               "fetch the archive again, or set urbansound8k.subset: true for a part of it")
        )  # fmt: skip
    return {
        "url": None if settings.get("archive") else str(settings["url"]),
        "archive": str(settings["archive"]) if settings.get("archive") else None,
        "archive_md5": digest,
        "verified_md5": bool(expected) and not settings.get("subset"),
    }


def _extract(archive: Path, target: Path) -> str:
    """Unpack the folder holding ``metadata/`` and ``audio/`` into ``target``; its prefix."""
    with open_archive(archive) as members:
        names = [safe_name(archive, m.name) for m in members]
        metas = [n for n, m in zip(names, members, strict=True) if m.kind == "file"
                 and (n == META or n.endswith("/" + META))]  # fmt: skip
        if not metas:
            raise DataError(f"{archive}: no UrbanSound8K folder (one holding {META}) in archive")
        if len(metas) > 1:
            raise DataError(f"{archive}: several UrbanSound8K folders in archive: {metas}")
        root = metas[0][: -len(META)]
        extract_folders(archive, members, root, ("audio/", "metadata/"), target)
    return root


def read_meta(path: Path, source: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{source}: metadata file not found")
    try:
        meta = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{source}: cannot parse CSV: {err}") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in meta.columns]
    if missing:
        raise DataError(f"{source}: missing column(s): {', '.join(missing)}")
    for column in ("fold", "classID"):
        bad = [i + 2 for i, v in enumerate(meta[column]) if not v.isdigit()]
        if bad:
            raise DataError(f"{source}: row {bad[0]}: {column} {meta[column][bad[0] - 2]!r} "
                            "is not an integer")  # fmt: skip
    folds = meta["fold"].astype(int)
    outside = [i + 2 for i, f in enumerate(folds) if not 1 <= f <= FOLDS]
    if outside:
        raise DataError(f"{source}: row {outside[0]}: fold {folds[outside[0] - 2]} is outside "
                        f"1..{FOLDS}")  # fmt: skip
    return meta


def problems(root: Path, source: str, show: Any, subset: bool) -> list[tuple[str, str]]:
    """Every structural problem of ``root`` as (kind, line), files named by ``show(rel)``."""
    meta = read_meta(root / META, source)
    found: list[tuple[str, str]] = []
    for name, rows in meta.groupby("slice_file_name").groups.items():
        if len(rows) > 1:
            found.append(("metadata", f"duplicate slice_file_name {name!r}: {source} rows "
                          + ", ".join(str(i + 2) for i in rows)))  # fmt: skip
    for key, other in (("classID", "class"), ("class", "classID")):
        for value, others in meta.groupby(key)[other].unique().items():
            if len(others) > 1:
                found.append(("metadata", f"inconsistent labels: {source}: {key} {value!r} has "
                              f"{other} {', '.join(map(repr, sorted(others)))}"))  # fmt: skip
    for recording, folds in meta.groupby("fsID")["fold"].unique().items():
        if len(folds) > 1:
            found.append(("metadata", f"recording fsID {recording} in folds "
                          f"{', '.join(sorted(folds, key=int))} ({source}): its excerpts "
                          "would sit on both sides of a split"))  # fmt: skip
    listed = {f"audio/fold{int(f)}/{n}" for n, f in zip(meta["slice_file_name"], meta["fold"],
                                                          strict=True)}  # fmt: skip
    present = set(audio_files(root))
    by_name = {Path(p).name: p for p in present}
    for rel in sorted(listed):
        if rel in present:
            continue
        if Path(rel).name in by_name:
            found.append(("misplaced", f"misplaced: {show(by_name[Path(rel).name])}: "
                          f"{source} puts it in {Path(rel).parent.name}"))  # fmt: skip
        elif not subset:
            found.append(("missing", f"missing: {show(rel)} (listed in {source})"))
    found += [
        ("unlisted", f"unlisted: {show(rel)}: not in {source}")
        for rel in sorted(present - listed)
        if Path(rel).name not in set(meta["slice_file_name"])
    ]
    if subset and not present & listed:
        found.append(("missing", f"missing: no excerpt of {source} under {show('audio/')}"))
    return found


def audio_files(root: Path) -> list[str]:
    audio = root / "audio"
    if not audio.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in audio.rglob("*")
                  if p.is_file() and not p.name.startswith("."))  # fmt: skip


def manifest(root: Path, source: str, subset: bool = False) -> pd.DataFrame:
    """The manifest of the excerpts listed (with ``subset``: of those present)."""
    meta = read_meta(root / META, source)
    paths = [f"audio/fold{int(f)}/{n}" for n, f in zip(meta["slice_file_name"], meta["fold"],
                                                         strict=True)]  # fmt: skip
    if subset:
        keep = [(root / p).is_file() for p in paths]
        meta = meta[keep].reset_index(drop=True)
        paths = [p for p, k in zip(paths, keep, strict=True) if k]
    info = [audio_info(root / p) for p in paths]
    df = pd.DataFrame(
        {
            "clip_id": [Path(n).stem for n in meta["slice_file_name"]],
            "path": paths,
            "label": meta["classID"].astype(int),
            "label_name": list(meta["class"]),
            "fold": meta["fold"].astype(int),
            # The Freesound recording: its excerpts stay together (they share one fold).
            "group": list(meta["fsID"]),
            "duration": [d for d, _ in info],
            "sample_rate": [sr for _, sr in info],
        },
        columns=COLUMNS,
    )
    return check_manifest(df, source, FOLDS)


def fetch_urbansound8k(
    settings: Mapping[str, Any],
    dest: Path,
    *,
    downloads: Path,
    progress: bool = True,
    record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Make ``dest`` hold verified UrbanSound8K (``audio/``, ``metadata/``, ``manifest.csv``,
    ``SHA256SUMS``); nothing appears there unless it is complete and verified."""
    listing = problems_file(dest)
    archive, cached = obtain_archive(settings, downloads, "UrbanSound8K", "urbansound8k", progress)
    source = _check_archive(settings, archive, cached)
    subset = bool(settings.get("subset"))
    with atomic_dir(dest) as tmp:
        try:
            prefix = _extract(archive, tmp)
        except BrokenArchive as err:
            if cached:
                archive.unlink(missing_ok=True)
                raise DataError(f"{err} (the cached download was deleted; rerun to fetch it "
                                "again)") from err  # fmt: skip
            raise
        meta_source = f"{archive}: {prefix}{META}"
        found = problems(tmp, meta_source, lambda rel: f"{archive}: {prefix}{rel}", subset)
        raise_problems(str(archive), "UrbanSound8K", found, PROBLEM_ORDER, listing)
        table = manifest(tmp, meta_source, subset)
        write_manifest(table, tmp / "manifest.csv")
        write_sums(tmp, sorted([META, *audio_files(tmp)]))
        source.update(clips=len(table), index_clips=sum(FOLD_SIZES.values()))
        write_json(tmp / SOURCE_RECORD, source)
        if record is not None:
            write_json(tmp / RECORD, {**record, "clips": len(table)})
    listing.unlink(missing_ok=True)
    if cached:
        archive.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            archive.parent.rmdir()
    return source


@register("urbansound8k")
class UrbanSound8K(DatasetKind):
    """UrbanSound8K, downloaded (or from a local archive) and verified; its 10 official folds."""

    identity_keys = ("subset",)

    def folds(self, options: Mapping[str, Any]) -> int | None:
        return FOLDS

    def planned_sizes(self, options: Mapping[str, Any]) -> tuple[dict[int, int], int]:
        return dict(FOLD_SIZES), CLASSES

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
        fetch_urbansound8k(
            dataset.options, dest, downloads=downloads, progress=progress, record=record
        )

    def describe(self, options: Mapping[str, Any], raw_dir: Path) -> str | None:
        return subset_line(options, raw_dir / SOURCE_RECORD, sum(FOLD_SIZES.values()),
                           unchecked="not checked against the publisher's md5")  # fmt: skip
