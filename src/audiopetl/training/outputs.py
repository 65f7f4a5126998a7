"""What a finished run reports: its test (and validation) metrics with the epoch they come
from, the at-chance guard, its provenance, and the run folder they are written to."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from audiopetl.core import provenance
from audiopetl.core.errors import TrainingError
from audiopetl.core.settings import thaw
from audiopetl.data.splits import SELECTS_ON_TEST
from audiopetl.process import timings
from audiopetl.training.multilabel import DEFAULT_THRESHOLD, chance_map, choose_threshold
from audiopetl.training.run_folder import RunOutputs, write_run_folder
from audiopetl.training.state import TrainState

if TYPE_CHECKING:
    from audiopetl.training.trainer import Trainer


log = logging.getLogger(__name__)


def selected_by(trainer: Trainer) -> str:
    if trainer.training.split in SELECTS_ON_TEST:
        return (
            f"test_{trainer.training.select_metric} (training.split {trainer.training.split}: "
            "the epoch chosen on the test fold, the reference's UrbanSound8K protocol; "
            "optimistic, for comparison only)"
        )
    if trainer.val is None:
        return "last epoch (train_test split)"
    if not trainer.test_from_best:
        return "last epoch (training.test_epoch: last, for comparison with the reference)"
    return f"val_{trainer.training.select_metric}"


def choose_on_validation(trainer: Trainer) -> float | None:
    """A multi-label run's decision threshold: the one that maximises macro F1 on its
    validation set (the test set never chooses it), else the training one; None multiclass."""
    if not trainer.multilabel:
        return None
    if trainer.val is None:
        return DEFAULT_THRESHOLD
    scores = torch.sigmoid(trainer.predict(trainer.val)).numpy()
    return choose_threshold(trainer.val.targets.numpy(), scores)


def write(
    trainer: Trainer,
    state: TrainState,
    wall_started: float,
    extra_outputs: Callable[[Path, nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Score the model as it is now on the test (and validation) split, guard against a run
    at chance, and write the run folder; returns metrics.json's content."""
    run = trainer.run
    threshold = choose_on_validation(trainer)
    test_loss, test_metrics, logits = trainer.evaluate_split(trainer.test, threshold=threshold)
    val_metrics = (
        trainer.evaluate_split(trainer.val, "validation", threshold)[1]
        if trainer.val is not None
        else None
    )
    # Chance: a uniform guess (multiclass accuracy), a constant score (multi-label mAP).
    headline = "mAP" if trainer.multilabel else "accuracy"
    if trainer.multilabel:
        chance = chance_map(trainer.test.targets.numpy())
    else:
        chance = 1.0 / len(trainer.class_names)
    margin = trainer.training.min_accuracy_over_chance
    at_chance = test_metrics[headline] <= chance + (margin or 0.0)
    metrics = {
        **run.names,
        "best_epoch": state.best_epoch if trainer.test_from_best else state.epoch,
        "epochs_run": state.epoch,
        "selected_by": selected_by(trainer),
        "trainable_params": trainer.params.trainable,
        "total_params": trainer.params.total,
        "trainable_percent": 100.0 * trainer.params.fraction,
        "train_clips": len(trainer.train),
        "classes": len(trainer.class_names),
        "environment": provenance.environment_name(),
        "test_loss": test_loss,
        "test": test_metrics,
        "val": val_metrics,
        "at_chance": at_chance,
    }
    if trainer.multilabel:
        metrics.update(task="multilabel", chance_mAP=chance)
    if trainer.data_record.get("partial"):
        # Part of a dataset (an ESC-50 subset): every table and figure of it says so.
        metrics["partial"] = trainer.data_record["partial"]
    if at_chance and margin is None:
        log.warning(
            "run %s: test %s %.4f is at chance level (%.4f); the guard is "
            "off (training.min_accuracy_over_chance: null)",
            run.out,
            headline,
            test_metrics[headline],
            chance,
        )
    elif at_chance:
        raise TrainingError(
            f"run {run.out}: test {headline} {test_metrics[headline]:.4f} is not above "
            f"chance ({chance:.4f}) by more than training.min_accuracy_over_chance = "
            f"{margin}: check the learning rate, the data and the history in {run.resume_dir}"
        )
    record = provenance.run_record(
        # Trackers are a view of the run, not part of it: their settings stay out of run.json
        # (the same bytes with or without them) and go to execution.json.
        cfg={k: v for k, v in thaw(run.config).items() if k != "tracking"},
        run={
            **run.names,
            "pretrained": run.pretrained,
            "splits": dict(trainer.splits.record),
            # In the model's output order: what `audiopetl predict` and exports name.
            "classes": list(trainer.class_names),
        },
        device=trainer.device,
        determinism=trainer.determinism,
        runtime=trainer.runtime.record(),
        data=trainer.data_record,
        weights=trainer.weights,
        parameters={"trainable": trainer.params.trainable, "total": trainer.params.total},
        interruptions=state.interruptions,
    )
    execution = provenance.execution_record(
        device=trainer.device,
        training_seconds=state.elapsed,
        startup_seconds=timings.since_start("first_step"),
        wall_seconds=time.perf_counter() - wall_started,
    )
    if tracked := trainer.tracking.record():
        execution["tracking"] = tracked
    model = trainer.model
    write_run_folder(
        run.out,
        RunOutputs(
            save_model=lambda folder: trainer.strategy.save(model, folder),
            history=state.history,
            test=trainer.test,
            logits=logits,
            threshold=threshold,
            metrics=metrics,
            provenance=record,
            execution=execution,
            extra=None if extra_outputs is None else lambda f: extra_outputs(f, model),
        ),
    )
    return metrics
