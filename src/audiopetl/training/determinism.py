"""Where a run computes and how it is made repeatable: the device, the seeds, the thread count
and torch's deterministic algorithms."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from audiopetl.core import devices
from audiopetl.core.errors import TrainingError


def select_device(name: str) -> torch.device:
    """``auto``: CUDA, else Apple's MPS, else the CPU; a device asked for by name must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if devices.mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("training.device is cuda but no CUDA device is visible")
    if name == "mps" and not devices.mps_available():
        raise TrainingError(
            "training.device is mps but torch sees no Apple GPU (MPS needs an Apple-silicon "
            "Mac and torch >= 1.12 built with it); set it to auto or cpu"
        )
    return torch.device(name)


def make_deterministic(
    seed: int, threads: int, deterministic: bool, device: torch.device
) -> dict[str, Any]:
    """Seed everything, fix the thread count and enforce deterministic algorithms; return what
    was enforced, for run.json."""
    torch.set_num_threads(threads)
    if device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace; set before the first CUDA call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only on a GPU: a few (CUDA's fused attention, MPS's scatter and index kernels) have
    # no deterministic variant.
    warn_only = device.type != "cpu"
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = False
    seed_everything(seed)
    if not deterministic:
        enforced, bitwise = "no: training.deterministic is false", False
    elif warn_only:
        enforced = (
            f"where kernels allow: on {device.type.upper()} some kernels have no "
            "deterministic variant and only warn (warn_only), so reruns agree closely but not "
            "bitwise"
        )
        bitwise = False
    else:
        enforced = "every operation (torch.use_deterministic_algorithms)"
        bitwise = True
    return {
        "requested": deterministic,
        "enforced": enforced,
        "bitwise": bitwise,
        "threads": threads,
        "device": device.type,
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
