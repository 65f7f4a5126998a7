"""Score a finished run folder again from its own files: rebuild, reload, predict, compare.

This is the check the reference study failed: the weights on disk must give the numbers that
were reported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from audiopetl.core import devices
from audiopetl.core.atomic import write_json
from audiopetl.core.errors import DataError, TrainingError
from audiopetl.core.settings import RunSettings
from audiopetl.features.cache import read_clips
from audiopetl.training.determinism import make_deterministic, select_device
from audiopetl.training.run_folder import verify_run_folder
from audiopetl.training.trainer import Trainer

# Same code, same device and thread count: the logits should agree exactly; the tolerance
# only absorbs a different thread count or device on re-evaluation.
LOGIT_TOLERANCE = 1e-4
# The export for other tools, loaded by their own code, may compute the same function in
# another order (AdaLoRA's adapter comes back resized to its pruned ranks): a broken export
# is off by far more.
EXPORT_TOLERANCE = 1e-3


def read_run_info(run_dir: Path) -> dict[str, Any]:
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        raise DataError(f"{run_file}: not a finished run folder (no run.json)")
    try:
        return json.loads(run_file.read_text())
    except ValueError as err:
        raise DataError(f"{run_file}: unreadable ({err})") from err


def _check_finite(model: torch.nn.Module, folder: Path) -> None:
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise DataError(f"{folder}: weight {name} holds NaN or Inf; rerun the run")


def precision_of(info: Mapping[str, Any], run: RunSettings) -> str | None:
    """Score in the precision the run trained in (what `auto` became there), where this
    device has it: fp16 autocast needs CUDA, so a fp16 GPU run is scored in fp32 on a CPU (and
    a bf16 run in fp32 on a Mac whose MPS has no bf16)."""
    used = (info.get("runtime") or {}).get("precision")
    device = select_device(run.training.device)
    if used == "fp16" and device.type != "cuda":
        return "fp32"
    if used == "bf16" and device.type == "mps" and not devices.mps_bf16_autocast():
        return "fp32"
    return used


def evaluate_run(
    run_dir: Path, run: RunSettings, info: Mapping[str, Any], out: Path | None = None
) -> dict[str, Any]:
    """Rebuild the run of ``run_dir`` (``run``: its settings, resolved from its run.json
    ``info`` at the edge) from its files and score it again; writes evaluation.json."""
    verify_run_folder(run_dir)
    precision = precision_of(info, run)
    if precision is not None:
        run = run.with_training(precision=precision)
    trainer = Trainer(run)
    t = run.training
    make_deterministic(run.seed, t.threads, t.deterministic, trainer.device)
    trainer.load_data()
    trainer.build()
    model_dir = run_dir / "model"
    trainer.strategy.load(trainer.model, model_dir)
    _check_finite(trainer.model, model_dir)
    reported_all = json.loads((run_dir / "metrics.json").read_text())
    threshold = (reported_all.get("test") or {}).get("threshold")
    loss, metrics, logits = trainer.evaluate_split(trainer.test, threshold=threshold)
    stored = pq.read_table(run_dir / "predictions.parquet")
    if stored.column("clip_id").to_pylist() != trainer.test.clip_ids:
        raise TrainingError(f"{run_dir}: the test clips differ from those of the stored run")
    stored_logits = np.stack(stored.column("logits").to_numpy(zero_copy_only=False))
    diff = float(np.abs(stored_logits - logits.numpy()).max())
    # A probe was tested on cached embeddings: the whole model (backbone and trained head)
    # must give the same logits from the features, or the cache was not this model's.
    full_diff = None
    if trainer.on_embeddings:
        features = read_clips(run.cache, trainer.test.clip_ids)
        if features.clip_ids != trainer.test.clip_ids:
            raise TrainingError(f"{run.cache}: holds other test clips than {run.embeddings}")
        trainer.on_embeddings = False
        full_diff = float(np.abs(stored_logits - trainer.predict(features).numpy()).max())
    # The export for other tools (a peft adapter) must give the same predictions.
    exported = trainer.strategy.load_export(trainer.base_model(), model_dir)
    export_diff = None
    if exported is not None:
        _check_finite(exported, model_dir)
        trainer.model = exported.to(trainer.device)
        export_diff = float(np.abs(stored_logits - trainer.predict(trainer.test).numpy()).max())
    reported = reported_all["test"]
    headline = "mAP" if trainer.multilabel else "accuracy"
    result = {
        "run": str(run_dir),
        "device": str(trainer.device),
        "test_loss": loss,
        "test": metrics,
        "max_abs_logit_difference": diff,
        "export_max_abs_logit_difference": export_diff,
        "full_model_max_abs_logit_difference": full_diff,
        "matches_reported": diff <= LOGIT_TOLERANCE
        and (export_diff is None or export_diff <= EXPORT_TOLERANCE)
        and (full_diff is None or full_diff <= EXPORT_TOLERANCE)
        and abs(reported[headline] - metrics[headline]) < 1e-12,
    }
    write_json(out or run_dir / "evaluation.json", result)
    if not result["matches_reported"]:
        export = "" if export_diff is None else f", exported adapter {export_diff:.3g}"
        if full_diff is not None:
            export += f", the whole model on the features {full_diff:.3g}"
        raise TrainingError(
            f"{run_dir}: re-evaluation disagrees with the stored run (max logit difference "
            f"{diff:.3g}{export}, {headline} {metrics[headline]:.4f} vs reported "
            f"{reported[headline]:.4f})"
        )
    return result
