"""Pretrained checkpoints from a model hub, mirrored locally before any training job runs.

Compute nodes often have no internet: the workflow's `fetch_model` rule runs on the submitting
machine and every training job reads the local mirror.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audiopetl.atomic import atomic_dir
from audiopetl.config import model_config
from audiopetl.errors import DataError


def is_hub_id(source: str) -> bool:
    return not Path(source).exists() and source.count("/") == 1 and not source.startswith(".")


def mirror_dir(cfg: Mapping[str, Any], model: str) -> Path:
    return Path(cfg["paths"]["data"]) / "models" / model


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


def resolve_pretrained(cfg: Mapping[str, Any], model: str) -> str | None:
    """The configured source, replaced by its local mirror when one exists."""
    source = model_config(cfg, model).get("pretrained")
    if source is not None and is_hub_id(source):
        mirror = mirror_dir(cfg, model)
        if (mirror / "config.json").is_file():
            return str(mirror)
    return source
