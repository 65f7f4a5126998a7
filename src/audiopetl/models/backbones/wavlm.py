"""WavLM (Chen et al., 2022): wav2vec2's layout with a gated relative position bias in its
self-attention (the extra `gru_rel_pos_linear`); eager attention only in transformers.

transformers' WavLM attention hands its projections' *weights* to torch's
``F.multi_head_attention_forward`` instead of calling the projection modules, so anything that
wraps or hooks those modules (LoRA and every peft tuner on q/k/v/o, the Houlsby adapter beside
the attention output) would be skipped: its parameters would get no gradient and train nothing,
silently. Every WavLM built here computes the same attention through the modules instead
(:func:`attention_through_modules`: the same projections, scaling, gated bias, padding mask,
dropout and output projection; within float rounding of transformers' own,
tests/test_backbones.py), in both environments.
"""

from __future__ import annotations

import types
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

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

    def build(self, *args: Any, **kwargs: Any) -> Any:
        model = super().build(*args, **kwargs)
        from transformers.models.wavlm.modeling_wavlm import WavLMAttention

        for module in model.modules():
            if isinstance(module, WavLMAttention):
                module.torch_multi_head_self_attention = types.MethodType(
                    attention_through_modules, module
                )
        return model


def attention_through_modules(
    self: Any,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    gated_position_bias: torch.Tensor,
    output_attentions: bool = True,  # transformers 4.28 passes it; 5.x always wants weights
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """WavLMAttention.torch_multi_head_self_attention with the projections called as modules:
    softmax(q k^T / sqrt(d) + gated bias, padded keys masked) v, per head, then out_proj.
    Returns the output (batch, time, dim) and the attention weights (batch, heads, time, time)."""
    batch, length, _ = hidden_states.shape
    heads, dim = self.num_heads, self.head_dim

    def per_head(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, length, heads, dim).transpose(1, 2)

    query = per_head(self.q_proj(hidden_states)) * dim**-0.5
    key, value = per_head(self.k_proj(hidden_states)), per_head(self.v_proj(hidden_states))
    scores = query @ key.transpose(-1, -2) + gated_position_bias.view(batch, heads, length, -1)
    if attention_mask is not None:  # 1 marks a real frame, as transformers' own passes it
        padded = attention_mask.ne(1)[:, None, None, :]
        scores = scores.masked_fill(padded, float("-inf"))
    weights = scores.softmax(dim=-1)
    attended = F.dropout(weights, p=self.dropout, training=self.training) @ value
    output = self.out_proj(attended.transpose(1, 2).reshape(batch, length, heads * dim))
    return output, weights if output_attentions else None
