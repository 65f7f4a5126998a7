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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from audiopetl.core.embedding import trains_on_embeddings
from audiopetl.core.errors import DataError
from audiopetl.core.settings import TrainingSettings
from audiopetl.core.sweeps import method_of
from audiopetl.data.datasets import get_kind
from audiopetl.data.splits import get_scheme
from audiopetl.data.splits.base import fold_of
from audiopetl.data.splits.folds import split_folds
from audiopetl.study.measure import Throughput, given_throughput, measure_throughput
from audiopetl.study.resources import describe_resources, job_resources, runtime_of
from audiopetl.study.study import Study

# Per attempt: interpreter, torch and data loading, model building.
STARTUP_S = 60
# SLURM checks its signal timers about every 30 s: a warning may come up to a minute early.
SIGNAL_SLACK_S = 60
# The project's SLURM profile, whose retries resume a long run.
DEFAULT_PROFILE = Path("workflow/profiles/slurm/config.yaml")


# -- the job matrix -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingJob:
    rule: str  # train, pretrain, or embed (a probe's embeddings: one evaluation pass)
    dataset: str
    model: str
    strategy: str
    seed: int
    split: str  # fold3, official
    settings: TrainingSettings  # training settings of the run
    clips: tuple[int, int, int]  # train, validation, test clips
    # A sweep's winner on a split after its first (sweep_select_on: first_fold): its method;
    # `strategy` is then the sweep's first variant, which stands in for it in the estimates.
    winner_of: str | None = None

    @property
    def name(self) -> str:
        if self.rule == "pretrain":
            return f"pretrain {self.model} ({self.dataset})"
        if self.rule == "embed":
            return f"embed {self.dataset}/{self.model}"
        strategy = self.strategy if self.winner_of is None else f"{self.winner_of}:winner"
        return f"train {self.dataset}/{self.model}/{strategy}/seed{self.seed}/{self.split}"


def dataset_shape(study: Study, dataset: str) -> tuple[Any, int]:
    """The dataset's manifest when it has been fetched (else None) and its number of classes
    (from the manifest, else from what its kind says of its settings)."""
    path = study.manifest_path(dataset)
    if path.is_file():
        from audiopetl.data.manifest import class_names, read_manifest

        manifest = read_manifest(path)
        return manifest, len(class_names(manifest))
    settings = study.dataset(dataset)
    planned = get_kind(settings.kind).planned_sizes(settings.options)
    if planned is None:
        raise DataError(
            f"{path}: not found; a {settings.kind} dataset's size comes from its files: run "
            f"`audiopetl fetch {dataset}` first"
        )
    return None, planned[1]


def split_clips(study: Study, dataset: str, split: str, rule: str) -> tuple[int, int, int]:
    """Training, validation and test clips of one split: by the dataset's scheme over its
    manifest, or (not fetched yet) from its kind's planned fold sizes."""
    settings = study.dataset(dataset)
    manifest, _ = dataset_shape(study, dataset)
    if manifest is not None:
        return get_scheme(settings.scheme).splits(manifest, split, rule).sizes()
    planned = get_kind(settings.kind).planned_parts(settings.options, settings.scheme)
    if planned is not None:
        sizes, test = planned
        folds = split_folds(list(sizes), test if split == "official" else fold_of(split), rule)
        return tuple(sum(sizes[f] for f in part) for part in (folds.train, folds.val, folds.test))
    raise DataError(
        f"{study.manifest_path(dataset)}: not found; dataset {dataset!r}'s "
        f"{settings.scheme} split comes from its files: run `audiopetl fetch {dataset}` first"
    )


