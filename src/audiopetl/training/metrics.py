"""Classification metrics from labels and predicted probabilities, computed with scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    """The operating point where false accepts equal false rejects (binary tasks)."""
    # Every threshold: the default drop_intermediate=True can drop the very point where the
    # two rates cross (then the "EER" is read off a neighbouring corner of the curve).
    fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1.0 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2.0)


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Headline, per-class and confusion metrics; classes absent from ``labels`` still count
    in the confusion matrix so every fold's matrix has the same shape."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n_classes = probabilities.shape[1]
    all_classes = np.arange(n_classes)
    predictions = probabilities.argmax(axis=1)
    present = np.unique(labels)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predictions, labels=all_classes, zero_division=0
    )
    out: dict[str, Any] = {
        "n": len(labels),
        "accuracy": float(skm.accuracy_score(labels, predictions)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, predictions)),
        # Macro F1 over the classes present in this split: absent classes would add zeros.
        "macro_f1": float(
            skm.f1_score(labels, predictions, labels=present, average="macro", zero_division=0)
        ),
    }
    # With 5 classes or fewer top-5 accuracy is trivially 1.
    if n_classes > 5:
        out["top5_accuracy"] = float(
            skm.top_k_accuracy_score(labels, probabilities, k=5, labels=all_classes)
        )
    if n_classes == 2 and len(present) == 2:
        out["roc_auc"] = float(skm.roc_auc_score(labels, probabilities[:, 1]))
        out["eer"] = equal_error_rate(labels, probabilities[:, 1])
    out["per_class"] = {
        str(name): {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c, name in enumerate(class_names)
    }
    out["confusion_matrix"] = skm.confusion_matrix(labels, predictions, labels=all_classes).tolist()
    out["class_names"] = [str(n) for n in class_names]
    return out
