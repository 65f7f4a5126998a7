"""A run's data: its train, validation and test clips (its dataset's split scheme applied to
the manifest) read from the feature cache, checked against the manifest they were built from,
and served to the device in batches in an order that depends on the seed and the epoch only."""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from audiopetl.core.checksums import file_sha256
from audiopetl.core.errors import DataError, TrainingError
from audiopetl.core.settings import RunSettings
from audiopetl.data.datasets import describe
from audiopetl.data.manifest import check_manifest, label_sets, read_manifest
from audiopetl.data.splits import Splits, get_scheme
from audiopetl.data.splits.sizes import size_problems, split_sizes
from audiopetl.features.cache import CacheStream, FeatureSet, read_clips, read_metadata
from audiopetl.features.rows import StreamedFeatures

log = logging.getLogger(__name__)
GB = 1 << 30


@dataclass
class RunData:
    train: FeatureSet
    val: FeatureSet | None
    test: FeatureSet
    splits: Splits
    class_names: list[str]
    # What the run reads, for its record and its resume identity.
    record: dict[str, Any]


def load_run_data(run: RunSettings, embeddings: bool = False) -> RunData:
    """The run's splits, by its dataset's split scheme over the manifest, read from its cache
    after checking that the cache holds its features and was built from that manifest.
    ``embeddings``: from its probe's embedding cache instead (it carries the metadata of the
    feature cache it was computed from; always held in memory: it is small)."""
    path, manifest = run.cache, run.manifest
    if embeddings:
        if run.embeddings is None:
            raise TrainingError(f"strategy {run.strategy.name!r}: no embedding cache named")
        path = run.embeddings
        if not path.is_file():
            raise TrainingError(
                f"{path}: the embedding cache strategy {run.strategy.name!r} trains on is "
                f"missing; run `audiopetl embed --dataset {run.dataset.name} --model "
                f"{run.model.name}` first (the workflow does)"
            )
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
        "cache": str(run.cache),
        # A probe's embeddings: the file it trained on (the weights are recorded beside).
        **({"embeddings": str(path), "embeddings_sha256": file_sha256(path)} if embeddings else {}),
        "manifest": str(manifest),
        "manifest_sha256": meta["manifest_sha256"],
        "rows": meta.get("rows"),
    }
    partial = describe(run.dataset, manifest.parent)
    if partial is not None:
        record["partial"] = partial  # "subset: 414 of 2000 clips"
    table = read_manifest(manifest)
    table = check_manifest(table, str(manifest), task=run.dataset.task)
    scheme = get_scheme(run.dataset.scheme)
    scheme.check(table, str(manifest), run.dataset.split)
    splits = scheme.splits(table, run.split, run.training.split)
    class_names = list(meta["class_names"])
    sizes = split_sizes(table, class_names, splits, run.split, run.training.split)
    problems = size_problems(sizes, run.min_split_clips, f"dataset {run.dataset.name}")
    if problems:
        raise DataError(problems[0])
    sets = dict(zip(table["clip_id"], label_sets(table), strict=True))
    n_clips = len(splits.train) + len(splits.val or []) + len(splits.test)
    streamed = not embeddings and should_stream(run, meta["shape"], n_clips)
    # A stream is opened once for the three sets: one row file, one read of the ids.
    read = CacheStream(path).clips if streamed else lambda ids: read_clips(path, ids)
    parts = [
        _with_targets(read(ids), sets, len(class_names), run.dataset.multilabel) if ids else None
        for ids in (splits.train, splits.val, splits.test)
    ]
    train, val, test = parts
    if train is None or test is None or len(train) == 0 or len(test) == 0:
        raise TrainingError(
            f"{path}: empty split: {len(splits.train)} training clips, "
            f"{len(splits.test)} test clips ({splits.record})"
        )
    return RunData(train, val, test, splits, class_names, record)


