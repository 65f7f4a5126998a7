"""What the loop carries from step to step: the state a resume restores, and one step's
numbers until they are read from the device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    batch_pos: int = 0  # batches of the current epoch already consumed
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    best_weights: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    elapsed: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_samples: int = 0
    # Where earlier processes stopped on a signal (a SLURM time limit): provenance of a resume.
    interruptions: list[dict[str, Any]] = field(default_factory=list)
    # The experiment trackers' run ids (backend -> id): a resume continues those runs.
    tracking: dict[str, str] = field(default_factory=dict)


@dataclass
class StepStats:
    """One step's numbers, still on the device until the next flush."""

    epoch: int
    step: int
    losses: list[torch.Tensor] = field(default_factory=list)  # one per accumulated batch
    sizes: list[int] = field(default_factory=list)
    grad_norm: torch.Tensor | None = None
    lr: float | None = None  # the learning rate the step used (a host float: no wait)
