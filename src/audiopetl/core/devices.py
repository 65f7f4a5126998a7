"""What the devices of this machine can do under the installed torch: fused AdamW, loss
scaling, Apple's MPS (autocast, memory, its generator), how much memory torch holds. Every
question the device decisions (audiopetl.training.runtime, .determinism) ask lives here, so a
test can answer them as a GPU or a Mac would (tests/test_runtime.py, tests/test_devices.py);
like audiopetl.core.compat, which keeps the other library differences, it hides torch 1.13's
gaps from the rest of the code."""

from __future__ import annotations

from typing import Any

import torch
from packaging.version import Version

TORCH_VERSION = Version(torch.__version__)


def fused_adamw_supported(device: torch.device) -> bool:
    """AdamW(fused=True): CUDA from torch 2.0, the CPU and Apple's MPS from torch 2.4; not in
    1.13."""
    if device.type == "cuda":
        return Version("2.0") <= TORCH_VERSION
    return device.type in ("cpu", "mps") and Version("2.4") <= TORCH_VERSION


# -- Apple's MPS: every question the device decisions ask of it, here so that they can be
# answered as an Apple-silicon Mac would (tests/test_devices.py) on a machine that has none.
def mps_available() -> bool:
    """An Apple GPU torch can use (torch >= 1.12 built with MPS, on a Mac that has one)."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


# MPS's generator state is readable from torch 2.0 (torch.mps); 1.13 seeds it but cannot save it.
MPS_GENERATOR = hasattr(torch, "mps")


def mps_bf16_autocast() -> bool:
    """bf16 autocast on MPS: torch >= 2.5 on macOS 14 and newer (the legacy 1.13 has no MPS
    autocast at all)."""
    if Version("2.5") > TORCH_VERSION:
        return False
    return bool(torch.backends.mps.is_macos_or_newer(14, 0))


def mps_memory_budget() -> int | None:
    """The memory Metal recommends a process use on this Mac (torch >= 2.5); None if unknown."""
    query = getattr(getattr(torch, "mps", None), "recommended_max_memory", None)
    return int(query()) if query is not None else None


def device_memory_bytes(device: torch.device) -> int | None:
    """What torch holds on ``device`` at most (CUDA) or now (MPS, which has no peak counter);
    None on the CPU, whose memory is the process's."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        query = getattr(getattr(torch, "mps", None), "current_allocated_memory", None)
        return int(query()) if query is not None else None
    return None


def adamw_kwargs(fused: bool) -> dict[str, Any]:
    """torch 1.13's AdamW has no ``fused`` argument at all."""
    return {"fused": True} if fused else {}


def storage_of(tensor: torch.Tensor) -> tuple[int, int]:
    """(address, bytes) of the memory a tensor views; ``untyped_storage`` arrived in torch 2.0
    (1.13's ``storage()`` is the same memory, and deprecated from 2.0)."""
    modern = hasattr(tensor, "untyped_storage")
    storage = tensor.untyped_storage() if modern else tensor.storage()
    return storage.data_ptr(), storage.nbytes()


def grad_scaler(enabled: bool) -> Any:
    """fp16 loss scaling; ``torch.amp.GradScaler`` replaced ``torch.cuda.amp`` in torch 2.3."""
    if Version("2.3") <= TORCH_VERSION:
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)
