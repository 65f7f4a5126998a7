"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021), placed as the reference
study places them in AST: beside the feed-forward block (Pfeiffer), or beside both the
self-attention and the feed-forward block (Houlsby); sequential (on the block's output, which
it adds to) or parallel (on the block's input, its output added to the block's).

A block's last projection starts at zero, so at step 0 the model computes exactly what the
frozen backbone does; the rest is drawn from each parameter's own generator. The LayerNorms
the reference trains with adapters are the default: the one before each adapted block, and the
final one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from audiopetl.models.init import kaiming_uniform_init, normal_init
from audiopetl.models.strategies.base import Strategy, register

# Where an adapter sits: the logical targets whose input it reads (parallel) and whose output
# it adds to (both).
PLACES = {"ffn": ("ffn_in", "ffn_out"), "attention": ("q", "o")}
PLACEMENTS = {"pfeiffer": ("ffn",), "houlsby": ("attention", "ffn")}
LAYERNORM_OF = {"ffn": "before_ffn", "attention": "before_attention"}


def bottleneck_size(hidden: int, reduction: float) -> int:
    return max(1, round(hidden / reduction))


class Bottleneck(nn.Module):
    """down-projection -> GELU -> up-projection."""

    def __init__(self, hidden: int, reduction: float) -> None:
        super().__init__()
        size = bottleneck_size(hidden, reduction)
        self.down = nn.Linear(hidden, size)
        self.act = nn.GELU()
        self.up = nn.Linear(size, hidden)

    def reset(self, name: str, init: str = "zero-update", std: float = 0.02) -> None:
        with torch.no_grad():
            self.down.bias.zero_()
            self.up.bias.zero_()
            if init == "reference-loaded":
                # What PETL_AST's pinned stack left: transformers 4.28.1 re-initialises every
                # Linear it found no weights for with trunc_normal_(std=initializer_range),
                # whose bounds of +-2 truncate nothing, and zero biases.
                normal_init(self.down.weight, std, f"{name}.down.weight")
                normal_init(self.up.weight, std, f"{name}.up.weight")
                return
            kaiming_uniform_init(self.down.weight, f"{name}.down.weight")
            self.up.weight.zero_()  # the block adds nothing at first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


@dataclass(frozen=True)
class AdapterOptions:
    placement: str  # pfeiffer | houlsby
    mode: str  # sequential | parallel
    reduction: float  # hidden size / bottleneck size
    # zero-update: the last projection zero, the model unchanged at step 0. reference-loaded:
    # as PETL_AST's stack left its adapters after loading (for comparison only).
    init: str = "zero-update"


class AdapterStrategy(Strategy):
    """Adapters of a block type (`block`), placed by the settings `placement`, `mode` and
    `reduction`."""

    Options: ClassVar[type] = AdapterOptions

    def block(self, hidden: int) -> nn.Module:
        raise NotImplementedError

    def places(self) -> tuple[str, ...]:
        return PLACEMENTS[self.options.placement]

    def layernorms(self) -> tuple[str, ...]:
        chosen = self.settings.layernorms
        if chosen is not None:
            return tuple(chosen)
        # The reference's choice where the layers have such a LayerNorm (post-norm layers, as
        # wav2vec2-base's, have none before their self-attention).
        wanted = (LAYERNORM_OF[place] for place in self.places())
        return ("final", *(w for w in wanted if self.layout.per_layer_norm(w) is not None))

    def apply(self, model: nn.Module) -> nn.Module:
        self.freeze_all(model)
        # Each layer's own width, read from the projection the adapter sits beside: one width
        # in AST, Whisper or wav2vec2; doubling per stage in CLAP's Swin encoder.
        container = nn.ModuleDict(
            {
                place: nn.ModuleList(
                    self.block(module.in_features)
                    for module in self.layout.target_modules(model, PLACES[place][0])
                )
                for place in self.places()
            }
        )
        std = float(getattr(getattr(model, "config", None), "initializer_range", 0.02))
        for place, blocks in container.items():
            for index, block in enumerate(blocks):
                block.reset(f"petl.{place}.{index}", self.options.init, std)
        self.attach(model, container)
        parallel = self.options.mode == "parallel"
        for place, blocks in container.items():
            source, target = PLACES[place]
            inputs = self.layout.target_modules(model, source)
            outputs = self.layout.target_modules(model, target)
            for block, src, dst in zip(blocks, inputs, outputs, strict=True):
                if parallel:
                    src.register_forward_pre_hook(_Remember(block))
                dst.register_forward_hook(_Add(block, parallel))
        self.unfreeze(model, (*self.layout.head, *self.layernorm_names(model)))
        container.requires_grad_(True)
        return model


class _Remember:
    """Keep a block's input (the adapted block's own input) for the parallel adapter."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.block.remembered = args[0]


class _Add:
    def __init__(self, block: nn.Module, parallel: bool) -> None:
        self.block, self.parallel = block, parallel

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            source = self.block.remembered
            self.block.remembered = None
            return output + self.block(source)
        return output + self.block(output)


@register("adapter")
class BottleneckAdapter(AdapterStrategy):
    default_layernorms: ClassVar[tuple[str, ...]] = ("final", "before_ffn")

    def block(self, hidden: int) -> nn.Module:
        return Bottleneck(hidden, float(self.options.reduction))
