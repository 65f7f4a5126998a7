"""The comparisons on one fixed test set: McNemar's exact test on worked examples, the paired
bootstrap's interval and p, its 2-D metric form, and Holm's correction in the comparison
table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from audiopetl.report import test_set
from audiopetl.report.test_set import compare_on_test_set, mcnemar_exact, paired_bootstrap


def clips(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Two methods' 0/1 correctness on both + a_only + b_only + neither clips."""
    a = [1] * both + [1] * a_only + [0] * b_only + [0] * neither
    b = [1] * both + [0] * a_only + [1] * b_only + [0] * neither
    return np.array(a), np.array(b)


# -- McNemar's exact test ------------------------------------------------------------------


def test_mcnemar_gives_the_worked_example() -> None:
    # b = 9 clips A alone got right, c = 2 B alone; 11 discordant. Two-sided exact p:
    # 2 * sum_{k <= 2} C(11, k) / 2^11 = 2 * (1 + 11 + 55) / 2048 = 134 / 2048 = 0.0654296875.
    # The 5 clips both got right and the 3 both got wrong play no part.
    a, b = clips(both=5, a_only=9, b_only=2, neither=3)
    result = mcnemar_exact(a, b)
    assert (result["a_only"], result["b_only"]) == (9, 2)
    assert result["p_value"] == pytest.approx(134 / 2048, rel=1e-12)


def test_mcnemar_without_discordant_clips_gives_one() -> None:
    a, b = clips(both=7, a_only=0, b_only=0, neither=4)
    assert mcnemar_exact(a, b) == {"a_only": 0, "b_only": 0, "p_value": 1.0}


def test_mcnemar_is_symmetric_in_the_methods() -> None:
    a, b = clips(both=3, a_only=6, b_only=1, neither=2)
    forward, backward = mcnemar_exact(a, b), mcnemar_exact(b, a)
    assert (forward["a_only"], forward["b_only"]) == (6, 1)
    assert (backward["a_only"], backward["b_only"]) == (1, 6)
    # 2 * (1 + 7) / 2^7 = 0.125, whichever method is called A.
    assert forward["p_value"] == backward["p_value"] == pytest.approx(16 / 128, rel=1e-12)


def test_binomtest_and_the_formula_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    # The two-sided binomial p at 1/2 summed by hand, against both code paths: scipy's
    # binomtest (scipy >= 1.7) and the formula that stands in for it on an older scipy.
    def by_hand(b: int, c: int) -> float:
        n = b + c
        if n == 0:
            return 1.0
        return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)

    pairs = [(b, c) for b in range(0, 26) for c in range(0, 26)]
    for b, c in pairs:
        assert test_set._mcnemar_p_formula(b, c) == pytest.approx(by_hand(b, c), rel=1e-9)
    if test_set._binomtest is not None:
        for b, c in pairs:
            a, other = clips(both=2, a_only=b, b_only=c, neither=1)
            assert mcnemar_exact(a, other)["p_value"] == pytest.approx(by_hand(b, c), rel=1e-9)
    monkeypatch.setattr(test_set, "_binomtest", None)
    a, b = clips(both=5, a_only=9, b_only=2, neither=3)
    assert mcnemar_exact(a, b)["p_value"] == pytest.approx(134 / 2048, rel=1e-12)


def test_mcnemar_wants_one_0_or_1_per_clip() -> None:
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact(np.array([1.0, 0.5]), np.array([1, 0]))
    with pytest.raises(ValueError, match="clips"):
        mcnemar_exact(np.array([1, 0, 1]), np.array([1, 0]))


# -- the paired bootstrap ------------------------------------------------------------------


def test_identical_methods_differ_by_nothing() -> None:
    a = np.random.default_rng(1).integers(0, 2, 50)
    result = paired_bootstrap(a, a.copy(), resamples=2000)
    # Every resample takes the same clips of both: each difference is exactly 0, so both
    # shares (<= 0 and >= 0) are 1 and p = min(1, 2 * 1) = 1.
    assert result == {
        "difference": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0, "resamples": 2000,
    }  # fmt: skip


