"""Training throughput and peak memory per strategy: audiopetl's training job next to a bare
loop over the same model and data, and what `audiopetl plan --measure` predicts.

    python benchmarks/train_throughput.py [--shape tiny|ast-base] [--epochs N] [--threads T]
                                          [--strategies full,lora] [--split S] [--bare] [--plan]
                                          [--device cpu|cuda|auto] [--keep DIR]

Shapes:
  tiny      the default study's settings (config/config.yaml): the synthetic dataset (10
            classes, 5 folds x 8 clips per class, 1.3 s), features of 128 frames x 128 bins, the
            tiny AST (hidden 64, 2 layers), batch 32.
  ast-base  AST-base's architecture (768 hidden, 12 layers, 12 heads, 3072 feed-forward,
            16 x 16 patches, stride 10) built from its config at random, the same 128 x 128
            features (2 clips per class and fold), batch 8, fp32, 2 threads unless --threads.

Each measurement runs in a process of its own (so its peak memory is its own), from a random
initialisation (the weights' values change neither the time nor the memory). Reported, per
strategy:

  samples/s  training samples per second over the epochs after the first (all of them when
             only one ran), from the run's execution.json
  peak MB    the process's peak resident memory (Python, torch, the data included)
  growth MB  peak minus the process's resident memory just before the job set its run up
             (data, model, training, outputs): what training adds to a loaded process
  GPU MB     peak CUDA memory allocated, when training on a GPU
  --bare     the same for a bare forward / cross-entropy / backward / AdamW loop over the same
             model, batches and epochs (no validation, no resume state, no outputs), and the
             bound audiopetl must keep: bare + the best-weights copy (when the split has a
             validation fold) + 10%
  --plan     the training peak `audiopetl plan --measure` reports for the job (its growth
             figure; GPU memory allocated on a GPU)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DATASET, TEST_FOLD, SEED = "synthetic", 1, 0
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"experiment": "default", "model": "tiny-ast", "preset": None},
    "ast-base": {
        "experiment": "bench-ast-base",
        "model": "ast-base",
        "preset": {
            "datasets": {"synthetic": {"synthetic": {"clips_per_class_per_fold": 2}}},
            "models": {
                "ast-base": {
                    "pretrained": None,
                    "attn_implementation": "sdpa",
                    "architecture": {
                        "hidden_size": 768,
                        "num_hidden_layers": 12,
                        "num_attention_heads": 12,
                        "intermediate_size": 3072,
                        "patch_size": 16,
                        "frequency_stride": 10,
                        "time_stride": 10,
                    },
                }
            },
            "training": {"batch_size": 8, "precision": "fp32", "threads": 2},
            "study": {"models": ["ast-base"]},
        },
    },
}


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def prepare(root: Path, shape: str) -> None:
    """A project folder with the shape's preset and its synthetic dataset fetched and cached."""
    from audiopetl.cli.main import main

    shutil.copytree(REPO / "config", root / "config")
    spec = SHAPES[shape]
    if spec["preset"] is not None:
        preset = {"experiment": spec["experiment"], **spec["preset"]}
        path = root / "config" / "experiments" / f"{spec['experiment']}.yaml"
        path.write_text(yaml.safe_dump(preset, sort_keys=False))
    sink = io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(sink):
        for command in ("fetch", "cache"):
            code = main([command, DATASET, "--quiet", "--experiment", spec["experiment"]])
            if code != 0:
                sys.exit(f"audiopetl {command} {DATASET} failed ({code})")


def study_run(root: Path, shape: str, strategy: str, overrides: dict[str, Any]) -> Any:
    from audiopetl.study import load_study

    spec = SHAPES[shape]
    study = load_study(root / "config" / "config.yaml", spec["experiment"])
    # From a random initialisation: no pretrained weights.
    run = study.run(
        DATASET, spec["model"], strategy, TEST_FOLD, SEED, out=root / "runs" / strategy,
        pretrained=None,
    )  # fmt: skip
    return study, run.with_training(**overrides)


def worker(args: argparse.Namespace, root: Path, strategy: str, mode: str) -> None:
    """One measurement in this process; one JSON line on stdout."""
    import torch

    os.chdir(root)
    warnings.filterwarnings("ignore")
    overrides: dict[str, Any] = {
        "epochs": args.epochs,
        "device": args.device,
        # A few epochs from scratch may sit at chance: measure, do not judge.
        "min_accuracy_over_chance": None,
    }
    if args.threads is not None:
        overrides["threads"] = args.threads
    if args.split is not None:
        overrides["split"] = args.split
    study, run = study_run(root, args.shape, strategy, overrides)
    result: dict[str, Any] = {"strategy": strategy, "mode": mode}
    if mode == "plan":
        from audiopetl.study.measure import measure_throughput
        from audiopetl.study.plan import dataset_shape, study_jobs

        job = next(j for j in study_jobs(study) if j.rule == "train" and j.strategy == strategy)
        job = dataclasses.replace(job, settings=run.training)
        measured = measure_throughput(study, job, num_classes=dataset_shape(study, DATASET)[1])
        result["plan_mb"] = measured.peak_bytes / 2**20
        print(json.dumps(result))
        return
    before = rss_mb()
    if mode == "audiopetl":
        from audiopetl.training.run import run_trainer

        with contextlib.redirect_stderr(io.StringIO()):
            trainer = run_trainer(run, progress=False)
        execution = json.loads((run.out / "execution.json").read_text())
        seconds = [e["seconds"] for e in execution["epochs"]]
        steady = seconds[1:] or seconds
        result["samples_per_s"] = len(trainer.train) * len(steady) / sum(steady)
        result["trainable_params"] = trainer.params.trainable
    else:
        result.update(bare_loop(run))
    result.update(
        peak_mb=peak_mb(),
        growth_mb=peak_mb() - before,
        gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        threads=torch.get_num_threads(),
        batch_size=run.training.batch_size,
        best_copy=run.training.split != "train_test",
    )
    print(json.dumps(result))


