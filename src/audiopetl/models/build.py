"""Building AST for a dataset: pretrained or random, position embeddings adapted, a new head.

Never ``ignore_mismatched_sizes``: for position embeddings it silently re-initialises them
(the reference study's models had no positional information at all). We load the checkpoint
at its own length, then crop or interpolate the time axis of the embedding grid ourselves.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from audiopetl.core import compat
from audiopetl.core.errors import TrainingError
from audiopetl.core.failures import reading

log = logging.getLogger(__name__)


def grid_shape(config: Any) -> tuple[int, int]:
    """(frequency, time) patch counts of an AST config."""
    freq = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
    time = (config.max_length - config.patch_size) // config.time_stride + 1
    return freq, time


def adapt_position_embeddings(
    weights: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """Fit a (1, 2 + F*T, H) embedding to a new time length, as the original AST recipe does:
    a shorter input keeps the centre of the time axis, a longer one interpolates it."""
    (f_old, t_old), (f_new, t_new) = old_grid, new_grid
    if f_old != f_new:
        raise TrainingError(
            f"the checkpoint's frequency grid has {f_old} patches, the features give {f_new}: "
            "num_mel_bins, patch_size and frequency_stride must match the checkpoint"
        )
    if t_old == t_new:
        return weights.clone()
    special, grid = weights[:, :2], weights[:, 2:]
    hidden = grid.shape[-1]
    grid = grid.reshape(1, f_old, t_old, hidden).permute(0, 3, 1, 2)  # (1, H, F, T)
    if t_new < t_old:
        start = t_old // 2 - t_new // 2
        grid = grid[..., start : start + t_new]
    else:
        grid = F.interpolate(grid, size=(f_old, t_new), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, f_new * t_new, hidden)
    return torch.cat([special, grid], dim=1).contiguous()


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


def build_model(
    model_cfg: Mapping[str, Any],
    features: Mapping[str, Any],
    num_classes: int,
    pretrained: str | None = None,
) -> nn.Module:
    """The model of ``model_cfg``'s kind (audiopetl.models.backbones) for inputs of ``features`` with
    ``num_classes`` outputs, tagged with its kind so strategies find its layout.

    ``pretrained`` overrides ``model_cfg['pretrained']`` (the workflow's pretrain rule uses it).
    Seed the global torch RNG before calling: a random initialisation depends on it.
    """
    from audiopetl.models.backbones import KIND_ATTRIBUTE, backbone_of

    backbone = backbone_of(model_cfg)
    source = pretrained if pretrained is not None else model_cfg.get("pretrained")
    model = backbone.build(model_cfg, features, num_classes, source)
    setattr(model, KIND_ATTRIBUTE, backbone.kind)
    return model


def load_donor(source: str, load: Any, kind: str) -> nn.Module:
    """A pretrained model read by ``load(source)``; a failure is one line naming the source.
    A checkpoint of another architecture than the model kind ``kind`` is refused before
    transformers tries to fit it (it would warn and build a broken model)."""
    from audiopetl.models.backbones import get_backbone, kinds

    wanted = get_backbone(kind).model_types
    try:
        with reading(source, "checkpoint", "fetch or train it again"):
            found = compat.checkpoint_config(source).get("model_type")
            if found not in wanted:
                fits = [k for k in kinds() if found in get_backbone(k).model_types]
                hint = f"set the model's kind to {fits[0]}" if fits else "no model kind reads it"
                raise TrainingError(
                    f"models: {source!r} is a {found} checkpoint, not a {kind} one ({hint})"
                )
            return load(str(source))
    except OSError as err:
        raise TrainingError(f"models: cannot load pretrained {source!r}: {err}") from err


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a donor's weights into a freshly built model: every weight but the new head's must
    fit, and nothing may be left over (a mismatch is an error, never a silent re-init)."""
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    wrong = [k for k in missing if not k.startswith("classifier.")] + list(unexpected)
    if wrong:
        raise TrainingError(
            f"pretrained {source!r} does not fit the {getattr(model, 'audiopetl_kind', 'model')}"
            f" built from its settings: keys {wrong[:5]}"
        )


POOLINGS = ("cls-dist", "mean")


def finish_model(model: nn.Module, model_cfg: Mapping[str, Any]) -> nn.Module:
    """The model settings that change how a built model computes: its pooling, and the
    reference study's position-embedding defect when asked to reproduce it."""
    pooling = model_cfg.get("pooling", "cls-dist")
    if pooling == "mean":
        # The reference's pooling: the mean of all output tokens (after the final LayerNorm)
        # instead of transformers' mean of [CLS] and [DIST].
        model.audio_spectrogram_transformer.register_forward_hook(_mean_pooling)
    if model_cfg.get("zero_position_embeddings", False):
        # Faithful reproduction only: the reference loaded AST at another length with
        # ignore_mismatched_sizes=True, which left every position embedding at zero.
        with torch.no_grad():
            model.audio_spectrogram_transformer.embeddings.position_embeddings.zero_()
    return model


def _mean_pooling(module: nn.Module, args: Any, output: Any) -> Any:
    output.pooler_output = output.last_hidden_state.mean(dim=1)
    return output


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
