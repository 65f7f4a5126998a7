"""The Conformer adapter (Cappellazzo et al., 2024): a Conformer convolution module as the
adapter block, placed like the bottleneck adapter. LayerNorm -> pointwise convolution to twice
the bottleneck size -> GLU -> depthwise convolution of kernel k -> BatchNorm -> SiLU ->
pointwise convolution back; its last projection starts at zero, so the model is unchanged at
step 0. Its BatchNorm and LayerNorm run in training mode while the backbone is frozen, as the
reference's do."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from audiopetl.models.init import kaiming_uniform_init, uniform_init
from audiopetl.models.strategies.adapter import AdapterStrategy, bottleneck_size
from audiopetl.models.strategies.base import register


class ConformerBlock(nn.Module):
    def __init__(self, hidden: int, reduction: float, kernel: int, input_norm: bool = True) -> None:
        super().__init__()
        size = bottleneck_size(hidden, reduction)
        # PETL_AST computes its LayerNorm and then convolves the raw input (its output is
        # overwritten): input_norm false reproduces that, the LayerNorm kept but unused.
        self.input_norm = input_norm
        self.norm = nn.LayerNorm(hidden)
        self.pointwise_in = nn.Conv1d(hidden, 2 * size, 1)
        self.glu = nn.GLU(dim=1)
        self.depthwise = nn.Conv1d(size, size, kernel, groups=size, padding="same")
        self.batch_norm = nn.BatchNorm1d(size)
        self.act = nn.SiLU()
        self.pointwise_out = nn.Conv1d(size, hidden, 1)

    def reset(self, name: str, init: str = "zero-update", std: float = 0.02) -> None:
        with torch.no_grad():
            self.norm.reset_parameters()
            self.batch_norm.reset_parameters()  # weight 1, bias 0, fresh running statistics
            if init == "reference-loaded":
                # What PETL_AST's pinned stack left: transformers' loader does not touch Conv1d,
                # so every convolution keeps torch's own default (Kaiming-uniform weights,
                # uniform biases within 1/sqrt(fan_in)): the block adds to the model at once.
                for part in ("pointwise_in", "depthwise", "pointwise_out"):
                    conv = getattr(self, part)
                    kaiming_uniform_init(conv.weight, f"{name}.{part}.weight")
                    fan_in = conv.weight[0].numel()
                    uniform_init(conv.bias, 1.0 / math.sqrt(fan_in), f"{name}.{part}.bias")
                return
            for part in ("pointwise_in", "depthwise"):
                conv = getattr(self, part)
                kaiming_uniform_init(conv.weight, f"{name}.{part}.weight")
                conv.bias.zero_()
            self.pointwise_out.weight.zero_()  # the block adds nothing at first
            self.pointwise_out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, tokens, hidden)
        y = (self.norm(x) if self.input_norm else x).transpose(1, 2)  # over the tokens
        y = self.glu(self.pointwise_in(y))
        y = self.act(self.batch_norm(self.depthwise(y)))
        return self.pointwise_out(y).transpose(1, 2)


@dataclass(frozen=True)
class ConformerOptions:
    placement: str  # pfeiffer | houlsby
    mode: str  # sequential | parallel
    reduction: float  # hidden size / bottleneck size
    kernel: int  # the depthwise convolution's kernel
    init: str = "zero-update"  # or reference-loaded (see BottleneckAdapter's)
    input_norm: bool = True  # false: PETL_AST's unused input LayerNorm (for comparison only)


@register("conformer")
class ConformerAdapter(AdapterStrategy):
    Options: ClassVar[type] = ConformerOptions

    def block(self, hidden: int) -> nn.Module:
        return ConformerBlock(
            hidden,
            float(self.options.reduction),
            int(self.options.kernel),
            bool(self.options.input_norm),
        )
