"""Sessions and speakers (IEMOCAP's protocol): each run holds one recording session out, tests
on one of its speakers and validates on the other(s), and trains on the other sessions. The
manifest's fold is the session and its group the speaker; runs are numbered fold1, fold2, ...
over the (session, speaker) pairs in order (IEMOCAP: 5 sessions x 2 speakers, 10 runs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pandas as pd

from audiopetl.core.errors import DataError
from audiopetl.data.splits.base import (
    Splits,
    SplitScheme,
    check_groups_apart,
    fold_of,
    ids,
    register,
)


def pairs(manifest: pd.DataFrame) -> list[tuple[int, str]]:
    """The (session, speaker) pairs, in order: what fold1, fold2, ... name."""
    found = manifest[["fold", "group"]].drop_duplicates()
    return sorted((int(s), str(g)) for s, g in found.itertuples(index=False))


@register("session_speaker")
class SessionSpeaker(SplitScheme):
    rules: ClassVar[tuple[str, ...]] = ("train_val_test", "train_test")

    def check(self, manifest: pd.DataFrame, source: str, options: Mapping[str, Any]) -> None:
        check_groups_apart(manifest, "fold", source, "sessions")
        lonely = [s for s, n in manifest.groupby("fold")["group"].nunique().items() if n < 2]
        if lonely:
            raise DataError(
                f"{source}: session {lonely[0]} has one speaker: it cannot test on one "
                "speaker and validate on another"
            )

    def units(self, manifest: pd.DataFrame) -> int | None:
        return len(pairs(manifest))

    def splits(self, manifest: pd.DataFrame, name: str, rule: str) -> Splits:
        index = fold_of(name)
        every = pairs(manifest)
        if not 1 <= index <= len(every):
            raise DataError(f"split {name!r}: the data has {len(every)} session/speaker pairs")
        session, speaker = every[index - 1]
        held = manifest["fold"] == session
        test = held & (manifest["group"] == speaker)
        val = held & ~test if rule != "train_test" else held & False
        return Splits(
            ids(manifest, ~held),
            ids(manifest, val),
            ids(manifest, test),
            {"session": session, "test_speaker": speaker, "rule": rule},
        )
