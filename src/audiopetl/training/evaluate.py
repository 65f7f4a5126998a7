"""Score a finished run folder again from its own files: rebuild, reload, predict, compare.

This is the check the reference study failed: the weights on disk must give the numbers that
were reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from audiopetl.core.atomic import write_json
from audiopetl.core.config import (
    ConfigError,
    apply_overrides,
    dataset_config,
    dataset_identity,
    feature_settings,
    model_config,
    strategy_config,
    training_settings,
)
from audiopetl.core.errors import DataError, TrainingError
from audiopetl.training.run_folder import verify_run_folder
from audiopetl.training.trainer import RunSpec, Trainer, make_deterministic, select_device

# Same code, same device and thread count: the logits should agree exactly; the tolerance
# only absorbs a different thread count or device on re-evaluation.
LOGIT_TOLERANCE = 1e-4
# The export for other tools, loaded by their own code, may compute the same function in
# another order (AdaLoRA's adapter comes back resized to its pruned ranks): a broken export
# is off by far more.
EXPORT_TOLERANCE = 1e-3
# Training settings that decide where and how fast a run is scored, not what it computes: a
# GPU run may be scored again on a CPU (`--set training.device=cpu`).
EXECUTION_KEYS = (
    "device",
    "threads",
    "eval_batch_size",
    "deterministic",
    "tf32",
    "data_on_device",
    "fused_optimizer",
    "compile",
    "log_every_steps",
    "save_state_every_s",
)


def read_run_info(run_dir: Path) -> dict[str, Any]:
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        raise DataError(f"{run_file}: not a finished run folder (no run.json)")
    try:
        return json.loads(run_file.read_text())
    except ValueError as err:
        raise DataError(f"{run_file}: unreadable ({err})") from err


def _run_settings(cfg: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that decides what a run computes."""
    training = training_settings(cfg, run["strategy"])
    return {
        "dataset": dataset_identity(dataset_config(cfg, run["dataset"])),
        "features": feature_settings(cfg, run["dataset"], run["model"]),
        "model": model_config(cfg, run["model"]),
        "strategy": strategy_config(cfg, run["strategy"]),
        "training": {k: v for k, v in training.items() if k not in EXECUTION_KEYS},
    }


def evaluation_config(
    info: Mapping[str, Any],
    cfg: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
) -> dict[str, Any]:
    """The configuration a run is scored with: the one it recorded, with ``overrides``; or a
    given one (the workflow's, a preset), which must agree with the record on everything that
    decides what the run computes and may differ in where it runs (EXECUTION_KEYS, paths)."""
    stored, run = info["config"], info["run"]
    if cfg is None:
        cfg = apply_overrides(stored, overrides, "run.json")
    try:
        ours, theirs = _run_settings(cfg, run), _run_settings(stored, run)
    except ConfigError as err:
        raise ConfigError(f"{err} (the run needs it)") from err
    differ = [
        f"{part}.{key}"
        for part in ours
        for key in sorted(set(ours[part]) | set(theirs[part]))
        if ours[part].get(key) != theirs[part].get(key)
    ]
    if differ:
        raise ConfigError(
            f"the configuration differs from the one the run was trained with in "
            f"{', '.join(differ)}: scoring it with these settings would not test its weights; "
            "use the run's own (no --config/--experiment) and --set only where it runs: "
            f"training.{{{','.join(EXECUTION_KEYS)}}} and paths"
        )
    return dict(cfg)


def _check_finite(model: torch.nn.Module, folder: Path) -> None:
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise DataError(f"{folder}: weight {name} holds NaN or Inf; rerun the run")


def _precision_of(info: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, str]:
    """Score in the precision the run trained in (what `auto` became there), where this
    device has it: fp16 autocast needs CUDA, so a fp16 GPU run is scored in fp32 on a CPU."""
    used = (info.get("runtime") or {}).get("precision")
    if used is None:
        return {}
    device = select_device(training_settings(cfg, info["run"]["strategy"])["device"])
    if used == "fp16" and device.type != "cuda":
        return {"precision": "fp32"}
    return {"precision": used}


def evaluate_run(
    run_dir: Path,
    out: Path | None = None,
    cfg: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
) -> dict[str, Any]:
    info = read_run_info(run_dir)
    cfg = evaluation_config(info, cfg, overrides)
    verify_run_folder(run_dir)
    run = info["run"]
    spec = RunSpec(
        run["dataset"],
        run["model"],
        run["strategy"],
        int(run["fold"]),
        int(run["seed"]),
        run_dir,
        run.get("pretrained"),
    )
    trainer = Trainer(cfg, spec, overrides=_precision_of(info, cfg))
    s = trainer.settings
    make_deterministic(spec.seed, s["threads"], s["deterministic"], trainer.device)
    trainer.load_data()
    trainer.build()
    model_dir = run_dir / "model"
    trainer.strategy.load(trainer.model, model_dir)
    _check_finite(trainer.model, model_dir)
    loss, metrics, logits = trainer.evaluate_split(trainer.test)
    stored = pq.read_table(run_dir / "predictions.parquet")
    if stored.column("clip_id").to_pylist() != trainer.test.clip_ids:
        raise TrainingError(f"{run_dir}: the test clips differ from those of the stored run")
    stored_logits = np.stack(stored.column("logits").to_numpy(zero_copy_only=False))
    diff = float(np.abs(stored_logits - logits.numpy()).max())
    # The export for other tools (a peft adapter) must give the same predictions.
    exported = trainer.strategy.load_export(trainer.base_model(), model_dir)
    export_diff = None
    if exported is not None:
        _check_finite(exported, model_dir)
        trainer.model = exported.to(trainer.device)
        export_diff = float(np.abs(stored_logits - trainer.predict(trainer.test).numpy()).max())
    reported = json.loads((run_dir / "metrics.json").read_text())["test"]
    result = {
        "run": str(run_dir),
        "device": str(trainer.device),
        "test_loss": loss,
        "test": metrics,
        "max_abs_logit_difference": diff,
        "export_max_abs_logit_difference": export_diff,
        "matches_reported": diff <= LOGIT_TOLERANCE
        and (export_diff is None or export_diff <= EXPORT_TOLERANCE)
        and abs(reported["accuracy"] - metrics["accuracy"]) < 1e-12,
    }
    write_json(out or run_dir / "evaluation.json", result)
    if not result["matches_reported"]:
        export = "" if export_diff is None else f", exported adapter {export_diff:.3g}"
        raise TrainingError(
            f"{run_dir}: re-evaluation disagrees with the stored run (max logit difference "
            f"{diff:.3g}{export}, accuracy {metrics['accuracy']:.4f} vs reported "
            f"{reported['accuracy']:.4f})"
        )
    return result
