"""BitFit (Ben Zaken et al., 2022): of the backbone only its bias terms train, besides the
head and the LayerNorms the settings name (by default the final one, whole, as the reference
trains it with its other PETL methods).

``biases: all`` (the default) trains every bias (attention projections, feed-forward layers,
LayerNorms, the patch embedding's convolution); ``linear_and_norm`` only those of the Linear and
LayerNorm modules, as PETL_AST's BitFit does (with ``layernorms: []``: its final LayerNorm's
bias, not its weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from audiopetl.models.strategies.base import Strategy, register


@dataclass(frozen=True)
class BitFitOptions:
    biases: str = "all"  # all | linear_and_norm


@register("bitfit")
class BitFit(Strategy):
    Options: ClassVar[type] = BitFitOptions

    def apply(self, model: nn.Module) -> nn.Module:
        self.freeze_all(model)
        for module in model.modules():
            if self.options.biases == "linear_and_norm" and not isinstance(
                module, (nn.Linear, nn.LayerNorm)
            ):
                continue
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter) and "bias" in module._parameters:
                bias.requires_grad_(True)
        self.unfreeze(model, (*self.layout.head, *self.layernorm_names(model)))
        return model
