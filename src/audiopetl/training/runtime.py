"""How a run computes on its device: precision, where the features live, the optimizer's
kernel, compilation. The config says what a user wants (``auto`` mostly); :func:`resolve`
turns it into what this machine will do, once, before training, and run.json records it.

Nothing here changes *what* is learned beyond rounding: a bf16 run and an fp32 run of the
same settings agree within the tolerance the tests hold (tests/test_runtime.py).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from audiopetl.core import compat, devices
from audiopetl.core.errors import TrainingError
from audiopetl.core.settings import TrainingSettings

log = logging.getLogger(__name__)

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Features on the device in float16: a fold set of ESC-50 (2000 clips x 512 x 128) is 262 MB.
# auto keeps them on the host when they would take more than this share of the device.
DEVICE_DATA_SHARE = 0.25


@dataclass(frozen=True)
class Runtime:
    """The resolved choices; ``asdict`` of it is run.json's ``runtime``."""

    precision: str  # what ran: fp32 | bf16 | fp16
    precision_requested: str
    grad_scaler: bool  # fp16 loss scaling
    tf32: bool  # on CUDA only; False on the CPU whatever the config says
    attention: str  # the attention implementation the model really uses
    data_on_device: bool
    fused_optimizer: bool
    compile: bool
    log_every_steps: int
    # The features read from disk a batch at a time (training.stream), not held in memory.
    streamed: bool = False
    # Activations recomputed in the backward pass (training.gradient_checkpointing).
    gradient_checkpointing: bool = False

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES[self.precision]

    def record(self) -> dict[str, Any]:
        return asdict(self)


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto``: bf16 where the device has it (fp16 with loss scaling on an older CUDA GPU),
    else fp32. fp16 needs CUDA (its loss scaling is CUDA's); bf16 on MPS needs torch's MPS
    autocast (torch >= 2.5, macOS 14)."""
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "mps":
            return "bf16" if devices.mps_bf16_autocast() else "fp32"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise TrainingError("training.precision fp16 needs a CUDA device; use bf16 or fp32")
    if requested == "bf16" and device.type == "mps" and not devices.mps_bf16_autocast():
        raise TrainingError(
            f"training.precision bf16 on MPS needs torch >= 2.5 on macOS 14 or newer (this is "
            f"torch {torch.__version__}); use auto or fp32"
        )
    return requested


def resolve_fused(requested: str | bool, device: torch.device) -> bool:
    """``auto``: fused AdamW on a GPU (CUDA, MPS) where torch has it; on the CPU the fused
    kernel gains nothing over the default, so auto keeps the default there."""
    supported = devices.fused_adamw_supported(device)
    if requested == "auto":
        return supported and device.type in ("cuda", "mps")
    if requested is True and not supported:
        raise TrainingError(
            f"training.fused_optimizer: torch {torch.__version__} has no fused AdamW on "
            f"{device.type} (CUDA needs torch >= 2.0, the CPU and MPS >= 2.4); set it to auto"
        )
    return bool(requested)


def device_memory_budget(device: torch.device) -> int | None:
    """The memory the device offers a process: a CUDA GPU's own, what Metal recommends on a Mac
    (shared with the host); None on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "mps":
        return devices.mps_memory_budget()
    return None


def resolve(
    settings: TrainingSettings,
    device: torch.device,
    attention: str,
    feature_bytes: int,
    streamed: bool = False,
) -> Runtime:
    """What this run will do on ``device``; an impossible request is a TrainingError."""
    if settings.compile and not compat.HAS_COMPILE:
        raise TrainingError(
            f"training.compile needs torch >= 2.0 (this environment has {torch.__version__}); "
            "set it to false"
        )
    precision = resolve_precision(settings.precision, device)
    on_device = settings.data_on_device
    if on_device == "auto":
        budget = device_memory_budget(device)
        on_device = budget is not None and feature_bytes <= DEVICE_DATA_SHARE * budget
    return Runtime(
        precision=precision,
        precision_requested=settings.precision,
        grad_scaler=precision == "fp16",
        tf32=bool(settings.tf32) and device.type == "cuda",
        attention=attention,
        data_on_device=bool(on_device),
        fused_optimizer=resolve_fused(settings.fused_optimizer, device),
        compile=bool(settings.compile),
        log_every_steps=int(settings.log_every_steps),
        streamed=streamed,
    )


def apply_matmul_settings(runtime: Runtime, device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = runtime.tf32
        torch.backends.cudnn.allow_tf32 = runtime.tf32


def compiled(model: nn.Module, runtime: Runtime) -> nn.Module:
    """The module the loop calls: ``model`` itself, or a compiled wrapper of it that shares its
    parameters (state dicts and strategies keep working on ``model``)."""
    if not runtime.compile:
        return model
    log.info("compiling the model's forward pass (torch.compile); the first steps are slower")
    return compat.compile_module(model)


def memory_figures(device: torch.device) -> dict[str, float]:
    """What the trackers show of memory: what torch holds on the GPU (its peak on CUDA), else
    the process's peak resident set on the host."""
    held = devices.device_memory_bytes(device)
    if held is not None:
        return {"device/memory_mb": held / 2**20}
    import resource

    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"host/max_rss_mb": peak / (2**20 if sys.platform == "darwin" else 2**10)}
