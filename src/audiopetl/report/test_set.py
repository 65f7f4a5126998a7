"""Which differences between methods are real when there is one fixed test set: the official
train/validation/test split of a dataset, every method scored on the same test clips.

The fold-paired t-tests of ``audiopetl.report.stats`` need several folds; with one test set
there is one pair per seed, and the seeds share the test clips, so what varies is which clips
the test set happens to hold. Both tests here therefore take the clip as the unit and pair the
methods clip by clip; several seeds are pooled per clip (the per-clip share of seeds right, or
a clip-by-seed matrix, for the bootstrap; for McNemar's test a clip counts for the method
that gets it right with more of its seeds), never counted as more clips.

- McNemar's exact test (``mcnemar_exact``) decides whether two methods' accuracies differ. On
  the same clips, only the discordant ones carry information: b clips where A alone is right,
  c where B alone is. Under no difference each discordant clip is A's with probability 1/2, so
  min(b, c) is binomial(b + c, 1/2) and the two-sided p is exact: no resampling, no normal
  approximation, valid however few the discordant clips. This is Dietterich's (1998)
  recommendation for one test set, and the one ``compare_on_test_set``'s verdict uses.
- The paired bootstrap (``paired_bootstrap``) gives the size of the difference: clip indices
  drawn with replacement, the same for both methods, and the percentile interval of the
  resampled differences. It works for any metric computed from per-clip values (mAP, macro
  F1, where McNemar's test does not apply, and there its p is the test), but its p is
  approximate (resolution 1/resamples, the sign of a resampled difference), so for accuracy it
  is the interval, not the p, that is reported.

p-values are Holm-corrected (statsmodels) over the comparisons of one ``compare_on_test_set``
call, each column on its own. The intervals are not adjusted for the number of comparisons.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from scipy import stats

try:  # scipy >= 1.7; the legacy environment may predate it: the formula below stands in
    from scipy.stats import binomtest as _binomtest
except ImportError:  # pragma: no cover - depends on the installed scipy
    _binomtest = None

ALPHA = 0.05
CONFIDENCE = 0.95  # of compare_on_test_set's intervals
# Resampled indices are drawn this many at a time (about 32 MiB of int64), so a large test set
# and 10,000 resamples need not hold every index at once.
_CHUNK_ELEMENTS = 1 << 22


def _resampled_indices(rng: np.random.Generator, n: int, resamples: int) -> Iterator[np.ndarray]:
    # The blocks depend only on n and resamples, so the default metric and a custom one see
    # the same indices from the same seed.
    block = max(1, min(resamples, _CHUNK_ELEMENTS // n))
    done = 0
    while done < resamples:
        size = min(block, resamples - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


def paired_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    *,
    metric: Callable[[np.ndarray], float] | None = None,
    resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """The paired bootstrap of a metric's difference a - b over the clips of one test set.

    ``correct_a`` and ``correct_b`` are the two methods' per-clip values on the same test
    clips, row i of both the same clip, seeds already pooled by the caller: 1-D arrays of 0/1
    correctness (the default metric, their mean, is then the accuracy; per-clip shares of seeds
    right give the mean accuracy over seeds), or, with ``metric``, any per-clip values from
    which ``metric`` computes the headline. 2-D arrays have one row per clip and need a
    ``metric``, which receives the resampled rows.

    Each of ``resamples`` draws takes n clip indices with replacement, the same for both
    methods (the pairing), and records metric(a[idx]) - metric(b[idx]). Deterministic from
    ``seed`` (a numpy Generator).

    Returns ``difference`` (the observed a - b), ``ci_low`` and ``ci_high`` (the percentile
    interval at ``confidence``), ``p_value`` and ``resamples``. The p-value is the usual
    bootstrap p for the sign of the difference: 2 * min(share of resampled differences <= 0,
    share >= 0), capped at 1; 1 when the methods never differ, 0 when no resample reaches 0
    (read it as p < 1/resamples).

    mAP: stack each clip's targets and a method's scores side by side, and let the metric
    split them again; the targets are the same in both, so both methods are scored on the same
    resampled clips::

        from sklearn.metrics import average_precision_score

        k = targets.shape[1]  # (n_clips, n_classes) 0/1; scores_a, scores_b the same shape
        result = paired_bootstrap(
            np.hstack([targets, scores_a]),
            np.hstack([targets, scores_b]),
            metric=lambda rows: average_precision_score(rows[:, :k], rows[:, k:]),
        )

    A rare class may have no positive in some resample; the metric must then give a number
    (average over the classes present, say): a resample whose metric is not finite is an error.
    """
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.ndim not in (1, 2) or b.ndim != a.ndim or len(a) != len(b):
        raise ValueError(
            f"expected two aligned 1-D or 2-D per-clip arrays, got shapes {a.shape} and {b.shape}"
        )
    if len(a) == 0:
        raise ValueError("no clips to resample")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if metric is None and a.ndim == 2:
        # The mean of a clip-by-column matrix is rarely the headline (mAP is not): say which.
        raise ValueError("2-D per-clip arrays need a metric")

    rng = np.random.default_rng(seed)
    n = len(a)
    if metric is None:
        a_values, b_values = a.astype(float), b.astype(float)
        observed = float(a_values.mean() - b_values.mean())
        # Vectorised over a block of resamples: the default is accuracy, the common case.
        diffs = np.concatenate(
            [
                a_values[idx].mean(axis=1) - b_values[idx].mean(axis=1)
                for idx in _resampled_indices(rng, n, resamples)
            ]
        )
    else:
        observed = float(metric(a)) - float(metric(b))
        diffs = np.array(
            [
                float(metric(a[row])) - float(metric(b[row]))
                for idx in _resampled_indices(rng, n, resamples)
                for row in idx
            ]
        )
    if not np.isfinite(diffs).all():
        raise ValueError("the metric was not finite on some resample of the clips")

    tail = (1.0 - confidence) / 2.0
    ci_low, ci_high = np.quantile(diffs, [tail, 1.0 - tail])
    share_low = float(np.mean(diffs <= 0))
    share_high = float(np.mean(diffs >= 0))
    return {
        "difference": observed,
        "ci_low": float(ci_low),
        "ci_high": float(ci_high),
        "p_value": min(1.0, 2.0 * min(share_low, share_high)),
        "resamples": resamples,
    }


def _correctness(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected one 0/1 value per clip, got shape {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name}: correctness must be 0/1 (pool the seeds into one per clip)")
    return array.astype(bool)


def _mcnemar_p_formula(b: int, c: int) -> float:
    if b + c == 0:
        return 1.0
    return float(min(1.0, 2.0 * stats.binom.cdf(min(b, c), b + c, 0.5)))


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """McNemar's exact test on two methods' paired 0/1 correctness on the same clips.

    ``a_only`` (b) counts the clips A got right and B wrong, ``b_only`` (c) the reverse; the
    two-sided exact binomial p is min(1, 2 * P(X <= min(b, c))) for X ~ binomial(b + c, 1/2),
    and 1 when no clip is discordant."""
    a = _correctness(correct_a, "correct_a")
    b_correct = _correctness(correct_b, "correct_b")
    if len(a) != len(b_correct):
        raise ValueError(f"the methods were scored on {len(a)} and {len(b_correct)} clips")
    b = int(np.sum(a & ~b_correct))
    c = int(np.sum(~a & b_correct))
    return {"a_only": b, "b_only": c, "p_value": _exact_p(b, c)}


def _exact_p(b: int, c: int) -> float:
    """The two-sided exact binomial p of b against c discordant clips, each 1/2 under no
    difference."""
    if b + c == 0:
        return 1.0
    if _binomtest is not None:
        # For p = 1/2 the binomial is symmetric, so binomtest's two-sided p (the outcomes no
        # likelier than the one seen) is the formula's doubled tail; the tests hold them equal.
        return float(_binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue)
    return _mcnemar_p_formula(b, c)


def mcnemar_over_seeds(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """McNemar's exact test with several seeds per clip: (clips, seeds) 0/1 correctness of two
    methods, the seeds in the same order. A clip counts for A when A gets it right with more
    of its seeds than B does, for B when with fewer, for neither on a tie; the exact binomial
    test on those counts is the sign test of the per-clip differences, the clip the unit (the
    seeds share the clips, so they are no more observations). With one seed it is McNemar's
    exact test."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (clips, seeds) arrays, got {a.shape} and {b.shape}")
    right_a, right_b = a.sum(axis=1), b.sum(axis=1)
    a_only = int(np.sum(right_a > right_b))
    b_only = int(np.sum(right_a < right_b))
    return {"a_only": a_only, "b_only": b_only, "p_value": _exact_p(a_only, b_only)}


