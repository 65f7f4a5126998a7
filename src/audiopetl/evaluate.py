"""Score a finished run folder again from its own files: rebuild, reload, predict, compare.

This is the check the reference study failed: the weights on disk must give the numbers that
were reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from audiopetl.atomic import write_json
from audiopetl.errors import DataError, TrainingError
from audiopetl.train import RunSpec, Trainer, make_deterministic

# Same code, same device and thread count: the logits should agree exactly; the tolerance
# only absorbs a different thread count or device on re-evaluation.
LOGIT_TOLERANCE = 1e-4


def evaluate_run(run_dir: Path, out: Path | None = None) -> dict[str, Any]:
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        raise DataError(f"{run_file}: not a finished run folder (no run.json)")
    info = json.loads(run_file.read_text())
    cfg, run = info["config"], info["run"]
    spec = RunSpec(
        run["dataset"],
        run["model"],
        run["strategy"],
        int(run["fold"]),
        int(run["seed"]),
        run_dir,
        run.get("pretrained"),
    )
    trainer = Trainer(cfg, spec)
    make_deterministic(
        spec.seed, trainer.settings["threads"], trainer.settings["deterministic"], trainer.device
    )
    trainer.load_data()
    trainer.build()
    trainer.strategy.load(trainer.model, run_dir / "model")
    loss, metrics, logits = trainer.evaluate_split(trainer.test)
    stored = pq.read_table(run_dir / "predictions.parquet")
    if stored.column("clip_id").to_pylist() != trainer.test.clip_ids:
        raise TrainingError(f"{run_dir}: the test clips differ from those of the stored run")
    stored_logits = np.stack(stored.column("logits").to_numpy(zero_copy_only=False))
    diff = float(np.abs(stored_logits - logits.numpy()).max())
    reported = json.loads((run_dir / "metrics.json").read_text())["test"]
    result = {
        "run": str(run_dir),
        "test_loss": loss,
        "test": metrics,
        "max_abs_logit_difference": diff,
        "matches_reported": diff <= LOGIT_TOLERANCE
        and abs(reported["accuracy"] - metrics["accuracy"]) < 1e-12,
    }
    write_json(out or run_dir / "evaluation.json", result)
    if not result["matches_reported"]:
        raise TrainingError(
            f"{run_dir}: re-evaluation disagrees with the stored run (max logit difference "
            f"{diff:.3g}, accuracy {metrics['accuracy']:.4f} vs reported "
            f"{reported['accuracy']:.4f})"
        )
    return result
