"""The study's jobs before they run: what each asks a scheduler for, how long each will take,
and whether it fits the time limit of one attempt.

``job_resources`` and ``snakemake_resources`` are also what the workflow's rules ask for
(rules/common.smk), so the plan and the SLURM jobs cannot disagree. A runtime estimate is the
samples to process over samples per second: from a given figure (``--samples-per-s``, e.g. read
off a run's history.csv) or from a short measurement (a few training steps of the configured
model on random input of the configured shape, on this machine's device).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from audiopetl.core.config import (
    dataset_config,
    feature_settings,
    model_config,
    strategy_config,
    training_settings,
)
from audiopetl.core.errors import DataError, TrainingError
from audiopetl.core.paths import manifest_path, mirror_dir

# ESC-50 v2.0.0: 40 clips per class and fold, 50 classes, 5 folds.
ESC50_CLASSES, ESC50_CLIPS_PER_FOLD = 50, 400
# Evaluation (forward only) against training (forward, backward, optimiser step) when only a
# training figure is given: the backward pass costs about twice the forward one.
EVAL_SPEEDUP = 3.0
# Per attempt: interpreter, torch and data loading, model building.
STARTUP_S = 60
# SLURM checks its signal timers about every 30 s: a warning may come up to a minute early.
SIGNAL_SLACK_S = 60
# The project's SLURM profile, whose retries resume a long run.
DEFAULT_PROFILE = Path("workflow/profiles/slurm/config.yaml")
# What snakemake_resources returns: the resources of every rule (rules/common.smk).
RESOURCE_NAMES = ("mem_mb", "runtime", "cpus_per_task", "gres", "gpu", "gpu_model", "slurm_extra")


def job_resources(cfg: Mapping[str, Any], kind: str, model: str | None = None) -> dict[str, Any]:
    """The configured resources of a job of ``kind`` (data, train, report); a training job's
    model may override them under ``resources.models``. Unset values are None."""
    settings = dict(cfg["resources"][kind])
    if kind == "train" and model is not None:
        settings.update((cfg["resources"].get("models") or {}).get(model) or {})
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


# -- the job matrix -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingJob:
    rule: str  # train or pretrain
    dataset: str
    model: str
    strategy: str
    seed: int
    fold: int  # the test fold
    settings: Mapping[str, Any]  # training settings of the run
    clips: tuple[int, int, int]  # train, validation, test clips

    @property
    def name(self) -> str:
        if self.rule == "pretrain":
            return f"pretrain {self.model} ({self.dataset})"
        return f"train {self.dataset}/{self.model}/{self.strategy}/seed{self.seed}/fold{self.fold}"


def fold_sizes(cfg: Mapping[str, Any], dataset: str) -> tuple[dict[int, int], int]:
    """Clips per fold and the number of classes: from the manifest when the dataset has been
    fetched, else from the dataset's config."""
    path = manifest_path(cfg, dataset)
    if path.is_file():
        import pandas as pd

        manifest = pd.read_csv(path, usecols=["fold", "label"])
        counts = manifest["fold"].value_counts()
        return {int(f): int(n) for f, n in counts.items()}, int(manifest["label"].max()) + 1
    settings = dataset_config(cfg, dataset)
    kind = settings["kind"]
    if kind == "synthetic":
        syn = settings["synthetic"]
        per_fold = syn["classes"] * syn["clips_per_class_per_fold"]
        return {f: per_fold for f in range(1, syn["folds"] + 1)}, syn["classes"]
    if kind == "esc50":
        return {f: ESC50_CLIPS_PER_FOLD for f in range(1, 6)}, ESC50_CLASSES
    raise DataError(
        f"{path}: not found; a {kind} dataset's size comes from its files: run "
        f"`audiopetl fetch {dataset}` first"
    )


