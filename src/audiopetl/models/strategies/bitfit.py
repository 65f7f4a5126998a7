"""BitFit (Ben Zaken et al., 2022): of the backbone only its bias terms train, every one of
them (attention projections, feed-forward layers, LayerNorms, the patch embedding), besides
the head and the LayerNorms the settings name (by default the final one, whole, as the
reference trains it with every PETL method)."""

from __future__ import annotations

from torch import nn

from audiopetl.models.strategies.base import Strategy, register


@register("bitfit")
class BitFit(Strategy):
    def apply(self, model: nn.Module) -> nn.Module:
        self.freeze_all(model)
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.requires_grad_(True)
        self.unfreeze(model, (*self.layout.head, *self.layernorm_names(model)))
        return model
