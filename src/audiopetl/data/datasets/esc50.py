"""ESC-50: download, unpack, verify against the published md5s, and describe as a manifest.

The final layout is ESC-50's own (``audio/*.wav``, ``meta/esc50.csv``) plus ``manifest.csv``; the
synthetic dataset writes the same layout and reuses :func:`esc50_manifest`.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from audiopetl.core.atomic import atomic_dir, write_json
from audiopetl.core.checksums import file_sha256
from audiopetl.core.errors import DataError
from audiopetl.core.settings import DatasetSettings
from audiopetl.data.archive import BrokenArchive, extract_folders, open_archive, safe_name
from audiopetl.data.audio import audio_info
from audiopetl.data.datasets.base import RECORD, DatasetKind, register
from audiopetl.data.download import obtain_archive
from audiopetl.data.manifest import COLUMNS, check_manifest, write_manifest
from audiopetl.data.verify import hash_all, problems_file, raise_problems

META = "meta/esc50.csv"
# Where the archive came from and its sha256 (audiopetl.data.datasets.esc50._check_archive_hash).
SOURCE_RECORD = "source.json"
REQUIRED_COLUMNS = ("filename", "fold", "target", "category")
MAX_SHOWN = 20


# ---------------------------------------------------------------------------------------------
# fetch


def fetch_esc50(
    settings: Mapping[str, Any],
    dest: Path,
    *,
    progress: bool = True,
    downloads: Path | None = None,
    finish: Callable[[Path, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Make ``dest`` hold verified ESC-50 (``audio/``, ``meta/``, ``manifest.csv``).

    ``settings`` is the config block ``{url, folds, archive, retries, timeout_s, sha256,
    subset}``. Every clip of ESC-50 v2.0.0's md5 index must be there and match, unless
    ``subset``: then the clips present must match and the others may be missing. A download is
    cached under ``downloads`` (default ``dest.parent/.downloads/``) so an interrupted one
    resumes on the next call; it is removed once ``dest`` is in place. The archive's sha256 is
    checked against ``sha256`` when set, else against the one recorded by the copy being
    replaced, and recorded in ``dest/source.json``. ``finish(tmp, source)`` may add files before
    the folder moves into place. On failure nothing new appears at ``dest``, and the complete
    list of problems is written to ``dest.problems.txt``. Returns the source record.
    """
    dest = Path(dest)
    listing = problems_file(dest)
    archive, cached = _obtain_archive(settings, dest, progress, downloads)
    source = _check_archive_hash(settings, archive, dest, cached)
    with atomic_dir(dest) as tmp:
        try:
            prefix = _extract_esc50(archive, tmp)
        except BrokenArchive as err:
            if cached:
                # A damaged download would fail the same way forever; the next call fetches anew.
                archive.unlink(missing_ok=True)
                raise DataError(
                    f"{err} (the cached download was deleted; rerun to fetch it again)"
                ) from err
            raise
        # Name files as they sit in the archive: the temporary folder is gone once we raise.
        meta_source = f"{archive}: {prefix}{META}"
        subset = bool(settings.get("subset"))
        try:
            problems = _problems(
                tmp, _shipped_md5_index(), lambda rel: prefix + rel, meta_source, subset
            )
            hint = None if subset else _subset_hint(problems)
            raise_problems(str(archive), "ESC-50", problems, PROBLEM_ORDER, listing, hint)
        except DataError as err:
            if cached:
                raise DataError(f"{err}\n(the downloaded archive is kept at {archive})") from err
            raise
        manifest = _manifest(tmp, int(settings["folds"]), meta_source, subset=subset)
        write_manifest(manifest, tmp / "manifest.csv")
        source["clips"] = len(manifest)
        source["index_clips"] = len(_expected_md5s(_shipped_md5_index()))
        write_json(tmp / SOURCE_RECORD, source)
        if finish is not None:
            finish(tmp, source)
    listing.unlink(missing_ok=True)
    if cached:
        archive.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            archive.parent.rmdir()  # only when empty: another dataset may be downloading there
    return source