def split_clips(sizes: Mapping[int, int], test_fold: int, scheme: str) -> tuple[int, int, int]:
    from audiopetl.training.trainer import split_folds

    splits = split_folds(list(sizes), test_fold, scheme)
    return tuple(sum(sizes[f] for f in part) for part in (splits.train, splits.val, splits.test))


def study_jobs(cfg: Mapping[str, Any]) -> list[TrainingJob]:
    """Every training job of the study: each model's source-task pretraining, then one run per
    dataset x model x strategy x seed x fold, in the workflow's order."""
    study = cfg["study"]
    sizes = {d: fold_sizes(cfg, d)[0] for d in study["datasets"]}
    jobs: list[TrainingJob] = []
    for model in study["models"]:
        pretrain = model_config(cfg, model).get("pretrain")
        if pretrain:
            settings = training_settings(cfg, pretrain["strategy"])
            settings.update(split="train_test", epochs=pretrain.get("epochs", settings["epochs"]))
            source = fold_sizes(cfg, pretrain["dataset"])[0]
            clips = split_clips(source, 1, "train_test")
            job = TrainingJob(
                "pretrain",
                pretrain["dataset"],
                model,
                pretrain["strategy"],
                int(pretrain.get("seed", 0)),
                1,
                settings,
                clips,
            )
            jobs.append(job)
    for d in study["datasets"]:
        for m in study["models"]:
            for s in study["strategies"]:
                settings = training_settings(cfg, s)
                for seed in study["seeds"]:
                    for fold in study["folds"]:
                        clips = split_clips(sizes[d], fold, settings["split"])
                        jobs.append(TrainingJob("train", d, m, s, seed, fold, settings, clips))
    return jobs


# -- throughput ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Throughput:
    train: float  # training samples per second
    evaluate: float  # evaluation samples per second
    source: str  # how it was obtained
    device: str | None = None  # where it was measured; None: given
    # Training's peak memory: on a GPU what torch allocated at most (weights, gradients,
    # optimiser state, activations); on a CPU the process's resident-set growth while the model
    # was built and trained (measured in a forked process of its own). None: not measured.
    peak_bytes: int | None = None


def given_throughput(samples_per_s: float) -> Throughput:
    return Throughput(
        samples_per_s,
        samples_per_s * EVAL_SPEEDUP,
        f"given: {samples_per_s:g} training samples/s, evaluation assumed {EVAL_SPEEDUP:g}x faster",
    )


def measure_throughput(
    cfg: Mapping[str, Any],
    job: TrainingJob,
    steps: int = 5,
    warmup: int = 2,
    num_classes: int | None = None,
) -> Throughput:
    """Time a few optimiser steps and evaluation batches of the job's model and strategy on
    random input of its feature shape, on the device its training settings select, and take
    training's peak memory. On a CPU this runs in a forked process, so each model's peak is
    its own (a process's high-water mark never comes down)."""
    from audiopetl.training.trainer import select_device

    if select_device(job.settings["device"]).type != "cpu" or not hasattr(os, "fork"):
        return _measure(cfg, job, steps, warmup, num_classes)
    return _in_child(lambda: _measure(cfg, job, steps, warmup, num_classes))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _in_child(work: Any) -> Any:
    """``work()`` in a forked child; its result (or its error) comes back pickled. A child's
    resource usage starts afresh (fork(2)), so its peak RSS is its own."""
    import pickle

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            result: Any = work()
        except BaseException as err:  # sent to the parent, which raises it
            result, code = err, 1
        with os.fdopen(write_end, "wb") as out:
            pickle.dump(result, out)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as incoming:
        payload = incoming.read()
    _, status = os.waitpid(pid, 0)
    if not payload:
        raise TrainingError(f"plan --measure: the measuring process died (status {status})")
    result = pickle.loads(payload)
    if isinstance(result, BaseException):
        raise result
    return result