def study_jobs(study: Study) -> list[TrainingJob]:
    """Every training job of the study: each model's source-task pretraining, then one run per
    dataset x model x strategy x seed x split, in the workflow's order."""
    matrix = study.config["study"]
    jobs: list[TrainingJob] = []
    for model in matrix["models"]:
        pretrain = study.model(model).pretrain
        if pretrain is not None:
            split = study.split_names(pretrain.dataset, [1])[0]
            clips = split_clips(study, pretrain.dataset, split, "train_test")
            settings = study.pretraining(model)
            job = TrainingJob(
                "pretrain", pretrain.dataset, model, pretrain.strategy, pretrain.seed, split,
                settings, clips,
            )  # fmt: skip
            jobs.append(job)
    # A probe's embeddings: every clip through the backbone once per dataset and model (the
    # test clips of the estimate), before its runs.
    probes = [s for s in matrix["strategies"] if trains_on_embeddings(study.strategy(s))]
    for d in matrix["datasets"] if probes else []:
        split = study.split_names(d)[0]
        every = sum(split_clips(study, d, split, study.training(probes[0]).split))
        for m in matrix["models"]:
            settings = study.training(probes[0])
            jobs.append(TrainingJob("embed", d, m, probes[0], 0, split, settings, (0, 0, every)))
    # A sweep selected on its first split runs every variant there and one winner (not known
    # yet: counted with its first variant's settings) on each other split.
    first_fold = {method for method in study.sweeps() if study.select_on(method) == "first_fold"}
    for d in matrix["datasets"]:
        splits = study.split_names(d)
        for m in matrix["models"]:
            for s in matrix["strategies"]:
                settings = study.training(s)
                method = method_of(study.config, s)
                for seed in matrix["seeds"]:
                    for split in splits:
                        winner_of = None
                        if method in first_fold and split != splits[0]:
                            if s != next(iter(study.sweeps()[method]["variants"])):
                                continue
                            winner_of = method
                        clips = split_clips(study, d, split, settings.split)
                        jobs.append(
                            TrainingJob("train", d, m, s, seed, split, settings, clips, winner_of)
                        )
    return jobs


# -- estimates and the plan ---------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    job: TrainingJob
    resources: dict[str, Any]
    seconds: float | None  # None: no throughput given
    attempts: int | None
    throughput: Throughput | None


def estimate_seconds(job: TrainingJob, throughput: Throughput) -> float:
    """Training and per-epoch validation for every epoch, then one test pass (an embed job:
    that pass alone, over every clip)."""
    train, val, test = job.clips
    if job.rule == "embed":
        return test / throughput.evaluate
    epochs = job.settings.epochs
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
    study: Study,
    samples_per_s: float | None = None,
    measure: bool = False,
) -> list[Estimate]:
    jobs = study_jobs(study)
    measured: dict[tuple[str, str, str, str], Throughput] = {}
    estimates = []
    for job in jobs:
        resources = job_resources(study.config["resources"], "train", job.model)
        throughput = None
        if samples_per_s is not None:
            throughput = given_throughput(samples_per_s)
        elif measure:
            key = (job.dataset, job.model, job.strategy, job.rule)
            if key not in measured:
                classes = dataset_shape(study, job.dataset)[1]
                measured[key] = measure_throughput(study, job, num_classes=classes)
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
    study: Study, estimates: list[Estimate], retries: int | None, profile: Path
) -> tuple[str, list[str]]:
    """The table of jobs, and the warnings (jobs that will not fit one attempt)."""
    cfg = study.config
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
        epochs = "-" if e.job.rule == "embed" else e.job.settings.epochs
        attempts = str(e.attempts) if e.attempts is not None else "-"
        lines.append(f"{e.job.name:<52} {clips:>15} {epochs:>6} {est:>10} {attempts:>8}")
    per_model: dict[str, str] = {}
    for e in estimates:
        per_model.setdefault(e.job.model, describe_resources(e.resources, threads))
    for model, text in per_model.items():
        lines.append(f"resources of {model}'s training jobs: {text} per attempt")
    sources = {e.throughput.source for e in estimates if e.throughput is not None}
    lines.extend(f"throughput {text}" for text in sorted(sources))
    lines += _memory_table(estimates)
    lines += checkpointing_lines(estimates)
    lines += split_lines(study)
    known = [e.seconds for e in estimates if e.seconds is not None]
    if known:
        gpus = sum((e.seconds or 0) * (e.resources.get("gpu") or 0) for e in estimates) / 3600
        total = f"total: about {_minutes(sum(known))} of training"
        lines.append(total + (f", {gpus:.1f} GPU-hours" if gpus else ""))
    else:
        lines.append("no runtime estimates: give --samples-per-s or --measure")

    notes: list[tuple[str | None, str]] = []  # (job, what to say of it)
    for dataset in study.config["study"]["datasets"]:
        if study.manifest_path(dataset).is_file():
            from audiopetl.data.splits.sizes import size_problems
            from audiopetl.study.splits import study_split_sizes

            minimums = dict(study.clips.min_split_clips)
            for sizes in study_split_sizes(study, dataset):
                notes += [(None, p) for p in size_problems(sizes, minimums, f"dataset {dataset}")]
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


