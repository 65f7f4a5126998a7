"""`audiopetl evaluate` reproduces a run from its own files (and notices tampering), and the
classification metrics on cases small enough to check by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from training_helpers import (  # noqa: F401
    in_quick_project,
    quick_lora_run,
    quick_project,
    restore_torch_globals,
    run_main,
)

from audiopetl.training.metrics import classification_metrics, equal_error_rate
from audiopetl.training.run_folder import write_sums

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
    # Top-5 accuracy over <= 5 classes is trivially 1; sklearn warns about ill-defined scores.
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning"),
]


def onehot(predictions: list[int], n_classes: int) -> np.ndarray:
    """Probabilities that put 0.7 on the predicted class."""
    p = np.full((len(predictions), n_classes), 0.3 / (n_classes - 1))
    p[np.arange(len(predictions)), predictions] = 0.7
    return p


# -- evaluate ---------------------------------------------------------------------------------


def test_evaluate_reproduces_the_run(
    quick_lora_run: Path,  # noqa: F811
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    shutil.copytree(quick_lora_run, run)
    assert run_main(["evaluate", run]) == 0
    assert "matches the stored run" in capsys.readouterr().out
    result = json.loads((run / "evaluation.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert result["max_abs_logit_difference"] == 0.0  # same code, device, threads: exact
    assert result["matches_reported"] is True
    assert result["test"] == metrics["test"]
    assert result["test_loss"] == metrics["test_loss"]
    # --out writes elsewhere.
    other = tmp_path / "eval.json"
    assert run_main(["evaluate", run, "--out", other]) == 0
    assert json.loads(other.read_text())["test"] == metrics["test"]


def test_evaluate_notices_tampered_weights(
    quick_lora_run: Path,  # noqa: F811
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    shutil.copytree(quick_lora_run, run)
    weights_file = run / "model" / "trainable.safetensors"
    weights = load_file(str(weights_file))
    name = next(n for n in weights if n.endswith("classifier.dense.modules_to_save.default.weight"))
    weights[name] = weights[name] * 3.0
    save_file(weights, str(weights_file))
    assert run_main(["evaluate", run]) == 1
    err = capsys.readouterr().err
    assert (
        "the run folder differs from its SHA256SUMS (changed: model/trainable.safetensors)" in err
    )
    assert len(err.strip().splitlines()) == 1
    # Sums rewritten to match (a consistent but wrong run): the predictions still tell.
    write_sums(run)
    assert run_main(["evaluate", run]) == 1
    err = capsys.readouterr().err
    assert "re-evaluation disagrees with the stored run" in err
    result = json.loads((run / "evaluation.json").read_text())
    assert result["matches_reported"] is False and result["max_abs_logit_difference"] > 1e-3


def test_evaluate_refuses_weights_of_another_shape(
    quick_lora_run: Path,  # noqa: F811
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    shutil.copytree(quick_lora_run, run)
    weights_file = run / "model" / "trainable.safetensors"
    weights = load_file(str(weights_file))
    dropped = next(iter(weights))
    del weights[dropped]
    save_file(weights, str(weights_file))
    write_sums(run)
    assert run_main(["evaluate", run]) == 1
    assert "weights do not fit the model" in capsys.readouterr().err


def test_evaluate_where_it_runs_follows_set_and_config(
    quick_lora_run: Path,  # noqa: F811
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    shutil.copytree(quick_lora_run, run)
    # Where it runs: a GPU run is scored on a CPU, with other threads and batches.
    sets = ["--set", "training.device=cpu", "--set", "training.threads=2"]
    assert run_main(["evaluate", run, *sets, "--set", "training.eval_batch_size=5"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert result["device"] == "cpu" and result["matches_reported"] is True
    # The study's configuration, named, is used when it agrees with the run's record.
    assert run_main(["evaluate", run, "--experiment", "quick", *sets]) == 0
    capsys.readouterr()
    # What the run computes cannot change: neither through --set nor a configuration.
    for args in (
        ["--set", "strategies.lora.rank=2"],
        ["--experiment", "quick", "--set", "training.epochs=9"],
    ):
        (run / "evaluation.json").unlink(missing_ok=True)
        assert run_main(["evaluate", run, *args]) == 2
        err = capsys.readouterr().err
        assert "differs from the one the run was trained with in" in err
        assert "strategy.rank" in err or "training.epochs" in err
        assert not (run / "evaluation.json").exists()


def test_evaluate_needs_a_finished_run(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_main(["evaluate", tmp_path]) == 1
    assert "not a finished run folder" in capsys.readouterr().err


# -- metrics ----------------------------------------------------------------------------------


def test_accuracy_balanced_accuracy_and_macro_f1() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    predictions = [0, 0, 0, 1, 1, 0, 2, 1]
    m = classification_metrics(labels, onehot(predictions, 3), ["a", "b", "c"])
    assert m["n"] == 8
    assert m["accuracy"] == pytest.approx(5 / 8)
    # Recalls 3/4, 1/2, 1/2.
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2 + 1 / 2) / 3)
    # Precision a 3/4, b 1/3, c 1; F1 = 2PR / (P + R).
    f1 = [2 * 0.75 * 0.75 / 1.5, 2 * (1 / 3) * 0.5 / (1 / 3 + 0.5), 2 * 1 * 0.5 / 1.5]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["per_class"]["b"] == pytest.approx(
        {"precision": 1 / 3, "recall": 0.5, "f1": f1[1], "support": 2}
    )
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [0, 1, 1]]
    assert m["class_names"] == ["a", "b", "c"]
    assert "top5_accuracy" not in m  # 3 classes: top-5 would be trivially 1
    assert "roc_auc" not in m and "eer" not in m


def test_absent_classes_keep_the_matrix_shape_and_leave_macro_f1_alone() -> None:
    # Four classes; class 3 is absent from the labels (and never predicted).
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = [0, 0, 1, 1, 2, 0]
    m = classification_metrics(labels, onehot(predictions, 4), ["a", "b", "c", "d"])
    assert np.array(m["confusion_matrix"]).shape == (4, 4)
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]
    assert m["per_class"]["d"]["support"] == 0
    # Over the present classes a, b, c only: F1 = 0.8, 1, 2/3.
    assert m["macro_f1"] == pytest.approx((0.8 + 1.0 + 2 / 3) / 3)
    assert m["accuracy"] == pytest.approx(5 / 6)


def test_top5_only_with_more_than_five_classes() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(8)
    probs = rng.random((8, 8))
    # The true class ranks 1st for clips 0-3, 6th for clips 4-7 (outside the top 5).
    order = np.argsort(-probs, axis=1)
    for i in range(8):
        rank = 0 if i < 4 else 5
        probs[i, [labels[i], order[i, rank]]] = probs[i, [order[i, rank], labels[i]]]
    m = classification_metrics(labels, probs, [str(c) for c in range(8)])
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["top5_accuracy"] == pytest.approx(0.5)
    five = classification_metrics(np.arange(5), np.eye(5), list("abcde"))
    assert "top5_accuracy" not in five


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")
def test_binary_auc_and_eer() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    separable = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    probs = np.stack([1 - separable, separable], axis=1)
    m = classification_metrics(labels, probs, ["no", "yes"])
    assert m["roc_auc"] == 1.0
    assert m["eer"] == 0.0
    assert m["accuracy"] == 1.0
    # Reversed scores: everything wrong.
    reversed_probs = probs[:, ::-1]
    r = classification_metrics(labels, reversed_probs, ["no", "yes"])
    assert r["roc_auc"] == 0.0
    assert r["eer"] == 1.0
    # One negative (0.8) above two positives: AUC 7/9; at 0.7 both error rates are 1/3.
    scores = np.array([0.1, 0.2, 0.8, 0.3, 0.7, 0.9])
    assert equal_error_rate(labels, scores) == pytest.approx(1 / 3)
    mixed = classification_metrics(labels, np.stack([1 - scores, scores], axis=1), ["n", "y"])
    assert mixed["roc_auc"] == pytest.approx(7 / 9)
    assert mixed["eer"] == pytest.approx(1 / 3)
    # A binary split with one class only has no ROC.
    single = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]]), "ny")
    assert "roc_auc" not in single and "eer" not in single
