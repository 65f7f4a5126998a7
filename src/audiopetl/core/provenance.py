"""Where a result came from: code version, library versions, hardware, environment."""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audiopetl import __version__
from audiopetl.core.checksums import code_fingerprint

__all__ = ["code_fingerprint"]  # kept here too: where provenance is looked for

# Lock files of the pinned environments; their hash identifies the environment of a result.
LOCK_FILES = {"modern": "envs/modern.lock.txt", "legacy": "envs/legacy.lock.txt"}


# The code's own checkout (an editable install), not whatever folder the run started in.
CODE_DIR = Path(__file__).resolve().parent


def git_state(cwd: Path | None = CODE_DIR) -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def environment_name() -> str:
    """``AUDIOPETL_ENV`` when set (the conda and pip environments set it), else by torch."""
    name = os.environ.get("AUDIOPETL_ENV")
    if name:
        return name
    return "legacy" if torch.__version__.startswith("1.") else "modern"


def project_root() -> Path:
    """The checkout audiopetl runs from; the current folder for a non-editable install."""
    for folder in CODE_DIR.parents:
        if (folder / "pyproject.toml").is_file() and (folder / "envs").is_dir():
            return folder
    return Path.cwd()


def lock_hash(name: str, root: Path | None = None) -> str | None:
    if name not in LOCK_FILES:
        return None
    path = (root or project_root()) / LOCK_FILES[name]
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def versions() -> dict[str, str | None]:
    import transformers

    # From its metadata: importing peft costs a second of every job's start-up.
    try:
        peft_version: str | None = metadata.version("peft")
    except metadata.PackageNotFoundError:
        peft_version = None
    return {
        "audiopetl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "numpy": np.__version__,
    }


def hardware(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": None,
        "cuda": torch.version.cuda,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["compute_capability"] = list(torch.cuda.get_device_capability(device))
    return info


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = {"host_rss_mb": round(rss_kb / 1024.0, 1)}
    if device.type == "cuda":
        peak["gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


def command_line() -> list[str]:
    return list(sys.argv)


def run_record(
    *,
    cfg: Mapping[str, Any],
    run: Mapping[str, Any],
    device: torch.device,
    determinism: Mapping[str, Any] | None,
    runtime: Mapping[str, Any],
    data: Mapping[str, Any],
    weights: Mapping[str, Any],
    parameters: Mapping[str, int],
    interruptions: list[dict[str, Any]],
) -> dict[str, Any]:
    """run.json: everything a result came from. The same bytes for the same run on the same
    machine and software: timings go to :func:`execution_record` instead."""
    name = environment_name()
    return {
        "run": dict(run),
        "git": git_state(),
        "versions": versions(),
        "environment": {"name": name, "lock_sha256": lock_hash(name)},
        "hardware": hardware(device),
        "seed": run["seed"],
        "deterministic": determinism,
        # Precision, attention, compilation, where the data lived: how it computed.
        "runtime": dict(runtime),
        "data": dict(data),
        "weights": dict(weights),
        "parameters": dict(parameters),
        "interruptions": interruptions,
        "command": command_line(),
        "config": cfg,
    }


def execution_record(
    *,
    device: torch.device,
    training_seconds: float,
    wall_seconds: float,
    startup_seconds: float | None = None,
) -> dict[str, Any]:
    """execution.json: how long a run took where, and what it used. ``startup_seconds``: from
    the process's start to its first training step (imports, data, model); None where the
    process's start is unknown, or when a resumed run took no step."""
    return {
        "startup_seconds": startup_seconds,
        "training_seconds": round(training_seconds, 3),
        "wall_seconds": round(wall_seconds, 3),
        "peak_memory": peak_memory_mb(device),
        "host": platform.node(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
