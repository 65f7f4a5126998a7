"""How fast (and in how much memory) a training job of the study will run: a given figure, or
a short measurement of a few training steps of the job's model and strategy on random input
of its feature shape, on this machine's device (`audiopetl plan --measure`)."""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiopetl.core.errors import TrainingError

if TYPE_CHECKING:
    from audiopetl.study.plan import TrainingJob
    from audiopetl.study.study import Study

# Evaluation (forward only) against training (forward, backward, optimiser step) when only a
# training figure is given: the backward pass costs about twice the forward one.
EVAL_SPEEDUP = 3.0


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
    # The activations one training batch keeps for the backward pass, without and with
    # gradient checkpointing (bytes); None: not measured, or nothing to checkpoint.
    activations: tuple[int, int] | None = None


def given_throughput(samples_per_s: float) -> Throughput:
    return Throughput(
        samples_per_s,
        samples_per_s * EVAL_SPEEDUP,
        f"given: {samples_per_s:g} training samples/s, evaluation assumed {EVAL_SPEEDUP:g}x faster",
    )


def measure_throughput(
    study: Study,
    job: TrainingJob,
    num_classes: int,
    steps: int = 5,
    warmup: int = 2,
) -> Throughput:
    """Time a few optimiser steps and evaluation batches of the job's model and strategy on
    random input of its feature shape, on the device its training settings select, and take
    training's peak memory. On a CPU this runs in a forked process, so each model's peak is
    its own (a process's high-water mark never comes down)."""
    from audiopetl.training.determinism import select_device

    if select_device(job.settings.device).type != "cpu" or not hasattr(os, "fork"):
        return _measure(study, job, num_classes, steps, warmup)
    return _in_child(lambda: _measure(study, job, num_classes, steps, warmup))


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
    study: Study,
    job: TrainingJob,
    num_classes: int,
    steps: int,
    warmup: int,
) -> Throughput:
    import resource

    import torch
    import torch.nn.functional as F

    from audiopetl.core import compat
    from audiopetl.core.embedding import trains_on_embeddings
    from audiopetl.features.frontends import input_shape
    from audiopetl.models import checkpointing
    from audiopetl.models.build import build_model
    from audiopetl.models.hub import MIRROR_RECORD, is_hub_id, verify_mirror
    from audiopetl.models.strategies import get_strategy
    from audiopetl.training.checkpoint import save_state
    from audiopetl.training.determinism import make_deterministic, select_device
    from audiopetl.training.runtime import AMP_DTYPES, resolve_precision

    s = job.settings
    features = study.features(job.dataset, job.model)
    model_settings = study.model(job.model)
    # The shape is what costs time, not the weights: a model pretrained by the workflow is
    # measured from its architecture, a hub checkpoint from its local mirror.
    source = None if model_settings.pretrain else model_settings.pretrained
    if source is not None and is_hub_id(source):
        mirror = study.layout.mirror(job.model)
        if not (mirror / MIRROR_RECORD).is_file():
            raise TrainingError(
                f"models.{job.model}.pretrained: {source!r} is not mirrored in {mirror}; run "
                f"`audiopetl fetch-model --model {job.model}` first, or give --samples-per-s"
            )
        verify_mirror(model_settings, mirror)
        source = str(mirror)
    device = select_device(s.device)
    make_deterministic(job.seed, s.threads, False, device)
    rss_before = _rss_bytes() if device.type == "cpu" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    strategy = get_strategy(study.strategy(job.strategy))
    with warnings.catch_warnings():  # library deprecation notes are noise in a plan
        warnings.simplefilter("ignore", FutureWarning)
        model = strategy.apply(build_model(model_settings, features, num_classes, source))
    model = model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)
    dtype = AMP_DTYPES[resolve_precision(s.precision, device)]  # what training will use
    shape = input_shape(features.values)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return model(input_values=x).logits.float()

    if trains_on_embeddings(strategy.settings) and job.rule != "embed":
        # A probe's steps run its head on embeddings (their one-off computation is an
        # evaluation pass of the whole model over the data: the embed job, measured so).
        from audiopetl.training.embeddings import Embedder

        embedder = Embedder(model, device)
        shape = tuple(embedder(torch.randn(1, *shape)).shape)
        embedder.remove()

        def logits(x: torch.Tensor) -> torch.Tensor:
            return strategy.head_logits(model, x).float()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if dtype is None:
            return logits(x)
        with torch.autocast(device_type=device.type, dtype=dtype):
            return logits(x)

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

    # A probe's head and an embed job's evaluation pass have no backbone activations to keep.
    backbone_trains = job.rule != "embed" and not trains_on_embeddings(strategy.settings)
    if backbone_trains and s.gradient_checkpointing:  # timed as the job will run
        checkpointing.enable(model, strategy)
    model.train()
    train_sps = timed(steps, train_step, s.batch_size)
    model.eval()
    eval_sps = timed(steps, eval_step, s.eval_batch_size)
    # What a job also holds at an epoch's end: the best weights so far (on the host) when it
    # selects on validation, and the resume state being written (streamed to its file).
    best = strategy.trainable_state(model, "cpu") if s.split != "train_test" else None
    with tempfile.TemporaryDirectory(prefix="audiopetl-plan-") as folder:
        save_state(
            Path(folder),
            {"trainable": strategy.trainable_state(model), "optimizer": optimizer.state_dict(),
             "best_weights": best},
        )  # fmt: skip
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    else:  # ru_maxrss is in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    memory = "GPU memory allocated" if device.type == "cuda" else "CPU memory (RSS growth)"
    what = f"{job.model} embedding" if job.rule == "embed" else f"{job.model}/{job.strategy}"
    activations = None
    if backbone_trains and checkpointing.supported(model):
        # After the peak is read: the forward pass without checkpointing must not raise it.
        # Two forward passes, no backward: what is saved is known once the forward has run.
        x = torch.randn(s.batch_size, *shape, device=device)
        activations = checkpointing.measure(model, strategy, lambda: forward(x))
    return Throughput(
        train_sps,
        eval_sps,
        f"of {what} on {job.dataset}'s input measured on {device}: "
        f"{train_sps:.1f} training, {eval_sps:.1f} evaluation samples/s, training peak "
        f"{memory} {peak / 2**30:.2f} GiB at batch {s.batch_size}",
        device.type,
        peak,
        activations,
    )