def _check_archive_hash(
    settings: Mapping[str, Any], archive: Path, dest: Path, cached: bool
) -> dict[str, Any]:
    """The archive's sha256, checked against the configured one, else against the one the
    first download recorded: the URL names a branch (GitHub publishes no release of ESC-50), so
    its bytes could change without notice. The clips are verified by md5 whatever this says."""
    digest = file_sha256(archive)
    pinned = settings.get("sha256")
    recorded = None
    previous = dest / SOURCE_RECORD
    if previous.is_file():
        with contextlib.suppress(ValueError, OSError):
            recorded = json.loads(previous.read_text()).get("archive_sha256")
    expected, where = (pinned, "datasets.*.esc50.sha256") if pinned else (recorded, str(previous))
    if expected and digest != expected:
        if cached:
            archive.unlink(missing_ok=True)
        raise DataError(
            f"{archive}: sha256 {digest} differs from {expected} ({where}): the archive is "
            "not the one this dataset was pinned to. If the new archive is intended (its clips "
            f"are verified by md5 all the same), set `sha256: {digest}` under the dataset's "
            "esc50 settings"
        )
    return {
        "url": None if settings.get("archive") else str(settings["url"]),
        "archive": str(settings["archive"]) if settings.get("archive") else None,
        "archive_sha256": digest,
        "archive_bytes": archive.stat().st_size,
        "pinned": bool(pinned),
    }


def _obtain_archive(
    settings: Mapping[str, Any], dest: Path, progress: bool, downloads: Path | None
) -> tuple[Path, bool]:
    """The archive to unpack, and whether it is our own cached download."""
    return obtain_archive(
        settings, downloads or dest.parent / ".downloads", "ESC-50", "esc50", progress
    )


def _find_root(archive: Path, names: list[str], kinds: list[str]) -> str:
    """The prefix ("" or "dir/") of the folder holding ``meta/esc50.csv`` and ``audio/``."""
    files = [n for n, k in zip(names, kinds, strict=True) if k == "file"]
    with_audio = {
        "".join(f"{p}/" for p in parts[:i])
        for parts in (n.split("/") for n in files)
        for i, part in enumerate(parts[:-1])
        if part == "audio"
    }
    roots = [n[: -len(META)] for n in files if (n == META or n.endswith("/" + META))]
    roots = [r for r in roots if r in with_audio]
    if not roots:
        raise DataError(f"{archive}: no ESC-50 folder (one holding {META} and audio/) in archive")
    depth = min(r.count("/") for r in roots)
    shallowest = sorted(r for r in roots if r.count("/") == depth)
    if len(shallowest) > 1:
        raise DataError(f"{archive}: several ESC-50 folders in archive: {', '.join(shallowest)}")
    return shallowest[0]


def _extract_esc50(archive: Path, target: Path) -> str:
    """Unpack the ESC-50 root's ``audio/`` and ``meta/`` into ``target``; return the root prefix.

    Only those two folders are written (the official archive also carries notebooks and images),
    straight into the final layout, so no second move is needed.
    """
    with open_archive(archive) as members:
        names = [safe_name(archive, m.name) for m in members]
        root = _find_root(archive, names, [m.kind for m in members])
        extract_folders(archive, members, root, ("audio/", "meta/"), target)
    return root


# ---------------------------------------------------------------------------------------------
# verification


@functools.lru_cache(maxsize=1)
def _shipped_md5_index() -> dict[str, Any]:
    text = resources.files("audiopetl").joinpath("resources/esc50_md5_index.json").read_text()
    return json.loads(text)


def _expected_md5s(index: Mapping[str, Any]) -> dict[str, str]:
    """clip id -> md5, from soundata's index format or a plain ``{clip_id: md5}`` mapping."""
    clips = index.get("clips", index)
    expected = {}
    for clip_id, entry in clips.items():
        expected[str(clip_id)] = entry if isinstance(entry, str) else entry["audio"][1]
    return expected


def verify_esc50(root: Path, md5_index: dict | None = None, *, subset: bool = False) -> None:
    """Check ``root``'s metadata and every clip's md5; raise one DataError listing all problems.

    ``md5_index`` defaults to the shipped ESC-50 v2.0.0 index. Every clip of the index must be
    there, unless ``subset``.
    """
    root = Path(root)
    index = _shipped_md5_index() if md5_index is None else md5_index
    problems = _problems(root, index, lambda rel: str(root / rel), str(root / META), subset)
    hint = None if subset else _subset_hint(problems)
    raise_problems(str(root), "ESC-50", problems, PROBLEM_ORDER, problems_file(root), hint)