def test_one_clip_gives_the_worked_example() -> None:
    # One clip, A right and B wrong: every resample is that clip, every difference 1 - 0 = 1.
    # The interval is [1, 1]; no difference is <= 0, so p = 2 * min(0, 1) = 0.
    result = paired_bootstrap(np.array([1]), np.array([0]), resamples=500)
    assert (result["difference"], result["ci_low"], result["ci_high"]) == (1.0, 1.0, 1.0)
    assert result["p_value"] == 0.0


def test_always_right_against_half_right_is_a_clear_difference() -> None:
    a = np.ones(100, dtype=int)
    b = np.tile([1, 0], 50)
    result = paired_bootstrap(a, b, resamples=5000, seed=3)
    assert result["difference"] == pytest.approx(0.5)
    assert 0 < result["ci_low"] < 0.5 < result["ci_high"] < 1
    assert result["p_value"] < 0.05
    # The spread of a resampled share of 50 wrong clips in 100: sd = sqrt(0.25 / 100) = 0.05,
    # so the 95% interval is about 0.5 +- 1.96 * 0.05.
    assert result["ci_low"] == pytest.approx(0.5 - 1.96 * 0.05, abs=0.015)
    assert result["ci_high"] == pytest.approx(0.5 + 1.96 * 0.05, abs=0.015)


@pytest.mark.parametrize(("confidence", "z"), [(0.5, 0.6745), (0.9, 1.6449)])
def test_the_interval_has_the_confidence_asked_for(confidence: float, z: float) -> None:
    # 400 clips, A right on all, B on half: a resampled difference is the share of B's 200
    # wrong clips drawn, near normal with mean 0.5 and sd sqrt(0.25 / 400) = 0.025, so the
    # percentile interval is about 0.5 +- z * 0.025, z the normal quantile of (1 + c) / 2.
    a, b = np.ones(400, dtype=int), np.tile([1, 0], 200)
    result = paired_bootstrap(a, b, resamples=5000, seed=4, confidence=confidence)
    assert result["ci_low"] == pytest.approx(0.5 - z * 0.025, abs=0.005)
    assert result["ci_high"] == pytest.approx(0.5 + z * 0.025, abs=0.005)


def test_swapping_the_methods_mirrors_the_interval() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2, 80), rng.integers(0, 2, 80)
    forward = paired_bootstrap(a, b, resamples=3000, seed=5)
    backward = paired_bootstrap(b, a, resamples=3000, seed=5)
    assert backward["difference"] == pytest.approx(-forward["difference"])
    assert backward["ci_low"] == pytest.approx(-forward["ci_high"])
    assert backward["ci_high"] == pytest.approx(-forward["ci_low"])
    # Two-sided: the same p whichever way round (a one-sided share would differ).
    assert backward["p_value"] == pytest.approx(forward["p_value"])
    assert 0 < forward["p_value"] < 1


def test_both_methods_are_resampled_on_the_same_clips() -> None:
    # B is A with 4 of A's right clips made wrong. Paired, a resample's difference is the
    # share of those 4 clips it drew: never below 0, and 0 with probability (1 - 4/200)^200,
    # about e^-4 = 0.018, so p is about 0.037. Resampled independently, the difference of two
    # accuracies near 0.5 on 200 clips would spread by +-0.1 and reach well below 0.
    a = np.random.default_rng(4).integers(0, 2, 200)
    a[:4] = 1
    b = a.copy()
    b[:4] = 0
    result = paired_bootstrap(a, b, resamples=4000, seed=0)
    assert result["difference"] == pytest.approx(4 / 200)
    assert result["ci_low"] >= 0
    assert result["ci_high"] <= 10 / 200
    assert result["p_value"] == pytest.approx(2 * (1 - 4 / 200) ** 200, abs=0.015)


def test_the_seed_decides_the_resamples() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.integers(0, 2, 120), rng.integers(0, 2, 120)
    first = paired_bootstrap(a, b, resamples=1000, seed=11)
    assert paired_bootstrap(a, b, resamples=1000, seed=11) == first
    other = paired_bootstrap(a, b, resamples=1000, seed=12)
    assert other["difference"] == first["difference"]  # observed: no resampling in it
    assert (other["ci_low"], other["ci_high"], other["p_value"]) != (
        first["ci_low"], first["ci_high"], first["p_value"])  # fmt: skip


