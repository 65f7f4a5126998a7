"""The paired comparisons of the report: the numbers of both tests, Holm's correction, which
references each method meets, and the Pareto front of the accuracy-against-parameters figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audiopetl.report.figures import pareto_front
from audiopetl.report.stats import (
    overlap_ratios,
    paired_comparisons,
    write_comparison_tables,
)

GROUP = ["dataset", "model"]


def runs_of(accuracies: dict[str, list[float]], seeds: int = 1) -> pd.DataFrame:
    """Runs of one dataset and model: accuracies[strategy][i] is pair i (fold, seed)."""
    rows = []
    for strategy, values in accuracies.items():
        for i, value in enumerate(values):
            rows.append({"dataset": "esc50", "model": "ast", "strategy": strategy,
                         "fold": i // seeds + 1, "seed": i % seeds, "test_accuracy": value,
                         "test_n": 400, "train_clips": 1200})  # fmt: skip
    return pd.DataFrame(rows)


def test_both_tests_give_the_worked_example() -> None:
    # Differences 0.02, 0.03, 0.01, 0.04, 0.02: mean 0.024, sample variance 1.3e-4.
    # Paired t = 0.024 / sqrt(1.3e-4 / 5) = 4.7068 (4 df, p = 0.00926); corrected with
    # n_test / n_train = 1/3: 0.024 / sqrt((1/5 + 1/3) * 1.3e-4) = 2.8823 (p = 0.04491).
    full = [0.80, 0.82, 0.78, 0.81, 0.79]
    lora = [f + d for f, d in zip(full, [0.02, 0.03, 0.01, 0.04, 0.02], strict=True)]
    runs = runs_of({"full": full, "lora": lora})
    table = paired_comparisons(runs, "accuracy", GROUP, overlap_ratios(runs))
    # lora is the best method: one comparison, against full fine-tuning.
    assert len(table) == 1
    row = table.iloc[0]
    assert (row.strategy, row.against, row.reference, row.n) == (
        "lora", "full fine-tuning", "full", 5)  # fmt: skip
    assert row.mean_difference == pytest.approx(0.024)
    assert row.t_paired == pytest.approx(4.706787, rel=1e-6)
    assert row.p_paired == pytest.approx(0.0092617, rel=1e-4)
    assert row.t_corrected == pytest.approx(2.882307, rel=1e-6)
    assert row.p_corrected == pytest.approx(0.044909, rel=1e-3)
    assert row.p_corrected_holm == row.p_corrected  # one comparison: nothing to correct
    assert row.significant


def test_every_method_meets_full_fine_tuning_and_the_best_method() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.7, 0.8, 10)
    runs = runs_of(
        {
            "full": list(base),
            "linear": list(base - 0.20 + rng.normal(0, 0.005, 10)),  # clearly worse
            "lora": list(base + 0.05 + rng.normal(0, 0.005, 10)),  # the best
            "prompt": list(base + 0.04 + rng.normal(0, 0.03, 10)),  # about as good as lora
        },
        seeds=2,
    )
    table = paired_comparisons(runs, "accuracy", GROUP, {"esc50": 0.2})
    pairs = set(zip(table.strategy, table.reference, strict=True))
    # Full fine-tuning against lora is lora against full fine-tuning: in the table once.
    assert pairs == {("linear", "full"), ("lora", "full"), ("prompt", "full"),
                     ("linear", "lora"), ("prompt", "lora")}  # fmt: skip
    assert (table.n == 10).all()
    verdict = dict(zip(zip(table.strategy, table.reference, strict=True), table.significant,
                       strict=True))  # fmt: skip
    assert verdict[("linear", "full")] and verdict[("linear", "lora")]
    assert not verdict[("prompt", "lora")]
    # Holm over the five comparisons: p_(i) * (5 - i + 1), made monotone, capped at 1.
    raw = table.p_corrected.to_numpy()
    order = np.argsort(raw)
    expected = np.minimum(1, np.maximum.accumulate(raw[order] * (len(raw) - np.arange(len(raw)))))
    assert table.p_corrected_holm.to_numpy()[order] == pytest.approx(expected)
    # The correction only ever makes the corrected test more cautious than the plain one.
    assert (table.p_corrected >= table.p_paired).all()


def test_only_runs_of_the_same_fold_and_seed_are_paired() -> None:
    runs = runs_of({"full": [0.8, 0.81, 0.79, 0.8], "lora": [0.82, 0.83, 0.8, 0.84]})
    runs = runs[~((runs.strategy == "lora") & (runs.fold == 2))]  # a run that never finished
    row = paired_comparisons(runs, "accuracy", GROUP, {}).iloc[0]
    assert row.n == 3
    assert row.mean_difference == pytest.approx(np.mean([0.02, 0.01, 0.04]))


def test_too_few_pairs_or_no_spread_is_no_verdict() -> None:
    runs = runs_of({"full": [0.8], "lora": [0.9]})
    row = paired_comparisons(runs, "accuracy", GROUP, {}).iloc[0]
    assert row.n == 1 and np.isnan(row.p_paired) and np.isnan(row.p_corrected_holm)
    assert not row.significant
    same = runs_of({"full": [0.8, 0.7, 0.9], "lora": [0.8, 0.7, 0.9]})
    assert not paired_comparisons(same, "accuracy", GROUP, {}).iloc[0].significant


def test_datasets_and_models_are_compared_apart() -> None:
    one = runs_of({"full": [0.8, 0.82, 0.81], "lora": [0.7, 0.71, 0.72],
                   "linear": [0.5, 0.52, 0.51]})  # fmt: skip
    other = one.assign(model="hubert")
    other.loc[other.strategy == "lora", "test_accuracy"] += 0.3  # lora wins there
    table = paired_comparisons(pd.concat([one, other]), "accuracy", GROUP, {})
    best = {m: set(table[table.model == m].reference) for m in ("ast", "hubert")}
    assert best == {"ast": {"full"}, "hubert": {"full", "lora"}}


def test_the_overlap_ratio_comes_from_the_runs() -> None:
    runs = runs_of({"full": [0.8, 0.82]})
    assert overlap_ratios(runs) == {"esc50": pytest.approx(400 / 1200)}
    assert overlap_ratios(runs.drop(columns=["train_clips"])) == {"esc50": 0.0}


def test_the_table_in_three_formats(tmp_path) -> None:
    runs = runs_of({"full": [0.80, 0.82, 0.78, 0.81, 0.79], "linear": [0.5, 0.52, 0.49, 0.5, 0.5]})
    table = paired_comparisons(runs, "accuracy", GROUP, overlap_ratios(runs))
    written = write_comparison_tables(table, "accuracy", 100.0, tmp_path / "paired")
    assert [p.name for p in written] == ["paired.csv", "paired.md", "paired.tex"]
    assert pd.read_csv(written[0]).strategy.tolist() == ["linear"]
    markdown = written[1].read_text()
    assert "| esc50 | ast | linear | full fine-tuning (full) | 5 | -29.80 |" in markdown
    assert "corrected resampled t-test of Nadeau and Bengio" in markdown
    assert "Holm-corrected" in markdown
    latex = written[2].read_text()
    assert "\\toprule" in latex and "full fine-tuning (full) & 5 & -29.80" in latex


def test_the_pareto_front() -> None:
    # (trainable parameters, accuracy)
    points = [(1e3, 0.5), (1e5, 0.7), (1e4, 0.4), (1e6, 0.69), (1e6, 0.9), (1e3, 0.45)]
    assert pareto_front(points) == [0, 1, 4]
    assert pareto_front([(5.0, 0.1)]) == [0]
    assert pareto_front([]) == []