def _measure(
    cfg: Mapping[str, Any],
    job: TrainingJob,
    steps: int,
    warmup: int,
    num_classes: int | None,
) -> Throughput:
    import resource

    import torch
    import torch.nn.functional as F

    from audiopetl.core import compat
    from audiopetl.features.frontends import input_shape
    from audiopetl.models.build import build_model
    from audiopetl.models.hub import MIRROR_RECORD, is_hub_id, verify_mirror
    from audiopetl.models.strategies import get_strategy
    from audiopetl.training.runtime import AMP_DTYPES, resolve_precision
    from audiopetl.training.trainer import make_deterministic, select_device

    s = job.settings
    features = feature_settings(cfg, job.dataset, job.model)
    model_cfg = model_config(cfg, job.model)
    if num_classes is None:
        num_classes = fold_sizes(cfg, job.dataset)[1]
    # The shape is what costs time, not the weights: a model pretrained by the workflow is
    # measured from its architecture, a hub checkpoint from its local mirror.
    source = None if model_cfg.get("pretrain") else model_cfg.get("pretrained")
    if source is not None and is_hub_id(source):
        mirror = mirror_dir(cfg, job.model)
        if not (mirror / MIRROR_RECORD).is_file():
            raise TrainingError(
                f"models.{job.model}.pretrained: {source!r} is not mirrored in {mirror}; run "
                f"`audiopetl fetch-model --model {job.model}` first, or give --samples-per-s"
            )
        verify_mirror(cfg, job.model)
        source = str(mirror)
    device = select_device(s["device"])
    make_deterministic(job.seed, s["threads"], False, device)
    rss_before = _rss_bytes() if device.type == "cpu" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with warnings.catch_warnings():  # library deprecation notes are noise in a plan
        warnings.simplefilter("ignore", FutureWarning)
        model = get_strategy(strategy_config(cfg, job.strategy)).apply(
            build_model(model_cfg, features, num_classes, source)
        )
    model = model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)
    dtype = AMP_DTYPES[resolve_precision(s["precision"], device)]  # what training will use
    shape = input_shape(features)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if dtype is None:
            return model(input_values=x).logits.float()
        with torch.autocast(device_type=device.type, dtype=dtype):
            return model(input_values=x).logits.float()

    def timed(n: int, step: Any, batch: int) -> float:
        for i in range(warmup + n):
            if i == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
            step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n * batch / (time.perf_counter() - started)

    def train_step(batch: int) -> None:
        x = torch.randn(batch, *shape, device=device)
        y = torch.randint(0, num_classes, (batch,), device=device)
        optimizer.zero_grad(set_to_none=True)
        with compat.backward_guard():
            F.cross_entropy(forward(x), y).backward()
        optimizer.step()

    @torch.no_grad()
    def eval_step(batch: int) -> None:
        forward(torch.randn(batch, *shape, device=device))

    model.train()
    train_sps = timed(steps, train_step, s["batch_size"])
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    else:  # ru_maxrss is in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    model.eval()
    eval_sps = timed(steps, eval_step, s["eval_batch_size"])
    memory = "GPU memory allocated" if device.type == "cuda" else "CPU memory (RSS growth)"
    return Throughput(
        train_sps,
        eval_sps,
        f"of {job.model}/{job.strategy} on {job.dataset}'s input measured on {device}: "
        f"{train_sps:.1f} training, {eval_sps:.1f} evaluation samples/s, training peak "
        f"{memory} {peak / 2**30:.2f} GiB at batch {s['batch_size']}",
        device.type,
        peak,
    )


# -- estimates and the plan ---------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    job: TrainingJob
    resources: dict[str, Any]
    seconds: float | None  # None: no throughput given
    attempts: int | None
    throughput: Throughput | None


def estimate_seconds(job: TrainingJob, throughput: Throughput) -> float:
    """Training and per-epoch validation for every epoch, then one test pass."""
    train, val, test = job.clips
    epochs = job.settings["epochs"]
    per_epoch = train / throughput.train + val / throughput.evaluate
    return epochs * per_epoch + test / throughput.evaluate


