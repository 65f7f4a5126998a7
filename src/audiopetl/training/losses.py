"""What a training step minimises, and how imbalanced classes are met: cross-entropy on
(soft) one-hot targets or binary cross-entropy on multi-hot ones, the focal loss instead of
either, class weights from the training set, and a sampler that draws rare classes as often
as common ones. Evaluation losses are never weighted: they compare epochs, not classes."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from audiopetl.core.settings import TrainingSettings
from audiopetl.features.cache import FeatureSet

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def class_counts(train: FeatureSet, n_classes: int) -> torch.Tensor:
    """Training clips per class (a multi-label clip counts for each of its classes)."""
    if train.targets is not None:
        return train.targets.to(torch.float64).sum(dim=0)
    return torch.bincount(train.labels, minlength=n_classes).to(torch.float64)


def class_weights(train: FeatureSet, n_classes: int, mode: str) -> torch.Tensor | None:
    """None (``none``), or ``balanced`` weights: multiclass clips / (classes x clips of the
    class), a class absent from training weighing 0; multi-label each class's positives
    weighted by its negatives over its positives (binary cross-entropy's pos_weight)."""
    if mode == "none":
        return None
    counts = class_counts(train, n_classes)
    present = counts > 0
    if train.targets is not None:
        weights = (len(train) - counts) / counts.clamp(min=1)
    else:
        weights = len(train) / (int(present.sum()) * counts.clamp(min=1))
    return torch.where(present, weights, torch.zeros_like(weights)).float()


def sample_weights(train: FeatureSet, n_classes: int) -> torch.Tensor:
    """Each training clip's chance of being drawn by the balanced sampler: 1 / its class's
    clips; multi-label, the sum of that over its classes (the AST recipe's weights)."""
    inverse = 1.0 / class_counts(train, n_classes).clamp(min=1)
    if train.targets is not None:
        return train.targets.to(torch.float64) @ inverse
    return inverse[train.labels]


def training_loss(
    training: TrainingSettings, multilabel: bool, weights: torch.Tensor | None
) -> Loss:
    """The loss of a training batch: ``logits`` against ``target`` (one-hot or mixed soft
    targets; multi-label 0/1 rows, mixed when mixup is on)."""
    gamma = float(training.focal_gamma)
    smoothing = float(training.label_smoothing)
    if multilabel:

        def binary(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            pos = None if weights is None else weights.to(logits.device)
            if training.loss != "focal":
                return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos)
            ce = F.binary_cross_entropy_with_logits(
                logits, target, pos_weight=pos, reduction="none"
            )
            p = torch.sigmoid(logits)
            p_true = p * target + (1 - p) * (1 - target)
            return (ce * (1 - p_true) ** gamma).mean()

        return binary

    # With class weights: each clip's loss times its class's weight, averaged over the clips
    # (torch's reduction for probability targets, which mixup's are; balanced weights average 1
    # over the training set, so the loss keeps its scale).
    def categorical(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if weights is None else weights.to(logits.device)
        if training.loss != "focal":
            return F.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing)
        n_classes = logits.shape[1]
        target = target * (1 - smoothing) + smoothing / n_classes
        log_p = F.log_softmax(logits, dim=1)
        per_class = -target * (1 - log_p.exp()) ** gamma * log_p
        if weight is not None:
            per_class = per_class * weight
        return per_class.sum(dim=1).mean()

    return categorical


def evaluation_loss(logits: torch.Tensor, data: FeatureSet) -> float:
    """The unweighted loss of a whole evaluation set."""
    if data.targets is not None:
        return F.binary_cross_entropy_with_logits(logits, data.targets.float()).item()
    return F.cross_entropy(logits, data.labels).item()
