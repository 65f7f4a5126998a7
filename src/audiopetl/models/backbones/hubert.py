"""HuBERT (Hsu et al., 2021): wav2vec2's architecture, trained on masked prediction of cluster
targets; transformers' HubertModel has the same module names."""

from __future__ import annotations

from typing import Any, ClassVar

from audiopetl.models.backbones.base import register
from audiopetl.models.backbones.wav2vec2 import Wav2Vec2Kind


@register("hubert")
class HuBERTKind(Wav2Vec2Kind):
    # hubert-base-ls960 was pretrained on unnormalised audio (fairseq `normalize: false`).
    normalize: ClassVar[bool] = False
    model_types: ClassVar[tuple[str, ...]] = ("hubert",)

    def classes(self) -> tuple[Any, Any]:
        from transformers import HubertConfig, HubertModel

        return HubertConfig, HubertModel