def warned(resources: Mapping[str, Any], attempt: int) -> bool:
    """Whether SLURM warns an attempt before its limit: not when the warning would come
    before the job starts (signal_before_s not shorter than the limit); the job then trains
    until it is killed at its limit, and the next attempt resumes from its last epoch."""
    signal_s = resources.get("signal_before_s") or 0
    return 0 < signal_s < runtime_of(resources, attempt) * 60


def attempt_seconds(resources: Mapping[str, Any], attempt: int) -> float:
    """Training time an attempt gives: its time limit less start-up, and less the early
    warning and SLURM's slack in sending it where there is one."""
    limit = runtime_of(resources, attempt) * 60
    if warned(resources, attempt):
        limit -= (resources.get("signal_before_s") or 0) + SIGNAL_SLACK_S
    return limit - STARTUP_S


def attempts_needed(resources: Mapping[str, Any], seconds: float) -> int | None:
    """Attempts a run of ``seconds`` needs; None when an attempt leaves no training time."""
    first, later = attempt_seconds(resources, 1), attempt_seconds(resources, 2)
    if first <= 0 or later <= 0:
        return None
    return 1 + max(0, math.ceil((seconds - first) / later))


def profile_retries(profile: Path) -> int | None:
    """``retries`` of a Snakemake profile's config.yaml; None when there is no such file."""
    if not profile.is_file():
        return None
    settings = yaml.safe_load(profile.read_text()) or {}
    return int(settings.get("retries", 0) or 0)


def make_plan(
    cfg: Mapping[str, Any],
    samples_per_s: float | None = None,
    measure: bool = False,
) -> list[Estimate]:
    jobs = study_jobs(cfg)
    measured: dict[tuple[str, str, str, str], Throughput] = {}
    estimates = []
    for job in jobs:
        resources = job_resources(cfg, "train", job.model)
        throughput = None
        if samples_per_s is not None:
            throughput = given_throughput(samples_per_s)
        elif measure:
            key = (job.dataset, job.model, job.strategy, job.rule)
            if key not in measured:
                measured[key] = measure_throughput(cfg, job)
            throughput = measured[key]
        seconds = attempts = None
        if throughput is not None:
            seconds = estimate_seconds(job, throughput)
            attempts = attempts_needed(resources, seconds)
        estimates.append(Estimate(job, resources, seconds, attempts, throughput))
    return estimates


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5940 else f"{seconds / 3600:.1f} h"


