"""What every dataset kind shares: the registry, and what a kind declares.

A dataset kind is one class per source of data, registered under the `kind` of a dataset's
settings (as strategies and model kinds are under theirs); each lives in a module of its own in
this package (its download and preparation, as lhotse keeps one recipe per dataset), with its
settings' schema in resources/datasets/KIND.yaml. A kind declares which of its settings decide
the files of its raw folder (the folder's name is their hash), how many folds it declares, how
big it is before it is fetched (for `audiopetl plan`), and how it makes its raw folder: the
audio (or where it stays) and a checked ``manifest.csv``.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from audiopetl.core.errors import ConfigError
from audiopetl.core.settings import DatasetSettings
from audiopetl.data.manifest import check_manifest
from audiopetl.data.splits import get_scheme

# Bump when a dataset kind writes other files for the same settings (the synthetic generator,
# the manifest's columns): every raw folder's name changes with it.
DATA_VERSION = 1
# The raw folder's own record of the settings it was made from.
RECORD = "dataset.json"
_REGISTRY: dict[str, type[DatasetKind]] = {}


def register(kind: str) -> Callable[[type[DatasetKind]], type[DatasetKind]]:
    def wrap(cls: type[DatasetKind]) -> type[DatasetKind]:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return wrap


def _discover() -> None:
    package = importlib.import_module("audiopetl.data.datasets")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "base":
            importlib.import_module(f"audiopetl.data.datasets.{info.name}")


def kinds() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_kind(kind: str) -> DatasetKind:
    _discover()
    if kind not in _REGISTRY:
        raise ConfigError(f"dataset kind {kind!r} is not registered ({', '.join(kinds())})")
    return _REGISTRY[kind]()


def prepare_manifest(dataset: DatasetSettings, df: pd.DataFrame, source: str) -> pd.DataFrame:
    """A kind's manifest made ready to write: checked for the dataset's task, a validation
    part carved where an official split has none, and checked by its split scheme (a group on
    both sides of a split is an error)."""
    df = check_manifest(df, source, dataset.folds, dataset.task)
    scheme = get_scheme(dataset.scheme)
    parts = df["split"] if "split" in df.columns else None
    if parts is not None and not (parts == "validation").any() and (parts == "train").any():
        from audiopetl.data.splits.official import carve_validation

        share, seed = dataset.split.get("validation_share"), dataset.split.get("validation_seed")
        if share is not None:
            df = carve_validation(df, float(share), int(seed or 0))
    scheme.check(df, source, dataset.split)
    return df


class DatasetKind:
    """Base class of a dataset kind; ``options`` is its block (datasets.NAME.KIND)."""

    kind: ClassVar[str] = ""
    # The keys of its block that decide which files its raw folder holds; None: every key.
    # The others decide only how the files get there (a URL, retries, a local archive).
    identity_keys: ClassVar[tuple[str, ...] | None] = None
    # Keys added to a kind later: part of its identity only when set, so folders made before
    # they existed keep their names.
    optional_identity_keys: ClassVar[tuple[str, ...]] = ()
    # Whether data.skip_bad decides which files it lists (a user's files: unreadable ones
    # are left out of the manifest itself).
    skip_bad_decides_files: ClassVar[bool] = False
    # The tasks and split schemes its manifests can have.
    tasks: ClassVar[tuple[str, ...]] = ("multiclass",)
    schemes: ClassVar[tuple[str, ...]] = ("folds",)

    def identity(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """What its raw folder is made of: the kind and the settings that decide its files."""
        keys = self.identity_keys
        settings = dict(options) if keys is None else {k: options.get(k) for k in keys}
        settings.update({k: options[k] for k in self.optional_identity_keys if options.get(k)})
        return {"kind": self.kind, "version": DATA_VERSION, **settings}

    def folds(self, options: Mapping[str, Any]) -> int | None:
        """The number of folds it declares; None when they follow from its files."""
        return None

    def planned_sizes(self, options: Mapping[str, Any]) -> tuple[dict[int, int], int] | None:
        """Clips per fold and classes before it is fetched; None: known only from its files."""
        return None

    def planned_parts(
        self, options: Mapping[str, Any], scheme: str
    ) -> tuple[dict[int, int], int] | None:
        """Before it is fetched: clips per fold and the fold an official split tests on (its
        validation the fold before), when the kind knows; None otherwise."""
        planned = self.planned_sizes(options)
        if planned is None:
            return None
        if scheme == "folds":
            return planned[0], 0
        if scheme == "official":
            # An official split's parts as folds: the planner tests on the last and validates
            # on the fold after it, wrapping to the first (so: 1 validation, 2 training, 3 test).
            return planned[0], max(planned[0])
        return None

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
        """Make ``dest`` hold the dataset: its ``manifest.csv`` and ``record`` (completed with
        what was found) as RECORD. ``dest`` appears only when complete and verified."""
        raise NotImplementedError

    def manifest_base(self, options: Mapping[str, Any]) -> Path | None:
        """What its manifest's paths are relative to; None: the raw folder holding it."""
        return None

    def describe(self, options: Mapping[str, Any], raw_dir: Path) -> str | None:
        """A line for a partial dataset ("subset: 83 of 2000 clips"); None for a whole one."""
        return None


def subset_line(
    options: Mapping[str, Any],
    record: Path,
    total: int | None,
    noun: str = "clips",
    unchecked: str = "",
) -> str | None:
    """The ``describe`` line of a kind with a ``subset`` setting: how many ``noun`` its raw
    folder holds (``record``'s ``clips``) of ``total``, and ``unchecked`` (what the subset is
    not checked against); None for a whole dataset."""
    if not options.get("subset"):
        return None
    note = f" ({unchecked})" if unchecked else ""
    try:
        clips = json.loads(record.read_text())["clips"]
    except (OSError, ValueError, KeyError):
        return f"subset ({noun} {unchecked})" if unchecked else "subset"
    of = f" of {total}" if total is not None else ""
    return f"subset: {clips}{of} {noun}{note}"
