"""Any tuner of the installed peft by name (AdaLoRA, IA3, LoHa, LoKr, VeRA, ...), with its own
keyword arguments (`options`) and our logical targets. peft builds and initialises the tuner's
modules itself, after the pretrained weights are loaded (get_peft_model), drawing from the
seeded global RNG; AdaLoRA reallocates its rank budget after every optimiser step, as peft
requires. A tuner the installed peft lacks is a config error naming the release that has it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from audiopetl.core import compat
from audiopetl.core.errors import ConfigError, TrainingError
from audiopetl.core.settings import Frozen, thaw
from audiopetl.models.strategies.base import register
from audiopetl.models.strategies.lora import PeftStrategy

FEEDFORWARD = ("ffn_in", "ffn_out")


@dataclass(frozen=True)
class PeftOptions:
    tuner: str  # peft's name for it, without "Config" (AdaLoRA, IA3, LoHa, ...)
    targets: tuple[str, ...]  # logical targets
    options: Any = field(default_factory=Frozen)  # keyword arguments of its config class


@register("peft")
class PeftTuner(PeftStrategy):
    Options: ClassVar[type] = PeftOptions

    # Set by the Trainer before `apply`: AdaLoRA plans its rank budget over all steps.
    total_steps: int | None = None

    def config_class(self) -> type:
        tuner = self.options.tuner
        found = compat.peft_config_class(tuner)
        if found is None:
            since = compat.PEFT_TUNERS.get(tuner)
            where = f"peft >= {since} has it" if since else "no peft release we know has it"
            raise ConfigError(
                f"strategies: tuner {tuner!r} is not in the installed peft "
                f"{compat.peft_version()} ({where}; known: {', '.join(compat.PEFT_TUNERS)})"
            )
        return found

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model

        config_class = self.config_class()
        targets = self.target_modules(model)
        options = thaw(self.options.options)
        kwargs = {
            **compat.peft_config_defaults(config_class),
            "target_modules": targets,
            "modules_to_save": self.modules_to_save(model),
            **options,
        }
        tuner = self.options.tuner
        if tuner == "IA3" and "feedforward_modules" not in options:
            feedforward = {n for t in FEEDFORWARD for n in self.layout.modules_for(model, t)}
            kwargs["feedforward_modules"] = [n for n in targets if n in feedforward]
        if tuner == "AdaLoRA":
            if self.total_steps is None:
                raise TrainingError("strategy peft: AdaLoRA needs the number of training steps")
            kwargs.setdefault("total_step", self.total_steps)
        problem = compat.peft_tuner_problem(tuner, kwargs)
        if problem:
            raise ConfigError(f"strategies: tuner {tuner!r}: {problem}")
        try:
            config = config_class(**kwargs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"strategies: peft {tuner} options {options}: {err}") from err
        wrapped = get_peft_model(model, config)
        compat.freeze_saved_module_originals(wrapped)
        return wrapped

    def after_step(self, model: nn.Module, step: int) -> None:
        if self.options.tuner == "AdaLoRA":
            model.base_model.update_and_allocate(step)
