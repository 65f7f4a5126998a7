"""Prefix tuning (Li and Liang, 2021, as the reference study applies it to AST): every
self-attention also attends to learned key and value vectors, half of the configured tokens
each, inserted after the [CLS] position. Initialised uniformly within the reference's bound,
+-sqrt(6 / (3 * patch_size^2 + hidden_size))."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from audiopetl.core import compat
from audiopetl.core.errors import TrainingError
from audiopetl.models.init import uniform_init
from audiopetl.models.strategies.base import Strategy, register


@dataclass(frozen=True)
class PrefixOptions:
    tokens: int  # even: half keys, half values


@register("prefix")
class PrefixTuning(Strategy):
    Options: ClassVar[type] = PrefixOptions

    def apply(self, model: nn.Module) -> nn.Module:
        tokens = int(self.options.tokens)
        if tokens % 2:
            raise TrainingError(
                f"strategy prefix: tokens {tokens} must be even: half are keys, half values"
            )
        self.freeze_all(model)
        config = model.config
        bound = math.sqrt(6.0 / (3 * config.patch_size**2 + config.hidden_size))
        attentions = [layer.attention for layer in self.layout.layer_modules(model)]
        container = nn.Module()
        container.keys = nn.ParameterList()
        container.values = nn.ParameterList()
        for index, attention in enumerate(attentions):
            key = nn.Parameter(torch.zeros(1, tokens // 2, config.hidden_size))
            value = nn.Parameter(torch.zeros(1, tokens // 2, config.hidden_size))
            uniform_init(key, bound, f"petl.prefix.{index}.key")
            uniform_init(value, bound, f"petl.prefix.{index}.value")
            container.keys.append(key)
            container.values.append(value)
            compat.attention_with_prefix(attention, key, value)
        self.attach(model, container)
        self.unfreeze(model, (*self.layout.head, *self.layernorm_names(model)))
        return model
