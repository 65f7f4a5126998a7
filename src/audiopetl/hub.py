"""Pretrained checkpoints from a model hub, mirrored locally before any training job runs.

Compute nodes often have no internet: the workflow's `fetch_model` rule runs on the submitting
machine and every training job reads the local mirror.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audiopetl.atomic import atomic_dir
from audiopetl.config import model_config
from audiopetl.errors import DataError, TrainingError
from audiopetl.paths import models_dir


def is_hub_id(source: str) -> bool:
    return not Path(source).exists() and source.count("/") == 1 and not source.startswith(".")


def mirror_dir(cfg: Mapping[str, Any], model: str) -> Path:
    return models_dir(cfg) / model


def fetch_model(cfg: Mapping[str, Any], model: str) -> Path:
    """Mirror ``models.M.pretrained`` under data/models/M; a local folder is used as it is."""
    source = model_config(cfg, model).get("pretrained")
    if source is None:
        raise DataError(f"models.{model}.pretrained: nothing to fetch (random initialisation)")
    if not is_hub_id(source):
        if not Path(source).is_dir():
            raise DataError(f"models.{model}.pretrained: {source} is neither a folder nor a hub id")
        return Path(source)
    target = mirror_dir(cfg, model)
    if (target / "config.json").is_file():
        return target
    from huggingface_hub import snapshot_download

    with atomic_dir(target) as tmp:
        try:
            snapshot_download(
                repo_id=source,
                local_dir=str(tmp),
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.md"],
            )
        except Exception as err:  # the hub client raises many types; all mean "not fetched"
            raise DataError(
                f"models.{model}.pretrained: cannot download {source!r}: {err}"
            ) from err
    return target


def offline() -> bool:
    """Whether this process must not reach the hub: the workflow's compute jobs set
    HF_HUB_OFFLINE=1, as compute nodes often have no internet."""
    return any(
        os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_pretrained(cfg: Mapping[str, Any], model: str) -> str | None:
    """The configured source, replaced by its local mirror when one exists. Offline, a hub id
    without a mirror fails at once, saying what to run where, instead of deep inside a
    download that cannot work."""
    source = model_config(cfg, model).get("pretrained")
    if source is not None and is_hub_id(source):
        mirror = mirror_dir(cfg, model)
        if (mirror / "config.json").is_file():
            return str(mirror)
        if offline():
            raise TrainingError(
                f"models.{model}.pretrained: {source!r} is a hub id with no local mirror in "
                f"{mirror}, and this job runs without network access (HF_HUB_OFFLINE=1, as the "
                "workflow's jobs on compute nodes do). Mirror it first on a machine with "
                f"internet: `audiopetl fetch-model --model {model}` (the workflow's local rule "
                "fetch_model does this on the submitting machine)."
            )
    return source
