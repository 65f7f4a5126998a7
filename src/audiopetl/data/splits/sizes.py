"""How many clips each run's sets hold, and whether a run can learn and be judged on them:
a training set with a class missing or too few clips of it, or a validation or test set of a
handful of clips, gives a number that means nothing (a fold of 1 validation clip, 12 training
clips for 50 classes). Checked before any training job runs (the workflow's `splits` job and
`audiopetl splits`), again by each run, and shown by `audiopetl plan`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from audiopetl.data.manifest import label_sets
from audiopetl.data.splits.base import Splits

# data.min_split_clips: the least a run's sets may hold. Set one to 0 to relax it.
DEFAULT_MINIMUMS = {"train_per_class": 2, "validation": 10, "test": 10}


@dataclass(frozen=True)
class SplitSizes:
    """One run's sets: clips in each, and training clips per class (a multi-label clip counts
    for each of its classes)."""

    name: str  # fold3, official, ...
    rule: str  # train_val_test, train_test, ...
    train: int
    val: int
    test: int
    train_per_class: Mapping[str, int]
    record: Mapping[str, Any]

    def row(self) -> dict[str, Any]:
        return {
            "split": self.name,
            "rule": self.rule,
            "train": self.train,
            "validation": self.val,
            "test": self.test,
            "train_per_class": dict(self.train_per_class),
            "parts": dict(self.record),
        }


def split_sizes(
    manifest: pd.DataFrame, class_names: Sequence[str], splits: Splits, name: str, rule: str
) -> SplitSizes:
    sets = dict(zip(manifest["clip_id"].astype(str), label_sets(manifest), strict=True))
    per_class = dict.fromkeys(class_names, 0)
    for clip in splits.train:
        for label in sets[clip]:
            per_class[class_names[label]] += 1
    return SplitSizes(
        name, rule, *splits.sizes(), train_per_class=per_class, record=dict(splits.record)
    )


def size_problems(sizes: SplitSizes, minimums: Mapping[str, int], where: str) -> list[str]:
    """What makes the run meaningless, one line each, naming the split and the counts and the
    setting that relaxes the check."""
    wanted = {**DEFAULT_MINIMUMS, **minimums}
    problems = []
    missing = [c for c, n in sizes.train_per_class.items() if n == 0]
    if missing and wanted["train_per_class"] > 0:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        shown = ", ".join(missing[:5]) + more
        problems.append(
            f"{where}, split {sizes.name}: {len(missing)} of {len(sizes.train_per_class)} "
            f"classes have no training clip ({shown}): the run cannot learn them; relax "
            "with data.min_split_clips.train_per_class: 0"
        )
    few = {c: n for c, n in sizes.train_per_class.items() if 0 < n < wanted["train_per_class"]}
    if few:
        worst = min(few, key=few.__getitem__)
        problems.append(
            f"{where}, split {sizes.name}: {len(few)} class(es) have fewer than "
            f"{wanted['train_per_class']} training clips ({worst}: {few[worst]}; "
            f"{sizes.train} training clips in all); relax with "
            "data.min_split_clips.train_per_class"
        )
    for part, count in (("validation", sizes.val), ("test", sizes.test)):
        if part == "validation" and sizes.rule == "train_test":
            continue
        if count < wanted[part]:
            use = "select the best epoch on" if part == "validation" else "score the run on"
            problems.append(
                f"{where}, split {sizes.name}: {count} {part} clip(s), fewer than "
                f"data.min_split_clips.{part} = {wanted[part]}: too few to {use}; lower the "
                "setting to relax the check"
            )
    return problems
