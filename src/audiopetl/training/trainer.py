"""The training loop of one run: a dataset x model x strategy x fold x seed, from the feature
cache to a self-describing run folder. Plain PyTorch, deterministic and resumable.

Read it top to bottom: :meth:`Trainer.load_data` and :meth:`Trainer.build` set a run up from
its :class:`RunSettings`; :meth:`Trainer.fit` runs the epochs, each a sequence of
:meth:`Trainer.train_step` calls followed by :meth:`Trainer.end_epoch` (validation, the best
weights, early stopping); :meth:`Trainer.finish` tests the best weights and writes the run
folder. What each step uses lives where its name says: the data in ``data``, augmentation in
``augment``, the optimiser in ``optim``, the device choices in ``runtime``, the resume state in
``resume``, the outputs in ``outputs``.

Honesty rules this loop keeps: the best-by-validation weights are a real copy (not references
to the live ones) and the test metrics come from them, with the epoch they came from; a
non-finite loss or gradient stops the run at once; a run at chance accuracy fails.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from audiopetl.core import compat, devices
from audiopetl.core.errors import Stopped, TrainingError
from audiopetl.core.settings import RunSettings
from audiopetl.features.cache import FeatureSet
from audiopetl.models import checkpointing
from audiopetl.models.build import build_model
from audiopetl.models.hub import weights_record
from audiopetl.models.strategies import ParameterCount, Strategy, get_strategy
from audiopetl.process import timings
from audiopetl.training import losses, optim, outputs, resume, runtime
from audiopetl.training.augment import augment
from audiopetl.training.data import BatchSource, epoch_order, load_run_data
from audiopetl.training.determinism import seed_everything, select_device
from audiopetl.training.embeddings import check_embeddings
from audiopetl.training.metrics import classification_metrics
from audiopetl.training.multilabel import DEFAULT_THRESHOLD, multilabel_metrics
from audiopetl.training.signals import StopRequested, interruption
from audiopetl.training.state import StepStats, TrainState
from audiopetl.training.tracking import Tracking

log = logging.getLogger(__name__)

HIGHER_IS_BETTER = {
    "accuracy": True,
    "balanced_accuracy": True,
    "macro_f1": True,
    "mAP": True,
    "loss": False,
}


class Trainer:
    def __init__(self, run: RunSettings, progress: bool = False) -> None:
        self.run = run
        self.training = run.training
        self.progress = progress
        self.device = select_device(run.training.device)
        # Checked before anything loads; the rest of the runtime once the model is built.
        self.precision = runtime.resolve_precision(run.training.precision, self.device)
        self.determinism: dict[str, Any] | None = None
        self.test_from_best = run.training.test_epoch == "best"
        self.multilabel = run.dataset.multilabel
        # A probe trains its head on the frozen backbone's cached embeddings, not the features.
        self.on_embeddings = run.embeddings is not None

    # -- setup ------------------------------------------------------------------------------
    def load_data(self) -> None:
        data = load_run_data(self.run, embeddings=self.on_embeddings)
        self.splits, self.class_names, self.data_record = data.splits, data.class_names, data.record
        self.train, self.val, self.test = data.train, data.val, data.test

    def base_model(self) -> nn.Module:
        """The model before the strategy changes it. Construction draws from the RNG: seeded,
        so `evaluate` rebuilds the same."""
        seed_everything(self.run.seed)
        return build_model(
            self.run.model, self.run.features, len(self.class_names), self.run.pretrained
        )

    def build(self) -> None:
        t = self.training
        self.weights = weights_record(self.run.pretrained, self.run.model.revision)
        if self.on_embeddings:
            check_embeddings(self.train.metadata, self.weights)
        base = self.base_model()
        sets = [d for d in (self.train, self.val, self.test) if d is not None]
        self.runtime = runtime.resolve(
            t,
            self.device,
            compat.model_attention(base),
            sum(d.nbytes for d in sets),
            streamed=self.train.streamed,
        )
        runtime.apply_matmul_settings(self.runtime, self.device)
        self.sources: dict[int, BatchSource] = {}
        batches = math.ceil(len(self.train) / t.batch_size)
        self.steps_per_epoch = math.ceil(batches / t.grad_accum_steps)
        total = self.steps_per_epoch * t.epochs
        self.strategy: Strategy = get_strategy(self.run.strategy)
        self.strategy.total_steps = total  # a rank budget (AdaLoRA) is planned over them
        self.model = self.strategy.apply(base).to(self.device)
        # Activations recomputed in the backward pass (a probe's head on embeddings has none).
        if t.gradient_checkpointing and not self.on_embeddings:
            checkpointing.enable(self.model, self.strategy)
            self.runtime = dataclasses.replace(self.runtime, gradient_checkpointing=True)
        self.params: ParameterCount = self.strategy.check(self.model, t.max_trainable_fraction)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = optim.adamw(
            trainable, self.run.strategy.lr, t, self.runtime.fused_optimizer
        )
        self.scheduler = optim.warmup_cosine(self.optimizer, total, t.warmup_ratio)
        n_classes = len(self.class_names)
        weights = losses.class_weights(self.train, n_classes, t.class_weights)
        self.loss = losses.training_loss(t, self.multilabel, weights)
        self.sample_weights = (
            losses.sample_weights(self.train, n_classes) if t.sampler == "balanced" else None
        )
        self.scaler = devices.grad_scaler(self.runtime.grad_scaler)
        self.pending: list[StepStats] = []  # read from the device at the next flush
        self.last_grad_norm: float | None = None
        self._compiled: tuple[nn.Module, nn.Module] | None = None
        self.tracking = Tracking(self.run.tracking, self.run.tracking_dir)

    # -- the resume state -------------------------------------------------------------------
    def identity_parts(self) -> dict[str, str]:
        """What must not change between an interrupted run and its resumption."""
        return resume.identity_parts(
            {**self.run.identity(), "precision": self.precision},
            self.data_record,
            self.weights,
        )

    def save_resume(self, state: TrainState) -> None:
        resume.save(self, state)

    def try_resume(self) -> TrainState:
        return resume.restore(self)

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, state: TrainState, stop: StopRequested) -> TrainState:
        t = self.training
        self.strategy.train_mode(self.model)
        last_saved = time.monotonic()
        timings.mark("first_step")  # the end of this process's start-up
        while state.epoch < t.epochs and not state.stopped_early:
            started = time.perf_counter()
            done = math.ceil(state.batch_pos / t.grad_accum_steps)
            bar = tqdm(
                total=self.steps_per_epoch,
                initial=done,
                desc=f"epoch {state.epoch + 1}/{t.epochs}",
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
                    self.stop_now(state, stop.signal)
            self.flush(state)
            bar.close()
            seconds = time.perf_counter() - started
            state.elapsed += seconds
            state.stopped_early = self.end_epoch(state, seconds)
            # Every epoch by default; a full fine-tuning's state is ~1.4 GB for AST-base, so a
            # fast GPU may save it less often (a signal still saves at once).
            if t.save_state_every_s == 0 or time.monotonic() - last_saved >= t.save_state_every_s:
                self.save_resume(state)
                last_saved = time.monotonic()
            if state.stopped_early:
                log.info("early stopping after epoch %d (best %s)", state.epoch, state.best_epoch)
                break
        return state

    def batch_iter(self, state: TrainState) -> Iterator[list[torch.Tensor]]:
        """The rest of this epoch's batches, a step's worth (grad_accum_steps) at a time."""
        t = self.training
        order = epoch_order(len(self.train), self.run.seed, state.epoch, self.sample_weights)
        batches = list(order.split(t.batch_size))
        source, step = self.source(self.train), t.grad_accum_steps
        source.prefetch(batches[state.batch_pos : state.batch_pos + step])
        for start in range(state.batch_pos, len(batches), step):
            # A streamed set's next step is read from disk while this one trains.
            source.prefetch(batches[start + step : start + 2 * step])
            yield batches[start : start + step]

    def train_step(self, chunk: list[torch.Tensor], state: TrainState) -> None:
        """One optimizer step. Nothing here waits for the device: losses and the gradient norm
        stay tensors until :meth:`flush` reads them all at once."""
        t = self.training
        n_chunk = sum(len(idx) for idx in chunk)
        self.optimizer.zero_grad(set_to_none=True)
        stats = StepStats(
            epoch=state.epoch + 1, step=state.global_step + 1, lr=self.scheduler.get_last_lr()[0]
        )
        for idx in chunk:
            x, y = self.source(self.train).batch(idx)
            target = y.float() if self.multilabel else F.one_hot(y, len(self.class_names)).float()
            x, target = augment(x, target, t.specaugment, t.mixup_alpha)
            logits = self.forward(x)
            loss = self.loss(logits, target)
            with compat.backward_guard():
                self.scaler.scale(loss * len(idx) / n_chunk).backward()
            stats.losses.append(loss.detach())
            stats.sizes.append(len(idx))
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = t.grad_clip if t.grad_clip is not None else float("inf")
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

    def end_epoch(self, state: TrainState, seconds: float) -> bool:
        """Validate, keep the best weights, log; return True when early stopping triggers."""
        t = self.training
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
            metric = t.select_metric
            score = val_loss if metric == "loss" else val_metrics[metric]
            row.update(
                val_loss=val_loss, val_accuracy=val_metrics.get("accuracy"), val_metric=score
            )
            better = state.best_score is None or (
                score > state.best_score if HIGHER_IS_BETTER[metric] else score < state.best_score
            )
            if better:
                state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch + 1, 0
                # A real copy: the live parameters keep changing after this epoch. On the host,
                # where it costs no device memory (copied back once, for the test).
                state.best_weights = self.strategy.trainable_state(self.model, "cpu")
            else:
                state.bad_epochs += 1
                patience = t.early_stopping_patience
                stop = patience is not None and state.bad_epochs >= patience
        else:
            state.best_epoch = state.epoch + 1
        state.history.append(row)
        self.tracking.epoch(row, t.select_metric, state.global_step, self.device)
        state.epoch += 1
        state.batch_pos = 0
        state.epoch_loss_sum, state.epoch_samples = 0.0, 0
        self.log_epoch(row)
        return stop

    def release_optimizer(self) -> None:
        """Free the gradients and the optimiser's moments once training is over: the outputs
        are written without them (AdamW's two moments are twice the trainable weights)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.state.clear()

    def finish(
        self,
        state: TrainState,
        wall_started: float,
        extra_outputs: Callable[[Path, nn.Module], None] | None = None,
    ) -> dict[str, Any]:
        """Test the best validation epoch's weights (the last epoch's with `test_epoch: last`,
        the reference's defect, for comparison only) and write the run folder."""
        if state.best_weights is not None and self.val is not None and self.test_from_best:
            self.strategy.load_trainable_state(self.model, state.best_weights)
        return outputs.write(self, state, wall_started, extra_outputs)

    # -- what a step is made of -------------------------------------------------------------
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
            if self.on_embeddings:  # the head alone, on the backbone's cached output
                return self.strategy.head_logits(self.model, x).float()
            return self.module()(input_values=x).logits.float()

    def source(self, data: FeatureSet) -> BatchSource:
        if id(data) not in self.sources:
            self.sources[id(data)] = BatchSource(data, self.device, self.runtime.data_on_device)
        return self.sources[id(data)]

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
        self.tracking.steps(pending, losses, norms, self.device)

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
            f"{weight_norm.item():.4g}); run {self.run.out} stopped"
        )

    def stop_now(self, state: TrainState, signum: int) -> None:
        """Asked to stop (a time limit's warning): save at once and exit with 75."""
        state.interruptions.append(interruption(signum, state))
        self.save_resume(state)
        name = signal.Signals(signum).name
        raise Stopped(
            f"stopped on {name} (a time limit's warning) at epoch {state.epoch + 1}, step "
            f"{state.global_step}: the state is saved in {self.run.resume_dir} and a rerun "
            f"resumes it (exit {Stopped.code}; not a failure)"
        )

    @torch.no_grad()
    def predict(self, data: FeatureSet) -> torch.Tensor:
        self.model.eval()
        source = self.source(data)
        batches = list(torch.arange(len(data)).split(self.training.eval_batch_size))
        source.prefetch(batches[:1])
        logits = []
        for k, idx in enumerate(batches):
            source.prefetch(batches[k + 1 : k + 2])
            logits.append(self.forward(source.batch(idx)[0]))
        self.strategy.train_mode(self.model)
        return torch.cat(logits).cpu()  # one wait for the device, not one per batch

    def evaluate_split(
        self, data: FeatureSet, split: str = "test", threshold: float | None = None
    ) -> tuple[float, dict[str, Any], torch.Tensor]:
        """Loss, metrics and logits of a set; a multi-label set's F1 at ``threshold``."""
        logits = self.predict(data)
        loss = losses.evaluation_loss(logits, data)
        if not math.isfinite(loss):
            bad = int((~torch.isfinite(logits).all(dim=1)).sum())
            raise TrainingError(
                f"run {self.run.out}: the {split} loss is {loss} ({bad} of {len(data)} clips "
                "get non-finite logits): the weights or the features hold NaN or Inf"
            )
        if data.targets is not None:
            scores = torch.sigmoid(logits).numpy()
            cut = DEFAULT_THRESHOLD if threshold is None else threshold
            metrics = multilabel_metrics(data.targets.numpy(), scores, self.class_names, cut)
            return loss, metrics, logits
        probs = logits.softmax(dim=-1).numpy()
        return loss, classification_metrics(data.labels.numpy(), probs, self.class_names), logits

    def log_epoch(self, row: dict[str, Any]) -> None:
        val = (
            f" val_loss {row['val_loss']:.4f} val_{self.training.select_metric} "
            f"{row['val_metric']:.4f}"
            if row["val_metric"] is not None
            else ""
        )
        run = self.run
        partial = self.data_record.get("partial")
        where = f" {run.dataset.name} {partial}" if partial else ""
        message = (
            f"[{run.strategy.name} {run.split} seed{run.seed}{where}] "
            f"epoch {row['epoch']}/{self.training.epochs} train_loss "
            f"{row['train_loss']:.4f}{val} lr {row['lr']:.3g} "
            f"{row['samples_per_s']:.1f} samples/s"
        )
        if self.progress:
            tqdm.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)