def test_a_metric_over_2d_rows_matches_the_1d_form() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.integers(0, 2, 90), rng.integers(0, 2, 90)
    plain = paired_bootstrap(a, b, resamples=1500, seed=2)
    # The same metric given explicitly on the 1-D arrays: the same indices, the same numbers.
    explicit = paired_bootstrap(a, b, metric=np.mean, resamples=1500, seed=2)
    assert explicit == pytest.approx(plain)
    # Rows of (correctness, an unrelated column): a toy mean of the first column sees the
    # resampled rows, whole, and must reproduce the 1-D accuracy exactly.
    a2 = np.column_stack([a, rng.normal(size=90)])
    b2 = np.column_stack([b, rng.normal(size=90)])

    def first_column_mean(rows: np.ndarray) -> float:
        assert rows.shape == (90, 2)
        return float(rows[:, 0].mean())

    rows = paired_bootstrap(a2, b2, metric=first_column_mean, resamples=1500, seed=2)
    assert rows == pytest.approx(plain)
    with pytest.raises(ValueError, match="need a metric"):
        paired_bootstrap(a2, b2)


def test_the_map_recipe_of_the_docstring() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(8)
    n, k = 120, 3
    targets = (rng.random((n, k)) < 0.4).astype(float)
    targets[:k] = np.eye(k)  # every class has positives
    scores_a = targets + rng.normal(0, 0.3, (n, k))  # the better ranking
    scores_b = targets + rng.normal(0, 1.0, (n, k))

    def macro_ap(rows: np.ndarray) -> float:
        return float(metrics.average_precision_score(rows[:, :k], rows[:, k:]))

    result = paired_bootstrap(
        np.hstack([targets, scores_a]), np.hstack([targets, scores_b]), metric=macro_ap,
        resamples=300,
    )  # fmt: skip
    expected = metrics.average_precision_score(targets, scores_a) - metrics.average_precision_score(
        targets, scores_b
    )
    assert result["difference"] == pytest.approx(expected)
    assert 0 < result["ci_low"] < expected < result["ci_high"]


def test_a_metric_that_is_not_finite_is_an_error() -> None:
    a, b = np.array([1, 0, 1]), np.array([0, 0, 1])
    with pytest.raises(ValueError, match="not finite"):
        paired_bootstrap(a, b, metric=lambda rows: float("nan"), resamples=10)


# -- the comparison table --------------------------------------------------------------------


def test_each_method_meets_the_reference_with_holm_over_both_p_columns() -> None:
    rng = np.random.default_rng(9)
    correct = {
        "full": (rng.random(150) < 0.80).astype(int),
        "lora": (rng.random(150) < 0.85).astype(int),
        "linear": (rng.random(150) < 0.60).astype(int),
        "prompt": (rng.random(150) < 0.78).astype(int),
    }
    rows = compare_on_test_set(correct, "full", resamples=2000, seed=1)
    assert [r["method"] for r in rows] == ["lora", "linear", "prompt"]
    assert all(r["reference"] == "full" and r["n"] == 150 for r in rows)
    for row in rows:
        method = correct[row["method"]]
        boot = paired_bootstrap(method, correct["full"], resamples=2000, seed=1)
        exact = mcnemar_exact(method, correct["full"])
        assert row["difference"] == pytest.approx(method.mean() - correct["full"].mean())
        assert (row["ci_low"], row["ci_high"], row["p_bootstrap"]) == pytest.approx(
            (boot["ci_low"], boot["ci_high"], boot["p_value"]))  # fmt: skip
        assert (row["method_only"], row["reference_only"], row["p_mcnemar"]) == (
            exact["a_only"], exact["b_only"], exact["p_value"])  # fmt: skip
        assert row["significance_test"] == "McNemar's exact test"
        assert row["size_test"] == "paired bootstrap percentile interval"
    for column in ("p_bootstrap", "p_mcnemar"):
        raw = [r[column] for r in rows]
        expected = multipletests(raw, alpha=0.05, method="holm")[1]
        assert [r[f"{column}_holm"] for r in rows] == pytest.approx(list(expected))
    for row in rows:
        assert row["significant"] == (row["p_mcnemar_holm"] < 0.05)
    assert next(r for r in rows if r["method"] == "linear")["significant"]


