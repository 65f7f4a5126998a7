"""One training run: a dataset x model x strategy x fold x seed, from the feature cache to a
self-describing run folder. Plain PyTorch, deterministic and resumable.

Honesty rules this loop keeps: the best-by-validation weights are a real copy (not references
to the live ones) and the test metrics come from them, with the epoch they came from; a
non-finite loss or gradient stops the run at once; a run at chance accuracy fails.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from audiopetl.core import compat, provenance
from audiopetl.core.atomic import write_json
from audiopetl.core.checksums import file_sha256
from audiopetl.core.config import (
    computing_settings,
    feature_settings,
    model_config,
    pretraining_settings,
    stable_hash,
    strategy_config,
    training_settings,
)
from audiopetl.core.errors import DataError, Stopped, TrainingError
from audiopetl.core.failures import writing
from audiopetl.core.paths import cache_path, manifest_path, pretrain_dir
from audiopetl.features.cache import FeatureSet, cache_folds, read_folds, read_metadata
from audiopetl.models.build import build_model
from audiopetl.models.hub import weights_record
from audiopetl.models.strategies import ParameterCount, Strategy, get_strategy
from audiopetl.process import timings
from audiopetl.training import checkpoint, runtime
from audiopetl.training.metrics import classification_metrics
from audiopetl.training.run_folder import RunOutputs, write_run_folder

log = logging.getLogger(__name__)

# Exit status after saving on SIGTERM/SIGUSR1 (EX_TEMPFAIL): "try again", for schedulers.
EXIT_INTERRUPTED = Stopped.code
HIGHER_IS_BETTER = {"accuracy": True, "balanced_accuracy": True, "macro_f1": True, "loss": False}


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    model: str
    strategy: str
    fold: int
    seed: int
    out: Path
    pretrained: str | None = None

    @property
    def resume_dir(self) -> Path:
        # Beside the run folder, not inside it: Snakemake deletes a job's declared outputs
        # before it reruns the job, and the resume state must survive that.
        return self.out.parent / f".{self.out.name}.resume"


@dataclass
class Splits:
    train: list[int]
    val: list[int]
    test: list[int]


def split_folds(folds: Sequence[int], test_fold: int, scheme: str) -> Splits:
    """train/val/test with val = the fold after the test fold (PETL_AST, HEAR); or train/test."""
    folds = sorted(folds)
    if test_fold not in folds:
        raise TrainingError(f"fold {test_fold} is not among the dataset's folds {folds}")
    if scheme == "train_test":
        return Splits([f for f in folds if f != test_fold], [], [test_fold])
    if len(folds) < 3:
        raise TrainingError(f"training.split train_val_test needs 3 folds, the data has {folds}")
    val_fold = folds[(folds.index(test_fold) + 1) % len(folds)]
    train = [f for f in folds if f not in (test_fold, val_fold)]
    return Splits(train, [val_fold], [test_fold])


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("training.device is cuda but no CUDA device is visible")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
    # warn_only on CUDA: a few fused attention kernels have no deterministic variant.
    warn_only = device.type == "cuda"
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = False
    seed_everything(seed)
    if not deterministic:
        enforced, bitwise = "no: training.deterministic is false", False
    elif warn_only:
        enforced = (
            "where kernels allow: on CUDA some kernels (fused attention among them) have no "
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


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of an epoch depends on seed and epoch only, so a resumed run can
    regenerate it and skip what it already consumed."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


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


class StopRequested:
    """Records SIGTERM/SIGUSR1 so the loop can save at the next step boundary and exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class StepStats:
    """One step's numbers, still on the device until the next flush."""

    epoch: int
    step: int
    losses: list[torch.Tensor] = field(default_factory=list)  # one per accumulated batch
    sizes: list[int] = field(default_factory=list)
    grad_norm: torch.Tensor | None = None


