"""Training on other task shapes: a multi-label model trained above its chance mAP, with every
class's score kept; what the imbalance settings (class weights, the balanced sampler, the focal
loss) change, on worked examples and in real runs; runs with them resumed bitwise."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from training_helpers import (  # noqa: F401
    QUICK,
    REPO,
    QuickProject,
    assert_bitwise_equal,
    load_weights,
    quick_project,
    restore_torch_globals,
    resume_state_file,
    run_in,
    train_args,
)

from audiopetl.core.config import load_config
from audiopetl.core.errors import Stopped
from audiopetl.core.settings import TrainingSettings
from audiopetl.features.cache import FeatureSet
from audiopetl.training import losses
from audiopetl.training.data import epoch_order
from audiopetl.training.trainer import Trainer

# The quick preset's synthetic set made multi-label: half its clips carry a second class.
MULTILABEL = (
    "datasets.synthetic.task=multilabel",
    "datasets.synthetic.synthetic.mix=0.5",
    "training.select_metric=mAP",
)
# 24 training clips: eight epochs of full fine-tuning learn them (three do not).
EPOCHS = "training.epochs=8"


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


_ML_PROJECT: Path | None = None


@pytest.fixture(scope="session")
def multilabel_project(quick_project: QuickProject, tmp_path_factory) -> Path:  # noqa: F811
    """A copy of the quick project with the multi-label synthetic set fetched and cached."""
    global _ML_PROJECT
    if _ML_PROJECT is None:
        root = tmp_path_factory.mktemp("multilabel") / "project"
        shutil.copytree(quick_project.root, root, symlinks=True)
        for command in ("fetch", "cache"):
            code, _, err = run_in(root, [command, "synthetic", *QUICK, *sets(*MULTILABEL)])
            assert code == 0, err
        _ML_PROJECT = root
    return _ML_PROJECT


def train_ml(root: Path, strategy: str, out: Path, *extra: str) -> dict[str, Any]:
    args = train_args(strategy, out, *MULTILABEL, EPOCHS, *extra)
    code, _, err = run_in(root, args)
    assert code == 0, err
    return json.loads((out / "metrics.json").read_text())


# ---------------------------------------------------------------------------------------------
# multi-label runs


_ML_RUN: Path | None = None


@pytest.fixture(scope="session")
def multilabel_run(multilabel_project: Path, tmp_path_factory) -> Path:
    global _ML_RUN
    if _ML_RUN is None:
        out = tmp_path_factory.mktemp("ml-run") / "full"
        train_ml(multilabel_project, "full", out)
        _ML_RUN = out
    return _ML_RUN


@pytest.mark.slow
def test_a_multilabel_model_trains_above_its_chance_map(multilabel_run: Path) -> None:
    metrics = json.loads((multilabel_run / "metrics.json").read_text())
    assert metrics["task"] == "multilabel"
    assert metrics["selected_by"] == "val_mAP"
    test = metrics["test"]
    chance = metrics["chance_mAP"]
    # Chance: a constant score's mAP, each class's prevalence in the test set (1.5 of 4
    # classes per clip on average here).
    assert 0.25 < chance < 0.55
    assert test["mAP"] > chance + 0.15, (test["mAP"], chance)
    for key in ("macro_auc", "dprime_per_class", "dprime_from_mean_auc", "micro_f1", "macro_f1"):
        assert isinstance(test[key], float), key
    assert 0 < test["threshold"] < 1
    assert set(test["per_class"]) == set(test["class_names"])
    history = pd.read_csv(multilabel_run / "history.csv")
    best = history.loc[history["epoch"] == metrics["best_epoch"], "val_metric"].item()
    assert best == pytest.approx(history["val_metric"].max())


@pytest.mark.slow
def test_multilabel_predictions_keep_every_class_score(multilabel_run: Path) -> None:
    predictions = pd.read_parquet(multilabel_run / "predictions.parquet")
    metrics = json.loads((multilabel_run / "metrics.json").read_text())
    classes = metrics["test"]["class_names"]
    assert len(predictions) == metrics["test"]["n"]
    scores = np.stack(predictions["probabilities"].to_numpy())
    logits = np.stack(predictions["logits"].to_numpy())
    assert scores.shape == logits.shape == (len(predictions), len(classes))
    # A sigmoid per class, not a softmax over them.
    assert np.allclose(scores, 1 / (1 + np.exp(-logits)), atol=1e-5)
    assert not np.allclose(scores.sum(axis=1), 1)
    # The true label sets (class indices) and the predicted ones: the classes whose score
    # reaches the threshold chosen on validation.
    assert all(len(labels) >= 1 for labels in predictions["labels"])
    threshold = metrics["test"]["threshold"]
    for row, predicted in zip(scores, predictions["predictions"], strict=True):
        assert list(predicted) == [c for c in range(len(classes)) if row[c] >= threshold]


# ---------------------------------------------------------------------------------------------
# imbalance, on worked examples


def feature_set(labels: list[int], targets: list[list[int]] | None = None) -> FeatureSet:
    n = len(labels)
    return FeatureSet(
        features=torch.zeros(n, 1, 1, dtype=torch.float16),
        labels=torch.tensor(labels),
        folds=np.ones(n, dtype=int),
        clip_ids=[f"c{i}" for i in range(n)],
        n_frames=np.ones(n, dtype=int),
        metadata={},
        targets=None if targets is None else torch.tensor(targets, dtype=torch.uint8),
    )


def test_balanced_class_weights_worked_example() -> None:
    # 6 clips of class 0, 2 of class 1, none of class 2: 8 / (2 present x count).
    data = feature_set([0, 0, 0, 0, 0, 0, 1, 1])
    assert losses.class_weights(data, 3, "none") is None
    weights = losses.class_weights(data, 3, "balanced")
    assert weights.tolist() == pytest.approx([8 / 12, 8 / 4, 0.0])
    # Multi-label: positives weighted by negatives / positives (pos_weight).
    ml = feature_set([-1] * 4, [[1, 0], [1, 1], [1, 0], [0, 0]])
    assert losses.class_weights(ml, 2, "balanced").tolist() == pytest.approx([1 / 3, 3.0])


def test_balanced_sampler_weights_worked_example() -> None:
    data = feature_set([0, 0, 0, 1])
    assert losses.sample_weights(data, 2).tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    # The AST recipe's multi-label weight: the sum over a clip's labels of 1 / class count.
    ml = feature_set([-1] * 3, [[1, 0], [1, 1], [0, 1]])
    assert losses.sample_weights(ml, 2).tolist() == pytest.approx([0.5, 1.0, 0.5])


def test_balanced_sampler_draws_classes_evenly_and_reproducibly() -> None:
    labels = [0] * 90 + [1] * 10
    weights = losses.sample_weights(feature_set(labels), 2)
    order = epoch_order(100, seed=3, epoch=1, weights=weights)
    assert torch.equal(order, epoch_order(100, seed=3, epoch=1, weights=weights))
    assert not torch.equal(order, epoch_order(100, seed=3, epoch=2, weights=weights))
    drawn_rare = sum(labels[i] for i in order.tolist())
    assert 35 <= drawn_rare <= 65  # about half, against 10 of 100 uniformly
    over_epochs = torch.cat([epoch_order(100, 0, e, weights) for e in range(20)])
    assert abs(sum(labels[i] for i in over_epochs.tolist()) / 2000 - 0.5) < 0.05


def training(**values: Any) -> TrainingSettings:
    block = {**load_config(REPO / "config/config.yaml", "quick")["training"], **values}
    return TrainingSettings.of(block)


def test_focal_loss_worked_example() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.3, 0.1]])
    target = F.one_hot(torch.tensor([0, 2]), 3).float()
    ce = losses.training_loss(training(loss="cross_entropy"), False, None)(logits, target)
    assert ce.item() == pytest.approx(F.cross_entropy(logits, torch.tensor([0, 2])).item())
    # gamma 0: the focal loss is cross-entropy.
    zero = losses.training_loss(training(loss="focal", focal_gamma=0.0), False, None)
    assert zero(logits, target).item() == pytest.approx(ce.item())
    # gamma 2: each clip's -log p_t scaled by (1 - p_t)^2.
    p = F.softmax(logits, dim=1)[[0, 1], [0, 2]]
    expected = (-((1 - p) ** 2) * p.log()).mean()
    focal = losses.training_loss(training(loss="focal", focal_gamma=2.0), False, None)
    assert focal(logits, target).item() == pytest.approx(expected.item())
    # Multi-label: per class and clip, on the sigmoid.
    hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    q = torch.sigmoid(logits)
    q_true = q * hot + (1 - q) * (1 - hot)
    expected_ml = (-((1 - q_true) ** 2) * q_true.log()).mean()
    focal_ml = losses.training_loss(training(loss="focal", focal_gamma=2.0), True, None)
    assert focal_ml(logits, hot).item() == pytest.approx(expected_ml.item(), rel=1e-5)


def test_class_weights_enter_the_loss() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.5, 0.3], [0.1, 0.9]])
    labels = torch.tensor([0, 1, 1])
    weights = torch.tensor([0.25, 2.0])
    loss = losses.training_loss(training(), False, weights)
    # Each clip's loss times its class's weight, averaged over the clips (not divided by the
    # weights' sum, as torch does for class indices: the targets may be mixup's soft ones).
    expected = (weights[labels] * F.cross_entropy(logits, labels, reduction="none")).mean()
    assert loss(logits, F.one_hot(labels, 2).float()).item() == pytest.approx(expected.item())


# ---------------------------------------------------------------------------------------------
# imbalance, in real runs: each setting changes what it should, and resumes bitwise

IMBALANCE = {
    "class_weights": ("training.class_weights=balanced",),
    "sampler": ("training.sampler=balanced",),
    "focal": ("training.loss=focal",),
}


@pytest.mark.slow
def test_imbalance_settings_change_the_run_and_are_recorded(
    multilabel_project: Path, multilabel_run: Path, tmp_path: Path
) -> None:
    reference = load_weights(multilabel_run)
    for name, extra in IMBALANCE.items():
        out = tmp_path / name
        metrics = train_ml(multilabel_project, "full", out, *extra)
        changed = load_weights(out)
        assert any(not torch.equal(changed[k], reference[k]) for k in reference), name
        record = json.loads((out / "run.json").read_text())
        training_record = record["config"]["training"]
        key, value = extra[0].removeprefix("training.").split("=")
        assert training_record[key] == value, name
        assert metrics["test"]["mAP"] > metrics["chance_mAP"], name


def _interrupt_at(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ask the run to stop (SIGUSR1, as SLURM warns of a time limit) before training step
    ``step``; the loop saves its state at that step boundary and exits 75."""
    original = Trainer.train_step
    seen = {"steps": 0}

    def stepping(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        seen["steps"] += 1
        if seen["steps"] == step:
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", stepping)


@pytest.mark.slow
def test_a_run_with_every_imbalance_setting_resumes_bitwise(
    multilabel_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = [item for items in IMBALANCE.values() for item in items]
    reference = tmp_path / "reference"
    train_ml(multilabel_project, "lora", reference, *extra)
    out = tmp_path / "interrupted"
    args = train_args("lora", out, *MULTILABEL, EPOCHS, *extra)
    with monkeypatch.context() as patched:
        _interrupt_at(7, patched)  # in the third epoch (3 steps per epoch)
        code, _, err = run_in(multilabel_project, args)
    assert code == Stopped.code, err
    assert resume_state_file(out).is_file() and not out.exists()
    code, _, err = run_in(multilabel_project, args)
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    (stop,) = record["interruptions"]
    assert stop["signal"] == "SIGUSR1" and stop["global_step"] == 7
    assert_bitwise_equal(load_weights(out), load_weights(reference))
    assert (out / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()


def test_mixup_mixes_multi_hot_targets() -> None:
    from audiopetl.core.settings import SpecAugmentSettings
    from audiopetl.training.augment import augment

    x = torch.arange(4.0).reshape(4, 1, 1).expand(4, 2, 3).contiguous()
    hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    torch.manual_seed(5)
    mixed_x, mixed = augment(x, hot, SpecAugmentSettings(0, 0), 0.5)
    torch.manual_seed(5)
    lam = float(torch.distributions.Beta(0.5, 0.5).sample())
    perm = torch.randperm(4)
    assert 0 < lam < 1
    # The clips and their label sets mixed with the same weight: each class's target is the
    # share of it in the mixture, not a single label.
    assert torch.allclose(mixed, lam * hot + (1 - lam) * hot[perm])
    assert torch.allclose(mixed_x, lam * x + (1 - lam) * x[perm])
    assert ((mixed >= 0) & (mixed <= 1)).all() and not torch.equal(mixed, hot)


# ---------------------------------------------------------------------------------------------
# a run refuses sets too small to mean anything; a run of part of a dataset says so


def test_a_run_refuses_a_split_too_small_before_training(
    quick_project: QuickProject,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    args = train_args("linear", out, "data.min_split_clips.validation=30")
    code, _, err = run_in(quick_project.root, args)
    assert code == 1
    assert (
        "dataset synthetic, split fold3: 24 validation clip(s), fewer than "
        "data.min_split_clips.validation = 30: too few to select the best epoch on" in err
    )
    assert not out.exists() and not resume_state_file(out).parent.exists()


def test_a_run_of_part_of_a_dataset_says_so(
    quick_project: QuickProject,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The synthetic kind is always whole; an ESC-50 subset's line, told to it here.
    from audiopetl.data.datasets.synthetic import Synthetic

    note = "subset: 72 of 2000 clips"
    monkeypatch.setattr(Synthetic, "describe", lambda self, options, raw: note)
    out = tmp_path / "run"
    code, _, err = run_in(quick_project.root, train_args("linear", out))
    assert code == 0, err
    epoch_lines = [line for line in err.splitlines() if " epoch " in line]
    assert epoch_lines and all(f"synthetic {note}]" in line for line in epoch_lines)
    assert json.loads((out / "metrics.json").read_text())["partial"] == note
    assert json.loads((out / "run.json").read_text())["data"]["partial"] == note
