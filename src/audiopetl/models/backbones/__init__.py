"""Model kinds (audio backbones), one module each, found through a registry
(audiopetl.models.backbones.base): ast, whisper-encoder, wav2vec2, hubert, wavlm, clap-audio. A new
kind is a module here registering its class, its architecture schema in
resources/backbones/KIND.yaml, and its tests."""

from audiopetl.models.backbones.base import (
    DEFAULT_KIND,
    KIND_ATTRIBUTE,
    Backbone,
    backbone_of,
    get_backbone,
    kinds,
    layout_of,
    register,
)
from audiopetl.models.backbones.layout import TARGETS, ModuleLayout

__all__ = [
    "DEFAULT_KIND",
    "KIND_ATTRIBUTE",
    "TARGETS",
    "Backbone",
    "ModuleLayout",
    "backbone_of",
    "get_backbone",
    "kinds",
    "layout_of",
    "register",
]
