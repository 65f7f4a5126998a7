"""Whisper's encoder (Radford et al., 2022) on Whisper's own log-mel front end.

Input length: Whisper's encoder was trained on 30 s windows (3000 frames, 1500 positions after
its stride-2 convolution) and transformers' encoder refuses other lengths. We do not pad a 5 s
clip to 30 s (six times the compute, and a mean over mostly padding): the encoder is built for
the dataset's length (``max_source_positions`` = frames / 2) and keeps the first frames / 2 of
its sinusoidal position table, the very positions those frames have in a 30 s window. Nothing
is re-initialised, and every frame before the cut gets the same embedding it would get in a
30 s input (tests/test_backbones.py checks this on the real architecture's config).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from audiopetl.core.settings import FeatureSettings, ModelSettings, thaw
from audiopetl.models.backbones.base import Backbone, register
from audiopetl.models.backbones.layout import ModuleLayout

LAYOUT = ModuleLayout.of_layers(
    "whisper-encoder",
    r"(^|\.)encoder\.layers\.\d+",
    {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.out_proj",
        "ffn_in": "fc1",
        "ffn_out": "fc2",
    },
    final_norm="encoder.layer_norm",
    norm_before_attention="self_attn_layer_norm",
    norm_before_ffn="final_layer_norm",
)
# Whisper's own front end: 25 ms windows every 10 ms at 16 kHz.
SAMPLE_RATE, N_FFT, HOP = 16000, 400, 160
MAX_FRAMES = 3000  # 30 s: the longest input the pretrained position table covers


def sinusoids(length: int, channels: int) -> Any:
    """Whisper's fixed position table: sines then cosines over geometric timescales from 1 to
    10,000 (the encoder's positions are not learned)."""
    import torch

    increment = math.log(10000) / (channels // 2 - 1)
    inverse = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inverse[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


@register("whisper-encoder")
class WhisperEncoderKind(Backbone):
    front_end = "whisper"
    model_types = ("whisper",)
    unsupported: ClassVar[dict[str, str]] = {
        "prompt": "Whisper's encoder adds its positions inside its forward pass, with no "
        "token sequence exposed to insert prompt tokens into",
        "prefix": "prefix tuning is implemented for AST's self-attention only",
    }

    def layout(self) -> ModuleLayout:
        return LAYOUT

    def front_end_settings(
        self, fbank: Mapping[str, Any], settings: ModelSettings
    ) -> dict[str, Any]:
        own = dict(settings.front_end)
        # The dataset's clip length in 10 ms frames, even (the encoder's convolution halves it).
        frames = math.ceil(fbank["target_length"] * fbank["frame_shift_ms"] / 10.0)
        frames += frames % 2
        return {
            "front_end": "whisper",
            "sample_rate": SAMPLE_RATE,
            "num_mel_bins": int(own.get("num_mel_bins", 80)),
            "n_fft": N_FFT,
            "hop_length": HOP,
            "target_length": frames,
        }

    def build(
        self,
        settings: ModelSettings,
        features: FeatureSettings,
        num_classes: int,
        pretrained: str | None,
    ) -> Any:
        import torch
        from transformers import WhisperConfig

        from audiopetl.core import compat
        from audiopetl.core.errors import TrainingError
        from audiopetl.models import build as models
        from audiopetl.models import init as inits
        from audiopetl.models.backbones.encoder import SpectrogramClassifier

        attn = settings.attn_implementation
        frames = int(features.values["target_length"])
        if frames > MAX_FRAMES:
            raise TrainingError(
                f"whisper-encoder: {frames} frames are longer than the 30 s ({MAX_FRAMES} "
                "frames) its position table covers; cut the clips (the dataset's target_length)"
            )
        positions = frames // 2
        arch = thaw(settings.architecture)
        encoder_class = compat.whisper_encoder_class()
        if pretrained is None:
            config = WhisperConfig(
                **arch,
                num_mel_bins=int(features.values["num_mel_bins"]),
                max_source_positions=positions,
            )
            model = SpectrogramClassifier(
                compat.from_config(encoder_class, config, attn), num_classes
            )
            inits.init_parameters(model)
            with torch.no_grad():
                table = model.encoder.embed_positions.weight
                table.copy_(sinusoids(positions, table.shape[1]))
        else:
            from transformers import WhisperModel

            def load(source: str) -> Any:
                return compat.part_from_pretrained(
                    encoder_class, WhisperModel, "encoder", source, attn
                )

            donor = models.load_donor(pretrained, load, self.kind)
            config = copy.deepcopy(donor.config)
            if int(config.num_mel_bins) != int(features.values["num_mel_bins"]):
                raise TrainingError(
                    f"{pretrained}: the checkpoint reads {config.num_mel_bins} mel bins, the "
                    f"front end gives {features.values['num_mel_bins']}: set the model's "
                    f"front_end.num_mel_bins to {config.num_mel_bins}"
                )
            if positions > int(config.max_source_positions):
                raise TrainingError(
                    f"{pretrained}: its position table covers {config.max_source_positions} "
                    f"positions, the clips need {positions} ({frames} frames): cut them shorter"
                )
            config.max_source_positions = positions
            for key, value in arch.items():
                setattr(config, key, value)
            model = SpectrogramClassifier(
                compat.from_config(encoder_class, config, attn), num_classes
            )
            state = {f"encoder.{k}": v for k, v in donor.state_dict().items()}
            # The first frames/2 positions of the 30 s table: those the kept frames have.
            state["encoder.embed_positions.weight"] = state["encoder.embed_positions.weight"][
                :positions
            ].clone()
            models.load_weights(model, state, pretrained)
            inits.init_head(model)
        # Fixed, as in Whisper (transformers 4.28 left the table trainable).
        model.encoder.embed_positions.weight.requires_grad_(False)
        return model
