"""What every model kind shares: the registry, and what a kind declares.

A model kind is one class per architecture, registered under the `kind` of a model's settings
(as the strategies are under theirs); each lives in a module of its own in this package, with
its `architecture` settings' schema in resources/backbones/KIND.yaml. A kind declares its input
front end (a feature-cache kind), how it is built from a hub checkpoint or at random from a
config block, its pooling and head, where its layers and projections are (a ModuleLayout), and
which strategies cannot apply to it and why.

Nothing here imports torch or transformers: the workflow consults the registry while planning.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from audiopetl.core.errors import ConfigError
from audiopetl.core.settings import DEFAULT_MODEL_KIND, FeatureSettings, ModelSettings
from audiopetl.models.backbones.layout import ModuleLayout

_REGISTRY: dict[str, type[Backbone]] = {}
DEFAULT_KIND = DEFAULT_MODEL_KIND
# The attribute a built model carries its kind in; strategies find the layout through it.
KIND_ATTRIBUTE = "audiopetl_kind"


def register(kind: str) -> Callable[[type[Backbone]], type[Backbone]]:
    def wrap(cls: type[Backbone]) -> type[Backbone]:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return wrap


def _discover() -> None:
    """Import every model-kind module of this package: each registers its classes."""
    package = importlib.import_module("audiopetl.models.backbones")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("base", "layout", "encoder"):
            importlib.import_module(f"audiopetl.models.backbones.{info.name}")


def kinds() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_backbone(kind: str) -> Backbone:
    _discover()
    if kind not in _REGISTRY:
        raise ConfigError(f"model kind {kind!r} is not registered ({', '.join(kinds())})")
    return _REGISTRY[kind]()


def backbone_of(settings: ModelSettings) -> Backbone:
    return get_backbone(settings.kind)


def layout_of(model: Any) -> ModuleLayout:
    """The layout of a built model (wrapped by peft or not): found through its kind."""
    return get_backbone(getattr(model, KIND_ATTRIBUTE, DEFAULT_KIND)).layout()


class Backbone:
    """Base class of a model kind."""

    kind: ClassVar[str] = ""
    # The feature-cache kind its input comes from (audiopetl.features.frontends).
    front_end: ClassVar[str] = "fbank"
    # transformers' model_type of the checkpoints it loads.
    model_types: ClassVar[tuple[str, ...]] = ()
    # Strategy kinds that cannot apply to this architecture, with the reason.
    unsupported: ClassVar[dict[str, str]] = {}

    def layout(self) -> ModuleLayout:
        raise NotImplementedError

    def front_end_settings(
        self, fbank: Mapping[str, Any], settings: ModelSettings
    ) -> dict[str, Any]:
        """The settings of this kind's front end for a dataset whose AST (fbank) settings are
        ``fbank``: the dataset's clip length carries over, the rest is the kind's own."""
        return dict(fbank)

    def build(
        self,
        settings: ModelSettings,
        features: FeatureSettings,
        num_classes: int,
        pretrained: str | None,
    ) -> Any:
        """The model, pretrained or at random (seed the global RNG first), with a new head."""
        raise NotImplementedError

    def problem_with(self, strategy_kind: str) -> str | None:
        """Why a strategy cannot apply to this kind, or None."""
        return self.unsupported.get(strategy_kind)

    def checkpointing_problem(self) -> str | None:
        """Why gradient checkpointing cannot apply to this kind, or None (a built model's own
        transformers flag decides in the end: audiopetl.models.checkpointing)."""
        return None
