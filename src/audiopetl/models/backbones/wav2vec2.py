"""wav2vec 2.0 (Baevski et al., 2020) on the raw waveform; the family HuBERT and WavLM share
(hubert.py, wavlm.py subclass it).

Input length: these models place frames by a convolutional (wav2vec2, HuBERT) or relative
(WavLM) position embedding, which works at any length, so a clip is read at the dataset's own
length with nothing to adapt. The encoder's own SpecAugment-style masking and LayerDrop are off
(mask_time_prob = mask_feature_prob = layerdrop = 0): they draw from numpy's RNG inside
transformers, outside our seeding; the `training.specaugment` settings are ours to use.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from audiopetl.core.settings import FeatureSettings, ModelSettings, thaw
from audiopetl.models.backbones.base import Backbone, register
from audiopetl.models.backbones.layout import ModuleLayout

SAMPLE_RATE = 16000
# Settings transformers' defaults leave on and a deterministic run must have off.
DETERMINISTIC = {"mask_time_prob": 0.0, "mask_feature_prob": 0.0, "layerdrop": 0.0}


def waveform_layout(name: str) -> ModuleLayout:
    return ModuleLayout.of_layers(
        name,
        r"(^|\.)encoder\.encoder\.layers\.\d+",
        {
            "q": "attention.q_proj",
            "k": "attention.k_proj",
            "v": "attention.v_proj",
            "o": "attention.out_proj",
            "ffn_in": "feed_forward.intermediate_dense",
            "ffn_out": "feed_forward.output_dense",
        },
        final_norm="encoder.encoder.layer_norm",
        # Base models are post-norm: `layer_norm` follows self-attention and feeds the
        # feed-forward block; nothing normalises before self-attention.
        norm_before_attention=None,
        norm_before_ffn="layer_norm",
    )


@register("wav2vec2")
class Wav2Vec2Kind(Backbone):
    front_end = "waveform"
    model_types: ClassVar[tuple[str, ...]] = ("wav2vec2",)
    # Zero mean, unit variance per clip: what wav2vec2-base's preprocessor does.
    normalize: ClassVar[bool] = True
    unsupported: ClassVar[dict[str, str]] = {
        "prompt": "prompt tokens are implemented for AST's patch embeddings only",
        "prefix": "prefix tuning is implemented for AST's self-attention only",
    }

    def layout(self) -> ModuleLayout:
        return waveform_layout(self.kind)

    def classes(self) -> tuple[Any, Any]:
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        return Wav2Vec2Config, Wav2Vec2Model

    def front_end_settings(
        self, fbank: Mapping[str, Any], settings: ModelSettings
    ) -> dict[str, Any]:
        own = dict(settings.front_end)
        seconds = fbank["target_length"] * fbank["frame_shift_ms"] / 1000.0
        return {
            "front_end": "waveform",
            "sample_rate": SAMPLE_RATE,
            "target_length": round(seconds * SAMPLE_RATE),
            "normalize": bool(own.get("normalize", self.normalize)),
        }

    def build(
        self,
        settings: ModelSettings,
        features: FeatureSettings,
        num_classes: int,
        pretrained: str | None,
    ) -> Any:
        from audiopetl.core import compat
        from audiopetl.models import build as models
        from audiopetl.models import init as inits
        from audiopetl.models.backbones.encoder import WaveformClassifier

        config_class, model_class = self.classes()
        attn = settings.attn_implementation
        arch = {**DETERMINISTIC, **thaw(settings.architecture)}
        if pretrained is None:
            config = config_class(**arch)
            encoder = compat.from_config(model_class, config, attn)
            model = WaveformClassifier(encoder, num_classes, float(config.layer_norm_eps))
            inits.init_parameters(model)
            init_positional_convolution(model)
            return model
        check_normalisation(pretrained, bool(features.values["normalize"]))
        donor = models.load_donor(
            pretrained, lambda s: compat.from_pretrained(model_class, s, attn), self.kind
        )
        config = copy.deepcopy(donor.config)
        for key, value in arch.items():
            setattr(config, key, value)
        encoder = compat.from_config(model_class, config, attn)
        model = WaveformClassifier(encoder, num_classes, float(config.layer_norm_eps))
        own = set(encoder.state_dict())
        # The masking embedding exists only while masking is on; it is unused here.
        state = {
            f"encoder.{k}": v
            for k, v in donor.state_dict().items()
            if k in own or k != "masked_spec_embed"
        }
        models.load_weights(model, state, pretrained)
        inits.init_head(model)
        return model


def init_positional_convolution(model: Any) -> None:
    """The positional convolution as wav2vec2's authors initialise it: normal weights with std
    2 / sqrt(kernel * in_channels / groups), zero bias, and its weight normalisation's
    magnitude equal to the direction's norm (so the effective weight is that draw). Drawn from
    each parameter's own generator, under the name both torch versions agree on."""
    import torch

    from audiopetl.models.init import parameter_generator

    conv = model.encoder.encoder.pos_conv_embed.conv
    params = dict(conv.named_parameters())
    direction_name = next(n for n in params if n.endswith(("weight_v", "original1")))
    magnitude_name = next(n for n in params if n.endswith(("weight_g", "original0")))
    direction, magnitude = params[direction_name], params[magnitude_name]
    fan_in = direction.shape[1] * direction.shape[2]
    prefix = "encoder.encoder.pos_conv_embed.conv."
    with torch.no_grad():
        generator = parameter_generator(prefix + direction_name)
        draw = torch.randn(direction.shape, generator=generator)
        direction.copy_(draw * 2.0 / math.sqrt(fan_in))
        dims = [d for d in range(direction.dim()) if magnitude.shape[d] == 1]
        magnitude.copy_(direction.norm(dim=dims, keepdim=True))
        conv.bias.zero_()


def check_normalisation(source: str, normalize: bool) -> None:
    """A checkpoint folder's preprocessor says whether its model was trained on normalised
    audio (``do_normalize``); a front end that disagrees would feed it other input than it
    learned from, silently. Hub ids are checked in their local mirror (the workflow's path)."""
    import json
    from pathlib import Path

    from audiopetl.core.errors import TrainingError

    path = Path(source) / "preprocessor_config.json"
    if not path.is_file():
        return
    wanted = json.loads(path.read_text()).get("do_normalize")
    if wanted is not None and bool(wanted) != normalize:
        raise TrainingError(
            f"{path}: the checkpoint's preprocessor has do_normalize {str(wanted).lower()}, "
            f"the model's front_end.normalize is {str(normalize).lower()}: set it to "
            f"{str(wanted).lower()}"
        )
