"""The probe: a head trained on the frozen backbone's embeddings, computed once per dataset
and model and cached (audiopetl.training.embeddings), HEAR's way of scoring what a
pretrained model has learnt. An epoch is the head's forward and backward alone.

How it differs from ``linear``: ``linear`` runs the backbone on every batch, so it can train
the backbone's final LayerNorm (the reference study does) and use SpecAugment and mixup on the
features; ``probe`` sees only the pooled output, so nothing before it trains and the
features' augmentation cannot apply (mixup of the embeddings can). Its head is the model's
own (LayerNorm + Linear: ``head: linear``) or a small MLP in place of the Linear
(``head: mlp``: Linear, ReLU, dropout, Linear). Either way the run's model is the whole
backbone with the head trained: it predicts from audio and exports like any other run, and
its re-evaluation checks that the whole model gives the logits the probe was tested with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from audiopetl.core.errors import TrainingError
from audiopetl.models.strategies.base import Strategy, register


@dataclass(frozen=True)
class ProbeOptions:
    head: str = "linear"  # linear: the model's own head | mlp: one hidden layer in its Linear
    hidden: int = 1024  # the MLP's hidden width (HEAR's default)
    dropout: float = 0.1  # after the MLP's hidden layer


@register("probe")
class Probe(Strategy):
    Options: ClassVar[type] = ProbeOptions
    # Every LayerNorm of the backbone comes before the embedding: none can train.
    default_layernorms: ClassVar[tuple[str, ...]] = ()

    def apply(self, model: nn.Module) -> nn.Module:
        if self.layernorms():
            raise TrainingError(
                f"strategy {self.settings.name!r} (probe): trains on cached embeddings, so the "
                f"backbone's LayerNorms {list(self.layernorms())} cannot train; use kind "
                "`linear` for that"
            )
        self.freeze_all(model)
        norm_name, dense_name = self.layout.head
        if self.options.head == "mlp":
            dense = model.get_submodule(dense_name)
            hidden = int(self.options.hidden)
            mlp = nn.Sequential(
                nn.Linear(dense.in_features, hidden),
                nn.ReLU(),
                nn.Dropout(float(self.options.dropout)),
                nn.Linear(hidden, dense.out_features),
            )
            parent, leaf = dense_name.rsplit(".", 1)
            setattr(model.get_submodule(parent), leaf, mlp)
        self.unfreeze(model, (norm_name, dense_name))
        return model

    def head_logits(self, model: nn.Module, embeddings: torch.Tensor) -> torch.Tensor:
        """The head on a batch of embeddings (batch, 1, width): the model's logits for them."""
        norm_name, dense_name = self.layout.head
        norm, dense = model.get_submodule(norm_name), model.get_submodule(dense_name)
        return dense(norm(embeddings.squeeze(1)))
