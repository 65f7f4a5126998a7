"""Where a probe's embeddings come from, and what decides them: one cache per dataset and
model (``data/embeddings/DATASET/MODEL/ID.parquet``), shared by every probe run, fold, seed
and sweep variant. Its id hashes the feature cache it is computed from, the model, and where
the model's weights come from (its own pretraining: that job's settings in this experiment),
so a change to any of them makes a new cache; a probe's own settings change none of them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiopetl.core.checksums import stable_hash
from audiopetl.core.embedding import EMBEDDING_VERSION, EmbeddingSettings, trains_on_embeddings
from audiopetl.core.settings import Frozen

if TYPE_CHECKING:
    from audiopetl.study.study import Study

__all__ = ["identity", "path", "settings", "trains_on_embeddings"]


def identity(study: Study, dataset: str, model: str) -> dict[str, Any]:
    """What decides a model's embeddings of a dataset (the embed rule's params)."""
    settings = study.model(model)
    pretrain = None
    if settings.pretrain is not None:
        pretrain = {"experiment": study.name, **study.pretrain_params(model)}
    return {
        "version": EMBEDDING_VERSION,
        "features": study.features(dataset, model).feature_id,
        "model": settings.record(),
        "pretrain": pretrain,
    }


def path(study: Study, dataset: str, model: str) -> Path:
    return _path(study, dataset, model, identity(study, dataset, model))


def _path(study: Study, dataset: str, model: str, ident: dict[str, Any]) -> Path:
    return study.layout.embeddings(dataset, model, stable_hash(ident, 10))


def settings(study: Study, dataset: str, model: str) -> EmbeddingSettings:
    """The embed job of (dataset, model); its device, batch size and threads are the global
    training block's."""
    training = study.config["training"]
    ident = identity(study, dataset, model)
    return EmbeddingSettings(
        dataset=dataset,
        model=study.model(model),
        features=study.features(dataset, model),
        cache=study.cache_path(dataset, model),
        out=_path(study, dataset, model, ident),
        pretrained=study.weights_source(model),
        identity=Frozen(ident),
        device=str(training["device"]),
        batch_size=int(training["eval_batch_size"]),
        threads=int(training["threads"]),
        deterministic=bool(training["deterministic"]),
    )
