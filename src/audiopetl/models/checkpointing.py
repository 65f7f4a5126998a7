"""Gradient (activation) checkpointing of a built model (``training.gradient_checkpointing``):
its transformer layers keep only their inputs in the forward pass and recompute the rest in
the backward one. Less memory, more compute, the same gradients: the recomputation runs the
same operations on the same inputs with the forward pass's RNG state (dropout draws the same
masks), so a run is bit-identical either way (tests/test_gradient_checkpointing.py; under the
legacy's reentrant kind, the gradients of Whisper's input convolutions, before its layers,
differ in the last bits: ~1e-7 relative).

transformers does the checkpointing (``supports_gradient_checkpointing`` and its enable method,
through :func:`audiopetl.core.compat.enable_gradient_checkpointing`); two things here make it
hold for every strategy, both decided per forward pass by hooks on the modules whose flag
transformers reads before it checkpoints (5.x: each layer; 4.28: the encoder looping over
them), and both only where a gradient flows through the module (its input requires grad, or
it holds a trainable parameter; a frozen feature encoder's or a linear probe's backbone has
nothing to save memory for):

- transformers checkpoints a module only in training mode, and a strategy with ``frozen_eval``
  keeps its frozen backbone in eval mode: checkpointing would silently do nothing. Such a
  module alone (not its submodules, whose dropout stays off) is put in training mode by a
  training forward pass, where that changes nothing else it computes (checked once:
  Whisper's layers apply dropout themselves).
- Reentrant checkpointing (transformers 4.28, the legacy environment's) gives a layer's
  parameters no gradient when the layer's input does not require grad, as behind a frozen
  backbone's embeddings (LoRA, adapters, BitFit): that input is made to require grad.
  transformers' ``enable_input_require_grads`` does the same from the input embeddings, which
  wav2vec2's family does not expose in 4.28. Non-reentrant checkpointing, used wherever
  transformers accepts it, needs nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from audiopetl.core import compat, devices
from audiopetl.core.errors import TrainingError
from audiopetl.models.backbones import DEFAULT_KIND, KIND_ATTRIBUTE

if TYPE_CHECKING:
    from audiopetl.models.strategies import Strategy

# What a checkpointing module may apply itself in training mode rather than through a
# submodule (Whisper's layers call dropout functionally): with any of these above 0 (or its
# config's layerdrop, wav2vec2's family), training mode would change what it computes.
TRAINING_ONLY = ("dropout", "activation_dropout", "layerdrop")
# Set on a module once its hooks are registered (plan --measure enables it twice).
HOOKED = "_audiopetl_checkpointing_hooks"


def transformers_models(model: nn.Module) -> list[nn.Module]:
    """The outermost transformers models in ``model``: itself (AST), the encoder of the other
    kinds' classifiers, under peft's wrapping or not."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return [model]
    return [found for child in model.children() for found in transformers_models(child)]


def supported(model: nn.Module) -> bool:
    found = transformers_models(model)
    return bool(found) and all(m.supports_gradient_checkpointing for m in found)


def enable(model: nn.Module, strategy: Strategy) -> None:
    """Turn checkpointing on (``model`` as the strategy made it). A model kind whose
    transformers model does not support it, or a frozen_eval strategy under which it would
    change what is computed, is a TrainingError."""
    kind = getattr(model, KIND_ATTRIBUTE, DEFAULT_KIND)
    if not supported(model):
        names = ", ".join(type(m).__name__ for m in transformers_models(model)) or "no model"
        raise TrainingError(
            f"training.gradient_checkpointing: model kind {kind!r} ({names}) does not support "
            f"gradient checkpointing in transformers {compat.TRANSFORMERS_VERSION}; set "
            "training.gradient_checkpointing: false"
        )
    reentrant = any([compat.enable_gradient_checkpointing(m) for m in transformers_models(model)])
    frozen_eval = strategy.frozen_eval()
    if frozen_eval:
        for module in checkpointing_modules(model):
            _check_training_mode_is_harmless(module, strategy, kind)
    if getattr(model, HOOKED, False):
        return
    setattr(model, HOOKED, True)
    flow = _Flow(strategy.added)
    if frozen_eval:
        for module in checkpointing_modules(model):
            module.register_forward_pre_hook(_TrainWhileGradientsFlow(flow))
    if reentrant:
        for found in transformers_models(model):
            _require_input_grad(found, flow)


def disable(model: nn.Module) -> None:
    """Turn it off again (what `plan --measure` compares with); the hooks of :func:`enable`
    do nothing while the modules' flags are off."""
    for found in transformers_models(model):
        compat.disable_gradient_checkpointing(found)