class BatchSource:
    """Batches of a feature set for the device: indexed where the features live (the
    device, after one copy, with training.data_on_device; else host memory, one copy per
    batch), always float32 on the device."""

    def __init__(self, data: FeatureSet, device: torch.device, on_device: bool) -> None:
        self.device = device
        self.features = data.features.to(device) if on_device else data.features
        self.labels = data.labels.to(device) if on_device else data.labels

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(self.features.device)
        x = self.features[idx].to(self.device, non_blocking=True).float()
        return x, self.labels[idx].to(self.device, non_blocking=True)


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    batch_pos: int = 0  # batches of the current epoch already consumed
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    best_weights: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    elapsed: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_samples: int = 0
    # Where earlier processes stopped on a signal (a SLURM time limit): provenance of a resume.
    interruptions: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    def __init__(
        self,
        cfg: Mapping[str, Any],
        spec: RunSpec,
        progress: bool = False,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.spec = spec
        self.progress = progress
        self.settings = {**training_settings(cfg, spec.strategy), **(overrides or {})}
        self.features_cfg = feature_settings(cfg, spec.dataset, spec.model)
        self.model_cfg = model_config(cfg, spec.model)
        self.strategy_cfg = strategy_config(cfg, spec.strategy)
        self.device = select_device(self.settings["device"])
        # Checked before anything loads; the rest of the runtime once the model is built.
        precision = runtime.resolve_precision(self.settings["precision"], self.device)
        self.determinism: dict[str, Any] | None = None
        self.test_from_best = self.settings["test_epoch"] == "best"
        # The settings a resume must share; with the data (load_data) and the starting
        # weights (build) they make the resume identity.
        self.settings_identity = {
            "spec": [spec.dataset, spec.model, spec.strategy, spec.fold, spec.seed],
            "training": computing_settings(self.settings),
            # What `auto` became: a bf16 state is not continued in fp32 on another machine.
            "precision": precision,
            "features": self.features_cfg,
            "model": self.model_cfg,
            "strategy": self.strategy_cfg,
        }

    # -- setup ------------------------------------------------------------------------------
    def load_data(self) -> None:
        path = cache_path(self.cfg, self.spec.dataset, model=self.spec.model)
        meta = read_metadata(path)
        if meta["features"] != self.features_cfg:
            raise TrainingError(
                f"{path}: built with other feature settings; rerun `audiopetl cache`"
            )
        manifest = manifest_path(self.cfg, self.spec.dataset)
        fix = f"rebuild it: `audiopetl cache {self.spec.dataset} --force`"
        if not manifest.is_file():
            raise TrainingError(
                f"{path}: its dataset's manifest {manifest} is missing, so the cache cannot be "
                f"checked against it; run `audiopetl fetch {self.spec.dataset}`, then {fix}"
            )
        if meta.get("manifest_sha256") != file_sha256(manifest):
            raise TrainingError(
                f"{path}: built from another manifest than {manifest} (sha256 differs): the "
                f"cache does not hold this data; {fix}"
            )
        # What the run reads, for its record and its resume identity.
        self.data_record = {
            "cache": str(path),
            "manifest": str(manifest),
            "manifest_sha256": meta["manifest_sha256"],
            "rows": meta.get("rows"),
        }
        all_folds = cache_folds(path)
        self.splits = split_folds(all_folds, self.spec.fold, self.settings["split"])
        self.class_names: list[str] = meta["class_names"]
        self.train = read_folds(path, self.splits.train)
        self.val = read_folds(path, self.splits.val) if self.splits.val else None
        self.test = read_folds(path, self.splits.test)
        if len(self.train) == 0 or len(self.test) == 0:
            raise TrainingError(f"{path}: empty split {self.splits}")

    def base_model(self) -> nn.Module:
        """The model before the strategy changes it. Construction draws from the RNG: seeded,
        so `evaluate` rebuilds the same."""
        seed_everything(self.spec.seed)
        return build_model(
            self.model_cfg, self.features_cfg, len(self.class_names), self.spec.pretrained
        )

    def build(self) -> None:
        s = self.settings
        self.weights = weights_record(self.spec.pretrained, self.model_cfg.get("revision"))
        base = self.base_model()
        sizes = [  # not Tensor.nbytes: torch 1.13 has none
            d.features.numel() * d.features.element_size()
            for d in (self.train, self.val, self.test)
            if d is not None
        ]
        self.runtime = runtime.resolve(s, self.device, compat.model_attention(base), sum(sizes))
        runtime.apply_matmul_settings(self.runtime, self.device)
        self.sources: dict[int, BatchSource] = {}
        batches = math.ceil(len(self.train) / s["batch_size"])
        self.steps_per_epoch = math.ceil(batches / s["grad_accum_steps"])
        total = self.steps_per_epoch * s["epochs"]
        self.strategy: Strategy = get_strategy(self.strategy_cfg)
        self.strategy.total_steps = total  # a rank budget (AdaLoRA) is planned over them
        self.model = self.strategy.apply(base).to(self.device)
        self.params: ParameterCount = self.strategy.check(
            self.model, float(self.settings["max_trainable_fraction"])
        )
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            trainable,
            lr=float(self.strategy_cfg["lr"]),
            betas=tuple(s["betas"]),
            eps=float(s["eps"]),
            weight_decay=float(s["weight_decay"]),
            **compat.adamw_kwargs(self.runtime.fused_optimizer),
        )
        warmup = round(s["warmup_ratio"] * total)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.scaler = compat.grad_scaler(self.runtime.grad_scaler)
        self.pending: list[StepStats] = []  # read from the device at the next flush
        self.last_grad_norm: float | None = None
        self._compiled: tuple[nn.Module, nn.Module] | None = None

    # -- checkpointing ----------------------------------------------------------------------
    def identity_parts(self) -> dict[str, str]:
        """What must not change between an interrupted run and its resumption: the settings,
        the data (manifest hash and rows of the cache) and the starting weights (their file
        hashes, or hub revision), each hashed on its own so a mismatch can say which."""
        weights = {k: v for k, v in self.weights.items() if k != "path"}  # a folder may move
        data = {k: v for k, v in self.data_record.items() if k in ("manifest_sha256", "rows")}
        return {
            "settings": stable_hash(self.settings_identity),
            "data": stable_hash(data),
            "weights": stable_hash(weights),
        }

    def save_resume(self, state: TrainState) -> None:
        payload = {
            "identity": self.identity_parts(),
            "trainable": self.strategy.trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": checkpoint.rng_state(),
            "train": {k: v for k, v in vars(state).items() if k != "best_weights"},
            "best_weights": state.best_weights,
        }
        checkpoint.save_state(self.spec.resume_dir, payload)

    def try_resume(self) -> TrainState:
        path = self.spec.resume_dir / checkpoint.STATE_FILE
        if not path.is_file():
            return TrainState()
        saved = checkpoint.load_state(path)
        ours, theirs = self.identity_parts(), saved.get("identity")
        if theirs != ours:
            differ = [k for k in ours if not isinstance(theirs, dict) or theirs.get(k) != ours[k]]
            stale = set_aside(self.spec.resume_dir)
            log.warning(
                "%s was saved from other %s; set aside as %s, starting afresh",
                path,
                " and ".join(differ),
                stale,
            )
            return TrainState()
        self.strategy.load_trainable_state(self.model, saved["trainable"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        checkpoint.set_rng_state(saved["rng"])
        state = TrainState(**saved["train"], best_weights=saved["best_weights"])
        if not any(i.get("global_step") == state.global_step for i in state.interruptions):
            # Saved at an epoch's end, not on a signal: the process was killed without a
            # clean stop (SIGKILL, out of memory, a node failure) and its later steps redone.
            state.interruptions.append(
                {
                    "signal": None,
                    "stop": "killed without a clean stop (SIGKILL, out of memory, a node "
                    "failure or a crash): resumed from the state saved at the end of an epoch",
                    "epoch": state.epoch,
                    "batch": state.batch_pos,
                    "global_step": state.global_step,
                    "slurm_job_id": None,
                }
            )
        log.info(
            "resuming %s at epoch %d, batch %d", self.spec.out, state.epoch + 1, state.batch_pos
        )
        return state

    # -- the loop ---------------------------------------------------------------------------
    def autocast(self) -> AbstractContextManager[Any]:
        if self.runtime.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.runtime.amp_dtype)

    def module(self) -> nn.Module:
        """What the loop calls: the model, or its compiled wrapper (rebuilt if the model is
        replaced, as `evaluate` does with an export)."""
        if not self.runtime.compile:
            return self.model
        if self._compiled is None or self._compiled[0] is not self.model:
            self._compiled = (self.model, runtime.compiled(self.model, self.runtime))
        return self._compiled[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.module()(input_values=x).logits.float()

    def source(self, data: FeatureSet) -> BatchSource:
        if id(data) not in self.sources:
            self.sources[id(data)] = BatchSource(data, self.device, self.runtime.data_on_device)
        return self.sources[id(data)]

    def batch_iter(self, state: TrainState) -> Iterator[list[torch.Tensor]]:
        s = self.settings
        order = epoch_order(len(self.train), self.spec.seed, state.epoch)
        batches = list(order.split(s["batch_size"]))
        for start in range(state.batch_pos, len(batches), s["grad_accum_steps"]):
            yield batches[start : start + s["grad_accum_steps"]]

    def train_step(self, chunk: list[torch.Tensor], state: TrainState) -> None:
        """One optimizer step. Nothing here waits for the device: losses and the gradient norm
        stay tensors until :meth:`flush` reads them all at once."""
        s = self.settings
        n_chunk = sum(len(idx) for idx in chunk)
        self.optimizer.zero_grad(set_to_none=True)
        stats = StepStats(epoch=state.epoch + 1, step=state.global_step + 1)
        for idx in chunk:
            x, y = self.source(self.train).batch(idx)
            if s["specaugment"]["freq_mask"] or s["specaugment"]["time_mask"]:
                x = spec_augment(x, s["specaugment"]["freq_mask"], s["specaugment"]["time_mask"])
            target = F.one_hot(y, len(self.class_names)).float()
            if s["mixup_alpha"] > 0:
                lam = float(torch.distributions.Beta(s["mixup_alpha"], s["mixup_alpha"]).sample())
                perm = torch.randperm(len(idx)).to(self.device)
                x = lam * x + (1 - lam) * x[perm]
                target = lam * target + (1 - lam) * target[perm]
            logits = self.forward(x)
            loss = F.cross_entropy(logits, target, label_smoothing=s["label_smoothing"])
            with compat.backward_guard():
                self.scaler.scale(loss * len(idx) / n_chunk).backward()
            stats.losses.append(loss.detach())
            stats.sizes.append(len(idx))
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = s["grad_clip"] if s["grad_clip"] is not None else float("inf")
        stats.grad_norm = torch.nn.utils.clip_grad_norm_(params, clip).detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        state.global_step += 1
        # Steps count from 1 here: AdaLoRA's final allocation comes at its total_step.
        self.strategy.after_step(self.model, state.global_step)
        state.batch_pos += len(chunk)
        state.epoch_samples += n_chunk
        self.pending.append(stats)
        if state.global_step % self.runtime.log_every_steps == 0:
            self.flush(state)

    def flush(self, state: TrainState) -> None:
        """Read the pending steps' losses and gradient norms (one host synchronisation), add
        them to the epoch's loss in step order, and stop at the first non-finite one."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        flat = [loss for stats in pending for loss in stats.losses]
        flat += [stats.grad_norm for stats in pending if stats.grad_norm is not None]
        values = iter(torch.stack(flat).float().cpu().tolist())
        losses = [[next(values) for _ in stats.losses] for stats in pending]
        norms = [next(values) if stats.grad_norm is not None else None for stats in pending]
        for stats, step_losses, norm in zip(pending, losses, norms, strict=True):
            loss_sum = 0.0
            for value, size in zip(step_losses, stats.sizes, strict=True):
                if not math.isfinite(value):
                    self.fail_non_finite(state, stats, f"loss {value}")
                loss_sum += value * size
            # fp16 overflows are the grad scaler's business: it skips the step and rescales.
            if norm is not None and not math.isfinite(norm) and not self.runtime.grad_scaler:
                mean = loss_sum / sum(stats.sizes)
                self.fail_non_finite(state, stats, f"gradient norm {norm} (loss {mean:.4g})")
            state.epoch_loss_sum += loss_sum
            self.last_grad_norm = norm

    def fail_non_finite(self, state: TrainState, stats: StepStats, what: str) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        weight_norm = torch.norm(torch.stack([p.detach().float().norm() for p in params]))
        # The gradient norm of the step before: this one's came from the non-finite loss.
        previous = self.last_grad_norm
        grad_text = (
            f"{previous:.4g} at the previous step" if previous is not None else "none computed yet"
        )
        raise TrainingError(
            f"non-finite {what} at epoch {stats.epoch}, step {stats.step} (gradient norm "
            f"{grad_text}; noticed at step {state.global_step}, weight norm then "
            f"{weight_norm.item():.4g}); run {self.spec.out} stopped"
        )

    @torch.no_grad()
    def predict(self, data: FeatureSet) -> torch.Tensor:
        self.model.eval()
        source = self.source(data)
        outputs = [
            self.forward(source.batch(idx)[0])
            for idx in torch.arange(len(data)).split(self.settings["eval_batch_size"])
        ]
        self.strategy.train_mode(self.model)
        return torch.cat(outputs).cpu()  # one wait for the device, not one per batch

    def evaluate_split(
        self, data: FeatureSet, split: str = "test"
    ) -> tuple[float, dict[str, Any], torch.Tensor]:
        logits = self.predict(data)
        loss = F.cross_entropy(logits, data.labels).item()
        if not math.isfinite(loss):
            bad = int((~torch.isfinite(logits).all(dim=1)).sum())
            raise TrainingError(
                f"run {self.spec.out}: the {split} loss is {loss} ({bad} of {len(data)} clips "
                "get non-finite logits): the weights or the features hold NaN or Inf"
            )
        probs = logits.softmax(dim=-1).numpy()
        return loss, classification_metrics(data.labels.numpy(), probs, self.class_names), logits

    def end_epoch(self, state: TrainState, seconds: float) -> bool:
        """Validate, keep the best weights, log; return True when early stopping triggers."""
        s = self.settings
        row: dict[str, Any] = {
            "epoch": state.epoch + 1,
            "step": state.global_step,
            "train_loss": state.epoch_loss_sum / max(1, state.epoch_samples),
            "val_loss": None,
            "val_accuracy": None,
            "val_metric": None,
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": round(seconds, 3),
            "samples_per_s": round(state.epoch_samples / max(seconds, 1e-9), 2),
        }
        stop = False
        if self.val is not None:
            val_loss, val_metrics, _ = self.evaluate_split(self.val, "validation")
            metric = s["select_metric"]
            score = val_loss if metric == "loss" else val_metrics[metric]
            row.update(val_loss=val_loss, val_accuracy=val_metrics["accuracy"], val_metric=score)
            better = state.best_score is None or (
                score > state.best_score if HIGHER_IS_BETTER[metric] else score < state.best_score
            )
            if better:
                state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch + 1, 0
                # A real copy: the live parameters keep changing after this epoch.
                state.best_weights = self.strategy.trainable_state(self.model)
            else:
                state.bad_epochs += 1
                patience = s["early_stopping_patience"]
                stop = patience is not None and state.bad_epochs >= patience
        else:
            state.best_epoch = state.epoch + 1
        state.history.append(row)
        state.epoch += 1
        state.batch_pos = 0
        state.epoch_loss_sum, state.epoch_samples = 0.0, 0
        self.log_epoch(row)
        return stop

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        val = (
            f" val_loss {row['val_loss']:.4f} val_{self.settings['select_metric']} "
            f"{row['val_metric']:.4f}"
            if row["val_metric"] is not None
            else ""
        )
        message = (
            f"[{self.spec.strategy} fold{self.spec.fold} seed{self.spec.seed}] "
            f"epoch {row['epoch']}/{self.settings['epochs']} train_loss "
            f"{row['train_loss']:.4f}{val} lr {row['lr']:.3g} "
            f"{row['samples_per_s']:.1f} samples/s"
        )
        if self.progress:
            tqdm.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def fit(self, state: TrainState, stop: StopRequested) -> TrainState:
        s = self.settings
        self.strategy.train_mode(self.model)
        last_saved = time.monotonic()
        timings.mark("first_step")  # the end of this process's start-up
        while state.epoch < s["epochs"] and not state.stopped_early:
            started = time.perf_counter()
            remaining = self.steps_per_epoch - math.ceil(state.batch_pos / s["grad_accum_steps"])
            bar = tqdm(
                total=self.steps_per_epoch,
                initial=self.steps_per_epoch - remaining,
                desc=f"epoch {state.epoch + 1}/{s['epochs']}",
                unit="step",
                disable=not self.progress,
                leave=False,
                file=sys.stderr,
            )
            for chunk in self.batch_iter(state):
                self.train_step(chunk, state)
                bar.update(1)
                if not self.pending:  # just flushed
                    bar.set_postfix(loss=f"{state.epoch_loss_sum / state.epoch_samples:.4f}")
                if stop.signal is not None:
                    self.flush(state)
                    bar.close()
                    state.elapsed += time.perf_counter() - started
                    state.interruptions.append(
                        {
                            "signal": signal.Signals(stop.signal).name,
                            "stop": "asked to stop (a time limit's warning): saved at once",
                            "epoch": state.epoch + 1,
                            "batch": state.batch_pos,
                            "global_step": state.global_step,
                            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                        }
                    )
                    self.save_resume(state)
                    raise Stopped(
                        f"stopped on {signal.Signals(stop.signal).name} (a time limit's "
                        f"warning) at epoch {state.epoch + 1}, step {state.global_step}: the "
                        f"state is saved in {self.spec.resume_dir} and a rerun resumes it "
                        f"(exit {EXIT_INTERRUPTED}; not a failure)"
                    )
            self.flush(state)
            bar.close()
            seconds = time.perf_counter() - started
            state.elapsed += seconds
            state.stopped_early = self.end_epoch(state, seconds)
            # Every epoch by default; a full fine-tuning's state is ~1.4 GB for AST-base, so a
            # fast GPU may save it less often (a signal still saves at once).
            every = float(s["save_state_every_s"])
            if every == 0 or time.monotonic() - last_saved >= every:
                self.save_resume(state)
                last_saved = time.monotonic()
            if state.stopped_early:
                log.info("early stopping after epoch %d (best %s)", state.epoch, state.best_epoch)
                break
        return state

    # -- outputs ----------------------------------------------------------------------------
    def finish(
        self,
        state: TrainState,
        wall_started: float,
        extra_outputs: Callable[[Path, nn.Module], None] | None = None,
    ) -> dict[str, Any]:
        # The best validation epoch's weights; `test_epoch: last` reproduces the reference's
        # defect of reporting the last epoch (for comparison only).
        if state.best_weights is not None and self.val is not None and self.test_from_best:
            self.strategy.load_trainable_state(self.model, state.best_weights)
        test_loss, test_metrics, logits = self.evaluate_split(self.test)
        val_metrics = (
            self.evaluate_split(self.val, "validation")[1] if self.val is not None else None
        )
        chance = 1.0 / len(self.class_names)
        margin = self.settings["min_accuracy_over_chance"]
        at_chance = test_metrics["accuracy"] <= chance + (margin or 0.0)
        metrics = {
            "dataset": self.spec.dataset,
            "model": self.spec.model,
            "strategy": self.spec.strategy,
            "fold": self.spec.fold,
            "seed": self.spec.seed,
            "best_epoch": state.best_epoch if self.test_from_best else state.epoch,
            "epochs_run": state.epoch,
            "selected_by": (
                "last epoch (training.test_epoch: last, for comparison with the reference)"
                if self.val is not None and not self.test_from_best
                else f"val_{self.settings['select_metric']}"
                if self.val is not None
                else "last epoch (train_test split)"
            ),
            "trainable_params": self.params.trainable,
            "total_params": self.params.total,
            "trainable_percent": 100.0 * self.params.fraction,
            "train_clips": len(self.train),
            "classes": len(self.class_names),
            "environment": provenance.environment_name(),
            "test_loss": test_loss,
            "test": test_metrics,
            "val": val_metrics,
            "at_chance": at_chance,
        }
        if at_chance and margin is None:
            log.warning(
                "run %s: test accuracy %.4f is at chance level (%.4f); the guard is "
                "off (training.min_accuracy_over_chance: null)",
                self.spec.out,
                test_metrics["accuracy"],
                chance,
            )
        elif at_chance:
            raise TrainingError(
                f"run {self.spec.out}: test accuracy {test_metrics['accuracy']:.4f} is not above "
                f"chance ({chance:.4f}) by more than training.min_accuracy_over_chance = "
                f"{margin}: check the learning rate, the data and the history in "
                f"{self.spec.resume_dir}"
            )
        record = provenance.run_record(
            cfg=self.cfg,
            run={
                "dataset": self.spec.dataset,
                "model": self.spec.model,
                "strategy": self.spec.strategy,
                "fold": self.spec.fold,
                "seed": self.spec.seed,
                "pretrained": self.spec.pretrained,
                "splits": vars(self.splits),
            },
            device=self.device,
            determinism=self.determinism,
            runtime=self.runtime.record(),
            data=self.data_record,
            weights=self.weights,
            parameters={"trainable": self.params.trainable, "total": self.params.total},
            interruptions=state.interruptions,
        )
        execution = provenance.execution_record(
            device=self.device,
            training_seconds=state.elapsed,
            startup_seconds=timings.since_start("first_step"),
            wall_seconds=time.perf_counter() - wall_started,
        )
        write_run_folder(
            self.spec.out,
            RunOutputs(
                save_model=lambda folder: self.strategy.save(self.model, folder),
                history=state.history,
                test=self.test,
                logits=logits,
                metrics=metrics,
                provenance=record,
                execution=execution,
                extra=None if extra_outputs is None else lambda f: extra_outputs(f, self.model),
            ),
        )
        return metrics


def set_aside(folder: Path) -> Path:
    """Move a resume folder that must not be continued out of the way, keeping it (the last
    one) for inspection; the run then starts afresh."""
    stale = folder.with_name(folder.name + ".stale")
    shutil.rmtree(stale, ignore_errors=True)
    os.replace(folder, stale)
    return stale


def train_run(
    cfg: Mapping[str, Any],
    spec: RunSpec,
    progress: bool = False,
    overrides: Mapping[str, Any] | None = None,
    after: Callable[[Trainer], None] | None = None,
) -> dict[str, Any]:
    trainer = run_trainer(cfg, spec, progress, overrides, after=after)
    return trainer.metrics


def run_trainer(
    cfg: Mapping[str, Any],
    spec: RunSpec,
    progress: bool = False,
    overrides: Mapping[str, Any] | None = None,
    extra_outputs: Callable[[Path, nn.Module], None] | None = None,
    after: Callable[[Trainer], None] | None = None,
) -> Trainer:
    """Train, write the run folder, then ``after`` (the workflow's evaluation from the files).
    The resume state goes only once all of it is done: a stop or a kill before that costs a
    rerun of the rest, never of the training."""
    wall_started = time.perf_counter()
    trainer = Trainer(cfg, spec, progress, overrides)
    s = trainer.settings
    trainer.determinism = make_deterministic(
        spec.seed, s["threads"], s["deterministic"], trainer.device
    )
    # From here on a SLURM warning is kept for the loop to act on, even when it comes while
    # the data and the model are still loading (a short attempt gets it early).
    with StopRequested() as stop:
        trainer.load_data()
        trainer.build()
        marker = FailureMarker(spec, trainer.identity_parts())
        marker.refuse_a_repeat()
        try:
            state = trainer.try_resume()
            state = trainer.fit(state, stop)
            # A stop asked for from here on waits: what is left is short.
            trainer.metrics = trainer.finish(state, wall_started, extra_outputs)
            if after is not None:
                after(trainer)
        except (TrainingError, DataError) as err:
            marker.record(err)
            raise
    shutil.rmtree(spec.resume_dir, ignore_errors=True)
    marker.clear()
    return trainer


class FailureMarker:
    """A run that failed for a reason a retry cannot change (a NaN loss, the at-chance guard)
    fails again at once on the next attempt, with the original reason, instead of training
    for hours to fail the same way: the workflow retries every failure, time limits included.
    It is the same run when its settings, data, starting weights and code are."""

    def __init__(self, spec: RunSpec, identity: Mapping[str, str]) -> None:
        self.path = spec.out.parent / f".{spec.out.name}.failed.json"
        self.identity = {**identity, "code": provenance.code_fingerprint()}

    def refuse_a_repeat(self) -> None:
        try:
            previous = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if previous.get("identity") == self.identity:
            raise TrainingError(
                f"{previous.get('error')} [the previous attempt failed so; a retry cannot "
                f"change that; after a change that could, or to try anyway, remove {self.path}]"
            )
        self.clear()

    def record(self, err: Exception) -> None:
        write_json(self.path, {"identity": self.identity, "error": str(err)})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


PRETRAINED_SUBDIR = "pretrained"


def default_pretrained(cfg: Mapping[str, Any], model: str) -> str | None:
    """Where a model's weights come from: its own pretrain output when it has a ``pretrain``
    block, else the configured ``pretrained`` (a hub id replaced by its local mirror)."""
    if model_config(cfg, model).get("pretrain"):
        folder = pretrain_dir(cfg, model) / PRETRAINED_SUBDIR
        if not folder.is_dir():
            raise TrainingError(
                f"models.{model}.pretrain: {folder} does not exist; run "
                f"`audiopetl pretrain --model {model}` first"
            )
        return str(folder)
    from audiopetl.models.hub import resolve_pretrained

    return resolve_pretrained(cfg, model)


def pretrain(cfg: Mapping[str, Any], model: str, out: Path, progress: bool = False) -> Path:
    """Train ``model`` on its source task and save it in save_pretrained form under
    ``out/pretrained``, beside the source run's own metrics and provenance."""
    settings = model_config(cfg, model).get("pretrain")
    if not settings:
        raise TrainingError(f"models.{model}: has no `pretrain` block")
    if strategy_config(cfg, settings["strategy"])["kind"] != "full":
        raise TrainingError(
            f"models.{model}.pretrain.strategy: {settings['strategy']!r} must be of kind full "
            "(a complete model is saved)"
        )
    source_cfg = copy.deepcopy(dict(cfg))
    source_cfg["models"][model] = {
        k: v for k, v in source_cfg["models"][model].items() if k != "pretrain"
    }
    overrides = pretraining_settings(cfg, model)
    spec = RunSpec(
        settings["dataset"],
        model,
        settings["strategy"],
        fold=1,
        seed=int(settings.get("seed", 0)),
        out=out,
    )

    def save_pretrained(folder: Path, trained: nn.Module) -> None:
        with writing(folder / PRETRAINED_SUBDIR):
            compat.save_pretrained(trained, folder / PRETRAINED_SUBDIR)

    run_trainer(source_cfg, spec, progress, overrides, save_pretrained)
    return out / PRETRAINED_SUBDIR