def should_stream(run: RunSettings, shape: list[int], n_clips: int) -> bool:
    """Whether the run reads its features from disk a batch at a time (training.stream)."""
    wanted = run.training.stream
    size = n_clips * 2 * shape[0] * shape[1]
    if wanted == "auto":
        wanted = size > run.training.feature_memory_gb * GB
        if wanted:
            log.info(
                "streaming the features from disk: %.2f GB exceed training.feature_memory_gb = %g",
                size / GB,
                run.training.feature_memory_gb,
            )
    return bool(wanted)


def _with_targets(
    data: FeatureSet, sets: dict[str, list[int]], n_classes: int, multilabel: bool
) -> FeatureSet:
    """A multi-label set's (N, classes) targets from the manifest's label sets."""
    if multilabel:
        hot = np.zeros((len(data), n_classes), dtype=np.uint8)
        for row, clip in enumerate(data.clip_ids):
            hot[row, sets[clip]] = 1
        data.targets = torch.from_numpy(hot)
    return data


def epoch_order(n: int, seed: int, epoch: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The data order of an epoch depends on seed and epoch only, so a resumed run can
    regenerate it and skip what it already consumed: a permutation, or with ``weights`` (the
    balanced sampler) ``n`` clips drawn with replacement in proportion to them."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if weights is not None:
        return torch.multinomial(weights.double(), n, replacement=True, generator=generator)
    return torch.randperm(n, generator=generator)


class BatchSource:
    """Batches of a feature set for the device: indexed where the features live (the
    device, after one copy, with training.data_on_device; else host memory, one copy per
    batch), always float32 on the device.

    A streamed set (training.stream) is read from disk a batch at a time, by one background
    thread that reads the batches :meth:`prefetch` announces while the current one trains
    (into pinned memory for a CUDA device), so memory holds a few batches, not the set."""

    def __init__(self, data: FeatureSet, device: torch.device, on_device: bool) -> None:
        self.device = device
        # A multi-label set's targets are its 0/1 rows; a multiclass one's its labels.
        labels = data.labels if data.targets is None else data.targets
        self.stream: StreamedFeatures | None = None
        if isinstance(data.features, StreamedFeatures):
            if on_device:  # it fits the device: copied there in batch-sized pieces
                self.features = _to_device(data.features, device)
            else:
                self.stream = data.features
                self.pin = device.type == "cuda"
                self.reader = ThreadPoolExecutor(1, thread_name_prefix="audiopetl-stream")
                self.ahead: deque[tuple[torch.Tensor, Future]] = deque()
        else:
            self.features = data.features.to(device) if on_device else data.features
        self.labels = labels.to(device) if on_device else labels

    def prefetch(self, indices: list[torch.Tensor]) -> None:
        """Start reading the batches that come next (a no-op for a set in memory)."""
        if self.stream is not None:
            for idx in indices:
                rows = idx.numpy()
                self.ahead.append((idx, self.reader.submit(self.stream.take, rows, self.pin)))

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stream is not None:
            x = self._streamed(idx)
            y = self.labels[idx]
        else:
            idx = idx.to(self.features.device)
            x, y = self.features[idx], self.labels[idx]
        return (
            x.to(self.device, non_blocking=True).float(),
            y.to(self.device, non_blocking=True),
        )

    def _streamed(self, idx: torch.Tensor) -> torch.Tensor:
        while self.ahead:
            ahead, future = self.ahead.popleft()
            if ahead is idx or torch.equal(ahead, idx):
                return future.result()
            future.cancel()  # announced but not asked for (a stop): dropped
        return self.stream.take(idx.numpy(), self.pin)


def _to_device(features: StreamedFeatures, device: torch.device, rows: int = 256) -> torch.Tensor:
    out = torch.empty(features.shape, dtype=torch.float16, device=device)
    for start in range(0, len(features), rows):
        part = np.arange(start, min(start + rows, len(features)))
        out[start : start + len(part)] = features.take(part).to(device)
    return out
