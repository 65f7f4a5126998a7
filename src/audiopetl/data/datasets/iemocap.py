"""IEMOCAP (Busso et al., 2008): dyadic sessions of two actors each (5 sessions, 10 speakers),
improvised and scripted, cut into utterances labelled with categorical emotions. Its publisher
releases it after a signed form, so it is read from a local copy only (``root``: the
``IEMOCAP_full_release`` folder); the audio stays there.

The task is the reference study's (PETL_AST) and most of the field's: 4 classes, neutral,
happy (``hap`` and ``exc`` merged), sad and angry, 5,531 utterances; the other labels (``fru``,
``sur``, ``xxx`` ...) are left out. Labels come from each dialog's
``Session{N}/dialog/EmoEvaluation/DIALOG.txt`` (the ``[start - end]  TURN  EMOTION  [V, A, D]``
lines), audio from ``Session{N}/sentences/wav/DIALOG/TURN.wav``. The split is the
session_speaker scheme: the manifest's fold is the session and its group the speaker (the
session and the letter the turn's name ends with: ``Ses01F_impro01_M012`` is ``Ses01M``); each
run holds one session out, tests on one of its speakers and validates on the other (10 runs).

Verification: every labelled utterance of the 4 classes must have its wav; the count must be
5,531 (a copy with fewer is a ``subset: true``); with no published checksums, the sha256 of every
file read is recorded at the first use of a copy (``data/raw/.checksums/``) and every later
fetch of that copy is checked against it.

Facts from the publisher's release layout and the reference study's loader (the label files'
line format, the merge of excited into happy); the per-session counts of the 4-class task are
the ones the literature reports (1085, 1023, 1151, 1031, 1241).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from audiopetl.core import paths
from audiopetl.core.atomic import atomic_dir, write_json, write_text
from audiopetl.core.errors import DataError
from audiopetl.core.settings import DatasetSettings
from audiopetl.data.audio import audio_info
from audiopetl.data.datasets.base import (
    RECORD,
    DatasetKind,
    prepare_manifest,
    register,
    subset_line,
)
from audiopetl.data.manifest import COLUMNS, write_manifest
from audiopetl.data.verify import (
    against_recorded,
    problems_file,
    raise_problems,
    record_first_use,
    write_sums,
)

CLASSES = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}
NAMES = ("angry", "happy", "neutral", "sad")
SESSION_SIZES = {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241}
LINE = re.compile(r"^\[(\d+(?:\.\d+)?) - (\d+(?:\.\d+)?)\]\t(\S+)\t(\S+)\t\[")
TURN = re.compile(r"^(Ses0[1-5])[FM]_\S+_([FM])\d+$")
PROBLEM_ORDER = ("sha256", "missing", "unlisted", "metadata")


def root_of(options: Mapping[str, Any]) -> Path:
    return Path(str(options["root"])).expanduser()


def labels(root: Path) -> tuple[pd.DataFrame, list[tuple[str, str]], list[str]]:
    """The 4-class utterances of every session's label files, the problems found, and the
    label files read (relative to ``root``)."""
    rows, found, read = [], [], []
    for session in range(1, 6):
        folder = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        for path in sorted(folder.glob("*.txt")):
            rel = path.relative_to(root).as_posix()
            read.append(rel)
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                match = LINE.match(line)
                if match is None:
                    continue
                turn, emotion = match.group(3), match.group(4)
                speaker = TURN.match(turn)
                if speaker is None or int(speaker.group(1)[-1]) != session:
                    found.append(("metadata", f"{path}: line {number}: turn {turn!r} is not a "
                                  f"turn of Session{session}"))  # fmt: skip
                    continue
                if emotion not in CLASSES:
                    continue
                dialog = turn.rsplit("_", 1)[0]
                rows.append({"turn": turn, "emotion": CLASSES[emotion], "session": session,
                             "speaker": speaker.group(1) + speaker.group(2),
                             "path": f"Session{session}/sentences/wav/{dialog}/{turn}.wav"})
    table = pd.DataFrame(rows, columns=["turn", "emotion", "session", "speaker", "path"])
    for turn, dup in table.groupby("turn"):
        if len(dup) > 1:
            found.append(("metadata", f"turn {turn} is labelled {len(dup)} times"))
    return table, found, read


def fetch_iemocap(
    dataset: DatasetSettings, dest: Path, *, raw: Path, record: Mapping[str, Any]
) -> None:
    options = dataset.options
    root, subset = root_of(options), bool(options.get("subset"))
    if not root.is_dir():
        raise DataError(f"{root}: not found (datasets.{dataset.name}.iemocap.root)")
    listing = problems_file(dest)
    table, found, read = labels(root)
    if table.empty:
        raise DataError(f"{root}: no labelled utterance under Session*/dialog/EmoEvaluation/ "
                        "(iemocap.root must be the IEMOCAP_full_release folder)")  # fmt: skip
    present = [(root / p).is_file() for p in table["path"]]
    if not subset:
        found += [("missing", f"missing: {root / p} (labelled {e})")
                  for p, e, ok in zip(table["path"], table["emotion"], present, strict=True)
                  if not ok]  # fmt: skip
        if len(table) != sum(SESSION_SIZES.values()):
            found.append(("metadata", f"{len(table)} utterances of the 4 classes, not IEMOCAP's "
                          f"{sum(SESSION_SIZES.values())} (set iemocap.subset: true for a part)"))
    table = table[present].reset_index(drop=True)
    files = sorted([*read, *table["path"]])
    recorded = paths.recorded_checksums(raw, "iemocap", root)
    more, digests = against_recorded(root, files, recorded, lambda rel: str(root / rel), subset)
    raise_problems(str(root), "IEMOCAP", found + more, PROBLEM_ORDER, listing)
    info = [audio_info(root / p) for p in table["path"]]
    df = pd.DataFrame(
        {
            "clip_id": list(table["turn"]),
            "path": list(table["path"]),
            "label": [NAMES.index(e) for e in table["emotion"]],
            "label_name": list(table["emotion"]),
            "fold": list(table["session"]),
            "group": list(table["speaker"]),
            "duration": [d for d, _ in info],
            "sample_rate": [sr for _, sr in info],
        },
        columns=COLUMNS,
    )
    with atomic_dir(dest) as tmp:
        df = prepare_manifest(dataset, df, str(dest / "manifest.csv"))
        write_manifest(df, tmp / "manifest.csv")
        write_sums(tmp, files, digests)
        write_json(tmp / RECORD, {**record, "clips": len(df), "skipped": []})
    record_first_use(recorded, files, digests)
    listing.unlink(missing_ok=True)


@register("iemocap")
class Iemocap(DatasetKind):
    """IEMOCAP from a local copy: 4 classes, sessions and speakers."""

    identity_keys = ("root", "subset")
    schemes = ("session_speaker",)

    def folds(self, options: Mapping[str, Any]) -> int | None:
        return 5

    def planned_sizes(self, options: Mapping[str, Any]) -> tuple[dict[int, int], int]:
        return dict(SESSION_SIZES), len(NAMES)

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
        fetch_iemocap(dataset, dest, raw=downloads.parent, record=record)

    def manifest_base(self, options: Mapping[str, Any]) -> Path | None:
        return root_of(options)

    def describe(self, options: Mapping[str, Any], raw_dir: Path) -> str | None:
        return subset_line(options, raw_dir / RECORD, sum(SESSION_SIZES.values()), "utterances")
