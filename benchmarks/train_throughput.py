"""Training throughput and peak memory of the default tiny AST, per strategy.

    python benchmarks/train_throughput.py [--epochs N] [--threads T] [--strategies full,lora]
                                          [--device cpu|cuda|auto] [--keep DIR]

The default study's settings (config/config.yaml, no preset): the synthetic dataset (10 classes,
5 folds x 8 clips per class, 1.3 s), features of 128 frames x 128 mel bins, the tiny AST
(hidden 64, 2 layers), batch 32, train_val_test split (test fold 1: 240 training clips). The
dataset is fetched and cached in a temporary folder. Each strategy trains in its own process
(so peak RSS is its own) for N epochs from a random initialisation (the throughput does not
depend on where the weights come from, and the pretraining step is skipped). Reported:

  samples/s  training samples per second over the epochs after the first (the first pays
             one-off costs), from the run's history; all epochs when only one was run
  epoch 1    the first epoch's samples/s
  RSS MB     the process's peak resident memory (includes Python, torch and the data)
  GPU MB     peak CUDA memory allocated, when training on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
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

REPO = Path(__file__).resolve().parents[1]
DATASET, MODEL, TEST_FOLD, SEED = "synthetic", "tiny-ast", 1, 0


def prepare(root: Path) -> None:
    """A project folder with the default synthetic dataset fetched and cached."""
    from audiopetl.cli.main import main

    shutil.copytree(REPO / "config", root / "config")
    sink = io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(sink):
        for command in ("fetch", "cache"):
            code = main([command, DATASET, "--quiet"])
            if code != 0:
                sys.exit(f"audiopetl {command} {DATASET} failed ({code})")


def worker(root: Path, strategy: str, epochs: int, threads: int | None, device: str) -> None:
    """Train one strategy in this process; print one JSON line of measurements."""
    import pandas as pd
    import torch

    from audiopetl.study import load_study
    from audiopetl.training.run import run_trainer

    warnings.filterwarnings("ignore")
    os.chdir(root)
    study = load_study("config/config.yaml")
    overrides: dict[str, Any] = {
        "epochs": epochs,
        "device": device,
        # A few epochs from scratch may sit at chance: measure, do not judge.
        "min_accuracy_over_chance": None,
    }
    if threads is not None:
        overrides["threads"] = threads
    # From a random initialisation: no pretrained weights.
    run = study.run(
        DATASET, MODEL, strategy, TEST_FOLD, SEED, out=root / "runs" / strategy, pretrained=None
    ).with_training(**overrides)
    with contextlib.redirect_stderr(io.StringIO()):
        trainer = run_trainer(run, progress=False)
    metrics = trainer.metrics
    # Per-epoch timings are in execution.json (history.csv holds what identical runs share).
    rows = pd.DataFrame(json.loads((run.out / "execution.json").read_text())["epochs"])
    steady = rows.iloc[1:] if len(rows) > 1 else rows
    samples = len(trainer.train) * len(steady)
    result = {
        "strategy": strategy,
        "samples_per_s": samples / steady["seconds"].sum(),
        "first_epoch_samples_per_s": float(rows["samples_per_s"].iloc[0]),
        "epochs": len(rows),
        "train_clips": len(trainer.train),
        "batch_size": trainer.training.batch_size,
        "threads": torch.get_num_threads(),
        "device": str(trainer.device),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "gpu_mb": (
            torch.cuda.max_memory_allocated() / 2**20 if trainer.device.type == "cuda" else None
        ),
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "test_accuracy": metrics["test"]["accuracy"],
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: the config's training.threads)"
    )
    parser.add_argument("--strategies", default="full,linear,lora")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--keep", type=Path, help="build the project here and keep it")
    parser.add_argument("--worker", nargs=2, metavar=("ROOT", "STRATEGY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), args.worker[1], args.epochs, args.threads, args.device)
        return

    with contextlib.ExitStack() as stack:
        if args.keep:
            root = args.keep.resolve()
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="train-bench-")))
        if not (root / "config").is_dir():
            prepare(root)
        results = []
        for strategy in args.strategies.split(","):
            cmd = [sys.executable, __file__, "--worker", str(root), strategy]
            cmd += ["--epochs", str(args.epochs), "--device", args.device]
            if args.threads is not None:
                cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{strategy}: worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))

    first = results[0]
    print(
        f"tiny AST, default config: {first['train_clips']} training clips of 128 x 128, batch "
        f"{first['batch_size']}, {first['epochs']} epochs, device {first['device']}, "
        f"{first['threads']} thread(s), {os.cpu_count()} CPU(s)"
    )
    header = f"{'strategy':<8} {'trainable':>10} {'samples/s':>10} {'epoch 1':>8} {'RSS MB':>8}"
    header += f" {'GPU MB':>8}"
    print(header)
    for r in results:
        gpu = f"{r['gpu_mb']:8.1f}" if r["gpu_mb"] is not None else f"{'-':>8}"
        print(
            f"{r['strategy']:<8} {r['trainable_params']:>10,} {r['samples_per_s']:10.1f} "
            f"{r['first_epoch_samples_per_s']:8.1f} {r['rss_mb']:8.0f} {gpu}"
        )


if __name__ == "__main__":
    main()