def format_plan(
    cfg: Mapping[str, Any], estimates: list[Estimate], retries: int | None, profile: Path
) -> tuple[str, list[str]]:
    """The table of jobs, and the warnings (jobs that will not fit one attempt)."""
    threads = cfg["training"]["threads"]
    header = f"{'job':<52} {'clips tr/va/te':>15} {'epochs':>6} {'estimate':>10} {'attempts':>8}"
    lines = [
        f"Study {cfg['experiment']!r}: {len(estimates)} training jobs, each a SLURM job with "
        "`snakemake --profile slurm`",
        header,
    ]
    for e in estimates:
        clips = "/".join(str(n) for n in e.job.clips)
        est = _minutes(e.seconds) if e.seconds is not None else "-"
        attempts = str(e.attempts) if e.attempts is not None else "-"
        lines.append(
            f"{e.job.name:<52} {clips:>15} {e.job.settings['epochs']:>6} {est:>10} {attempts:>8}"
        )
    per_model: dict[str, str] = {}
    for e in estimates:
        per_model.setdefault(e.job.model, describe_resources(e.resources, threads))
    for model, text in per_model.items():
        lines.append(f"resources of {model}'s training jobs: {text} per attempt")
    sources = {e.throughput.source for e in estimates if e.throughput is not None}
    lines.extend(f"throughput {text}" for text in sorted(sources))
    lines += _memory_table(estimates)
    known = [e.seconds for e in estimates if e.seconds is not None]
    if known:
        gpus = sum((e.seconds or 0) * (e.resources.get("gpu") or 0) for e in estimates) / 3600
        total = f"total: about {_minutes(sum(known))} of training"
        lines.append(total + (f", {gpus:.1f} GPU-hours" if gpus else ""))
    else:
        lines.append("no runtime estimates: give --samples-per-s or --measure")

    notes: list[tuple[str | None, str]] = []  # (job, what to say of it)
    if any(
        e.throughput and e.throughput.device == "cpu" and e.resources.get("gpu") for e in estimates
    ):
        notes.append(
            (
                None,
                "measured on the CPU, but the training jobs ask for GPUs: run `audiopetl plan "
                "--measure` on a GPU node (e.g. under srun --gpus=1) for estimates that hold "
                "there",
            )
        )
    for e in estimates:
        if e.seconds is None:
            continue
        limit = e.resources["runtime"]
        own = (cfg["resources"].get("models") or {}).get(e.job.model) or {}
        where = f"resources.models.{e.job.model}" if "runtime" in own else "resources.train"
        key = f"{where}.runtime"
        if e.attempts is None:
            notes.append(
                (
                    e.job.name,
                    f"an attempt of {limit} (or retry_runtime) minutes leaves no training time "
                    f"after start-up ({STARTUP_S} s): raise {key}",
                )
            )
            continue
        if e.attempts <= 1:
            continue
        stop = (
            "stopped and resumed"
            if warned(e.resources, 1)
            else "killed at its limit (signal_before_s is not shorter than the limit, so SLURM "
            "gives no warning) and resumed from its last epoch"
        )
        text = (
            f"about {_minutes(e.seconds)}, longer than the SLURM time limit of one "
            f"attempt ({key}: {limit} min): it will be {stop} {e.attempts - 1} time(s)"
        )
        if retries is not None and e.attempts - 1 > retries:
            text += (
                f", more than the {retries} retries of {profile}: raise {key} or "
                f"{where}.retry_runtime (up to your partition's limit) or retries"
            )
        elif retries is not None:
            text += f" (the profile allows {retries} retries)"
        notes.append((e.job.name, text))
    return "\n".join(lines), _grouped(notes)


def _memory_table(estimates: list[Estimate]) -> list[str]:
    """Measured peak training memory per model and strategy: what fits a given card."""
    peaks: dict[tuple[str, str], tuple[int, int, str]] = {}
    for e in estimates:
        t = e.throughput
        if t is not None and t.peak_bytes is not None:
            peaks[(e.job.model, e.job.strategy)] = (
                t.peak_bytes,
                e.job.settings["batch_size"],
                t.device or "",
            )
    if not peaks:
        return []
    devices = {device for _, _, device in peaks.values()}
    what = "GPU memory allocated" if devices == {"cuda"} else "memory (GPU: allocated; CPU: RSS)"
    lines = [f"peak training {what}, per model and strategy:"]
    width = max(len(m) for m, _ in peaks) + 2
    for (model, strategy), (peak, batch, _) in peaks.items():
        lines.append(f"  {model:<{width}}{strategy:<24}{peak / 2**30:>7.2f} GiB at batch {batch}")
    return lines


def _grouped(notes: list[tuple[str | None, str]]) -> list[str]:
    """One line per thing to say, naming the jobs it concerns (a study's identical runs would
    otherwise repeat it once each)."""
    jobs: dict[str, list[str]] = {}
    for job, text in notes:
        jobs.setdefault(text, [])
        if job is not None:
            jobs[text].append(job)
    lines = []
    for text, names in jobs.items():
        if not names:
            lines.append(text)
        elif len(names) == 1:
            lines.append(f"{names[0]}: {text}")
        else:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            lines.append(f"{len(names)} jobs ({shown}): {text}")
    return lines
