"""Pretrained checkpoints from a model hub, mirrored locally before any training job runs.

Compute nodes often have no internet: the workflow's `fetch_model` rule runs on the submitting
machine and every training job reads the local mirror. A mirror is pinned: it records the repo
id, the revision asked for, the commit it resolved to and the sha256 of every file
(``mirror.json``), and it is verified against the configuration and those hashes whenever a run
starts from it, so months later it cannot silently hold other weights.

Imported by the workflow in every job: no torch here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audiopetl.core.atomic import atomic_dir, write_json
from audiopetl.core.checksums import file_sha256
from audiopetl.core.errors import DataError, TrainingError
from audiopetl.core.settings import ModelSettings

log = logging.getLogger(__name__)

MIRROR_RECORD = "mirror.json"
# What a mirror keeps of a hub repository: configs, weights in safetensors, notes.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.md"]
# The files that make a checkpoint's weights, hashed in every run's record.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# The hub client's own bookkeeping inside a mirror; not part of the checkpoint.
CLIENT_DIRS = (".cache",)


def is_hub_id(source: str) -> bool:
    return not Path(source).exists() and source.count("/") == 1 and not source.startswith(".")


def source_of(model: ModelSettings) -> dict[str, Any]:
    """Where a model's weights come from: ``pretrained`` and ``revision`` of its settings."""
    return {"pretrained": model.pretrained, "revision": model.revision}


def _fix(model: str) -> str:
    return f"run `audiopetl fetch-model --model {model} --force` on a machine with internet"


def _checkpoint_files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file()
        and p.name != MIRROR_RECORD
        and not any(part in CLIENT_DIRS for part in p.relative_to(folder).parts)
    )


def fetch_model(settings: ModelSettings, target: Path, *, force: bool = False) -> Path:
    """Mirror ``models.M.pretrained`` at ``models.M.revision`` into ``target`` (data/models/M);
    a local folder is used as it is. An existing mirror is verified, not fetched again
    (``force`` replaces it, once the new one is complete)."""
    model = settings.name
    source = source_of(settings)
    repo_id, revision = source["pretrained"], source["revision"]
    if repo_id is None:
        raise DataError(f"models.{model}.pretrained: nothing to fetch (random initialisation)")
    if not is_hub_id(repo_id):
        if not Path(repo_id).is_dir():
            raise DataError(
                f"models.{model}.pretrained: {repo_id} is neither a folder nor a hub id"
            )
        return Path(repo_id)
    if (target / MIRROR_RECORD).is_file() and not force:
        verify_mirror(settings, target)
        return target
    from huggingface_hub import HfApi, snapshot_download

    from audiopetl.core import compat

    try:
        # The commit first, then every file at that commit: a branch moving during the
        # download cannot mix two versions.
        commit = HfApi().model_info(repo_id, revision=revision).sha
        with atomic_dir(target) as tmp:
            snapshot_download(
                repo_id=repo_id,
                revision=commit,
                allow_patterns=ALLOW_PATTERNS,
                **compat.snapshot_local_dir_args(tmp),
            )
            files = _checkpoint_files(tmp)
            record = {
                "repo_id": repo_id,
                "revision": revision,
                "commit": commit,
                "files": {name: file_sha256(tmp / name) for name in files},
            }
            write_json(tmp / MIRROR_RECORD, record)
    except DataError:
        raise
    except Exception as err:  # the hub client raises many types; all mean "not fetched"
        raise DataError(
            f"models.{model}.pretrained: cannot download {repo_id!r}"
            f"{f' at revision {revision!r}' if revision else ''}: {err}"
        ) from err
    if revision is None:
        log.warning(
            "models.%s: %s mirrored at commit %s; pin it with `revision: %s` so a later "
            "mirror cannot hold other weights",
            model,
            repo_id,
            commit,
            commit,
        )
    return target


def read_mirror_record(folder: Path) -> dict[str, Any] | None:
    path = folder / MIRROR_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise TrainingError(f"{path}: unreadable mirror record ({err})") from err


def verify_mirror(settings: ModelSettings, folder: Path) -> dict[str, Any]:
    """The mirror's record, after checking that it holds the configured repo and revision and
    that every file still has the hash recorded when it was fetched."""
    model = settings.name
    source = source_of(settings)
    record = read_mirror_record(folder)
    if record is None:
        raise TrainingError(
            f"{folder}: no {MIRROR_RECORD}, so its weights cannot be checked against "
            f"models.{model} ({source['pretrained']}); {_fix(model)}"
        )
    wanted = source["revision"]
    if record.get("repo_id") != source["pretrained"]:
        raise TrainingError(
            f"{folder}: mirrors {record.get('repo_id')!r}, but models.{model}.pretrained is "
            f"{source['pretrained']!r}; {_fix(model)}"
        )
    if wanted is not None and wanted not in (record.get("revision"), record.get("commit")):
        raise TrainingError(
            f"{folder}: mirrors {record['repo_id']} at revision {record.get('revision')!r} "
            f"(commit {record.get('commit')}), but models.{model}.revision is {wanted!r}; "
            f"{_fix(model)}"
        )
    _check_files(folder, record["files"], _fix(model))
    return record


def _check_files(folder: Path, recorded: Mapping[str, str], fix: str) -> None:
    present = set(_checkpoint_files(folder))
    missing = sorted(set(recorded) - present)
    extra = sorted(present - set(recorded))
    changed = sorted(
        name for name in set(recorded) & present if file_sha256(folder / name) != recorded[name]
    )
    if missing or extra or changed:
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("missing", missing),
                ("not recorded", extra),
                ("changed", changed),
            )
            if names
        ]
        raise TrainingError(
            f"{folder}: the checkpoint differs from its record ({MIRROR_RECORD}): "
            f"{'; '.join(parts)}; {fix}"
        )


def offline() -> bool:
    """Whether this process must not reach the hub: the workflow's compute jobs set
    HF_HUB_OFFLINE=1, as compute nodes often have no internet."""
    return any(
        os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_pretrained(settings: ModelSettings, mirror: Path) -> str | None:
    """The configured source, replaced by its verified local mirror (in ``mirror``) when one
    exists. Offline, a hub id without a mirror fails at once, saying what to run where, instead
    of deep inside a download that cannot work."""
    model = settings.name
    source = settings.pretrained
    if source is not None and is_hub_id(source):
        if (mirror / MIRROR_RECORD).is_file() or (mirror / "config.json").is_file():
            verify_mirror(settings, mirror)
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


def weights_record(source: str | None, revision: str | None = None) -> dict[str, Any]:
    """What a run starts from, for its provenance and its resume identity: nothing (a random
    initialisation), a hub repo at a revision, or a folder with the sha256 of its weight and
    config files (and, for a mirror, the repo id and commit it recorded)."""
    if source is None:
        return {"kind": "random"}
    folder = Path(source)
    if not folder.is_dir():
        return {"kind": "hub", "repo_id": source, "revision": revision}
    mirror = read_mirror_record(folder)
    names = [
        n for n in _checkpoint_files(folder) if n.endswith(WEIGHT_SUFFIXES) or n == "config.json"
    ]
    record: dict[str, Any] = {
        "kind": "folder",
        "path": str(source),
        "files": {name: file_sha256(folder / name) for name in names},
    }
    if mirror is not None:
        record.update(
            kind="mirror",
            repo_id=mirror.get("repo_id"),
            revision=mirror.get("revision"),
            commit=mirror.get("commit"),
        )
    return record