def _holm(pvalues: list[float]) -> list[float]:
    from statsmodels.stats.multitest import multipletests

    if not pvalues:
        return []
    return [float(v) for v in multipletests(pvalues, alpha=ALPHA, method="holm")[1]]


def _per_seed(values: np.ndarray, name: str) -> np.ndarray:
    """A method's 0/1 correctness as (clips, seeds): one column per seed."""
    array = np.asarray(values)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name}: expected 0/1 per clip (and seed), got shape {array.shape}")
    return array.astype(float)


def compare_on_test_set(
    per_method_correct: Mapping[str, np.ndarray],
    reference: str,
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Every method against ``reference`` on the same test clips, in the mapping's order.

    ``per_method_correct`` maps each method to its 0/1 correctness per test clip, one value per
    clip or one column per seed (clips, seeds), the clips and seeds in the same order for every
    method. The seeds are pooled per clip, never counted as more clips (they share the clips):
    the bootstrap resamples clips with all their seeds, so its difference is the mean accuracy
    over seeds and its interval reflects the clips' variation; McNemar's test counts a clip
    for the method that gets it right with more of its seeds (:func:`mcnemar_over_seeds`; with
    one seed, McNemar's exact test itself). Each row
    holds both mean accuracies, the observed difference (method - reference) and its bootstrap
    interval, McNemar's discordant counts, both p-values and their Holm corrections over the
    comparisons, and which test decides what: ``significant`` is McNemar's Holm-corrected
    p < 0.05 (exact, no resampling); the interval gives the size of the difference. Every
    comparison resamples from the same ``seed``, so all see the same draws of clips."""
    if reference not in per_method_correct:
        raise KeyError(f"reference method {reference!r} is not among {list(per_method_correct)}")
    correct = {name: _per_seed(values, name) for name, values in per_method_correct.items()}
    ref = correct[reference]
    rows: list[dict[str, Any]] = []
    for name, values in correct.items():
        if name == reference:
            continue
        if values.shape != ref.shape:
            raise ValueError(
                f"{name} was scored on {values.shape[0]} clips x {values.shape[1]} seeds, "
                f"{reference} on {ref.shape[0]} x {ref.shape[1]}"
            )
        shares, ref_shares = values.mean(axis=1), ref.mean(axis=1)
        boot = paired_bootstrap(
            shares, ref_shares, resamples=resamples, seed=seed, confidence=CONFIDENCE
        )
        exact = mcnemar_over_seeds(values, ref)
        rows.append(
            {
                "method": name,
                "reference": reference,
                "n": len(ref),
                "seeds": ref.shape[1],
                "accuracy": float(shares.mean()),
                "reference_accuracy": float(ref_shares.mean()),
                "difference": boot["difference"],
                "ci_low": boot["ci_low"],
                "ci_high": boot["ci_high"],
                "confidence": CONFIDENCE,
                "resamples": resamples,
                "p_bootstrap": boot["p_value"],
                "method_only": exact["a_only"],
                "reference_only": exact["b_only"],
                "p_mcnemar": exact["p_value"],
            }
        )
    for column in ("p_bootstrap", "p_mcnemar"):
        for row, adjusted in zip(rows, _holm([r[column] for r in rows]), strict=True):
            row[f"{column}_holm"] = adjusted
    for row in rows:
        row["significant"] = bool(row["p_mcnemar_holm"] < ALPHA)
        row["significance_test"] = "McNemar's exact test"
        row["size_test"] = "paired bootstrap percentile interval"
    return rows