def bare_loop(run: Any) -> dict[str, Any]:
    """forward / cross-entropy / backward / AdamW over the run's own model and batches: the
    least a training of this model can hold."""
    import time

    import torch
    import torch.nn.functional as F

    from audiopetl.models.strategies import get_strategy
    from audiopetl.training.data import epoch_order
    from audiopetl.training.determinism import make_deterministic
    from audiopetl.training.trainer import Trainer

    trainer = Trainer(run)
    t = run.training
    make_deterministic(run.seed, t.threads, t.deterministic, trainer.device)
    trainer.load_data()
    trainer.val = trainer.test = None  # a bare loop holds its training data only
    model = get_strategy(run.strategy).apply(trainer.base_model()).to(trainer.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=run.strategy.lr, betas=t.betas, eps=t.eps)
    features, labels = trainer.train.features, trainer.train.labels
    model.train()
    started = time.perf_counter()
    for epoch in range(t.epochs):
        for idx in epoch_order(len(labels), run.seed, epoch).split(t.batch_size):
            x = features[idx].to(trainer.device).float()
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(input_values=x).logits, labels[idx].to(trainer.device))
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - started
    return {
        "samples_per_s": len(labels) * t.epochs / seconds,
        "trainable_params": sum(p.numel() for p in params),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: the shape's training.threads)"
    )
    parser.add_argument("--strategies", default="full,linear,lora")
    parser.add_argument(
        "--split", choices=["train_val_test", "train_test"], help="default: the shape's"
    )
    parser.add_argument("--bare", action="store_true", help="also run a bare training loop")
    parser.add_argument("--plan", action="store_true", help="also ask plan --measure")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--keep", type=Path, help="build the project here and keep it")
    parser.add_argument("--worker", nargs=3, metavar=("ROOT", "STRATEGY", "MODE"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        worker(args, Path(args.worker[0]), args.worker[1], args.worker[2])
        return

    modes = ["audiopetl", *(["bare"] if args.bare else []), *(["plan"] if args.plan else [])]
    with contextlib.ExitStack() as stack:
        if args.keep:
            root = args.keep.resolve()
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="train-bench-")))
        if not (root / "config").is_dir():
            prepare(root, args.shape)
        results: dict[tuple[str, str], dict[str, Any]] = {}
        for strategy in args.strategies.split(","):
            for mode in modes:
                cmd = [sys.executable, __file__, "--worker", str(root), strategy, mode]
                cmd += ["--shape", args.shape, "--epochs", str(args.epochs)]
                cmd += ["--device", args.device]
                if args.threads is not None:
                    cmd += ["--threads", str(args.threads)]
                if args.split is not None:
                    cmd += ["--split", args.split]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    failed = f"{strategy} ({mode}) failed ({done.returncode})"
                    sys.exit(f"{failed}:\n{done.stderr[-3000:]}")
                results[strategy, mode] = json.loads(done.stdout.strip().splitlines()[-1])
    report(args, results)


def report(args: argparse.Namespace, results: dict[tuple[str, str], dict[str, Any]]) -> None:
    strategies = args.strategies.split(",")
    first = results[strategies[0], "audiopetl"]
    print(
        f"shape {args.shape}: batch {first['batch_size']}, {args.epochs} epoch(s), "
        f"{first['threads']} thread(s), {os.cpu_count()} CPU(s), best-weights copy "
        f"{'held' if first['best_copy'] else 'not held (train_test)'}"
    )
    header = f"{'strategy':<10} {'trainable':>11} {'samples/s':>9} {'peak MB':>8} {'growth MB':>9}"
    if args.bare:
        header += f" {'bare s/s':>8} {'bare peak':>9} {'bare grow':>9} {'bound MB':>8} {'ok':>3}"
    if args.plan:
        header += f" {'plan MB':>8}"
    header += f" {'GPU MB':>7}"
    print(header)
    for strategy in strategies:
        ours = results[strategy, "audiopetl"]
        line = (
            f"{strategy:<10} {ours['trainable_params']:>11,} {ours['samples_per_s']:9.1f} "
            f"{ours['peak_mb']:8.0f} {ours['growth_mb']:9.0f}"
        )
        if args.bare:
            bare = results[strategy, "bare"]
            copy_mb = ours["trainable_params"] * 4 / 2**20 if ours["best_copy"] else 0.0
            bound = (bare["peak_mb"] + copy_mb) * 1.1
            line += (
                f" {bare['samples_per_s']:8.1f} {bare['peak_mb']:9.0f} {bare['growth_mb']:9.0f}"
                f" {bound:8.0f} {'yes' if ours['peak_mb'] <= bound else 'NO':>3}"
            )
        if args.plan:
            line += f" {results[strategy, 'plan']['plan_mb']:8.0f}"
        gpu = ours["gpu_mb"]
        line += f" {gpu:7.0f}" if gpu is not None else f" {'-':>7}"
        print(line)


if __name__ == "__main__":
    main()
