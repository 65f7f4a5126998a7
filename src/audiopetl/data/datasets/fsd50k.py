"""FSD50K (Fonseca et al., 2022): 51,197 Freesound clips of 0.3-30 s, 200 classes of the
AudioSet ontology, weakly multi-labelled (labels propagated up the ontology), 44.1 kHz mono;
CC BY 4.0 as a whole, each clip under its own Creative Commons licence. The open benchmark of
AST's home task, multi-label tagging. Download (or local copies), verify, describe.

The split is the publisher's: the development set's ``split`` column in
``FSD50K.ground_truth/dev.csv`` makes training (36,796 clips) and validation (4,170; the
publisher kept uploaders apart), the evaluation set (``eval.csv``, 10,231, labelled
exhaustively) is the test set. The task is multi-label: BCE, selected and reported by mAP.

The audio comes as split zip archives (``FSD50K.dev_audio.z01`` ... ``.z05`` + ``.zip``,
``FSD50K.eval_audio.z01`` + ``.zip``): each part is downloaded with retries and resume and
checked against its md5, then the parts are joined by Info-ZIP's ``zip -s 0`` (Python's
zipfile reads no multi-disk archive; soundata joins them the same way) and unpacked. Every clip
the ground truth lists must be there and every clip there listed, every label one of the 200
of ``vocabulary.csv``; the sha256 of every file is recorded (``SHA256SUMS``).

Facts: the Zenodo record 4060432, its file names and md5s (soundata's FSD50K loader, its
REMOTES), the layout and the sizes (the publisher's README, also in soundata's docstring).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from audiopetl.core.atomic import atomic_dir, write_json, write_text
from audiopetl.core.checksums import file_digest
from audiopetl.core.errors import DataError
from audiopetl.core.settings import DatasetSettings
from audiopetl.data.archive import BrokenArchive, extract_folders, open_archive
from audiopetl.data.audio import audio_info
from audiopetl.data.datasets.base import (
    RECORD,
    DatasetKind,
    prepare_manifest,
    register,
    subset_line,
)
from audiopetl.data.download import download
from audiopetl.data.manifest import COLUMNS, SEPARATOR, write_manifest
from audiopetl.data.verify import problems_file, raise_problems, tree_files, write_sums

# Each archive as its parts, in the order zip joins them (the .zip, the last, names them all).
ARCHIVES = {
    "FSD50K.dev_audio": (".z01", ".z02", ".z03", ".z04", ".z05", ".zip"),
    "FSD50K.eval_audio": (".z01", ".zip"),
    "FSD50K.ground_truth": (".zip",),
}
DEV, EVAL, TRUTH = "FSD50K.dev_audio", "FSD50K.eval_audio", "FSD50K.ground_truth"
SIZES = {"train": 36796, "validation": 4170, "test": 10231}
CLASSES = 200
SOURCE_RECORD = "source.json"
PROBLEM_ORDER = ("md5", "missing", "unlisted", "metadata")


def part_names(settings: Mapping[str, Any]) -> list[str]:
    """The files that make the dataset: every part of every archive."""
    parts = settings.get("parts") or {}
    return [f"{stem}{suffix}" for stem, default in ARCHIVES.items()
            for suffix in parts.get(stem, default)]  # fmt: skip


def obtain_parts(
    settings: Mapping[str, Any], downloads: Path, progress: bool
) -> tuple[Path, bool, dict[str, str]]:
    """The folder holding every part (the local ``archives`` folder, or the downloads'),
    whether it is the downloads', and each part's md5, checked against the publisher's."""
    names = part_names(settings)
    subset = bool(settings.get("subset"))
    if settings.get("archives"):
        folder, cached = Path(str(settings["archives"])).expanduser(), False
        absent = [n for n in names if not (folder / n).is_file()]
        if absent:
            raise DataError(f"{folder}: FSD50K part(s) not found (fsd50k.archives): "
                            + ", ".join(absent))  # fmt: skip
    else:
        folder, cached = downloads / "fsd50k", True
        for name in names:
            if not (folder / name).is_file():
                download(f"{str(settings['url']).rstrip('/')}/{name}", folder / name,
                         retries=int(settings["retries"]), timeout_s=float(settings["timeout_s"]),
                         progress=progress)  # fmt: skip
    expected = settings.get("md5") or {}
    digests, wrong = {}, []
    for name in names:
        digests[name] = file_digest(folder / name, "md5")
        if not subset and expected.get(name) and digests[name] != expected[name]:
            wrong.append(f"{name}: md5 {digests[name]}, the publisher's {expected[name]}")
            if cached:
                (folder / name).unlink()  # a damaged download: the next call fetches it anew
    if wrong:
        again = "the download(s) were deleted, rerun to fetch them again" if cached else (
            "fetch them again, or set fsd50k.subset: true for a part")  # fmt: skip
        raise DataError(f"{folder}: FSD50K verification failed: {len(wrong)} part(s) differ "
                        f"from the publisher's md5 ({'; '.join(wrong)}); {again}")  # fmt: skip
    return folder, cached, digests


def joined(folder: Path, stem: str, work: Path) -> Path:
    """The archive ``stem`` as one zip: its split parts joined by ``zip -s 0``, or itself."""
    last = folder / f"{stem}.zip"
    if not any(p.suffix != ".zip" for p in folder.glob(f"{stem}.z*")):
        return last
    tool = shutil.which("zip")
    if tool is None:
        raise DataError(f"{last}: FSD50K's audio comes as split zip archives, and joining them "
                        "needs Info-ZIP's zip (`apt install zip`, `conda install zip`)")
    out = work / f"{stem}.joined.zip"
    done = subprocess.run([tool, "-q", "-s", "0", str(last), "--out", str(out)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0 or not out.is_file():
        said = (done.stderr or done.stdout).strip().splitlines()
        raise DataError(f"{last}: joining its split parts failed (zip -s 0, exit "
                        f"{done.returncode}: {said[-1] if said else 'no message'}): a part is "
                        "damaged or missing")  # fmt: skip
    return out


def unpack(archive: Path, folder: str, target: Path, shown: Path) -> None:
    try:
        with open_archive(archive) as members:
            names = {m.name.split("/")[0] for m in members}
            if folder not in names:
                raise DataError(f"{shown}: no {folder}/ folder in the archive")
            extract_folders(archive, members, "", (f"{folder}/",), target)
    except BrokenArchive as err:
        raise DataError(f"{shown}: {str(err).split(': ', 1)[-1]}") from err


def read_truth(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """dev.csv, eval.csv and the vocabulary's 200 names in index order."""
    truth = root / TRUTH

    def table(name: str, columns: tuple[str, ...]) -> pd.DataFrame:
        path = truth / name
        if not path.is_file():
            raise DataError(f"{path}: not found in {TRUTH}.zip")
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise DataError(f"{path}: cannot parse CSV: {err}") from err
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(f"{path}: missing column(s): {', '.join(missing)}")
        return df

    dev = table("dev.csv", ("fname", "labels", "mids", "split"))
    ev = table("eval.csv", ("fname", "labels", "mids"))
    vocabulary = truth / "vocabulary.csv"
    if not vocabulary.is_file():
        raise DataError(f"{vocabulary}: not found in {TRUTH}.zip")
    vocab = pd.read_csv(vocabulary, header=None, names=["index", "label", "mid"], dtype=str)
    if list(vocab["index"]) != [str(i) for i in range(len(vocab))]:
        raise DataError(f"{vocabulary}: its first column is not 0, 1, 2, ... in order")
    return dev, ev, list(vocab["label"])


def problems(root: Path, dev: pd.DataFrame, ev: pd.DataFrame, names: list[str],
             subset: bool, counts: bool) -> list[tuple[str, str]]:  # fmt: skip
    """Every problem as (kind, line); with ``counts`` (no md5 vouched for the parts), the
    sizes must be FSD50K's too."""
    found: list[tuple[str, str]] = []
    known = set(names)
    if counts and len(names) != CLASSES:
        found.append(("metadata", f"{TRUTH}/vocabulary.csv: {len(names)} classes, not "
                      f"{CLASSES}"))  # fmt: skip
    bad_split = dev[~dev["split"].isin(["train", "val"])]
    found += [("metadata", f"{TRUTH}/dev.csv: {f}: split {s!r} is neither train nor val")
              for f, s in zip(bad_split["fname"], bad_split["split"], strict=True)]  # fmt: skip
    for table, csv, folder, total in ((dev, "dev.csv", DEV, SIZES["train"] + SIZES["validation"]),
                                      (ev, "eval.csv", EVAL, SIZES["test"])):  # fmt: skip
        for fname in table["fname"][table["fname"].duplicated()]:
            found.append(("metadata", f"{TRUTH}/{csv}: clip {fname} listed twice"))
        for fname, labels in zip(table["fname"], table["labels"], strict=True):
            unknown = [x for x in labels.split(",") if x not in known]
            if unknown or not labels:
                found.append(("metadata", f"{TRUTH}/{csv}: clip {fname}: label(s) "
                              f"{', '.join(unknown) or '(none)'} not in vocabulary.csv"))
        present = {p.stem for p in (root / folder).glob("*.wav")}
        listed = set(table["fname"])
        if not subset:
            found += [("missing", f"missing: {folder}/{f}.wav (listed in {csv})")
                      for f in sorted(listed - present)]  # fmt: skip
            if counts and len(table) != total:
                found.append(("metadata", f"{TRUTH}/{csv}: {len(table)} clips, not FSD50K's "
                              f"{total} (no md5 checked the parts; set fsd50k.subset: true "
                              "for a part)"))
        found += [("unlisted", f"unlisted: {folder}/{f}.wav: not in {csv}")
                  for f in sorted(present - listed)]  # fmt: skip
    return found


def manifest(root: Path, dev: pd.DataFrame, ev: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    index = {n: i for i, n in enumerate(names)}
    rows = []
    for table, folder, tag in ((dev, DEV, "dev"), (ev, EVAL, "eval")):
        for record in table.itertuples(index=False):
            rel = f"{folder}/{record.fname}.wav"
            if not (root / rel).is_file():
                continue  # a subset's absent clip (a whole copy's is a problem above)
            labels = sorted(index[x] for x in record.labels.split(","))
            part = "test" if tag == "eval" else {"train": "train", "val": "validation"}[
                record.split]
            rows.append({"clip_id": f"{tag}_{record.fname}", "path": rel, "split": part,
                         "labels": SEPARATOR.join(map(str, labels)),
                         "label_name": SEPARATOR.join(names[i] for i in labels)})  # fmt: skip
    df = pd.DataFrame(rows)
    if df.empty:
        raise DataError(f"{root}: no FSD50K clip found")
    info = [audio_info(root / p) for p in df["path"]]
    df["label"] = -1
    df["fold"] = 0
    # Each clip its own group: the publisher drew the split (uploaders apart) and the manifest
    # does not carry the uploaders.
    df["group"] = df["clip_id"]
    df["duration"] = [d for d, _ in info]
    df["sample_rate"] = [sr for _, sr in info]
    return df[[*COLUMNS, "labels", "split"]]


def fetch_fsd50k(
    dataset: DatasetSettings,
    dest: Path,
    *,
    downloads: Path,
    progress: bool = True,
    record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    settings = dataset.options
    subset = bool(settings.get("subset"))
    if not dataset.multilabel or dataset.scheme != "official":
        raise DataError(f"datasets.{dataset.name}: FSD50K is multi-label on its official split: "
                        "set task: multilabel and split: {scheme: official}")  # fmt: skip
    listing = problems_file(dest)
    folder, cached, digests = obtain_parts(settings, downloads, progress)
    source = {
        "url": None if settings.get("archives") else str(settings["url"]),
        "archives": str(settings["archives"]) if settings.get("archives") else None,
        "md5": digests,
        "verified_md5": bool(settings.get("md5")) and not subset,
    }
    with atomic_dir(dest) as tmp, tempfile.TemporaryDirectory(dir=dest.parent) as work:
        for stem in ARCHIVES:
            unpack(joined(folder, stem, Path(work)), stem, tmp, folder / f"{stem}.zip")
        dev, ev, names = read_truth(tmp)
        counts = not subset and not source["verified_md5"]
        found = problems(tmp, dev, ev, names, subset, counts)
        raise_problems(str(folder), "FSD50K", found, PROBLEM_ORDER, listing)
        table = prepare_manifest(dataset, manifest(tmp, dev, ev, names), str(dest / "manifest.csv"))
        write_manifest(table, tmp / "manifest.csv")
        write_sums(tmp, tree_files(tmp))
        source.update(clips=len(table), parts=table["split"].value_counts().to_dict())
        write_json(tmp / SOURCE_RECORD, source)
        if record is not None:
            write_json(tmp / RECORD, {**record, "clips": len(table), "skipped": []})
    listing.unlink(missing_ok=True)
    if cached:
        shutil.rmtree(folder, ignore_errors=True)
    return source


@register("fsd50k")
class FSD50K(DatasetKind):
    """FSD50K, downloaded (or from local parts) and verified: 200 classes, multi-label, the
    publisher's train / validation / evaluation split."""

    identity_keys = ("subset",)
    tasks = ("multilabel",)
    schemes = ("official",)

    def planned_sizes(self, options: Mapping[str, Any]) -> tuple[dict[int, int], int]:
        # As folds for the planner (validation: the fold after the test's, wrapping around).
        return {1: SIZES["validation"], 2: SIZES["train"], 3: SIZES["test"]}, CLASSES

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
        fetch_fsd50k(dataset, dest, downloads=downloads, progress=progress, record=record)

    def describe(self, options: Mapping[str, Any], raw_dir: Path) -> str | None:
        return subset_line(options, raw_dir / SOURCE_RECORD, sum(SIZES.values()),
                           unchecked="not checked against the publisher's md5")  # fmt: skip
