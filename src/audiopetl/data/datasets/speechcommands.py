"""Google Speech Commands v0.02 (Warden, 2018): 105,829 one-second utterances of 35 words by
2,618 speakers, 16 kHz, CC BY 4.0. Download (or a local archive), verify, describe.

Two tasks, chosen by ``classes``:

- ``35``: the 35 words, as the reference study (PETL_AST) reads them: the official lists give
  validation (``validation_list.txt``) and test (``testing_list.txt``); training is every
  clip in neither. ``_background_noise_`` is not a class.
- ``12``: the keyword-spotting task of HEAR and SUPERB: 10 words, ``_unknown_`` (the other 25
  words) and ``_silence_``, cut from the ``_background_noise_`` recordings as one-second
  windows every half second (the ``running_tap`` recording's windows go to validation, the
  others' to training); the test set is the publisher's separate 12-class test archive, and the
  main archive's ``testing_list.txt`` clips are left out.

The lists assign clips by a hash of the speaker, so a speaker never sits on two sides of the
split: the manifest's group is the speaker (the name's part before ``_nohash_``) and the
official split scheme refuses a manifest where one does. The test archive's speakers are
grouped apart (``test:`` + speaker): the publisher documents no overlap check between the two
archives, and its canonical protocol uses them as published.

Facts, from the publisher's README and two well-kept indexes: the URLs and md5s of both
archives (hear-preprocess's speech_commands task config; torchaudio's SPEECHCOMMANDS gives the
same main-archive md5), the 10 keywords and the silence windows (hear-preprocess, which follows
TensorFlow Datasets), the lists' semantics (torchaudio), and the 35-word split's sizes: 84,843 /
9,981 / 11,005 clips. There is no published per-file checksum index: the archive's md5 decides
that the files are the publisher's, then the structure is verified (every listed clip present,
no file outside the 35 word folders and the publisher's own files) and the sha256 of every file
is recorded (``SHA256SUMS``) for later checks.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import soundfile as sf

from audiopetl.core.atomic import atomic_dir, write_json, write_text
from audiopetl.core.checksums import file_digest
from audiopetl.core.errors import DataError
from audiopetl.core.settings import DatasetSettings
from audiopetl.data.archive import BrokenArchive, extract_folders, open_archive, safe_name
from audiopetl.data.audio import audio_info
from audiopetl.data.datasets.base import (
    RECORD,
    DatasetKind,
    prepare_manifest,
    register,
    subset_line,
)
from audiopetl.data.download import obtain_archive
from audiopetl.data.manifest import COLUMNS, write_manifest
from audiopetl.data.verify import problems_file, raise_problems, tree_files, write_sums

WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward",
    "four", "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one",
    "right", "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow",
    "yes", "zero",
)  # fmt: skip
KEYWORDS = ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes")
UNKNOWN, SILENCE, NOISE = "_unknown_", "_silence_", "_background_noise_"
KEYWORD_CLASSES = (*KEYWORDS, UNKNOWN, SILENCE)
VALIDATION_NOISE = "running_tap"  # its silence windows are the validation set's
LISTS = {"validation": "validation_list.txt", "test": "testing_list.txt"}
PUBLISHER_FILES = {"LICENSE", "README.md", ".DS_Store", *LISTS.values()}
CLIP = re.compile(r"^[0-9a-f]{8}_nohash_\d+\.wav$")
# The 35-word task's official split (train, validation, test): 105,829 clips.
SIZES_35 = {"train": 84843, "validation": 9981, "test": 11005}
SUMS, SOURCE_RECORD, TEST_DIR = "SHA256SUMS", "source.json", "test"
PROBLEM_ORDER = ("missing", "unlisted", "metadata")


def _check_md5(archive: Path, expected: str | None, cached: bool, subset: bool, key: str) -> str:
    digest = file_digest(archive, "md5")
    if not subset and expected and digest != expected:
        if cached:
            archive.unlink(missing_ok=True)  # a damaged download: the next call fetches anew
        raise DataError(
            f"{archive}: Speech Commands verification failed: archive md5 {digest} differs "
            f"from the publisher's {expected} (speechcommands.{key}): a damaged or other "
            "archive; "
            + ("the download was deleted, rerun to fetch it again" if cached else
               "fetch it again, or set speechcommands.subset: true for a part of it")
        )  # fmt: skip
    return digest


def _extract(archive: Path, target: Path, marker: str | None) -> None:
    """Unpack ``archive`` into ``target``: everything under the folder holding ``marker`` (the
    main archive's list file) or, for the test archive, under its one common root."""
    with open_archive(archive) as members:
        names = [safe_name(archive, m.name) for m in members]
        files = [n for n, m in zip(names, members, strict=True) if m.kind == "file"]
        if marker is not None:
            found = [n for n in files if n == marker or n.endswith("/" + marker)]
            if len(found) != 1:
                what = "no" if not found else "several"
                raise DataError(f"{archive}: {what} Speech Commands folder (one holding {marker})")
            root = found[0][: -len(marker)]
        else:
            clips = [n for n in files if n.endswith(".wav") and "/" in n]
            if not clips:
                raise DataError(f"{archive}: no clip folders in the Speech Commands test archive")
            # The class folders at the top, or under one common folder.
            tops = {n.split("/")[0] for n in clips}
            nested = len(tops) == 1 and not tops & set(KEYWORD_CLASSES)
            root = f"{tops.pop()}/" if nested else ""
        extract_folders(archive, members, root, ("",), target)


def _read_list(path: Path, source: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{source}: not found in the archive")
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise DataError(f"{source}: not a text file ({err})") from err


def clips_of(root: Path) -> list[str]:
    """Every word clip of the main archive as WORD/NAME.wav."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.glob("*/*")
        if p.is_file() and p.parent.name != NOISE and not p.name.startswith(".")
    )


def problems(root: Path, show: Callable[[str], str], subset: bool) -> list[tuple[str, str]]:
    """Every structural problem of an unpacked main archive as (kind, line)."""
    found: list[tuple[str, str]] = []
    for item in sorted(root.iterdir()):
        if item.name == TEST_DIR and item.is_dir():
            continue  # the separate test archive, unpacked beside it (checked on its own)
        if item.is_file() and item.name not in PUBLISHER_FILES:
            found.append(("unlisted", f"unlisted: {show(item.name)}: not a Speech Commands file"))
        elif item.is_dir() and item.name not in (*WORDS, NOISE):
            found.append(("unlisted", f"unlisted: {show(item.name + '/')}: not one of the 35 "
                          "word folders"))  # fmt: skip
    clips = set(clips_of(root))
    for rel in sorted(clips):
        if Path(rel).parent.name in WORDS and not CLIP.match(Path(rel).name):
            found.append(("unlisted", f"unlisted: {show(rel)}: not a SPEAKER_nohash_N.wav clip"))
    seen: dict[str, str] = {}
    for part, name in LISTS.items():
        entries = _read_list(root / name, show(name))
        for entry in entries:
            if entry in seen:
                found.append(("metadata", f"{entry} is listed in both {seen[entry]} and {name}"
                              if seen[entry] != name else f"{entry} is listed twice in {name}"))
            seen[entry] = name
            if entry not in clips and not subset:
                found.append(("missing", f"missing: {show(entry)} (listed in {name})"))
    if subset and not clips:
        found.append(("missing", f"missing: no clip under {show('')}"))
    return found


def test_problems(root: Path, show: Callable[[str], str], subset: bool) -> list[tuple[str, str]]:
    """The separate 12-class test archive: its folders are the 12 classes."""
    found = []
    folders = {p.name for p in root.iterdir() if p.is_dir()}
    for name in sorted(folders - set(KEYWORD_CLASSES)):
        found.append(("unlisted", f"unlisted: {show(name + '/')}: not one of the 12 classes"))
    for name in sorted(set(KEYWORD_CLASSES) - folders) if not subset else ():
        found.append(("missing", f"missing: {show(name + '/')}: a class of the test set"))
    for item in sorted(root.iterdir()):
        if item.is_file() and item.name not in PUBLISHER_FILES:
            found.append(("unlisted", f"unlisted: {show(item.name)}: not a test-set file"))
    return found


def cut_silence(root: Path, out: Path) -> list[str]:
    """One-second windows every half second of each background-noise recording, written as
    ``_silence_/NAME-START.wav`` (16-bit, as the recordings); their paths relative to ``out``'s
    parent, in order."""
    written = []
    for wav in sorted((root / NOISE).glob("*.wav")):
        audio, rate = sf.read(wav, dtype="int16", always_2d=True)
        audio = audio[:, 0]
        out.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(audio) - rate, rate // 2):
            name = f"{wav.stem}-{start}.wav"
            sf.write(out / name, audio[start : start + rate], rate, subtype="PCM_16")
            written.append(f"{out.name}/{name}")
    if not written:
        raise DataError(f"{root / NOISE}: no background-noise recording to cut _silence_ from")
    return written


def speaker(name: str) -> str:
    return name.split("_nohash_")[0]


def manifest(root: Path, classes: int) -> pd.DataFrame:
    """The manifest of an unpacked (and, for 12 classes, completed) dataset folder."""
    listed = {
        entry: part for part, name in LISTS.items() for entry in _read_list(root / name, name)
    }
    rows: list[dict[str, Any]] = []
    names = WORDS if classes == 35 else KEYWORD_CLASSES
    index = {n: i for i, n in enumerate(names)}
    for rel in clips_of(root):
        word, file = rel.split("/")
        if word == SILENCE or word == TEST_DIR:
            continue
        part = listed.get(rel, "train")
        if classes == 12 and part == "test":
            continue  # the 12-class task tests on the separate archive
        label = word if classes == 35 or word in KEYWORDS else UNKNOWN
        rows.append({"clip_id": f"{word}_{Path(file).stem}", "path": rel, "label_name": label,
                     "split": part, "group": speaker(file)})  # fmt: skip
    if classes == 12:
        for rel in sorted(p.relative_to(root).as_posix() for p in (root / SILENCE).glob("*.wav")):
            recording = Path(rel).stem.rsplit("-", 1)[0]
            part = "validation" if recording == VALIDATION_NOISE else "train"
            rows.append({"clip_id": f"silence_{Path(rel).stem}", "path": rel,
                         "label_name": SILENCE, "split": part, "group": f"noise:{recording}"})
        for path in sorted((root / TEST_DIR).glob("*/*.wav")):
            rel = path.relative_to(root).as_posix()
            label = path.parent.name
            rows.append({"clip_id": f"test_{label}_{path.stem}", "path": rel,
                         "label_name": label, "split": "test",
                         "group": f"test:{speaker(path.name)}"})  # fmt: skip
    df = pd.DataFrame(rows)
    if df.empty:
        raise DataError(f"{root}: no Speech Commands clip found")
    info = [audio_info(root / p) for p in df["path"]]
    df["label"] = [index[n] for n in df["label_name"]]
    df["fold"] = 0
    df["duration"] = [d for d, _ in info]
    df["sample_rate"] = [sr for _, sr in info]
    return df[[*COLUMNS, "split"]]


def fetch_speechcommands(
    dataset: DatasetSettings,
    dest: Path,
    *,
    downloads: Path,
    progress: bool = True,
    record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Make ``dest`` hold verified Speech Commands (the word folders, the lists, for 12 classes
    ``_silence_/`` and ``test/``, ``manifest.csv``, ``SHA256SUMS``); nothing appears there
    unless it is complete and verified."""
    settings = dataset.options
    classes, subset = int(settings["classes"]), bool(settings.get("subset"))
    listing = problems_file(dest)
    main, main_cached = obtain_archive(settings, downloads, "Speech Commands", "speechcommands",
                                       progress)  # fmt: skip
    source: dict[str, Any] = {
        "url": None if settings.get("archive") else str(settings["url"]),
        "archive": str(settings["archive"]) if settings.get("archive") else None,
        "archive_md5": _check_md5(main, settings.get("md5"), main_cached, subset, "md5"),
        "verified_md5": bool(settings.get("md5")) and not subset,
        "classes": classes,
    }
    test, test_cached = None, False
    if classes == 12:
        test_settings = {**settings, "url": settings["test_url"],
                         "archive": settings.get("test_archive")}  # fmt: skip
        test, test_cached = obtain_archive(test_settings, downloads, "Speech Commands test",
                                           "speechcommands.test", progress)  # fmt: skip
        source["test_archive_md5"] = _check_md5(test, settings.get("test_md5"), test_cached,
                                                subset, "test_md5")  # fmt: skip
        source["verified_test_md5"] = bool(settings.get("test_md5")) and not subset
    with atomic_dir(dest) as tmp:
        found: list[tuple[str, str]] = []
        for archive, cached, into, marker in (
            (main, main_cached, tmp, LISTS["validation"]),
            (test, test_cached, tmp / TEST_DIR, None),
        ):
            if archive is None:
                continue
            try:
                _extract(archive, into, marker)
            except BrokenArchive as err:
                if cached:
                    archive.unlink(missing_ok=True)
                    raise DataError(f"{err} (the cached download was deleted; rerun to fetch "
                                    "it again)") from err  # fmt: skip
                raise
        found += problems(tmp, lambda rel: f"{main}: {rel}", subset)
        if test is not None:
            found += test_problems(tmp / TEST_DIR, lambda rel: f"{test}: {rel}", subset)
        raise_problems(str(main), "Speech Commands", found, PROBLEM_ORDER, listing)
        if classes == 12:
            cut_silence(tmp, tmp / SILENCE)
        table = prepare_manifest(dataset, manifest(tmp, classes), str(dest / "manifest.csv"))
        write_manifest(table, tmp / "manifest.csv")
        write_sums(tmp, tree_files(tmp))
        source.update(clips=len(table), parts=table["split"].value_counts().to_dict())
        write_json(tmp / SOURCE_RECORD, source)
        if record is not None:
            write_json(tmp / RECORD, {**record, "clips": len(table), "skipped": []})
    listing.unlink(missing_ok=True)
    for archive, cached in ((main, main_cached), (test, test_cached)):
        if archive is not None and cached:
            archive.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                archive.parent.rmdir()
    return source


@register("speechcommands")
class SpeechCommands(DatasetKind):
    """Speech Commands v0.02, downloaded (or from local archives) and verified; its official
    lists, as 35 words or the 12-class keyword task."""

    identity_keys = ("subset", "classes")
    schemes = ("official",)

    def planned_sizes(self, options: Mapping[str, Any]) -> tuple[dict[int, int], int] | None:
        if int(options["classes"]) != 35:
            return None  # the 12-class sets' sizes depend on the silence windows cut
        # As folds for the planner, which validates on the fold after the test fold (wrapping
        # around): validation 1, training 2, test 3.
        return {1: SIZES_35["validation"], 2: SIZES_35["train"], 3: SIZES_35["test"]}, 35

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
        fetch_speechcommands(dataset, dest, downloads=downloads, progress=progress, record=record)

    def describe(self, options: Mapping[str, Any], raw_dir: Path) -> str | None:
        total = sum(SIZES_35.values()) if int(options["classes"]) == 35 else None
        return subset_line(options, raw_dir / SOURCE_RECORD, total,
                           unchecked="not checked against the publisher's md5")  # fmt: skip
