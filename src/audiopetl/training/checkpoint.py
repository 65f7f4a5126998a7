"""The resume checkpoint: the whole training state, saved atomically, loaded without pickle code.

Everything that influences the rest of a run goes in: trainable weights, optimizer, scheduler,
grad scaler, every RNG state, the position in the data order, the history and the best
weights so far. Restored, a run continues bitwise identically to one never interrupted.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audiopetl.core import compat, devices
from audiopetl.core.atomic import atomic_path
from audiopetl.core.errors import TrainingError

FORMAT = 2
STATE_FILE = "state.pt"


def rng_state() -> dict[str, Any]:
    # numpy's state holds an ndarray; it travels as a tensor so weights_only loading accepts it.
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if devices.MPS_GENERATOR and devices.mps_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and devices.MPS_GENERATOR and devices.mps_available():
        torch.mps.set_rng_state(state["mps"])


def _encode(value: Any, tensors: list[torch.Tensor]) -> Any:
    """JSON-able skeleton of ``value`` with tensors replaced by their index in ``tensors``.

    Why not torch.save the nested state directly: torch 1.13's weights_only loader refuses
    pickled floats (opcode BINFLOAT), and optimizer and history state are full of them. A JSON
    string plus a flat list of tensors loads safely on every torch we support. Tuples and dicts
    with non-string keys (the optimizer's parameter indices) keep their types.
    """
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return {"__tensor__": len(tensors) - 1}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a resume checkpoint")


def _decode(value: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        if "__items__" in value:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
        return {k: _decode(v, tensors) for k, v in value.items()}
    return value


class _GuardedWriter:
    """The file object torch.save writes into: it passes every chunk on to the real file and,
    when a write fails (a full disk, a read-only folder), keeps the first error and swallows
    that chunk and the rest, so the error never crosses into torch's C++ writer (torch 1.13
    aborts the whole process on one). :func:`save_state` raises it once torch.save returns."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes | memoryview) -> int:
        if self.error is None:
            try:
                self.file.write(data)
            except OSError as err:
                self.error = err
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self.file.flush()
            except OSError as err:
                self.error = err


def save_state(folder: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``folder/state.pt`` atomically, streamed: torch.save writes each
    tensor into the temporary file as it serialises it, so no copy of the whole state is held
    in memory (a full fine-tuning's is ~1 GB for AST-base)."""
    target = folder / STATE_FILE
    tensors: list[torch.Tensor] = []
    skeleton = json.dumps(_encode(state, tensors))
    with atomic_path(target, ".pt") as tmp, open(tmp, "wb") as file:
        writer = _GuardedWriter(file)
        torch.save({"format": FORMAT, "skeleton": skeleton, "tensors": tensors}, writer)
        if writer.error is not None:
            raise writer.error
    return target


def load_state(path: Path) -> dict[str, Any]:
    """Load a checkpoint; a file carrying pickled code is refused, never executed."""
    try:
        state = compat.safe_torch_load(path)
    except pickle.UnpicklingError as err:
        raise TrainingError(
            f"{path}: refused to load: it holds objects other than tensors and plain data "
            f"(weights_only): {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise TrainingError(f"{path}: unreadable checkpoint: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingError(f"{path}: not an audiopetl resume checkpoint of format {FORMAT}")
    return _decode(json.loads(state["skeleton"]), state["tensors"])
