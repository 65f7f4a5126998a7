"""The linear probe: a frozen backbone; the head and the backbone's final LayerNorm train."""

from __future__ import annotations

from torch import nn

from audiopetl.models.strategies.base import Strategy, register


@register("linear")
class LinearProbe(Strategy):
    def apply(self, model: nn.Module) -> nn.Module:
        self.freeze_all(model)
        self.unfreeze(model, (*self.layout.head, *self.layernorm_names(model)))
        return model
