"""Multi-label classification metrics (several classes per clip, one sigmoid score per class),
computed with scikit-learn: mAP, macro ROC AUC, d' and thresholded F1.

The multiclass counterpart is :func:`audiopetl.training.metrics.classification_metrics`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn import metrics as skm

# AUC is clipped into [AUC_CLIP, 1 - AUC_CLIP] before the inverse normal CDF: a perfectly
# separated class (AUC exactly 1, common on small evaluation sets) would otherwise give d' = inf,
# which poisons every average it enters and is not JSON-able. With 1e-6 the ceiling is
# d' = sqrt(2) * Phi^-1(1 - 1e-6), about 6.72.
AUC_CLIP = 1e-6

# The threshold grid of choose_threshold: 0.05, 0.10, ..., 0.95. Built from integers and rounded
# so the thresholds are the decimals they look like (0.15, not 0.15000000000000002) when they
# are written to a results file.
DEFAULT_THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))

# The decision threshold of a run that has no validation set to choose one on, and of every
# epoch's validation while it trains (epochs are selected by mAP, which needs none).
DEFAULT_THRESHOLD = 0.5

# Macro F1 values closer than this count as a tie: a mean of per-class F1s can come out one ulp
# apart for two thresholds that are equally good, and the tie rule must still apply.
_F1_TIE_TOLERANCE = 1e-12


def _dprime(auc: float) -> float:
    """d' of a ROC AUC under the equal-variance Gaussian model: sqrt(2) * Phi^-1(AUC)."""
    clipped = min(max(auc, AUC_CLIP), 1.0 - AUC_CLIP)
    return float(math.sqrt(2.0) * norm.ppf(clipped))


