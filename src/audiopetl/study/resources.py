"""What each job of the study asks a scheduler for: the configured `resources`, a training
job's model overriding them, in the names the SLURM executor plugin reads.

``job_resources`` and ``snakemake_resources`` are what the workflow's rules ask for
(rules/common.smk) and what `audiopetl plan` shows, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# What snakemake_resources returns: the resources of every rule (rules/common.smk).
RESOURCE_NAMES = ("mem_mb", "runtime", "cpus_per_task", "gres", "gpu", "gpu_model", "slurm_extra")


def job_resources(
    resources: Mapping[str, Any], kind: str, model: str | None = None
) -> dict[str, Any]:
    """The configured resources (the `resources` block) of a job of ``kind`` (data, train,
    report); a training job's model may override them under ``resources.models``."""
    settings = dict(resources[kind])
    if kind == "train" and model is not None:
        settings.update((resources.get("models") or {}).get(model) or {})
    return settings


def runtime_of(settings: Mapping[str, Any], attempt: int) -> int:
    """Minutes of an attempt: ``runtime`` for the first, ``retry_runtime`` (when set) after."""
    retry = settings.get("retry_runtime")
    return int(retry if attempt > 1 and retry else settings["runtime"])


def snakemake_resources(
    settings: Mapping[str, Any], threads: int, attempt: int = 1
) -> dict[str, Any]:
    """Snakemake resource names and values for ``settings`` (None: not requested), as the
    SLURM executor plugin reads them: gres replaces gpu and gpu_model; the warning signal goes
    through slurm_extra. SIGTERM, not SIGUSR1: it reaches every process of the job step, and the
    Snakemake process that runs the job inside it waits for the training on SIGTERM but would
    die at once on SIGUSR1 (a signal for the batch shell only ends the whole job instead)."""
    gres = settings.get("gres")
    gpus = settings.get("gpu") or 0
    signal_s = settings.get("signal_before_s") or 0
    return {
        "mem_mb": settings["mem_mb"],
        "runtime": runtime_of(settings, attempt),
        "cpus_per_task": settings.get("cpus_per_task") or threads,
        "gres": gres or None,
        "gpu": gpus if gpus and not gres else None,
        "gpu_model": settings.get("gpu_model") if gpus and not gres else None,
        "slurm_extra": f"--signal=TERM@{signal_s}" if signal_s else None,
    }


def describe_resources(settings: Mapping[str, Any], threads: int) -> str:
    res = snakemake_resources(settings, threads)
    minutes = f"{res['runtime']} min"
    if runtime_of(settings, 2) != res["runtime"]:
        minutes += f" ({runtime_of(settings, 2)} min a retry)"
    parts = [f"{res['cpus_per_task']} cpu", f"{res['mem_mb']} MB", minutes]
    if res["gres"]:
        parts.append(f"gres {res['gres']}")
    elif res["gpu"]:
        parts.append(f"{res['gpu']} gpu" + (f" ({res['gpu_model']})" if res["gpu_model"] else ""))
    return ", ".join(parts)