def checkpointing_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose flag transformers reads before checkpointing: the innermost with it
    on (5.x also flags the encoder around its flagged layers; 4.28 only the encoder)."""
    flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    return [m for m in flagged if not any(o is not m and _contains(m, o) for o in flagged)]


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def _check_training_mode_is_harmless(module: nn.Module, strategy: Strategy, kind: str) -> None:
    config = getattr(module, "config", None)
    values = {name: getattr(module, name, None) for name in TRAINING_ONLY}
    values["config.layerdrop"] = getattr(config, "layerdrop", None)
    active = {k: v for k, v in values.items() if isinstance(v, float) and v > 0}
    if active:
        what = ", ".join(f"{k} {v:g}" for k, v in active.items())
        name = strategy.settings.name
        raise TrainingError(
            f"training.gradient_checkpointing: transformers checkpoints only layers in training "
            f"mode, and strategy {name!r} keeps the frozen {kind} backbone in eval mode "
            f"(frozen_eval), where {type(module).__name__} would then apply its {what}: set "
            f"strategies.{name}.frozen_eval: false or training.gradient_checkpointing: false"
        )


class _Flow:
    """Whether the backward pass reaches into a checkpointing module (what checkpointing is
    for): grad is enabled and its input requires grad, or it holds a trainable parameter, or
    the strategy's own modules train (prompts, prefixes, adapters: used inside the layers,
    registered beside them). Not so for a frozen feature encoder or a linear probe's layers."""

    def __init__(self, added: nn.Module | None) -> None:
        self.added = added

    def __call__(self, module: nn.Module, first: Any = None) -> bool:
        if not (module.gradient_checkpointing and torch.is_grad_enabled()):
            return False
        if isinstance(first, torch.Tensor) and first.requires_grad:
            return True
        added = self.added.parameters() if self.added is not None else ()
        return any(p.requires_grad for p in itertools.chain(module.parameters(), added))


class _TrainWhileGradientsFlow:
    """frozen_eval: the module in training mode from a training forward pass on (evaluation
    runs without grad), so transformers checkpoints it. It stays so, the same for the backward
    pass's recomputation, until the next ``eval()`` or ``train_mode``."""

    def __init__(self, flow: _Flow) -> None:
        self.flow = flow

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not module.training and self.flow(module, args[0] if args else None):
            module.training = True


def _require_input_grad(model: nn.Module, flow: _Flow) -> None:
    """Reentrant checkpointing: the input of the checkpointed layers made to require grad
    where a gradient is to flow through them. From the input embeddings, as transformers'
    ``enable_input_require_grads`` does (AST's patch embedding, Whisper's first convolution);
    where a model has none (wav2vec2's family in 4.28), at the input of the module looping over
    the layers, which is the feature projection's output there."""
    modules = checkpointing_modules(model)
    try:
        embeddings = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        embeddings = None
    if isinstance(embeddings, nn.Module):
        embeddings.register_forward_hook(_OutputRequiresGrad(flow, modules))
        return
    for module in modules:
        # transformers' wav2vec2-family feature encoders make their own input require grad.
        if not hasattr(module, "_requires_grad"):
            module.register_forward_pre_hook(_InputRequiresGrad(flow))


class _OutputRequiresGrad:
    def __init__(self, flow: _Flow, modules: list[nn.Module]) -> None:
        self.flow, self.modules = flow, modules

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or output.requires_grad:
            return
        if any(self.flow(m) for m in self.modules):
            output.requires_grad_(True)


class _InputRequiresGrad:
    def __init__(self, flow: _Flow) -> None:
        self.flow = flow

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        first = args[0] if args else None
        if not isinstance(first, torch.Tensor) or first.requires_grad:
            return None
        if not (module.training and self.flow(module, first)):
            return None
        # A fresh leaf: the caller's tensor is left as it was.
        return (first.detach().requires_grad_(), *args[1:])


def activation_bytes(forward: Callable[[], Any], exclude: Iterable[torch.Tensor]) -> int:
    """The bytes autograd keeps for the backward pass while ``forward()`` runs: the distinct
    memory of every saved tensor, less that of ``exclude`` (the model's own weights and
    buffers, there anyway). No backward pass is needed: what is saved is known once the
    forward pass has run. Works on any device, in every torch we support."""
    excluded = {devices.storage_of(t)[0] for t in exclude}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        address, size = devices.storage_of(tensor)
        if address not in excluded:
            kept[address] = size
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = forward()
    del output  # the graph, and what it saved, go with it
    return sum(kept.values())


def measure(model: nn.Module, strategy: Strategy, forward: Callable[[], Any]) -> tuple[int, int]:
    """The activations one training forward pass keeps for backward, without and with
    checkpointing (bytes), in training mode as the strategy sets it; the model is left
    without checkpointing."""
    state = [*model.parameters(), *model.buffers()]
    disable(model)
    strategy.train_mode(model)
    plain = activation_bytes(forward, state)
    enable(model, strategy)
    checkpointed = activation_bytes(forward, state)
    disable(model)
    return plain, checkpointed
