"""The optimiser and its schedule: AdamW over the trainable parameters at the strategy's
learning rate, linear warm-up then cosine decay to zero over the run's steps."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from audiopetl.core import devices
from audiopetl.core.settings import TrainingSettings


def adamw(
    params: Iterable[torch.nn.Parameter], lr: float, training: TrainingSettings, fused: bool
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        list(params),
        lr=float(lr),
        betas=tuple(training.betas),
        eps=float(training.eps),
        weight_decay=float(training.weight_decay),
        **devices.adamw_kwargs(fused),
    )


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = round(warmup_ratio * total_steps)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
