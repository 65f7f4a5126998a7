"""AST (Gong et al., 2021): the Audio Spectrogram Transformer of transformers, on AST's Kaldi
fbank. Position embeddings are fitted to the dataset's clip length the way the AST recipe does
(centre crop of the time axis for shorter input, bilinear interpolation for longer), never
through ``ignore_mismatched_sizes``, which silently re-initialises them."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

from audiopetl.models.backbones.base import Backbone, register

log = logging.getLogger(__name__)


@register("ast")
class AST(Backbone):
    front_end = "fbank"
    model_types = ("audio-spectrogram-transformer",)

    def layout(self) -> Any:
        from audiopetl.core import compat

        return compat.module_layout()

    def build(
        self,
        model_cfg: Mapping[str, Any],
        features: Mapping[str, Any],
        num_classes: int,
        pretrained: str | None,
    ) -> Any:
        from transformers import ASTConfig

        from audiopetl.core import compat
        from audiopetl.models import build as models

        attn = model_cfg["attn_implementation"]
        target = {
            "max_length": int(features["target_length"]),
            "num_mel_bins": int(features["num_mel_bins"]),
            "num_labels": int(num_classes),
        }
        if pretrained is None:
            # A fresh config object per model: transformers writes into it while building.
            config = ASTConfig(**dict(model_cfg.get("architecture") or {}), **target)
            model = compat.ast_from_config(config, attn)
            models.init_parameters(model)
            return models.finish_model(model, model_cfg)
        donor = models.load_donor(
            pretrained, lambda s: compat.ast_from_pretrained(s, attn), self.kind
        )
        config = copy.deepcopy(donor.config)
        old_grid = models.grid_shape(config)
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
        state[pos_key] = models.adapt_position_embeddings(
            state[pos_key], old_grid, models.grid_shape(config)
        )
        for key in [k for k in state if k.startswith("classifier.")]:
            del state[key]
        models.load_weights(model, state, pretrained)
        models.init_head(model)
        log.info(
            "loaded %s; position embeddings %s -> %s",
            pretrained,
            old_grid,
            models.grid_shape(config),
        )
        return models.finish_model(model, model_cfg)
