"""What a training step does to its batch before the forward pass: SpecAugment's masks and
mixup, both drawn from torch's seeded RNG (so a resumed run draws the same)."""

from __future__ import annotations

import torch

from audiopetl.core.settings import SpecAugmentSettings


def spec_augment(x: torch.Tensor, freq_mask: int, time_mask: int) -> torch.Tensor:
    """SpecAugment frequency and time masks (one each per clip), drawn from torch's RNG.

    Written here because torchaudio, which has them, is not installable beside a CPU torch.
    """
    batch, frames, bins = x.shape
    x = x.clone()
    for width_max, axis_len, dim in ((freq_mask, bins, 2), (time_mask, frames, 1)):
        if width_max <= 0:
            continue
        width = torch.randint(0, width_max + 1, (batch, 1))
        start = (torch.rand(batch, 1) * (axis_len - width + 1)).long()
        pos = torch.arange(axis_len).unsqueeze(0)
        mask = (pos >= start) & (pos < start + width)  # (batch, axis_len)
        x = x.masked_fill(mask.unsqueeze(dim % 2 + 1).to(x.device), 0.0)
    return x


def augment(
    x: torch.Tensor, target: torch.Tensor, masks: SpecAugmentSettings, mixup_alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch and its (soft) targets after SpecAugment and mixup, where they are on."""
    if masks.freq_mask or masks.time_mask:
        x = spec_augment(x, masks.freq_mask, masks.time_mask)
    if mixup_alpha > 0:
        lam = float(torch.distributions.Beta(mixup_alpha, mixup_alpha).sample())
        perm = torch.randperm(len(x)).to(x.device)
        x = lam * x + (1 - lam) * x[perm]
        target = lam * target + (1 - lam) * target[perm]
    return x, target
