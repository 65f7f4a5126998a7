"""What every transfer strategy shares: the registry, which parameters train, train and eval
modes, and how its weights are saved and loaded.

A strategy is one class per method, registered under its config `kind` (peft's tuners are
organised the same way); each lives in a module of its own in this package, with its settings'
schema in resources/strategies/KIND.schema.yaml. A strategy owns what it adds to a model: it
builds and initialises its modules after the pretrained weights are loaded, decides what
trains, keeps the frozen backbone in eval mode while its own modules train, and saves what
a run needs to be rebuilt.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from audiopetl.core.errors import TrainingError
from audiopetl.core.failures import reading, writing
from audiopetl.core.settings import StrategySettings
from audiopetl.models.backbones.ast import module_layout as ast_layout
from audiopetl.models.backbones.layout import ModuleLayout

WEIGHTS_FILE = "trainable.safetensors"
_REGISTRY: dict[str, type[Strategy]] = {}
# The transformer LayerNorms a strategy may train besides its own modules: the backbone's
# final one and, per layer, the ones before self-attention and before the feed-forward block.
LAYERNORMS = ("final", "before_attention", "before_ffn")


def register(kind: str) -> Callable[[type[Strategy]], type[Strategy]]:
    def wrap(cls: type[Strategy]) -> type[Strategy]:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return wrap


def _discover() -> None:
    """Import every strategy module of this package: each registers its class."""
    package = importlib.import_module("audiopetl.models.strategies")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "base":
            importlib.import_module(f"audiopetl.models.strategies.{info.name}")


def kinds() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_strategy(settings: StrategySettings) -> Strategy:
    _discover()
    kind = settings.kind
    if kind not in _REGISTRY:
        raise TrainingError(f"strategy kind {kind!r} is not registered ({', '.join(kinds())})")
    return _REGISTRY[kind](settings)


@dataclass
class ParameterCount:
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0


def count_parameters(model: nn.Module, exclude: Iterable[str] = ()) -> ParameterCount:
    """Trainable and total parameters, leaving out those under the ``exclude`` prefixes (the
    head, for comparisons with the reference's counts)."""
    prefixes = tuple(exclude)
    params = [
        p
        for n, p in model.named_parameters()
        if not any(_canonical(n).startswith(x) for x in prefixes)
    ]
    return ParameterCount(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
    )


def _canonical(name: str) -> str:
    """A parameter's name without peft's wrapping (base_model.model.)."""
    return name.removeprefix("base_model.model.")


@dataclass(frozen=True)
class NoOptions:
    """A strategy kind without settings of its own."""


class Strategy:
    """Base class. ``apply`` returns the model to train (possibly wrapped).

    A strategy receives its resolved :class:`StrategySettings`; its kind's own keys (checked by
    resources/strategies/KIND.yaml) arrive typed as ``self.options``, an instance of the
    class's ``Options`` dataclass: one class and one settings type per method."""

    kind: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    is_petl: ClassVar[bool] = True
    # The reference study trains the backbone's final LayerNorm with every PETL method.
    default_layernorms: ClassVar[tuple[str, ...]] = ("final",)

    def __init__(self, settings: StrategySettings) -> None:
        self.settings = settings
        self.options: Any = self.Options(**settings.options)
        self.layout: ModuleLayout = ast_layout()  # the model's, once applied
        self.added: nn.Module | None = None  # what the strategy adds, once applied

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every strategy's ``apply`` first learns where the model it is given keeps its layers
        (the layout of its kind) and refuses a model kind it cannot apply to. Done here once,
        so a new strategy cannot forget it and its ``apply`` stays about the method itself."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("apply")
        if own is None:
            return

        @functools.wraps(own)
        def apply(self: Strategy, model: nn.Module) -> nn.Module:
            self.bind(model)
            return own(self, model)

        cls.apply = apply  # type: ignore[method-assign]

    def bind(self, model: nn.Module) -> None:
        from audiopetl.models.backbones import DEFAULT_KIND, KIND_ATTRIBUTE, get_backbone

        kind = getattr(model, KIND_ATTRIBUTE, DEFAULT_KIND)
        backbone = get_backbone(kind)
        why = backbone.problem_with(self.kind)
        if why:
            raise TrainingError(f"strategy {self.kind!r} cannot apply to a {kind} model: {why}")
        self.layout = backbone.layout()

    # -- building -------------------------------------------------------------------------
    def apply(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def layernorms(self) -> tuple[str, ...]:
        chosen = self.settings.layernorms
        return self.default_layernorms if chosen is None else tuple(chosen)

    @staticmethod
    def freeze_all(model: nn.Module) -> None:
        for param in model.parameters():
            param.requires_grad_(False)

    def unfreeze(self, model: nn.Module, prefixes: Iterable[str]) -> None:
        prefixes = tuple(prefixes)
        found = set()
        for name, param in model.named_parameters():
            name = _canonical(name)
            for prefix in prefixes:
                if name == prefix or name.startswith(prefix + "."):
                    param.requires_grad_(True)
                    found.add(prefix)
        missing = [p for p in prefixes if p not in found]
        if missing:
            raise TrainingError(f"strategy {self.kind!r}: no module named {missing}")

    def layernorm_names(self, model: nn.Module) -> list[str]:
        """The module names of the LayerNorms this strategy trains (settings `layernorms`)."""
        names = []
        for which in self.layernorms():
            if which == "final":
                names.append(self.layout.final_norm)
                continue
            leaf = self.layout.per_layer_norm(which)
            if leaf is None:
                raise TrainingError(
                    f"strategy {self.kind!r}: layernorms {which!r}: the layers of "
                    f"{self.layout.name} have no such LayerNorm"
                )
            modules = dict(model.named_modules())
            names += [
                f"{layer}.{leaf}".removeprefix("base_model.model.")
                for layer in modules
                if re.search(self.layout.layers, layer)
                and isinstance(modules.get(f"{layer}.{leaf}"), nn.LayerNorm)
            ]
        return names

    def attach(self, model: nn.Module, modules: nn.Module) -> None:
        """Make the strategy's own modules part of the model (parameters, device, state)."""
        model.petl = modules
        self.added = modules

    # -- modes ----------------------------------------------------------------------------
    def frozen_eval(self) -> bool:
        setting = self.settings.frozen_eval
        return self.is_petl if setting is None else bool(setting)

    def own_modules(self, model: nn.Module) -> list[nn.Module]:
        """Modules that run in training mode as a whole while the backbone is frozen."""
        return [] if self.added is None else [self.added]

    def train_mode(self, model: nn.Module) -> None:
        """Training mode for what trains; with `frozen_eval` (the reference's choice for PETL
        methods) the frozen backbone stays in eval mode, its dropout off."""
        model.train()
        if not self.frozen_eval():
            return
        model.eval()
        for module in model.modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                module.train()
        for module in self.own_modules(model):
            module.train()

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after every optimiser step (AdaLoRA reallocates its ranks here)."""

    # -- checks ---------------------------------------------------------------------------
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

    # -- state ----------------------------------------------------------------------------
    def trainable_state(
        self, model: nn.Module, copy_to: torch.device | str | None = None
    ) -> dict[str, torch.Tensor]:
        """The trainable parameters, and the buffers of the modules that hold them (the running
        statistics of a BatchNorm that trains): everything a run changes.

        ``copy_to`` a device: a real copy there (the best weights so far, kept on the host so
        they cost no device memory); None: the live tensors, detached, for writing them out at
        once without a copy (a full fine-tuning's are 344 MB for AST-base)."""

        def take(tensor: torch.Tensor) -> torch.Tensor:
            tensor = tensor.detach()
            return tensor if copy_to is None else tensor.to(copy_to, copy=True)

        state = {n: take(p) for n, p in model.named_parameters() if p.requires_grad}
        for prefix, module in model.named_modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                for name, buffer in module.named_buffers(recurse=False):
                    if buffer is not None and name in module._buffers:
                        key = f"{prefix}.{name}" if prefix else name
                        state[key] = take(buffer)
        return state

    def load_trainable_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        expected = self.trainable_state(model)
        if set(state) != set(expected):
            missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            raise TrainingError(
                f"weights do not fit the model: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        tensors = dict(model.named_parameters())
        tensors.update(dict(model.named_buffers()))
        with torch.no_grad():
            for name, value in state.items():
                tensors[name].copy_(value)

    def save(self, model: nn.Module, folder: Path) -> None:
        """Trainable weights in safetensors; the rest is rebuilt from config and seed."""
        folder.mkdir(parents=True, exist_ok=True)
        # Copies on the host: safetensors refuses tensors that share memory, and writes CPU ones.
        state = {n: t.contiguous() for n, t in self.trainable_state(model, "cpu").items()}
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
