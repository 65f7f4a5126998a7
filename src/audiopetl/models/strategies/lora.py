"""LoRA through peft on the configured logical targets; the head (and the LayerNorms the
settings name) train in full, saved in peft's adapter beside our own weights file."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from audiopetl.core import compat
from audiopetl.core.errors import TrainingError
from audiopetl.core.failures import reading, writing
from audiopetl.models.strategies.base import Strategy, register


class PeftStrategy(Strategy):
    """What every peft tuner shares: logical targets resolved to module names of the installed
    transformers, the head and LayerNorms as peft's modules_to_save, explicit initialisation,
    and peft's own adapter format as an export."""

    def target_modules(self, model: nn.Module) -> list[str]:
        names: list[str] = []
        for target in self.options.targets:
            found = self.layout.modules_for(model, target)
            if not found:
                raise TrainingError(
                    f"strategy {self.kind}: target {target!r} ({self.layout.targets[target]}) "
                    f"matches no module of the backbone under {self.layout.name}"
                )
            names += found
        head = tuple(self.layout.head)
        if any(n.startswith(h) for n in names for h in head):
            raise TrainingError(f"strategy {self.kind}: a target resolved into the head")
        return names

    def modules_to_save(self, model: nn.Module) -> list[str]:
        # Named leaf modules, not the "classifier" container, which breaks merging.
        return [*self.layout.head, *self.layernorm_names(model)]

    def own_modules(self, model: nn.Module) -> list[nn.Module]:
        return [m for _, m in model.named_modules() if compat.is_peft_layer(m)]

    def save(self, model: nn.Module, folder: Path) -> None:
        super().save(model, folder)
        # The adapter in peft's own format too, for users who load it with peft directly.
        with writing(folder / "adapter"):
            compat.save_peft_adapter(model, folder / "adapter")

    def load_export(self, base: nn.Module, folder: Path) -> nn.Module | None:
        adapter = folder / "adapter"
        with reading(adapter / "adapter_model.safetensors", "peft adapter", "rerun the run"):
            return compat.load_peft_adapter(base, adapter)


@dataclass(frozen=True)
class LoraOptions:
    rank: int
    alpha: float  # peft scales the update by alpha / rank
    dropout: float
    targets: tuple[str, ...]  # logical targets (q, k, v, o, ffn_in, ffn_out)
    # Which matrix starts at zero: peft (B) or reference (A, as PETL_AST writes it); or
    # reference-loaded (neither: what PETL_AST's stack left after loading, for comparison).
    init: str = "peft"


@register("lora")
class LoRA(PeftStrategy):
    Options: ClassVar[type] = LoraOptions

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model

        config = compat.lora_config(
            rank=int(self.options.rank),
            alpha=float(self.options.alpha),
            dropout=float(self.options.dropout),
            targets=self.target_modules(model),
            modules_to_save=self.modules_to_save(model),
        )
        wrapped = get_peft_model(model, config)
        compat.freeze_saved_module_originals(wrapped)
        from audiopetl.models.init import parameter_generator

        # The std transformers' loader draws missing modules with (reference-loaded only).
        std = float(getattr(getattr(model, "config", None), "initializer_range", 0.02))
        for name, module in wrapped.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                base_name = name.removeprefix("base_model.model.")
                reset_lora(
                    module,
                    down=parameter_generator(f"{base_name}.lora_A"),
                    up=parameter_generator(f"{base_name}.lora_B"),
                    init=self.options.init,
                    std=std,
                )
        return wrapped


def reset_lora(
    module: nn.Module,
    down: torch.Generator,
    up: torch.Generator,
    init: str = "peft",
    std: float = 0.02,
    adapter: str = "default",
) -> None:
    """Initialise a LoRA layer explicitly, its down projection A from ``down`` and its up
    projection B from ``up`` (not the global RNG, so the same seed gives the same adapter in
    every environment):

    - ``peft``: A Kaiming-uniform (a=sqrt(5), bound 1/sqrt(fan_in)), B zero (peft's default);
    - ``reference``: A zero, B Kaiming-uniform (PETL_AST's code as written): the mirror image;
      both start at a zero update, but the first steps move the other matrix;
    - ``reference-loaded``: A and B normal with std ``std`` (what PETL_AST's pinned stack left
      after loading: transformers 4.28.1 re-initialises the modules it found no weights for
      with trunc_normal_(std=initializer_range), whose bounds of +-2 truncate nothing): the
      update is not zero at the start.

    Written here rather than calling peft's ``reset_lora_parameters``: its signature changed
    across releases (0.3: adapter name only; >= 0.6: plus ``init_lora_weights``), it draws from
    the global RNG, and it has no mirrored orientation.
    """
    lora_a = module.lora_A[adapter].weight
    lora_b = module.lora_B[adapter].weight

    def kaiming(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        bound = 1.0 / math.sqrt(weight.shape[1])  # kaiming_uniform_ with a=sqrt(5)
        return (torch.rand(weight.shape, generator=generator) * 2 - 1) * bound

    with torch.no_grad():
        if init == "peft":
            lora_a.copy_(kaiming(lora_a, down))
            lora_b.zero_()
        elif init == "reference":
            lora_a.zero_()
            lora_b.copy_(kaiming(lora_b, up))
        elif init == "reference-loaded":
            lora_a.copy_(torch.randn(lora_a.shape, generator=down) * std)
            lora_b.copy_(torch.randn(lora_b.shape, generator=up) * std)
        else:
            raise ValueError(f"unknown LoRA initialisation {init!r}")
