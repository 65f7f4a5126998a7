"""What every split scheme shares: the registry, the three sets of one run, and the checks
every scheme makes (a group on two sides of a split is leakage)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd

from audiopetl.core.errors import ConfigError, DataError

# The values of training.split: how a run uses a dataset's parts. `train_val_test`: select the
# best epoch on the validation set (folds: the fold after the test fold); `train_val_test_before`
# (folds only): validation on the fold before the test fold, as PETL_AST rotates them;
# `train_test`: no validation (a fixed number of epochs, no model selection);
# `train_select_on_test` (folds only): the reference study's UrbanSound8K protocol, training on
# every fold but the test fold and picking the epoch on the test fold itself, a test-set
# selection whose numbers are optimistic, offered to reproduce the reference and named as such.
RULES = ("train_val_test", "train_val_test_before", "train_test", "train_select_on_test")
# The rules whose selection sees the test set: every output says so.
SELECTS_ON_TEST = ("train_select_on_test",)
# The split column's values of an official split.
PARTS = ("train", "validation", "test")
_REGISTRY: dict[str, type[SplitScheme]] = {}
SCHEMES = ("folds", "official", "session_speaker")


def register(kind: str) -> Callable[[type[SplitScheme]], type[SplitScheme]]:
    def wrap(cls: type[SplitScheme]) -> type[SplitScheme]:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return wrap


def _discover() -> None:
    package = importlib.import_module("audiopetl.data.splits")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "base":
            importlib.import_module(f"audiopetl.data.splits.{info.name}")


def get_scheme(kind: str) -> SplitScheme:
    _discover()
    if kind not in _REGISTRY:
        raise ConfigError(f"split scheme {kind!r} is not registered ({', '.join(_REGISTRY)})")
    return _REGISTRY[kind]()


@dataclass(frozen=True)
class Splits:
    """One run's training, validation (empty: none) and test clips, by clip id, in manifest
    order; ``record`` says how they were chosen (run.json)."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    record: Mapping[str, Any] = field(default_factory=dict)

    def sizes(self) -> tuple[int, int, int]:
        return len(self.train), len(self.val), len(self.test)


def ids(manifest: pd.DataFrame, rows: pd.Series) -> tuple[str, ...]:
    return tuple(str(c) for c in manifest.loc[rows, "clip_id"])


def check_groups_apart(manifest: pd.DataFrame, column: str, source: str, what: str) -> None:
    """A group (a speaker, a recording, a session) on both sides of a split is leakage."""
    spread = manifest.groupby("group")[column].nunique()
    leaking = spread[spread > 1]
    if len(leaking):
        group = leaking.index[0]
        sides = sorted(str(v) for v in manifest.loc[manifest["group"] == group, column].unique())
        raise DataError(
            f"{source}: group {group!r} sits in {what} {', '.join(sides)} ({len(leaking)} "
            "group(s) do): its clips would be on both sides of a split (leakage)"
        )


class SplitScheme:
    """Base class of a split scheme; ``options`` is the dataset's `split` block."""

    kind: ClassVar[str] = ""
    # Whether the study's `folds` choose the runs (one run per fold and seed), or the scheme
    # gives one split whatever they say.
    rotates: ClassVar[bool] = True
    # The training.split rules it can serve.
    rules: ClassVar[tuple[str, ...]] = RULES

    def check(self, manifest: pd.DataFrame, source: str, options: Mapping[str, Any]) -> None:
        """Refuse a manifest this scheme cannot split honestly (one line naming the rows)."""

    def names(self, folds: Sequence[int]) -> list[str]:
        """The split names of a study's runs (run folders are named by them)."""
        return [f"fold{f}" for f in folds]

    def splits(self, manifest: pd.DataFrame, name: str, rule: str) -> Splits:
        raise NotImplementedError

    def units(self, manifest: pd.DataFrame) -> int | None:
        """How many folds the manifest has (study.folds may go up to it); None: not folds."""
        return None


def fold_of(name: str) -> int:
    if not name.startswith("fold") or not name[4:].isdigit():
        raise DataError(f"split {name!r}: not a fold of this dataset (fold1, fold2, ...)")
    return int(name[4:])
