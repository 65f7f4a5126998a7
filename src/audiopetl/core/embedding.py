"""The settings of a probe's embeddings: what the frozen backbone's embedding cache of one
(dataset, model) is computed from, resolved by the study (audiopetl.study.embeddings) and
read by the embed job (audiopetl.training.embeddings). Nothing here imports torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from audiopetl.core.settings import FeatureSettings, Frozen, ModelSettings, StrategySettings

# The strategy kinds whose runs train a head on cached embeddings of the frozen backbone.
EMBEDDING_KINDS = frozenset({"probe"})
# Bumped when what an embedding cache holds changes; older caches get a new name.
EMBEDDING_VERSION = 1


def trains_on_embeddings(strategy: StrategySettings) -> bool:
    """Whether a strategy's runs read an embedding cache instead of the features."""
    return strategy.kind in EMBEDDING_KINDS


@dataclass(frozen=True)
class EmbeddingSettings:
    """The embeddings of one (dataset, model): the frozen backbone's pooled output (the input
    of its head) for every clip of a feature cache, computed once for every probe run."""

    dataset: str
    model: ModelSettings
    features: FeatureSettings
    cache: Path  # the feature cache it is computed from
    out: Path  # the embedding cache
    pretrained: str | None  # the backbone's weights (None: at random)
    # What decides the embeddings (their cache's name hashes it; the rule's params).
    identity: Frozen
    device: str
    batch_size: int
    threads: int
    deterministic: bool
