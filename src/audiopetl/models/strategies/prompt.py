"""Prompt tuning (visual prompt tuning, Jia et al., 2022, as the reference study applies it to
AST): learned tokens placed after the special tokens at the input (shallow), or a fresh set
replacing them before every layer (deep). Initialised uniformly within
+-sqrt(6 / (3 * patch_size^2 + hidden_size)), the reference's bound (0.0625 for AST-base).

The tokens follow [CLS] and [DIST]: the reference dropped [DIST] for them, which its pooling
(the mean of all tokens) did not need; kept, [CLS]+[DIST] pooling still finds both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from audiopetl.models.init import uniform_init
from audiopetl.models.strategies.base import Strategy, register

SPECIAL = 2  # [CLS] and [DIST]


@dataclass(frozen=True)
class PromptOptions:
    tokens: int  # prompt tokens per layer
    deep: bool  # False: at the input only; True: a fresh set before every layer


@register("prompt")
class PromptTuning(Strategy):
    Options: ClassVar[type] = PromptOptions

    def apply(self, model: nn.Module) -> nn.Module:
        self.freeze_all(model)
        config = model.config
        layers = self.layout.layer_modules(model)
        n, deep = int(self.options.tokens), bool(self.options.deep)
        prompts = nn.Parameter(torch.zeros(len(layers) if deep else 1, n, config.hidden_size))
        bound = math.sqrt(6.0 / (3 * config.patch_size**2 + config.hidden_size))
        uniform_init(prompts, bound, "petl.prompts")
        container = nn.Module()
        container.prompts = prompts
        self.attach(model, container)
        embeddings = dict(model.named_modules())[self.layout.embeddings]
        embeddings.register_forward_hook(_InsertPrompts(container))
        if deep:
            for index, layer in enumerate(layers[1:], start=1):
                layer.register_forward_pre_hook(_ReplacePrompts(container, index))
        self.unfreeze(model, (*self.layout.head, *self.layernorm_names(model)))
        return model


class _InsertPrompts:
    def __init__(self, container: nn.Module) -> None:
        self.container = container

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        tokens = self.container.prompts[0].expand(output.shape[0], -1, -1)
        return torch.cat([output[:, :SPECIAL], tokens, output[:, SPECIAL:]], dim=1)


class _ReplacePrompts:
    def __init__(self, container: nn.Module, index: int) -> None:
        self.container, self.index = container, index

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        tokens = self.container.prompts[self.index].expand(hidden.shape[0], -1, -1)
        end = SPECIAL + tokens.shape[1]
        return (torch.cat([hidden[:, :SPECIAL], tokens, hidden[:, end:]], dim=1), *args[1:])
