"""LoRA through peft on the configured logical targets; the head (and the LayerNorms the
settings name) train in full, saved in peft's adapter beside our own weights file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

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
    alpha: float
    dropout: float
    targets: tuple[str, ...]  # logical targets (q, k, v, o, ffn_in, ffn_out)


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

        for name, module in wrapped.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                base_name = name.removeprefix("base_model.model.")
                compat.reset_lora(module, parameter_generator(f"{base_name}.lora_A"))
        return wrapped
