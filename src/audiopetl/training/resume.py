"""A run's resume state: what it must share with the run it continues (its identity), saving
it (every epoch and on a stop) and restoring it bitwise; the file format is
:mod:`audiopetl.training.checkpoint`'s."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiopetl.core.checksums import stable_hash
from audiopetl.training import checkpoint
from audiopetl.training.signals import unclean_stop
from audiopetl.training.state import TrainState

if TYPE_CHECKING:
    from audiopetl.training.trainer import Trainer

log = logging.getLogger(__name__)


def identity_parts(
    settings: Mapping[str, Any], data: Mapping[str, Any], weights: Mapping[str, Any]
) -> dict[str, str]:
    """What must not change between an interrupted run and its resumption: the settings,
    the data (manifest hash and rows of the cache) and the starting weights (their file
    hashes, or hub revision), each hashed on its own so a mismatch can say which."""
    weights = {k: v for k, v in weights.items() if k != "path"}  # a folder may move
    data = {k: v for k, v in data.items() if k in ("manifest_sha256", "rows")}
    return {
        "settings": stable_hash(settings),
        "data": stable_hash(data),
        "weights": stable_hash(weights),
    }


def save(trainer: Trainer, state: TrainState) -> None:
    payload = {
        "identity": trainer.identity_parts(),
        "trainable": trainer.strategy.trainable_state(trainer.model),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "rng": checkpoint.rng_state(),
        "train": {k: v for k, v in vars(state).items() if k != "best_weights"},
        "best_weights": state.best_weights,
    }
    checkpoint.save_state(trainer.run.resume_dir, payload)


def restore(trainer: Trainer) -> TrainState:
    """The saved state when there is one of this run, loaded into the trainer; else a fresh
    state (a state of other settings, data or weights is set aside with a warning)."""
    folder = trainer.run.resume_dir
    path = folder / checkpoint.STATE_FILE
    if not path.is_file():
        return TrainState()
    saved = checkpoint.load_state(path)
    ours, theirs = trainer.identity_parts(), saved.get("identity")
    if theirs != ours:
        differ = [k for k in ours if not isinstance(theirs, dict) or theirs.get(k) != ours[k]]
        stale = set_aside(folder)
        log.warning(
            "%s was saved from other %s; set aside as %s, starting afresh",
            path,
            " and ".join(differ),
            stale,
        )
        return TrainState()
    trainer.strategy.load_trainable_state(trainer.model, saved["trainable"])
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scheduler.load_state_dict(saved["scheduler"])
    trainer.scaler.load_state_dict(saved["scaler"])
    checkpoint.set_rng_state(saved["rng"])
    state = TrainState(**saved["train"], best_weights=saved["best_weights"])
    if not any(i.get("global_step") == state.global_step for i in state.interruptions):
        # Saved at an epoch's end, not on a signal: a kill, and its later steps redone.
        state.interruptions.append(unclean_stop(state))
    log.info("resuming %s at epoch %d, batch %d", trainer.run.out, state.epoch + 1, state.batch_pos)
    return state


def set_aside(folder: Path) -> Path:
    """Move a resume folder that must not be continued out of the way, keeping it (the last
    one) for inspection; the run then starts afresh."""
    stale = folder.with_name(folder.name + ".stale")
    shutil.rmtree(stale, ignore_errors=True)
    os.replace(folder, stale)
    return stale
