"""An official split: every clip belongs to the training, validation or test set, as the
dataset's publisher says (a `split` column, list files, split folders). One run per seed, no
rotation. A set without a validation part gets one carved from its training clips when it is
fetched: whole groups (a speaker never on both sides), a configured share, drawn from a fixed
seed, recorded in the manifest's split column."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from audiopetl.core.errors import DataError
from audiopetl.data.splits.base import PARTS, Splits, SplitScheme, check_groups_apart, ids, register

NAME = "official"


def carve_validation(manifest: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """Move whole groups of training clips into the validation set until ``share`` of the
    training clips moved (at least one group): groups in an order drawn from ``seed``, so the
    same data and settings give the same sets."""
    train = manifest[manifest["split"] == "train"]
    groups = sorted(train["group"].unique())
    if len(groups) < 2:
        raise DataError(
            f"cannot carve a validation set from {len(groups)} training group(s): it needs "
            "two groups at least (a group never sits on both sides)"
        )
    order = np.random.default_rng(seed).permutation(len(groups))
    sizes = train.groupby("group").size()
    wanted, moved, chosen = share * len(train), 0, []
    for index in order:
        if moved >= wanted and chosen:
            break
        if len(chosen) == len(groups) - 1:
            break  # training keeps one group at least
        chosen.append(groups[index])
        moved += int(sizes[groups[index]])
    out = manifest.copy()
    out.loc[(out["split"] == "train") & out["group"].isin(chosen), "split"] = "validation"
    return out


@register(NAME)
class Official(SplitScheme):
    rotates: ClassVar[bool] = False
    rules: ClassVar[tuple[str, ...]] = ("train_val_test", "train_test")

    def check(self, manifest: pd.DataFrame, source: str, options: Mapping[str, Any]) -> None:
        if "split" not in manifest.columns:
            raise DataError(
                f"{source}: an official split needs a split column (train, validation, test) "
                "for every clip"
            )
        bad = manifest[~manifest["split"].isin(PARTS)]
        if len(bad):
            row = bad.index[0]
            raise DataError(
                f"{source}: row {row + 2} ({bad.at[row, 'clip_id']}): split "
                f"{bad.at[row, 'split']!r} is not one of {', '.join(PARTS)}"
            )
        for part in ("train", "test"):
            if not (manifest["split"] == part).any():
                raise DataError(f"{source}: the official split has no {part} clip")
        check_groups_apart(manifest, "split", source, "parts")

    def names(self, folds: Any) -> list[str]:
        return [NAME]

    def splits(self, manifest: pd.DataFrame, name: str, rule: str) -> Splits:
        if name != NAME:
            raise DataError(f"split {name!r}: this dataset has one, its official split")
        part = manifest["split"]
        val = ids(manifest, part == "validation") if rule != "train_test" else ()
        if rule != "train_test" and not val:
            raise DataError(
                "the official split has no validation clip: carve one "
                "(split.validation_share) or set training.split: train_test"
            )
        return Splits(
            ids(manifest, part == "train"),
            val,
            ids(manifest, part == "test"),
            {"split": NAME, "rule": rule},
        )
