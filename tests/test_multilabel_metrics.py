"""Multi-label metrics on cases small enough to check by hand, and against scikit-learn."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn import metrics as skm

from audiopetl.training.multilabel import (
    AUC_CLIP,
    DEFAULT_THRESHOLD_GRID,
    chance_map,
    choose_threshold,
    multi_hot,
    multilabel_metrics,
)

NAMES = ["a", "b", "c"]

# 6 clips x 3 classes; every class has 3 positives and 3 negatives.
TARGETS = np.array(
    [
        [1, 0, 1],
        [1, 1, 0],
        [0, 1, 0],
        [0, 0, 1],
        [1, 0, 0],
        [0, 1, 1],
    ]
)
SCORES = np.array(
    [
        [0.9, 0.40, 0.80],
        [0.8, 0.55, 0.70],
        [0.7, 0.90, 0.20],
        [0.3, 0.10, 0.45],
        [0.6, 0.60, 0.50],
        [0.2, 0.30, 0.35],
    ]
)
# By hand, ranking each column from the top (P = positive, N = negative):
#   a: P P N P N N   AP = (1/1 + 2/2 + 3/4) / 3 = 11/12   AUC = (3 + 3 + 2) / 9 = 8/9
#   b: P N P N P N   AP = (1/1 + 2/3 + 3/5) / 3 = 34/45   AUC = (3 + 2 + 1) / 9 = 6/9
#   c: P N N P P N   AP = (1/1 + 2/4 + 3/5) / 3 = 7/10    AUC = (3 + 1 + 1) / 9 = 5/9
AP_BY_HAND = [11 / 12, 34 / 45, 7 / 10]
AUC_BY_HAND = [8 / 9, 6 / 9, 5 / 9]
MAP_BY_HAND = 427 / 540  # (165 + 136 + 126) / 180 / 3
MACRO_AUC_BY_HAND = 19 / 27
# At threshold 0.5 (scores >= 0.5 predicted; c's 0.50 on clip 4 counts as predicted):
#   a: TP 3 FP 1 FN 0 -> F1 6/7;  b: TP 2 FP 1 FN 1 -> F1 2/3;  c: TP 1 FP 2 FN 2 -> F1 1/3
#   macro F1 = (6/7 + 2/3 + 1/3) / 3 = 13/21;  micro F1 = 2*6 / (2*6 + 4 + 3) = 12/19
MACRO_F1_BY_HAND = 13 / 21
MICRO_F1_BY_HAND = 12 / 19


def test_worked_example_against_hand_and_sklearn() -> None:
    out = multilabel_metrics(TARGETS, SCORES, NAMES, threshold=0.5)
    predictions = (SCORES >= 0.5).astype(int)

    assert out["n"] == 6
    assert out["classes_without_positives"] == 0
    assert out["threshold"] == 0.5
    assert out["class_names"] == NAMES

    assert out["mAP"] == pytest.approx(MAP_BY_HAND)
    assert out["mAP"] == pytest.approx(skm.average_precision_score(TARGETS, SCORES))
    assert out["macro_auc"] == pytest.approx(MACRO_AUC_BY_HAND)
    assert out["macro_auc"] == pytest.approx(skm.roc_auc_score(TARGETS, SCORES))
    assert out["macro_f1"] == pytest.approx(MACRO_F1_BY_HAND)
    assert out["macro_f1"] == pytest.approx(
        skm.f1_score(TARGETS, predictions, average="macro", zero_division=0)
    )
    assert out["micro_f1"] == pytest.approx(MICRO_F1_BY_HAND)
    assert out["micro_f1"] == pytest.approx(
        skm.f1_score(TARGETS, predictions, average="micro", zero_division=0)
    )

    for c, name in enumerate(NAMES):
        per = out["per_class"][name]
        assert per["ap"] == pytest.approx(AP_BY_HAND[c])
        assert per["ap"] == pytest.approx(skm.average_precision_score(TARGETS[:, c], SCORES[:, c]))
        assert per["auc"] == pytest.approx(AUC_BY_HAND[c])
        assert per["support"] == 3


def test_threshold_is_inclusive() -> None:
    # Class c's 0.50 on clip 4 is a false positive at threshold 0.5 only if ">=" is used:
    # with ">" c would be TP 1 FP 1 FN 2 -> F1 2/5 and macro F1 (6/7 + 2/3 + 2/5) / 3.
    out = multilabel_metrics(TARGETS, SCORES, NAMES, threshold=0.5)
    assert out["macro_f1"] != pytest.approx((6 / 7 + 2 / 3 + 2 / 5) / 3)
    assert out["macro_f1"] == pytest.approx(MACRO_F1_BY_HAND)


def test_dprime_both_conventions_by_hand() -> None:
    out = multilabel_metrics(TARGETS, SCORES, NAMES, threshold=0.5)
    per_class = math.sqrt(2) * np.mean([norm.ppf(a) for a in AUC_BY_HAND])
    from_mean = math.sqrt(2) * norm.ppf(MACRO_AUC_BY_HAND)
    assert out["dprime_per_class"] == pytest.approx(per_class)
    assert out["dprime_from_mean_auc"] == pytest.approx(from_mean)
    # The two conventions are not interchangeable: here 0.844 against 0.757.
    assert out["dprime_per_class"] - out["dprime_from_mean_auc"] > 0.05


def test_results_are_plain_json_floats() -> None:
    out = multilabel_metrics(TARGETS, SCORES, NAMES, threshold=0.5)
    for key in ("mAP", "macro_auc", "dprime_per_class", "dprime_from_mean_auc", "micro_f1"):
        assert type(out[key]) is float, key
    assert type(out["macro_f1"]) is float
    assert type(out["n"]) is int
    for per in out["per_class"].values():
        assert type(per["ap"]) is float
        assert type(per["auc"]) is float
        assert type(per["support"]) is int
    assert json.loads(json.dumps(out)) == out


def test_class_without_positives_left_out_and_counted() -> None:
    targets = np.column_stack([TARGETS, np.zeros(6, dtype=int)])
    # One score of d above the threshold: a false alarm that micro F1 counts.
    scores = np.column_stack([SCORES, [0.1, 0.7, 0.2, 0.3, 0.1, 0.2]])
    out = multilabel_metrics(targets, scores, [*NAMES, "d"], threshold=0.5)

    assert out["classes_without_positives"] == 1
    assert out["per_class"]["d"] == {"ap": None, "auc": None, "support": 0}
    # Unchanged by the empty class: a zero AP for it would give 427/540 * 3/4.
    assert out["mAP"] == pytest.approx(MAP_BY_HAND)
    assert out["macro_auc"] == pytest.approx(MACRO_AUC_BY_HAND)
    assert out["macro_f1"] == pytest.approx(MACRO_F1_BY_HAND)
    # Micro F1 does see the false alarm: 2*6 / (2*6 + 5 + 3).
    assert out["micro_f1"] == pytest.approx(12 / 20)


def test_class_with_only_positives_has_ap_but_no_auc() -> None:
    targets = np.column_stack([TARGETS, np.ones(6, dtype=int)])
    scores = np.column_stack([SCORES, np.linspace(0.1, 0.9, 6)])
    out = multilabel_metrics(targets, scores, [*NAMES, "all"], threshold=0.5)

    assert out["per_class"]["all"]["ap"] == pytest.approx(1.0)
    assert out["per_class"]["all"]["auc"] is None
    assert out["mAP"] == pytest.approx((427 / 180 + 1.0) / 4)
    assert out["macro_auc"] == pytest.approx(MACRO_AUC_BY_HAND)
    assert out["classes_without_positives"] == 0


def test_perfect_and_inverted_auc_give_finite_dprime() -> None:
    targets = np.array([[1, 1], [1, 1], [0, 0], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9]])
    out = multilabel_metrics(targets, scores, ["up", "down"], threshold=0.5)

    assert out["per_class"]["up"]["auc"] == 1.0
    assert out["per_class"]["down"]["auc"] == 0.0
    ceiling = math.sqrt(2) * norm.ppf(1 - AUC_CLIP)
    assert math.isfinite(ceiling)
    # +ceiling and -ceiling average to 0; the mean AUC of 0.5 also gives 0.
    assert out["dprime_per_class"] == pytest.approx(0.0, abs=1e-9)
    assert out["dprime_from_mean_auc"] == pytest.approx(0.0, abs=1e-9)

    only_up = multilabel_metrics(targets[:, :1], scores[:, :1], ["up"], threshold=0.5)
    assert only_up["dprime_per_class"] == pytest.approx(ceiling)
    assert only_up["dprime_from_mean_auc"] == pytest.approx(ceiling)
    assert json.loads(json.dumps(only_up)) == only_up


def test_mismatched_inputs_refused() -> None:
    with pytest.raises(ValueError, match="class names"):
        multilabel_metrics(TARGETS, SCORES, ["a", "b"], threshold=0.5)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        multilabel_metrics(TARGETS, SCORES[:, :2], NAMES, threshold=0.5)
    with pytest.raises(ValueError, match="only 0 and 1"):
        multilabel_metrics(TARGETS * 2, SCORES, NAMES, threshold=0.5)


# -- choose_threshold -------------------------------------------------------------------------

# Two classes, 4 clips each. By hand, with scores >= t predicted:
#   x (scores 0.8 0.6 | 0.4 0.2): perfect (F1 1) for 0.45 <= t <= 0.6; at 0.65-0.8 F1 2/3
#   y (scores 0.9 0.7 | 0.65 0.1): perfect only at t = 0.7; at 0.15-0.65 F1 4/5
# Macro F1: 0.45-0.6 -> (1 + 4/5)/2 = 0.9; 0.7 -> (2/3 + 1)/2 = 5/6; 0.4 -> (4/5 + 4/5)/2 = 0.8.
# So the best global threshold is anywhere in 0.45..0.6, and the tie rule picks 0.45.
CHOOSE_TARGETS = np.array([[1, 1], [1, 1], [0, 0], [0, 0]])
CHOOSE_SCORES = np.array([[0.8, 0.9], [0.6, 0.7], [0.4, 0.65], [0.2, 0.1]])


def test_default_grid() -> None:
    assert DEFAULT_THRESHOLD_GRID[0] == 0.05
    assert DEFAULT_THRESHOLD_GRID[-1] == 0.95
    assert len(DEFAULT_THRESHOLD_GRID) == 19
    assert 0.15 in DEFAULT_THRESHOLD_GRID  # exactly, not 0.15000000000000002


def test_choose_threshold_maximises_macro_f1_with_ties_to_smallest() -> None:
    chosen = choose_threshold(CHOOSE_TARGETS, CHOOSE_SCORES)
    assert chosen == 0.45
    assert type(chosen) is float

    # The same answer by brute force with scikit-learn.
    targets, scores = CHOOSE_TARGETS, CHOOSE_SCORES
    grid = DEFAULT_THRESHOLD_GRID
    f1s = [skm.f1_score(targets, scores >= t, average="macro", zero_division=0) for t in grid]
    tied = [t for t, f1 in zip(grid, f1s, strict=True) if f1 == pytest.approx(max(f1s))]
    assert tied == [0.45, 0.5, 0.55, 0.6]
    assert chosen == min(tied)


def test_choose_threshold_custom_grid() -> None:
    # The tie rule holds whatever order the grid comes in.
    assert choose_threshold(CHOOSE_TARGETS, CHOOSE_SCORES, grid=[0.6, 0.5, 0.55]) == 0.5
    # Not simply the smallest candidate: at 0.1 both classes predict everything (F1 2/3 each).
    assert choose_threshold(CHOOSE_TARGETS, CHOOSE_SCORES, grid=[0.1, 0.7, 0.95]) == 0.7
    with pytest.raises(ValueError, match="empty"):
        choose_threshold(CHOOSE_TARGETS, CHOOSE_SCORES, grid=[])


def test_choose_threshold_refuses_data_without_positives() -> None:
    with pytest.raises(ValueError, match="no class has a positive"):
        choose_threshold(np.zeros((4, 2), dtype=int), CHOOSE_SCORES)


# -- chance_map and multi_hot -----------------------------------------------------------------


def test_chance_map_is_mean_prevalence_of_classes_with_positives() -> None:
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    # Prevalences 2/4 and 1/4; the third class has none and is left out: (0.5 + 0.25) / 2.
    assert chance_map(targets) == pytest.approx(0.375)
    # It is the mAP of a constant predictor, as scikit-learn computes it.
    constant = multilabel_metrics(targets, np.full(targets.shape, 0.3), NAMES, threshold=0.5)
    assert constant["mAP"] == pytest.approx(0.375)
    with pytest.raises(ValueError, match="no class has a positive"):
        chance_map(np.zeros((3, 2)))


def test_multi_hot() -> None:
    out = multi_hot([[0, 2], [], [1, 1], [np.int64(2)]], n_classes=3)
    assert out.dtype == np.uint8
    assert out.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert multi_hot([], n_classes=3).shape == (0, 3)


@pytest.mark.parametrize("bad", [3, -1])
def test_multi_hot_refuses_index_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"row 1: class index {bad} outside 0\.\.2"):
        multi_hot([[0], [1, bad]], n_classes=3)


def test_multi_hot_refuses_non_integer() -> None:
    with pytest.raises(TypeError, match="row 0"):
        multi_hot([[1.0]], n_classes=3)
