"""AST (Gong et al., 2021): the Audio Spectrogram Transformer of transformers, on AST's Kaldi
fbank. Position embeddings are fitted to the dataset's clip length the way the AST recipe does
(centre crop of the time axis for shorter input, bilinear interpolation for longer), never
through ``ignore_mismatched_sizes``, which silently re-initialises them."""

from __future__ import annotations

import copy
import logging
from typing import Any

from audiopetl.core.settings import FeatureSettings, ModelSettings, thaw
from audiopetl.models.backbones.base import Backbone, register
from audiopetl.models.backbones.layout import ModuleLayout

log = logging.getLogger(__name__)

# AST's module names. transformers 5.x renamed them (``layers.N.attention.q_proj``, ``mlp.fc1``);
# 4.x used ``encoder.layer.N.attention.attention.query`` and friends. Old checkpoints convert on
# load, but peft target names do not: 4.x names on 5.x silently match only the head.
LAYOUT_V5 = ModuleLayout(
    name="transformers>=5",
    targets={
        "q": r"\.layers\.\d+\.attention\.q_proj$",
        "k": r"\.layers\.\d+\.attention\.k_proj$",
        "v": r"\.layers\.\d+\.attention\.v_proj$",
        "o": r"\.layers\.\d+\.attention\.o_proj$",
        "ffn_in": r"\.layers\.\d+\.mlp\.fc1$",
        "ffn_out": r"\.layers\.\d+\.mlp\.fc2$",
    },
    head=("classifier.layernorm", "classifier.dense"),
    final_norm="audio_spectrogram_transformer.layernorm",
    layers=r"\.layers\.\d+$",
    embeddings="audio_spectrogram_transformer.embeddings",
    norm_before_attention="layernorm_before",
    norm_before_ffn="layernorm_after",
)

LAYOUT_V4 = ModuleLayout(
    name="transformers<5",
    targets={
        "q": r"\.layer\.\d+\.attention\.attention\.query$",
        "k": r"\.layer\.\d+\.attention\.attention\.key$",
        "v": r"\.layer\.\d+\.attention\.attention\.value$",
        "o": r"\.layer\.\d+\.attention\.output\.dense$",
        "ffn_in": r"\.layer\.\d+\.intermediate\.dense$",
        # Anchored on the layer so it cannot also match attention.output.dense.
        "ffn_out": r"\.layer\.\d+\.output\.dense$",
    },
    head=("classifier.layernorm", "classifier.dense"),
    final_norm="audio_spectrogram_transformer.layernorm",
    layers=r"\.encoder\.layer\.\d+$",
    embeddings="audio_spectrogram_transformer.embeddings",
    norm_before_attention="layernorm_before",
    norm_before_ffn="layernorm_after",
)


def module_layout() -> ModuleLayout:
    """AST's layout under the installed transformers."""
    from audiopetl.core import compat

    return LAYOUT_V5 if compat.transformers_5() else LAYOUT_V4


@register("ast")
class AST(Backbone):
    front_end = "fbank"
    model_types = ("audio-spectrogram-transformer",)

    def layout(self) -> ModuleLayout:
        return module_layout()

    def build(
        self,
        settings: ModelSettings,
        features: FeatureSettings,
        num_classes: int,
        pretrained: str | None,
    ) -> Any:
        from transformers import ASTConfig

        from audiopetl.core import compat
        from audiopetl.models import build as models
        from audiopetl.models import init as inits

        attn = settings.attn_implementation
        target = {
            "max_length": int(features.values["target_length"]),
            "num_mel_bins": int(features.values["num_mel_bins"]),
            "num_labels": int(num_classes),
        }
        if pretrained is None:
            # A fresh config object per model: transformers writes into it while building.
            config = ASTConfig(**thaw(settings.architecture), **target)
            model = compat.ast_from_config(config, attn)
            inits.init_parameters(model)
            return models.finish_model(model, settings)
        donor = models.load_donor(
            pretrained, lambda s: compat.ast_from_pretrained(s, attn), self.kind
        )
        config = copy.deepcopy(donor.config)
        old_grid = models.grid_shape(config)
        for key, value in target.items():
            setattr(config, key, value)
        config.id2label = {i: str(i) for i in range(num_classes)}
        config.label2id = {str(i): i for i in range(num_classes)}
        arch = thaw(settings.architecture)
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if key in arch:
                setattr(config, key, arch[key])
        model = compat.ast_from_config(config, attn)
        state = donor.state_dict()
        pos_key = next(k for k in state if k.endswith("embeddings.position_embeddings"))
        state[pos_key] = models.adapt_position_embeddings(
            state[pos_key], old_grid, models.grid_shape(config)
        )
        for key in [k for k in state if k.startswith("classifier.")]:
            del state[key]
        models.load_weights(model, state, pretrained)
        inits.init_head(model)
        log.info(
            "loaded %s; position embeddings %s -> %s",
            pretrained,
            old_grid,
            models.grid_shape(config),
        )
        return models.finish_model(model, settings)