RULE_WORDS = {
    "train_val_test": "validation the fold after the test fold (the last wraps to the first)",
    "train_val_test_before": "validation the fold before the test fold (the first wraps to "
    "the last)",
    "train_test": "no validation: the last epoch is tested",
    "train_select_on_test": "the epoch selected ON THE TEST FOLD (the reference's UrbanSound8K "
    "protocol: optimistic, for comparison only)",
}


def split_lines(study: Study) -> list[str]:
    """How each dataset's folds (or official split) become each run's sets, per split rule:
    "fold1: test 1 · validation 2 · training 3, 4, 5"."""
    lines = []
    rules = list(
        dict.fromkeys(study.training(s).split for s in study.config["study"]["strategies"])
    )
    for dataset in study.config["study"]["datasets"]:
        settings = study.dataset(dataset)
        for rule in rules:
            if settings.scheme == "official":
                val = "validation" if rule != "train_test" else "no validation"
                lines.append(
                    f"splits of {dataset} ({rule}): official: the publisher's training and test "
                    f"sets, {val}"
                )
                continue
            if settings.scheme != "folds":
                lines.append(f"splits of {dataset} ({rule}): {settings.scheme}")
                continue
            folds = _dataset_folds(study, dataset)
            if folds is None:
                lines.append(f"splits of {dataset} ({rule}): its folds come from its files")
                continue
            lines.append(f"splits of {dataset} ({rule}: {RULE_WORDS[rule]}):")
            for name in study.split_names(dataset):
                parts = split_folds(folds, fold_of(name), rule)
                val = f" · validation {_folds_text(parts.val)}" if parts.val else ""
                lines.append(
                    f"  {name}: test {_folds_text(parts.test)}{val} · training "
                    f"{_folds_text(parts.train)}"
                )
    return lines


def _dataset_folds(study: Study, dataset: str) -> list[int] | None:
    """The dataset's folds: from its manifest once fetched, else those its kind declares."""
    if study.manifest_path(dataset).is_file():
        manifest, _ = dataset_shape(study, dataset)
        return sorted(int(f) for f in manifest["fold"].unique())
    declared = study.dataset(dataset).folds
    return list(range(1, declared + 1)) if declared else None


def _folds_text(folds: list[int]) -> str:
    return ", ".join(str(f) for f in folds)


def _memory_table(estimates: list[Estimate]) -> list[str]:
    """Measured peak training memory per model and strategy: what fits a given card."""
    peaks: dict[tuple[str, str], tuple[int, int, str]] = {}
    for e in estimates:
        t = e.throughput
        if t is not None and t.peak_bytes is not None:
            peaks[(e.job.model, e.job.strategy)] = (
                t.peak_bytes,
                e.job.settings.batch_size,
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


def checkpointing_lines(estimates: list[Estimate]) -> list[str]:
    """Per model and strategy whose kind supports it: the activations one training batch
    keeps for the backward pass without and with gradient checkpointing, and whether the
    job's settings turn it on (when off, a hint of what it would save)."""
    lines: dict[tuple[str, str], str] = {}
    for e in estimates:
        t = e.throughput
        if t is None or t.activations is None:
            continue
        plain, checkpointed = t.activations
        s = e.job.settings
        on = s.gradient_checkpointing
        state = "on" if on else "off (training.gradient_checkpointing: true)"
        # A linear probe's frozen layers keep nothing for backward: there is nothing to save.
        saved = f"{'saves' if on else 'would save'} {_size(plain - checkpointed)}"
        lines.setdefault(
            (e.job.model, e.job.strategy),
            f"gradient checkpointing of {e.job.model}/{e.job.strategy}, {state}: activations "
            f"kept for backward {_size(plain)} -> {_size(checkpointed)} per batch of "
            f"{s.batch_size} ({saved if checkpointed < plain else 'saves nothing'})",
        )
    return list(lines.values())


def _size(n: int) -> str:
    """Bytes in decimal units (what a card's memory is sold in)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


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
