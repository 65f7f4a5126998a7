"""Building a model for a dataset: the model kind's build (pretrained or random) with a new
head, loading a donor checkpoint without silent re-initialisation, and AST's position
embeddings fitted to the clip length.

Never ``ignore_mismatched_sizes``: for position embeddings it silently re-initialises them
(the reference study's models had no positional information at all). We load the checkpoint
at its own length, then crop or interpolate the time axis of the embedding grid ourselves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from audiopetl.core import compat
from audiopetl.core.errors import TrainingError
from audiopetl.core.failures import reading
from audiopetl.core.settings import FeatureSettings, ModelSettings

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


def build_model(
    settings: ModelSettings,
    features: FeatureSettings,
    num_classes: int,
    pretrained: str | None = None,
) -> nn.Module:
    """The model of ``settings``' kind (audiopetl.models.backbones) for inputs of ``features``
    with ``num_classes`` outputs, tagged with its kind so strategies find its layout.

    ``pretrained`` overrides ``settings.pretrained`` (a run's resolved source: its own
    pretraining or a hub mirror).
    Seed the global torch RNG before calling: a random initialisation depends on it.
    """
    from audiopetl.models.backbones import KIND_ATTRIBUTE, backbone_of

    backbone = backbone_of(settings)
    source = pretrained if pretrained is not None else settings.pretrained
    model = backbone.build(settings, features, num_classes, source)
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


def finish_model(model: nn.Module, settings: ModelSettings) -> nn.Module:
    """The model settings that change how a built model computes: its pooling, and the
    reference study's position-embedding defect when asked to reproduce it."""
    if settings.pooling == "mean":
        # The reference's pooling: the mean of all output tokens (after the final LayerNorm)
        # instead of transformers' mean of [CLS] and [DIST].
        model.audio_spectrogram_transformer.register_forward_hook(_mean_pooling)
    if settings.zero_position_embeddings:
        # Faithful reproduction only: the reference loaded AST at another length with
        # ignore_mismatched_sizes=True, which left every position embedding at zero.
        with torch.no_grad():
            model.audio_spectrogram_transformer.embeddings.position_embeddings.zero_()
    return model


def _mean_pooling(module: nn.Module, args: Any, output: Any) -> Any:
    output.pooler_output = output.last_hidden_state.mean(dim=1)
    return output
