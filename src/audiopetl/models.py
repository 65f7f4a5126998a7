"""Building AST for a dataset: pretrained or random, position embeddings adapted, a new head.

Never ``ignore_mismatched_sizes``: for position embeddings it silently re-initialises them
(the reference study's models had no positional information at all). We load the checkpoint
at its own length, then crop or interpolate the time axis of the embedding grid ourselves.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from audiopetl import compat
from audiopetl.errors import TrainingError

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


def init_head(model: nn.Module) -> None:
    """A new classification head, initialised explicitly (transformers >= 4.36 may skip
    ``_init_weights`` on modules created while loading)."""
    std = float(getattr(model.config, "initializer_range", 0.02))
    head = model.classifier
    nn.init.ones_(head.layernorm.weight)
    nn.init.zeros_(head.layernorm.bias)
    nn.init.trunc_normal_(head.dense.weight, std=std)
    nn.init.zeros_(head.dense.bias)


def init_embeddings(model: nn.Module) -> None:
    """Random [CLS]/[DIST] tokens and position embeddings for a model built from scratch.

    transformers' AST initialises all three to zero (it expects pretrained weights); zero
    position embeddings are the reference study's defect 1, trained from zero. The original
    AST/DeiT initialise them truncated-normal, as here.
    """
    std = float(getattr(model.config, "initializer_range", 0.02))
    embeddings = model.audio_spectrogram_transformer.embeddings
    for param in (embeddings.cls_token, embeddings.distillation_token):
        nn.init.trunc_normal_(param, std=std)
    nn.init.trunc_normal_(embeddings.position_embeddings, std=std)


def build_model(
    model_cfg: Mapping[str, Any],
    features: Mapping[str, Any],
    num_classes: int,
    pretrained: str | None = None,
) -> nn.Module:
    """ASTForAudioClassification for inputs of ``features`` with ``num_classes`` outputs.

    ``pretrained`` overrides ``model_cfg['pretrained']`` (the workflow's pretrain rule uses it).
    Seed the global torch RNG before calling: a random initialisation depends on it.
    """
    from transformers import ASTConfig

    source = pretrained if pretrained is not None else model_cfg.get("pretrained")
    attn = model_cfg["attn_implementation"]
    target = {
        "max_length": int(features["target_length"]),
        "num_mel_bins": int(features["num_mel_bins"]),
        "num_labels": int(num_classes),
    }
    if source is None:
        # A fresh config object per model: transformers writes into it while building.
        config = ASTConfig(**dict(model_cfg.get("architecture") or {}), **target)
        model = compat.ast_from_config(config, attn)
        init_embeddings(model)
        init_head(model)
        return model
    try:
        donor = compat.ast_from_pretrained(str(source), attn)
    except OSError as err:
        raise TrainingError(f"models: cannot load pretrained {source!r}: {err}") from err
    config = copy.deepcopy(donor.config)
    old_grid = grid_shape(config)
    for key, value in target.items():
        setattr(config, key, value)
    config.id2label = {i: str(i) for i in range(num_classes)}
    config.label2id = {str(i): i for i in range(num_classes)}
    arch = dict(model_cfg.get("architecture") or {})
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if key in arch:
            setattr(config, key, arch[key])
    model = compat.ast_from_config(config, attn)
    state = donor.state_dict()
    pos_key = next(k for k in state if k.endswith("embeddings.position_embeddings"))
    state[pos_key] = adapt_position_embeddings(state[pos_key], old_grid, grid_shape(config))
    for key in [k for k in state if k.startswith("classifier.")]:
        del state[key]
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in missing if not k.startswith("classifier.")] + list(unexpected)
    if wrong:
        raise TrainingError(f"pretrained {source!r} does not fit AST: keys {wrong[:5]}")
    init_head(model)
    log.info("loaded %s; position embeddings %s -> %s", source, old_grid, grid_shape(config))
    return model
