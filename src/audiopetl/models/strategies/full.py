"""Full fine-tuning: every parameter trains, the backbone in training mode."""

from __future__ import annotations

from torch import nn

from audiopetl.models.strategies.base import Strategy, register


@register("full")
class FullFineTuning(Strategy):
    is_petl = False
    default_layernorms = ()

    def apply(self, model: nn.Module) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