def _subset_hint(problems: list[tuple[str, str]]) -> str | None:
    """Only clips missing, every present one matching: a part of ESC-50, meant or not."""
    kinds = {kind for kind, _ in problems}
    if kinds and kinds <= {"missing", "not in metadata"}:
        return (
            "every clip present matches, some are missing: to study the part that is here, "
            "set the dataset's esc50.subset: true"
        )
    return None


# The order problems are listed in: a wrong clip first, whatever else is wrong.
PROBLEM_ORDER = (
    "md5 mismatch",
    "missing",
    "not in metadata",
    "unknown",
    "unlisted",
    "bad filename",
    "metadata",
)


def _problems(
    root: Path,
    index: Mapping[str, Any],
    show: Callable[[str], str],
    meta_source: str,
    subset: bool = False,
) -> list[tuple[str, str]]:
    """Every problem with ``root`` as ``(kind, line)``, naming files as ``show`` renders them.

    Unreadable metadata is raised at once (``meta_source`` names it): nothing else can be checked.
    The md5 index decides what ESC-50 is: a clip it lists must be listed in the metadata and be
    on disk (unless ``subset``), and match its md5; files it does not know are reported.
    """
    meta = _read_meta(root / META, meta_source)
    problems = [("metadata", line) for line in _metadata_problems(meta, show(META))]
    expected = _expected_md5s(index)
    listed: set[str] = set()  # clip ids
    listed_files: set[str] = set()
    to_hash: list[tuple[str, str]] = []
    for row, filename in enumerate(meta["filename"], start=2):
        if not _plain_name(filename):
            problems.append(("bad filename", f"bad filename {filename!r}: {show(META)} row {row}"))
            continue
        rel = f"audio/{filename}"
        listed.add(Path(filename).stem)
        listed_files.add(rel)
        if Path(filename).stem not in expected:
            problems.append(("unknown", f"unknown: {show(rel)}: not in the ESC-50 md5 index"))
        elif not (root / rel).is_file():
            if not subset:
                problems.append(
                    ("missing", f"missing: {show(rel)} (listed in {show(META)} row {row})")
                )
        else:
            to_hash.append((rel, expected[Path(filename).stem]))
    if not subset:
        problems += [
            (
                "not in metadata",
                f"not in metadata: {clip}.wav: in the md5 index, not in {show(META)}",
            )
            for clip in sorted(set(expected) - listed)
        ]
    elif not to_hash:
        problems.append(("missing", f"missing: no clip of the md5 index under {show('audio/')}"))
    problems += [
        ("unlisted", f"unlisted: {show(rel)}: not in {show(META)}")
        for rel in _audio_files(root)
        if rel not in listed_files
    ]
    hashes = hash_all(root, [rel for rel, _ in to_hash], "md5")
    problems += [
        ("md5 mismatch", f"md5 mismatch: {show(rel)}: expected {want}, got {got}")
        for (rel, want), got in zip(to_hash, hashes, strict=True)
        if got != want
    ]
    return problems


def _audio_files(root: Path) -> list[str]:
    audio = root / "audio"
    if not audio.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in audio.rglob("*") if p.is_file())


def _metadata_problems(meta: pd.DataFrame, source: str) -> list[str]:
    problems = []
    dup = meta[meta["filename"].duplicated(keep=False)]
    for filename, rows in dup.groupby("filename").groups.items():
        lines = ", ".join(str(i + 2) for i in rows)
        problems.append(f"duplicate filename {filename!r}: {source} rows {lines}")
    for key, other in (("target", "category"), ("category", "target")):
        values = meta.groupby(key)[other].unique()
        for value, others in values.items():
            if len(others) > 1:
                problems.append(
                    f"inconsistent labels: {source}: {key} {value!r} has {other} "
                    + ", ".join(repr(o) for o in sorted(others))
                )
    return problems


# ---------------------------------------------------------------------------------------------
# manifest


