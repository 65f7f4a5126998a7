"""The classifier every encoder-only kind but AST shares: a transformers encoder, the mean of
its output frames, and a head of LayerNorm + Linear (named like AST's, `classifier.layernorm`
and `classifier.dense`, so every strategy finds a head in the same place).

Imported only when a model is built: it needs torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Head(nn.Module):
    def __init__(self, hidden: int, num_classes: int, eps: float) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(hidden, eps=eps)
        self.dense = nn.Linear(hidden, num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.dense(self.layernorm(pooled))


class Output:
    """What the training loop reads from a model: ``.logits`` (as transformers' outputs)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class EncoderClassifier(nn.Module):
    """``encoder`` (a transformers encoder) -> mean over its frames -> head.

    Input comes from the feature cache as (batch, frames, bins); ``encoder_input`` turns it
    into what the encoder takes. The mean covers every frame, padding included, as the input
    always has the configured length (no attention mask; the same for training and test).
    """

    def __init__(
        self, encoder: nn.Module, num_classes: int, eps: float = 1e-5, width: int | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        # peft and transformers' helpers read a model's config; it is the encoder's.
        self.config = encoder.config
        width = int(encoder.config.hidden_size) if width is None else width
        self.classifier = Head(width, num_classes, eps)

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def save_pretrained(self, folder: str, **kwargs: Any) -> None:
        """The encoder in transformers' own format (what its kind loads as `pretrained`); the
        head is left out: every run that starts from it gets a new one."""
        self.encoder.save_pretrained(folder, **kwargs)

    def forward(self, input_values: torch.Tensor, **kwargs: Any) -> Output:
        hidden = self.encoder(self.encoder_input(input_values)).last_hidden_state
        return Output(self.classifier(hidden.mean(dim=1)))


class SpectrogramClassifier(EncoderClassifier):
    """Encoders that read (batch, bins, frames): Whisper's."""

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class WaveformClassifier(EncoderClassifier):
    """Encoders that read the waveform (batch, samples): wav2vec2, HuBERT, WavLM."""

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., 0]


class ClapClassifier(EncoderClassifier):
    """CLAP's audio encoder (HTS-AT): it reads (batch, 1, frames, bins) and pools its last
    stage itself (``pooler_output``), whose width is the first stage's doubled per stage."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        config = encoder.config
        width = int(config.patch_embeds_hidden_size * 2 ** (len(config.depths) - 1))
        super().__init__(encoder, num_classes, float(config.layer_norm_eps), width)

    def forward(self, input_values: torch.Tensor, **kwargs: Any) -> Output:
        pooled = self.encoder(input_features=input_values.unsqueeze(1)).pooler_output
        return Output(self.classifier(pooled))
