"""Initialisers of every parameter a model or a strategy creates, drawn from per-parameter
generators so that both environments (whose transformers create modules in other orders) draw
the same weights for the same seed."""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from audiopetl.core import compat


def parameter_generator(name: str) -> torch.Generator:
    """A generator seeded by the run's seed and the parameter's canonical name.

    Why not the global RNG: transformers versions create and initialise modules in different
    orders, so the same seed gave different weights in the legacy and modern stacks. Seeding
    per parameter name makes a random initialisation identical across versions (and
    independent of module order).
    """
    digest = hashlib.sha256(
        f"{torch.initial_seed()}:{compat.canonical_parameter_name(name)}".encode()
    ).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _trunc_normal(shape: torch.Size, std: float, generator: torch.Generator) -> torch.Tensor:
    """Normal(0, std) truncated at two standard deviations by redrawing, as timm/DeiT do.

    Hand-written because ``nn.init.trunc_normal_`` takes a generator only from torch 2.3.
    """
    values = torch.randn(shape, generator=generator)
    outside = values.abs() > 2.0
    while outside.any():
        values[outside] = torch.randn(int(outside.sum()), generator=generator)
        outside = values.abs() > 2.0
    return values * std


@torch.no_grad()
def init_parameters(model: nn.Module, prefix: str = "") -> None:
    """Initialise every parameter under ``prefix`` explicitly, as the original AST/DeiT do:
    truncated normal (std = initializer_range, or init_std, else 0.02) for weights, tokens and
    position embeddings, zeros for biases, ones for the scales of layer, group and batch norms.

    transformers' AST initialises [CLS]/[DIST] and the position embeddings to zero (it expects
    pretrained weights): trained from zero, that is the reference study's defect 1.
    """
    config = model.config
    std = float(getattr(config, "initializer_range", getattr(config, "init_std", 0.02)))
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
    norms = {n for n, m in model.named_modules() if isinstance(m, norm_types)}
    for name, param in model.named_parameters():
        if not name.startswith(prefix):
            continue
        module, _, kind = name.rpartition(".")
        if module in norms:
            param.fill_(1.0 if kind == "weight" else 0.0)
        elif kind == "bias":
            param.zero_()
        else:
            param.copy_(_trunc_normal(param.shape, std, parameter_generator(name)))


def init_head(model: nn.Module) -> None:
    """A new classification head, initialised explicitly (transformers >= 4.36 may skip
    ``_init_weights`` on modules created while loading)."""
    init_parameters(model, prefix="classifier.")


def uniform_init(tensor: torch.Tensor, bound: float, name: str) -> None:
    """Uniform(-bound, bound) from the parameter's own generator (see parameter_generator)."""
    with torch.no_grad():
        values = torch.rand(tensor.shape, generator=parameter_generator(name)) * 2 - 1
        tensor.copy_(values * bound)


def kaiming_uniform_init(tensor: torch.Tensor, name: str) -> None:
    """torch's default for Linear and Conv weights (kaiming_uniform_ with a=sqrt(5): bound
    1/sqrt(fan_in)), drawn from the parameter's own generator."""
    fan_in = tensor[0].numel() if tensor.dim() > 1 else tensor.numel()
    uniform_init(tensor, 1.0 / math.sqrt(fan_in), name)


def normal_init(tensor: torch.Tensor, std: float, name: str) -> None:
    """Normal(0, std) from the parameter's own generator (see parameter_generator)."""
    with torch.no_grad():
        tensor.copy_(torch.randn(tensor.shape, generator=parameter_generator(name)) * std)
