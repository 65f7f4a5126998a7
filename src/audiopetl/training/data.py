"""A run's data: its train, validation and test clips read from the feature cache, checked
against the manifest they were built from, and served to the device in batches in an order
that depends on the seed and the epoch only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from audiopetl.core.checksums import file_sha256
from audiopetl.core.errors import TrainingError
from audiopetl.core.settings import RunSettings
from audiopetl.features.cache import FeatureSet, cache_folds, read_folds, read_metadata


@dataclass
class Splits:
    train: list[int]
    val: list[int]
    test: list[int]


# Where a train/validation/test split takes its validation fold from, relative to the test
# fold, cyclically: the next fold (HEAR's rotation) or the one before (PETL_AST's: test fold 5
# validates on fold 4, test fold 1 on fold 5).
VALIDATION_STEP = {"train_val_test": 1, "train_val_test_before": -1}


def split_folds(folds: Sequence[int], test_fold: int, scheme: str) -> Splits:
    """train/val/test with val = the fold after the test fold (train_val_test), or the fold
    before it (train_val_test_before); or train/test (train_test). Folds wrap around."""
    folds = sorted(folds)
    if test_fold not in folds:
        raise TrainingError(f"fold {test_fold} is not among the dataset's folds {folds}")
    if scheme == "train_test":
        return Splits([f for f in folds if f != test_fold], [], [test_fold])
    if len(folds) < 3:
        raise TrainingError(f"training.split {scheme} needs 3 folds, the data has {folds}")
    step = VALIDATION_STEP[scheme]
    val_fold = folds[(folds.index(test_fold) + step) % len(folds)]
    train = [f for f in folds if f not in (test_fold, val_fold)]
    return Splits(train, [val_fold], [test_fold])


@dataclass
class RunData:
    train: FeatureSet
    val: FeatureSet | None
    test: FeatureSet
    splits: Splits
    class_names: list[str]
    # What the run reads, for its record and its resume identity.
    record: dict[str, Any]


def load_run_data(run: RunSettings) -> RunData:
    """The run's splits from its cache, after checking that the cache holds its features and
    was built from the manifest on disk."""
    path, manifest = run.cache, run.manifest
    meta = read_metadata(path)
    if meta["features"] != run.features.record():
        raise TrainingError(f"{path}: built with other feature settings; rerun `audiopetl cache`")
    fix = f"rebuild it: `audiopetl cache {run.dataset.name} --force`"
    if not manifest.is_file():
        raise TrainingError(
            f"{path}: its dataset's manifest {manifest} is missing, so the cache cannot be "
            f"checked against it; run `audiopetl fetch {run.dataset.name}`, then {fix}"
        )
    if meta.get("manifest_sha256") != file_sha256(manifest):
        raise TrainingError(
            f"{path}: built from another manifest than {manifest} (sha256 differs): the "
            f"cache does not hold this data; {fix}"
        )
    record = {
        "cache": str(path),
        "manifest": str(manifest),
        "manifest_sha256": meta["manifest_sha256"],
        "rows": meta.get("rows"),
    }
    splits = split_folds(cache_folds(path), run.fold, run.training.split)
    train = read_folds(path, splits.train)
    val = read_folds(path, splits.val) if splits.val else None
    test = read_folds(path, splits.test)
    if len(train) == 0 or len(test) == 0:
        raise TrainingError(f"{path}: empty split {splits}")
    return RunData(train, val, test, splits, list(meta["class_names"]), record)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of an epoch depends on seed and epoch only, so a resumed run can
    regenerate it and skip what it already consumed."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class BatchSource:
    """Batches of a feature set for the device: indexed where the features live (the
    device, after one copy, with training.data_on_device; else host memory, one copy per
    batch), always float32 on the device."""

    def __init__(self, data: FeatureSet, device: torch.device, on_device: bool) -> None:
        self.device = device
        self.features = data.features.to(device) if on_device else data.features
        self.labels = data.labels.to(device) if on_device else data.labels

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(self.features.device)
        x = self.features[idx].to(self.device, non_blocking=True).float()
        return x, self.labels[idx].to(self.device, non_blocking=True)
