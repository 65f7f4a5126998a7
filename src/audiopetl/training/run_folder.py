"""A finished run's folder: what it holds, written in one step, and checked before anyone
trusts it again.

    model/              trainable weights (safetensors; a peft adapter too for peft methods)
    history.csv         per epoch: losses, validation metric, learning rate
    predictions.parquet the test clips' labels, predictions, probabilities and logits
    metrics.json        test (and validation) metrics, the epoch they come from, parameters
    run.json            provenance: code, versions, hardware, config, data and weights
    SHA256SUMS          the sha256 of every file above (`sha256sum -c SHA256SUMS` checks it)
    execution.json      this machine's timings: seconds per epoch, samples/s, peak memory
    tracking/           the experiment trackers' files, where `tracking:` names any

Everything but execution.json is the same bytes for the same run on the same software
(DVC hashes stay stable; .dvcignore leaves execution.json out). `audiopetl evaluate` verifies
SHA256SUMS before it rebuilds a run, and writes evaluation.json beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from audiopetl.core.atomic import atomic_dir, write_json, write_text
from audiopetl.core.checksums import file_sha256
from audiopetl.core.errors import DataError
from audiopetl.features.cache import FeatureSet

SUMS = "SHA256SUMS"
EXECUTION = "execution.json"
EVALUATION = "evaluation.json"
# Written beside the run's own files, not part of what SHA256SUMS vouches for.
UNSUMMED = {SUMS, EXECUTION, EVALUATION}
# The experiment trackers' files (audiopetl.training.tracking), moved in once the run is
# written: a view of the run with timestamps in it, left out of SHA256SUMS and DVC's hashes.
TRACKING = "tracking"
# Per-epoch wall-clock figures: they differ between identical runs, so they live in
# execution.json, not in history.csv.
TIMING_COLUMNS = ("seconds", "samples_per_s")


@dataclass
class RunOutputs:
    """What a finished run leaves behind, assembled by the Trainer."""

    save_model: Callable[[Path], None]  # writes model/ into the folder it is given
    history: list[dict[str, Any]]  # one row per epoch, timing columns included
    test: FeatureSet
    logits: torch.Tensor
    metrics: dict[str, Any]
    provenance: dict[str, Any]  # run.json
    execution: dict[str, Any]  # execution.json, without the per-epoch timings
    extra: Callable[[Path], None] | None = None  # e.g. a pretrained model's save_pretrained
    threshold: float | None = None  # a multi-label run's decision threshold


def write_run_folder(out: Path, outputs: RunOutputs) -> None:
    """Write the whole folder under a temporary name and swap it into place."""
    with atomic_dir(out) as tmp:
        outputs.save_model(tmp / "model")
        history = pd.DataFrame(outputs.history)
        history.drop(columns=[c for c in TIMING_COLUMNS if c in history]).to_csv(
            tmp / "history.csv", index=False
        )
        write_predictions(
            tmp / "predictions.parquet", outputs.test, outputs.logits, outputs.threshold
        )
        write_json(tmp / "metrics.json", outputs.metrics)
        write_json(tmp / "run.json", outputs.provenance)
        if outputs.extra is not None:
            outputs.extra(tmp)
        epochs = [
            {k: row[k] for k in ("epoch", *TIMING_COLUMNS) if k in row} for row in outputs.history
        ]
        write_json(tmp / EXECUTION, {**outputs.execution, "epochs": epochs})
        write_sums(tmp)


def write_predictions(
    path: Path, data: FeatureSet, logits: torch.Tensor, threshold: float | None = None
) -> None:
    """One row per test clip: its label(s), the prediction, every class's probability (a
    sigmoid per class for a multi-label set, the predicted classes those at ``threshold``),
    the logits."""
    if data.targets is not None:
        scores = torch.sigmoid(logits).numpy().astype(np.float32)
        cut = 0.5 if threshold is None else threshold
        table = pa.table(
            {
                "clip_id": pa.array(data.clip_ids, pa.string()),
                "fold": pa.array(data.folds.astype(np.int32)),
                "labels": pa.array([np.flatnonzero(t).tolist() for t in data.targets.numpy()],
                                   pa.list_(pa.int32())),
                "predictions": pa.array([np.flatnonzero(s >= cut).tolist() for s in scores],
                                        pa.list_(pa.int32())),
                "probabilities": pa.array(list(scores), pa.list_(pa.float32())),
                "logits": pa.array(list(logits.numpy().astype(np.float32)), pa.list_(pa.float32())),
            }
        )  # fmt: skip
        pq.write_table(table, path)
        return
    probs = logits.softmax(dim=-1).numpy().astype(np.float32)
    table = pa.table(
        {
            "clip_id": pa.array(data.clip_ids, pa.string()),
            "fold": pa.array(data.folds.astype(np.int32)),
            "label": pa.array(data.labels.numpy().astype(np.int32)),
            "prediction": pa.array(probs.argmax(axis=1).astype(np.int32)),
            "probabilities": pa.array(list(probs), pa.list_(pa.float32())),
            "logits": pa.array(list(logits.numpy().astype(np.float32)), pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, path)


def _files(folder: Path) -> list[str]:
    names = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(n for n in names if n not in UNSUMMED and not n.startswith(f"{TRACKING}/"))


def write_sums(folder: Path) -> None:
    """SHA256SUMS in sha256sum's own format, so `sha256sum -c` can check it too."""
    lines = [f"{file_sha256(folder / name)}  {name}" for name in _files(folder)]
    write_text(folder / SUMS, "\n".join(lines) + "\n")


def read_sums(folder: Path) -> dict[str, str]:
    path = folder / SUMS
    if not path.is_file():
        raise DataError(
            f"{path}: missing, so the run folder cannot be checked; rerun the run (an older "
            "audiopetl wrote it, or it was damaged)"
        )
    recorded = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise DataError(f"{path}: damaged (a line is not `SHA256  FILE`); rerun the run")
        recorded[name] = digest
    return recorded


def verify_run_folder(folder: Path) -> None:
    """Every file of the run as it was written: none missing, changed or added."""
    recorded = read_sums(folder)
    present = set(_files(folder))
    missing = sorted(set(recorded) - present)
    added = sorted(present - set(recorded))
    changed = sorted(n for n in set(recorded) & present if file_sha256(folder / n) != recorded[n])
    if missing or added or changed:
        parts = [
            f"{label}: {', '.join(names)}"
            for label, names in (("changed", changed), ("missing", missing), ("added", added))
            if names
        ]
        raise DataError(
            f"{folder}: the run folder differs from its {SUMS} ({'; '.join(parts)}): damaged "
            "or edited since it was written; rerun the run to trust its numbers again"
        )
