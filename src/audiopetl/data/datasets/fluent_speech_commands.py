"""Fluent Speech Commands (Lugosch et al., 2019): 30,043 English utterances by 97 speakers of
commands for a smart-home assistant, 16 kHz. Its publisher distributes it after registration,
so it is read from a local copy only (``root``: the folder holding ``data/`` and ``wavs/``);
the audio stays there.

The task is the intent: action + object + location joined (``activate_lights_kitchen``), 31
intents, as the reference study (PETL_AST) reads it. The split is the publisher's:
``data/train_data.csv``, ``valid_data.csv`` and ``test_data.csv`` (23,132 / 3,118 / 3,793
utterances, the speakers of one part in no other), the official scheme; ``speakerId`` is the
group, so a speaker on two sides is an error.

Verification: every utterance a CSV lists must be there and every ``.wav`` under ``wavs/``
listed; the intents must be the 31 (a copy with fewer is a ``subset: true``); and with no
published checksums, the sha256 of every file is recorded at the first use of a copy
(``data/raw/.checksums/``) and every later fetch of that copy is checked against it.

Facts from the publisher's README and the reference study's loader (its CSV columns: path,
speakerId, transcription, action, object, location; the intent as the three joined).
"""

from __future__ import annotations

import contextlib
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

PARTS = {"train": "data/train_data.csv", "validation": "data/valid_data.csv",
         "test": "data/test_data.csv"}  # fmt: skip
COLUMNS_READ = ("path", "speakerId", "transcription", "action", "object", "location")
SIZES = {"train": 23132, "validation": 3118, "test": 3793}
INTENTS = 31
PROBLEM_ORDER = ("sha256", "missing", "unlisted", "metadata")


def root_of(options: Mapping[str, Any]) -> Path:
    return Path(str(options["root"])).expanduser()


def read_part(root: Path, rel: str) -> pd.DataFrame:
    path = root / rel
    if not path.is_file():
        raise DataError(f"{path}: not found: fluent_speech_commands.root must be the folder "
                        "holding data/ and wavs/")  # fmt: skip
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot parse CSV: {err}") from err
    missing = [c for c in COLUMNS_READ if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s): {', '.join(missing)}")
    return table


def utterances(root: Path) -> pd.DataFrame:
    """Every listed utterance with its part and intent."""
    tables = [read_part(root, rel).assign(split=part) for part, rel in PARTS.items()]
    table = pd.concat(tables, ignore_index=True)
    table["intent"] = table["action"] + "_" + table["object"] + "_" + table["location"]
    return table


def problems(root: Path, table: pd.DataFrame, subset: bool) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    listed = set(table["path"])
    for part, rows in table.groupby("split"):
        for name, dup in rows.groupby("path"):
            if len(dup) > 1:
                found.append(("metadata", f"{name} is listed {len(dup)} times in {PARTS[part]}"))
    for name, parts in table.groupby("path")["split"].unique().items():
        if len(parts) > 1:
            found.append(("metadata", f"{name} is listed in {', '.join(PARTS[p] for p in parts)}"))
    present = {p.relative_to(root).as_posix() for p in (root / "wavs").rglob("*.wav")}
    if not subset:
        found += [("missing", f"missing: {root / name} (listed in {PARTS[part]})")
                  for name, part in zip(table["path"], table["split"], strict=True)
                  if name not in present]  # fmt: skip
    found += [("unlisted", f"unlisted: {root / name}: in no CSV of data/")
              for name in sorted(present - listed)]  # fmt: skip
    intents = table["intent"].nunique()
    if not subset and intents != INTENTS:
        found.append(("metadata", f"{intents} intents, not the {INTENTS} of Fluent Speech "
                      "Commands (set fluent_speech_commands.subset: true for a part)"))
    return found


def fetch_fluent(
    dataset: DatasetSettings, dest: Path, *, raw: Path, record: Mapping[str, Any]
) -> None:
    options = dataset.options
    root, subset = root_of(options), bool(options.get("subset"))
    if not root.is_dir():
        raise DataError(f"{root}: not found (datasets.{dataset.name}.fluent_speech_commands.root)")
    listing = problems_file(dest)
    table = utterances(root)
    found = problems(root, table, subset)
    table = table[[(root / p).is_file() for p in table["path"]]].reset_index(drop=True)
    files = sorted([*PARTS.values(), *table["path"]])  # what is there (a missing one: above)
    recorded = paths.recorded_checksums(raw, "fluent_speech_commands", root)
    more, digests = against_recorded(root, files, recorded, lambda rel: str(root / rel), subset)
    found += more
    raise_problems(str(root), "Fluent Speech Commands", found, PROBLEM_ORDER, listing)
    info = [audio_info(root / p) for p in table["path"]]
    intents = sorted(table["intent"].unique())
    df = pd.DataFrame(
        {
            "clip_id": [Path(p).stem for p in table["path"]],
            "path": list(table["path"]),
            "label": [intents.index(i) for i in table["intent"]],
            "label_name": list(table["intent"]),
            "fold": 0,
            "group": list(table["speakerId"]),
            "duration": [d for d, _ in info],
            "sample_rate": [sr for _, sr in info],
            "split": list(table["split"]),
        },
        columns=[*COLUMNS, "split"],
    )
    with atomic_dir(dest) as tmp:
        df = prepare_manifest(dataset, df, str(dest / "manifest.csv"))
        write_manifest(df, tmp / "manifest.csv")
        write_sums(tmp, files, digests)
        write_json(tmp / RECORD, {**record, "clips": len(df), "skipped": [],
                                  "checksums": "recorded" if not recorded.exists() else
                                  "checked against the first use's"})  # fmt: skip
    record_first_use(recorded, files, digests)
    listing.unlink(missing_ok=True)


@register("fluent_speech_commands")
class FluentSpeechCommands(DatasetKind):
    """Fluent Speech Commands from a local copy: 31 intents, the publisher's split."""

    identity_keys = ("root", "subset")
    schemes = ("official",)

    def planned_sizes(self, options: Mapping[str, Any]) -> tuple[dict[int, int], int]:
        # As folds for the planner (validation: the fold after the test's, wrapping around).
        return {1: SIZES["validation"], 2: SIZES["train"], 3: SIZES["test"]}, INTENTS

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
        fetch_fluent(dataset, dest, raw=downloads.parent, record=record)

    def manifest_base(self, options: Mapping[str, Any]) -> Path | None:
        return root_of(options)

    def describe(self, options: Mapping[str, Any], raw_dir: Path) -> str | None:
        return subset_line(options, raw_dir / RECORD, sum(SIZES.values()), "utterances")