def _read_meta(path: Path, source: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{source}: metadata file not found")
    try:
        # Strings throughout: src_file ids can carry leading zeros (the synthetic set's do).
        meta = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{source}: cannot parse CSV: {err}") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in meta.columns]
    if missing:
        raise DataError(f"{source}: missing column(s): {', '.join(missing)}")
    return meta


def _plain_name(filename: str) -> bool:
    """A bare file name: a CSV row must not point outside ``audio/``."""
    return (
        bool(filename)
        and filename not in (".", "..")
        and "/" not in filename
        and "\\" not in filename
    )


def _int_column(meta: pd.DataFrame, column: str, source: str) -> list[int]:
    values = []
    for row, (text, filename) in enumerate(zip(meta[column], meta["filename"], strict=True), 2):
        try:
            values.append(int(text))
        except ValueError:
            raise DataError(
                f"{source}: row {row} ({filename}): {column} {text!r} is not an integer"
            ) from None
    return values


def esc50_manifest(root: Path, n_folds: int | None) -> pd.DataFrame:
    """The manifest of a folder in ESC-50's layout, read from ``root/meta/esc50.csv``.

    Needs no md5s: the synthetic dataset writes the same layout and comes here too.
    """
    root = Path(root)
    return _manifest(root, n_folds, str(root / META))


def _manifest(
    root: Path, n_folds: int | None, source: str, *, subset: bool = False
) -> pd.DataFrame:
    """The manifest of the clips listed in the metadata; with ``subset``, of those present."""
    meta = _read_meta(root / META, source)
    if subset:
        present = [(root / "audio" / f).is_file() for f in meta["filename"]]
        meta = meta[present].reset_index(drop=True)
    folds = _int_column(meta, "fold", source)
    targets = _int_column(meta, "target", source)
    clip_ids = [Path(f).stem for f in meta["filename"]]
    if n_folds is not None:
        for row, (fold, clip) in enumerate(zip(folds, clip_ids, strict=True), start=2):
            if not 1 <= fold <= n_folds:
                raise DataError(
                    f"{source}: row {row} ({clip}): fold {fold} is outside 1..{n_folds}"
                )
    for row, filename in enumerate(meta["filename"], start=2):
        if not _plain_name(filename):
            raise DataError(f"{source}: row {row}: filename {filename!r} is not a plain file name")
    paths = [f"audio/{f}" for f in meta["filename"]]
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        shown = ", ".join(str(root / p) for p in missing[:MAX_SHOWN])
        more = f" and {len(missing) - MAX_SHOWN} more" if len(missing) > MAX_SHOWN else ""
        raise DataError(f"{source}: {len(missing)} listed audio file(s) not found: {shown}{more}")
    info = [audio_info(root / p) for p in paths]
    if "src_file" in meta.columns:
        # Takes of one recording share a src_file; grouping by it keeps them on one side of a split.
        groups = [s or c for s, c in zip(meta["src_file"], clip_ids, strict=True)]
    else:
        groups = clip_ids
    df = pd.DataFrame(
        {
            "clip_id": clip_ids,
            "path": paths,
            "label": targets,
            "label_name": list(meta["category"]),
            "fold": folds,
            "group": groups,
            "duration": [d for d, _ in info],
            "sample_rate": [sr for _, sr in info],
        },
        columns=COLUMNS,
    )
    return check_manifest(df, source, n_folds)


# ESC-50 v2.0.0: 40 clips per class and fold, 50 classes, 5 folds.
ESC50_CLASSES, ESC50_CLIPS_PER_FOLD = 50, 400


@register("esc50")
class ESC50(DatasetKind):
    """ESC-50, downloaded (or from a local archive) and verified clip by clip. Where it comes
    from does not change what it is: the URL, a local `archive`, retries and timeouts are not
    part of its identity (every clip is verified by md5 anyway)."""

    identity_keys = ("folds", "subset")

    def folds(self, options: Mapping[str, Any]) -> int | None:
        return int(options["folds"])

    def planned_sizes(self, options: Mapping[str, Any]) -> tuple[dict[int, int], int]:
        return {f: ESC50_CLIPS_PER_FOLD for f in range(1, 6)}, ESC50_CLASSES

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
        def finish(tmp: Path, source: Mapping[str, Any]) -> None:
            write_json(tmp / RECORD, {**record, "clips": source["clips"]})

        # Replaces an existing copy only once the new one is complete and verified.
        fetch_esc50(dataset.options, dest, progress=progress, downloads=downloads, finish=finish)

    def describe(self, options: Mapping[str, Any], raw_dir: Path) -> str | None:
        if not options.get("subset"):
            return None
        try:
            source = json.loads((raw_dir / SOURCE_RECORD).read_text())
        except (OSError, ValueError):
            return "subset"
        return f"subset: {source['clips']} of {source['index_clips']} clips"
