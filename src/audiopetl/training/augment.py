"""What a training step does to its batch before the forward pass: SpecAugment's masks and
mixup, both drawn from torch's seeded RNG (so a resumed run draws the same)."""

from __future__ import annotations

import torch

from audiopetl.core.settings import SpecAugmentSettings


def band(
    u_width: torch.Tensor, u_start: torch.Tensor, widest: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked band [start, end) of an axis of ``size`` for two uniform draws, as torchaudio's
    ``mask_along_axis`` (the reference's FrequencyMasking and TimeMasking): a width of
    floor(u_width * widest), so 0 .. widest - 1, starting at floor(u_start * (size - u_width *
    widest))."""
    value = u_width * widest
    start = (u_start * (size - value)).long()
    return start, start + value.long()


def spec_augment(x: torch.Tensor, freq_mask: int, time_mask: int) -> torch.Tensor:
    """SpecAugment as the reference applies it to every training clip at every access: one
    frequency band of up to ``freq_mask - 1`` bins, then one time band of up to ``time_mask - 1``
    frames, set to 0 (the features are normalised, so 0 is their mean, as in the reference, which
    masks after normalising). Four draws per clip from torch's global RNG, which the run seeds and
    its resume state restores.

    Written here because torchaudio, which has the masks, is not installable beside a CPU torch.
    """
    batch, frames, bins = x.shape
    draws = torch.rand(batch, 4)  # per clip: frequency width, start; time width, start
    x = x.clone()
    for (width, start), widest, size, dim in (
        ((draws[:, 0], draws[:, 1]), freq_mask, bins, 2),
        ((draws[:, 2], draws[:, 3]), time_mask, frames, 1),
    ):
        if widest <= 0:
            continue
        low, high = band(width, start, widest, size)
        pos = torch.arange(size).unsqueeze(0)
        mask = (pos >= low.unsqueeze(1)) & (pos < high.unsqueeze(1))  # (batch, size)
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