def _check_inputs(targets: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    targets = np.asarray(targets)
    scores = np.asarray(scores, dtype=np.float64)
    if targets.ndim != 2 or targets.shape != scores.shape:
        raise ValueError(
            f"targets and scores must both be (N, C); got {targets.shape} and {scores.shape}"
        )
    if targets.shape[0] == 0:
        raise ValueError("no clips: targets and scores are empty")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must hold only 0 and 1 (a multi-hot matrix)")
    return targets.astype(np.int64), scores


def _classes_with_positives(targets: np.ndarray) -> np.ndarray:
    return np.flatnonzero(targets.sum(axis=0) > 0)


def _macro_f1(targets: np.ndarray, predictions: np.ndarray, classes: np.ndarray) -> float:
    # Macro over the classes with positives only: a class absent from this split would add an
    # F1 of 0 (or of 1, depending on the zero_division convention) that says nothing about the
    # model.
    return float(
        skm.f1_score(targets, predictions, labels=classes, average="macro", zero_division=0)
    )


def multilabel_metrics(
    targets: np.ndarray, scores: np.ndarray, class_names: Sequence[str], threshold: float
) -> dict[str, Any]:
    """Ranking metrics (mAP, macro AUC, d') and F1 of ``scores >= threshold``, plus per-class
    AP, AUC and support. ``targets`` is an (N, C) 0/1 matrix, ``scores`` the (N, C) sigmoid
    outputs. A class without positives in ``targets`` has no AP and is left out of mAP and
    macro F1 (``classes_without_positives`` counts them); a class without both positives and
    negatives has no AUC and is left out of the AUC and d' averages. An average over no class
    is None."""
    targets, scores = _check_inputs(targets, scores)
    n_classes = targets.shape[1]
    if len(class_names) != n_classes:
        raise ValueError(f"{len(class_names)} class names for {n_classes} score columns")
    positives = targets.sum(axis=0)
    n = targets.shape[0]
    with_positives = _classes_with_positives(targets)

    ap: list[float | None] = [None] * n_classes
    auc: list[float | None] = [None] * n_classes
    for c in range(n_classes):
        if positives[c] > 0:
            ap[c] = float(skm.average_precision_score(targets[:, c], scores[:, c]))
        # AUC needs both kinds: with only one, every ranking is equally (un)informative.
        if 0 < positives[c] < n:
            auc[c] = float(skm.roc_auc_score(targets[:, c], scores[:, c]))
    aps = [a for a in ap if a is not None]
    aucs = [a for a in auc if a is not None]
    mean_auc = float(np.mean(aucs)) if aucs else None

    predictions = (scores >= threshold).astype(np.int64)
    out: dict[str, Any] = {
        "n": int(n),
        "mAP": float(np.mean(aps)) if aps else None,
        "classes_without_positives": int(n_classes - len(with_positives)),
        "macro_auc": mean_auc,
        # Two d' conventions that are NOT comparable with each other: HEAR turns each class's
        # AUC into a d' and averages those, the AST recipe turns the mean AUC into one d'.
        # Phi^-1 is not linear, so the two differ whenever the class AUCs do (typically by a
        # lot near AUC 1). Any table of d' must name which of the two it shows.
        "dprime_per_class": float(np.mean([_dprime(a) for a in aucs])) if aucs else None,
        "dprime_from_mean_auc": _dprime(mean_auc) if mean_auc is not None else None,
        # Micro F1 pools every class, those without positives too: a false alarm on an absent
        # class is still a false alarm.
        "micro_f1": float(skm.f1_score(targets, predictions, average="micro", zero_division=0)),
        "macro_f1": (
            _macro_f1(targets, predictions, with_positives) if len(with_positives) else None
        ),
        "threshold": float(threshold),
    }
    out["per_class"] = {
        str(name): {"ap": ap[c], "auc": auc[c], "support": int(positives[c])}
        for c, name in enumerate(class_names)
    }
    out["class_names"] = [str(name) for name in class_names]
    return out


def choose_threshold(
    targets: np.ndarray, scores: np.ndarray, grid: Sequence[float] | None = None
) -> float:
    """The one threshold, shared by every class, that maximises macro F1 (over the classes with
    positives, as in :func:`multilabel_metrics`) of ``scores >= threshold`` on ``targets``:
    meant for validation data, the threshold then applied unchanged to the test split. ``grid``
    defaults to 0.05, 0.10, ..., 0.95; ties go to the smallest threshold."""
    targets, scores = _check_inputs(targets, scores)
    candidates = sorted({float(t) for t in (DEFAULT_THRESHOLD_GRID if grid is None else grid)})
    if not candidates:
        raise ValueError("empty threshold grid")
    with_positives = _classes_with_positives(targets)
    if not len(with_positives):
        raise ValueError("no class has a positive: macro F1, and so the threshold, is undefined")
    f1s = [_macro_f1(targets, (scores >= t).astype(np.int64), with_positives) for t in candidates]
    best = max(f1s)
    # Ascending order makes the first near-maximum the smallest: the tie rule, deterministically.
    return next(t for t, f1 in zip(candidates, f1s, strict=True) if f1 >= best - _F1_TIE_TOLERANCE)


def chance_map(targets: np.ndarray) -> float:
    """The chance level of mAP that the report draws: the mAP of a constant predictor, i.e. the
    mean prevalence of the classes with positives (the AP of a constant score is the class's
    prevalence; classes without positives are left out, as in :func:`multilabel_metrics`)."""
    targets = np.asarray(targets)
    if targets.ndim != 2 or targets.shape[0] == 0:
        raise ValueError(f"targets must be a non-empty (N, C) matrix; got {targets.shape}")
    prevalence = targets.mean(axis=0)
    present = prevalence > 0
    if not present.any():
        raise ValueError("no class has a positive: mAP, and so its chance level, is undefined")
    return float(prevalence[present].mean())


def multi_hot(label_lists: Sequence[Sequence[int]], n_classes: int) -> np.ndarray:
    """The (N, n_classes) uint8 matrix with a 1 at each clip's labels (repeats count once)."""
    out = np.zeros((len(label_lists), n_classes), dtype=np.uint8)
    for row, labels in enumerate(label_lists):
        for label in labels:
            try:
                index = operator.index(label)
            except TypeError:
                raise TypeError(
                    f"row {row}: label {label!r} is not an integer class index"
                ) from None
            # Checked, not left to numpy: a negative index would silently mark a class counted
            # from the end, and a wrong class list would go unnoticed.
            if not 0 <= index < n_classes:
                raise ValueError(f"row {row}: class index {index} outside 0..{n_classes - 1}")
            out[row, index] = 1
    return out
