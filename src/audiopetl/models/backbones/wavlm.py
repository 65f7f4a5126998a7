"""WavLM (Chen et al., 2022): wav2vec2's layout with a gated relative position bias in its
self-attention (the extra `gru_rel_pos_linear`); eager attention only in transformers."""

from __future__ import annotations

from typing import Any, ClassVar

from audiopetl.models.backbones.base import register
from audiopetl.models.backbones.wav2vec2 import Wav2Vec2Kind


@register("wavlm")
class WavLMKind(Wav2Vec2Kind):
    # wavlm-base-plus was pretrained on unnormalised audio (its preprocessor: no normalising).
    normalize: ClassVar[bool] = False
    model_types: ClassVar[tuple[str, ...]] = ("wavlm",)

    def classes(self) -> tuple[Any, Any]:
        from transformers import WavLMConfig, WavLMModel

        return WavLMConfig, WavLMModel