def test_holm_can_take_significance_away() -> None:
    # The reference is right on the first 20 of 40 clips; each method on those and 6 more
    # (its own), so each has b = 6, c = 0: raw p = 2 * (1/2)^6 = 0.03125. Holm over the two:
    # the smaller p times 2 = 0.0625, the other max(0.0625, 0.03125 * 1) = 0.0625. Neither
    # is significant, though each alone would be.
    reference = np.zeros(40, dtype=int)
    reference[:20] = 1
    first, second = reference.copy(), reference.copy()
    first[20:26] = 1
    second[26:32] = 1
    rows = compare_on_test_set({"full": reference, "x": first, "y": second}, "full",
                               resamples=500)  # fmt: skip
    for row in rows:
        assert (row["method_only"], row["reference_only"]) == (6, 0)
        assert row["p_mcnemar"] == pytest.approx(0.03125)
        assert row["p_mcnemar_holm"] == pytest.approx(0.0625)
        assert not row["significant"]
        assert row["difference"] == pytest.approx(6 / 40)
        assert row["ci_low"] > 0  # the bootstrap sees a difference; McNemar's test decides


def test_the_reference_must_be_one_of_the_methods() -> None:
    with pytest.raises(KeyError, match="lora"):
        compare_on_test_set({"full": np.array([1, 0])}, "lora")
    with pytest.raises(ValueError, match="clips"):
        compare_on_test_set({"full": np.array([1, 0]), "x": np.array([1, 0, 1])}, "full")


def test_mcnemar_over_seeds_counts_clips_not_seeds() -> None:
    from audiopetl.report.test_set import mcnemar_over_seeds

    # 3 clips x 2 seeds. Clip 0: A right twice, B once (for A); clip 1: both once (neither);
    # clip 2: A never, B twice (for B).
    a = np.array([[1, 1], [1, 0], [0, 0]])
    b = np.array([[1, 0], [0, 1], [1, 1]])
    result = mcnemar_over_seeds(a, b)
    assert (result["a_only"], result["b_only"]) == (1, 1)
    assert result["p_value"] == 1.0
    # One seed: McNemar's exact test itself.
    one_a, one_b = np.array([1, 1, 1, 1, 1, 0, 1]), np.array([0, 0, 0, 0, 0, 0, 1])
    assert mcnemar_over_seeds(one_a[:, None], one_b[:, None]) == mcnemar_exact(one_a, one_b)
    # Seeds repeating the same clips add no evidence: 5 clips A alone gets right, in 1 seed or
    # copied into 4, give the same p (pooling seeds as clips would give 2 * 0.5**20 instead).
    four_a, four_b = np.repeat(one_a[:, None], 4, axis=1), np.repeat(one_b[:, None], 4, axis=1)
    assert mcnemar_over_seeds(four_a, four_b)["p_value"] == pytest.approx(2 * 0.5**5)


def test_several_seeds_pool_per_clip_in_the_comparison() -> None:
    a = np.array([[1, 1], [1, 1], [0, 1], [1, 0]])
    full = np.array([[0, 0], [1, 0], [0, 0], [1, 1]])
    (row,) = compare_on_test_set({"full": full, "a": a}, "full", resamples=500)
    assert row["n"] == 4 and row["seeds"] == 2
    assert row["accuracy"] == 0.75 and row["reference_accuracy"] == 0.375  # over clips x seeds
    assert row["difference"] == pytest.approx(0.375)
    # Clips 0, 1, 2 for a (2 > 0, 2 > 1, 1 > 0), clip 3 for full (1 < 2).
    assert (row["method_only"], row["reference_only"]) == (3, 1)
    assert row["p_mcnemar"] == pytest.approx(0.625)
