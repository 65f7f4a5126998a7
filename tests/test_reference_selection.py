"""The reference study's UrbanSound8K protocol, offered to reproduce its numbers and named as
such: `training.split: train_select_on_test` trains on every fold but the test fold and picks
the epoch on the test fold itself. The run says so (metrics.json's selected_by), the plan says
so, and every table of the report carries the line; its test metrics are the best epoch's by
test accuracy, the optimism it brings."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from training_helpers import (  # noqa: F401
    in_quick_project,
    quick_project,
    restore_torch_globals,
    run_main,
    train_args,
)

from audiopetl.data.splits import get_scheme
from audiopetl.report.aggregate import data_notes


def test_the_rule_validates_on_the_test_fold() -> None:
    manifest = pd.DataFrame({"clip_id": [f"c{i}" for i in range(6)], "fold": [1, 1, 2, 2, 3, 3]})
    splits = get_scheme("folds").splits(manifest, "fold2", "train_select_on_test")
    assert list(splits.val) == list(splits.test) == ["c2", "c3"]
    assert list(splits.train) == ["c0", "c1", "c4", "c5"]


def test_the_official_and_session_schemes_refuse_it(project: Path, cli: Callable) -> None:
    result = cli("plan", "--experiment", "speechcommands-petl-ast", "--quiet", "--set",
                 "training.split=train_select_on_test")  # fmt: skip
    assert result.code != 0 and "train_select_on_test" in result.err


@pytest.mark.slow
def test_a_run_says_it_selected_on_the_test_fold(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    code = run_main(train_args("linear", out, "training.split=train_select_on_test"))
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selected_by"].startswith("test_accuracy (training.split train_select_on_test")
    history = pd.read_csv(out / "history.csv")
    best = history["val_metric"].idxmax()  # the first maximum: the epoch kept
    assert metrics["best_epoch"] == int(history["epoch"][best])
    assert metrics["test"]["accuracy"] == pytest.approx(history["val_metric"].max(), abs=1e-6)
    notes = data_notes(pd.DataFrame([{"dataset": "synthetic", "partial": None,
                                      "selected_by": metrics["selected_by"]}]))  # fmt: skip
    assert notes == [
        "synthetic: epochs selected on the test fold (the reference's UrbanSound8K protocol: "
        "optimistic, for comparison only)"
    ]


def test_the_preset_plans_it_named(project: Path, cli: Callable) -> None:
    result = cli("plan", "--experiment", "urbansound8k-reference-protocol", "--quiet")
    assert result.code == 0, result.err
    assert "urbansound8k/ast-audioset/lora/seed10/fold1       7859/873/873" in result.out
    assert "the epoch selected ON THE TEST FOLD" in result.out
