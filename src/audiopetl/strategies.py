"""Transfer strategies: which parameters train, and what each strategy adds to the model.

A strategy is a class registered under its config ``kind``; later PETL methods (adapters,
prompts) plug in with ``@register("name")``. Every strategy reports trainable and total
parameters, and PETL strategies are held to ``training.max_trainable_fraction``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from audiopetl import compat
from audiopetl.errors import TrainingError
from audiopetl.failures import reading, writing

_REGISTRY: dict[str, type[Strategy]] = {}
WEIGHTS_FILE = "trainable.safetensors"


def register(kind: str) -> Callable[[type[Strategy]], type[Strategy]]:
    def wrap(cls: type[Strategy]) -> type[Strategy]:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return wrap


def get_strategy(settings: Mapping[str, Any]) -> Strategy:
    kind = settings["kind"]
    if kind not in _REGISTRY:
        raise TrainingError(f"strategy kind {kind!r} is not registered ({', '.join(_REGISTRY)})")
    return _REGISTRY[kind](settings)


@dataclass
class ParameterCount:
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0


def count_parameters(model: nn.Module) -> ParameterCount:
    params = list(model.parameters())
    return ParameterCount(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
    )


class Strategy:
    """Base class. ``apply`` returns the model to train (possibly wrapped)."""

    kind: ClassVar[str] = ""
    is_petl: ClassVar[bool] = True

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self.layout = compat.module_layout()

    def apply(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def check(self, model: nn.Module, max_fraction: float) -> ParameterCount:
        counts = count_parameters(model)
        if counts.trainable == 0:
            raise TrainingError(f"strategy {self.kind!r}: no trainable parameter")
        if self.is_petl and counts.fraction > max_fraction:
            raise TrainingError(
                f"strategy {self.kind!r} trains {counts.trainable:,} of {counts.total:,} "
                f"parameters ({100 * counts.fraction:.1f}%), more than "
                f"training.max_trainable_fraction = {max_fraction:.0%}: a PETL method should "
                "not (check modules_to_save and the targets)"
            )
        for name, param in model.named_parameters():
            if not torch.isfinite(param).all():
                raise TrainingError(f"strategy {self.kind!r}: parameter {name} is not finite")
        return counts

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def load_trainable_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        expected = {n for n, p in params.items() if p.requires_grad}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise TrainingError(
                f"weights do not fit the model: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def save(self, model: nn.Module, folder: Path) -> None:
        """Trainable weights in safetensors; the rest is rebuilt from config and seed."""
        folder.mkdir(parents=True, exist_ok=True)
        state = {n: t.contiguous() for n, t in self.trainable_state(model).items()}
        path = folder / WEIGHTS_FILE
        with writing(path):
            save_file(state, str(path))

    def load(self, model: nn.Module, folder: Path) -> None:
        path = folder / WEIGHTS_FILE
        with reading(path, "weights file", "rerun the run"):
            state = load_file(str(path))
        self.load_trainable_state(model, state)

    def load_export(self, base: nn.Module, folder: Path) -> nn.Module | None:
        """The model rebuilt from the format a strategy exports for other tools (a peft
        adapter), to check that it gives the same predictions; None when there is none."""
        return None

    @staticmethod
    def _freeze_all(model: nn.Module) -> None:
        for param in model.parameters():
            param.requires_grad_(False)

    def _unfreeze(self, model: nn.Module, prefixes: tuple[str, ...]) -> None:
        found = set()
        for name, param in model.named_parameters():
            for prefix in prefixes:
                if name == prefix or name.startswith(prefix + "."):
                    param.requires_grad_(True)
                    found.add(prefix)
        missing = [p for p in prefixes if p not in found]
        if missing:
            raise TrainingError(f"strategy {self.kind!r}: no module named {missing}")


@register("full")
class FullFineTuning(Strategy):
    is_petl = False

    def apply(self, model: nn.Module) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model


@register("linear")
class LinearProbe(Strategy):
    """Frozen backbone; the head and the backbone's final layer norm train."""

    def apply(self, model: nn.Module) -> nn.Module:
        self._freeze_all(model)
        self._unfreeze(model, (*self.layout.head, self.layout.final_norm))
        return model


@register("lora")
class LoRA(Strategy):
    """LoRA through peft on the configured logical targets; the head trains in full."""

    def target_modules(self, model: nn.Module) -> list[str]:
        names: list[str] = []
        for target in self.settings["targets"]:
            found = self.layout.modules_for(model, target)
            if not found:
                raise TrainingError(
                    f"strategy lora: target {target!r} ({self.layout.targets[target]}) matches "
                    f"no module of the backbone under {self.layout.name}"
                )
            names += found
        head = tuple(self.layout.head)
        if any(n.startswith(h) for n in names for h in head):
            raise TrainingError("strategy lora: a target resolved into the head")
        return names

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model

        config = compat.lora_config(
            rank=int(self.settings["rank"]),
            alpha=float(self.settings["alpha"]),
            dropout=float(self.settings["dropout"]),
            targets=self.target_modules(model),
            # Named leaf modules, not the "classifier" container, which breaks merging.
            modules_to_save=list(self.layout.head),
        )
        wrapped = get_peft_model(model, config)
        compat.freeze_saved_module_originals(wrapped)
        from audiopetl.models import parameter_generator

        for name, module in wrapped.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                base_name = name.removeprefix("base_model.model.")
                compat.reset_lora(module, parameter_generator(f"{base_name}.lora_A"))
        return wrapped

    def save(self, model: nn.Module, folder: Path) -> None:
        super().save(model, folder)
        # The adapter in peft's own format too, for users who load it with peft directly.
        with writing(folder / "adapter"):
            compat.save_peft_adapter(model, folder / "adapter")

    def load_export(self, base: nn.Module, folder: Path) -> nn.Module | None:
        adapter = folder / "adapter"
        with reading(adapter / "adapter_model.safetensors", "peft adapter", "rerun the run"):
            return compat.load_peft_adapter(base, adapter)
