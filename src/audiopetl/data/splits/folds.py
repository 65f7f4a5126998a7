"""Folds that rotate: each run tests on one fold, validates on its neighbour and trains on the
rest (HEAR's rotation; ESC-50's five folds, UrbanSound8K's ten, or folds made from groups).
A group never spans two folds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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

# Where the validation fold sits relative to the test fold, cyclically.
STEP = {"train_val_test": 1, "train_val_test_before": -1}


@dataclass(frozen=True)
class FoldSplits:
    train: list[int]
    val: list[int]
    test: list[int]


def split_folds(folds: Sequence[int], test: int, rule: str) -> FoldSplits:
    """The train, validation and test folds of the run testing on ``test``: validation the
    fold after it (train_val_test) or before it (train_val_test_before), none (train_test),
    the test fold itself (train_select_on_test, the reference's UrbanSound8K protocol); folds
    wrap around."""
    return FoldSplits(*rotate(list(folds), test, rule))


def rotate(folds: list[int], test: int, rule: str) -> tuple[list[int], list[int], list[int]]:
    """(train, validation, test) folds of the run testing on ``test``."""
    folds = sorted(folds)
    if test not in folds:
        raise DataError(f"fold {test} is not among the dataset's folds {folds}")
    if rule == "train_test":
        return [f for f in folds if f != test], [], [test]
    if rule == "train_select_on_test":  # the reference's UrbanSound8K protocol (base.RULES)
        return [f for f in folds if f != test], [test], [test]
    if len(folds) < 3:
        raise DataError(f"training.split {rule} needs 3 folds, the data has {folds}")
    val = folds[(folds.index(test) + STEP[rule]) % len(folds)]
    return [f for f in folds if f not in (test, val)], [val], [test]


@register("folds")
class Folds(SplitScheme):
    rules: ClassVar[tuple[str, ...]] = (
        "train_val_test",
        "train_val_test_before",
        "train_test",
        "train_select_on_test",
    )

    def check(self, manifest: pd.DataFrame, source: str, options: Mapping[str, Any]) -> None:
        check_groups_apart(manifest, "fold", source, "folds")

    def units(self, manifest: pd.DataFrame) -> int | None:
        return int(manifest["fold"].max()) if len(manifest) else 0

    def splits(self, manifest: pd.DataFrame, name: str, rule: str) -> Splits:
        train, val, test = rotate(list(manifest["fold"].unique()), fold_of(name), rule)
        fold = manifest["fold"]
        return Splits(
            ids(manifest, fold.isin(train)),
            ids(manifest, fold.isin(val)),
            ids(manifest, fold.isin(test)),
            {
                "train": [int(f) for f in train],
                "val": [int(f) for f in val],
                "test": [int(f) for f in test],
            },
        )
