"""CLAP's audio encoder (HTS-AT; Wu et al., 2023, Chen et al., 2022) on CLAP's log-mel front end.

Input length: HTS-AT reads 10 s at 48 kHz (1001 frames of 10 ms, reshaped into a 256 x 256
image of its Swin windows); its authors repeat a shorter clip until it fills 10 s
(``repeatpad``), which the front end does, so the encoder runs at its own length and nothing
positional needs adapting. Only unfused checkpoints (laion/clap-htsat-unfused): the fused ones
read four differently cropped views of long clips at once.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

from audiopetl.core.settings import FeatureSettings, ModelSettings, thaw
from audiopetl.models.backbones.base import Backbone, register
from audiopetl.models.backbones.layout import ModuleLayout

# The layers are the Swin blocks of every stage.
LAYOUT = ModuleLayout.of_layers(
    "clap-audio",
    r"(^|\.)audio_encoder\.layers\.\d+\.blocks\.\d+",
    {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
    },
    final_norm="encoder.audio_encoder.norm",
    norm_before_attention="layernorm_before",
    norm_before_ffn="layernorm_after",
)
SAMPLE_RATE, N_FFT, HOP, MEL_BINS, SECONDS = 48000, 1024, 480, 64, 10


@register("clap-audio")
class ClapAudioKind(Backbone):
    front_end = "clap"
    model_types = ("clap", "clap_audio_model")
    unsupported: ClassVar[dict[str, str]] = {
        "prompt": "HTS-AT attends within shifted windows of a 2-D token grid: there is no token "
        "sequence to insert prompt tokens into",
        "prefix": "prefix tuning is implemented for AST's self-attention only",
    }

    def checkpointing_problem(self) -> str | None:
        from transformers import ClapAudioModel

        if ClapAudioModel.supports_gradient_checkpointing:
            return None
        return "transformers' ClapAudioModel does not support gradient checkpointing"

    def layout(self) -> ModuleLayout:
        return LAYOUT

    def front_end_settings(
        self, fbank: Mapping[str, Any], settings: ModelSettings
    ) -> dict[str, Any]:
        # The clip's own length does not enter: every clip is repeated to CLAP's 10 s.
        return {
            "front_end": "clap",
            "sample_rate": SAMPLE_RATE,
            "num_mel_bins": MEL_BINS,
            "n_fft": N_FFT,
            "hop_length": HOP,
            "seconds": SECONDS,
            "target_length": SECONDS * SAMPLE_RATE // HOP + 1,  # 1001 frames
            "f_min": 0.0,
            "f_max": 14000.0,
        }

    def build(
        self,
        settings: ModelSettings,
        features: FeatureSettings,
        num_classes: int,
        pretrained: str | None,
    ) -> Any:
        from transformers import ClapAudioConfig, ClapAudioModel

        from audiopetl.core import compat
        from audiopetl.core.errors import TrainingError
        from audiopetl.models import build as models
        from audiopetl.models import init as inits
        from audiopetl.models.backbones.encoder import ClapClassifier

        attn = settings.attn_implementation
        arch = thaw(settings.architecture)
        if pretrained is None:
            config = ClapAudioConfig(**arch, num_mel_bins=MEL_BINS, enable_fusion=False)
            model = ClapClassifier(compat.from_config(ClapAudioModel, config, attn), num_classes)
            inits.init_parameters(model)
            return model

        def load(source: str) -> Any:
            from transformers import ClapModel

            return compat.part_from_pretrained(
                ClapAudioModel, ClapModel, "audio_model", source, attn
            )

        check_preprocessor(pretrained)
        donor = models.load_donor(pretrained, load, self.kind)
        config = copy.deepcopy(donor.config)
        if getattr(config, "enable_fusion", False):
            raise TrainingError(
                f"{pretrained}: a fused CLAP checkpoint (it reads four views of long clips); "
                "use an unfused one such as laion/clap-htsat-unfused"
            )
        for key, value in arch.items():
            setattr(config, key, value)
        model = ClapClassifier(compat.from_config(ClapAudioModel, config, attn), num_classes)
        state = {f"encoder.{k}": v for k, v in donor.state_dict().items()}
        models.load_weights(model, state, pretrained)
        inits.init_head(model)
        return model


def check_preprocessor(source: str) -> None:
    """The front end computes what CLAP's extractor gives unfused models (slaney mel filters,
    clips repeated to 10 s). A checkpoint whose preprocessor_config.json asks for other input
    (``fusion`` truncation uses other filters) is refused rather than fed what it never saw."""
    import json
    from pathlib import Path

    from audiopetl.core.errors import TrainingError

    path = Path(source) / "preprocessor_config.json"
    if not path.is_file():
        return
    settings = json.loads(path.read_text())
    expected = {"truncation": "rand_trunc", "padding": "repeatpad", "feature_size": MEL_BINS,
                "sampling_rate": SAMPLE_RATE, "hop_length": HOP}  # fmt: skip
    wrong = {k: settings[k] for k, v in expected.items() if k in settings and settings[k] != v}
    if wrong:
        raise TrainingError(
            f"{path}: the checkpoint expects {wrong}; the clap front end computes "
            f"{ {k: expected[k] for k in wrong} } (unfused CLAP's input)"
        )
