"""The probe on cached embeddings against the `linear` strategy, at the same shape: what one
study of a linear-probe baseline (and each variant of its sweep) costs.

    python benchmarks/probe_speed.py [--shape ast-base|tiny] [--epochs N] [--threads T]
                                     [--clips-per-class K] [--device cpu|cuda|auto]

Both start from the same weights (AST-base's architecture built at random and saved as a
save_pretrained folder: the weights' values change no time) on the synthetic dataset's
features of 128 frames x 128 bins, 10 classes, 5 folds (train 3, validation 1, test 1), and
run audiopetl's own training job (audiopetl.training.run.run_trainer: validation every epoch,
resume state, outputs). Printed, per strategy: the embed job's seconds (probe only; once per
dataset and model, shared by every probe run and sweep variant), the mean seconds of a
training epoch (execution.json, validation included), the whole job's seconds, and the
speed-ups: per epoch, per job, for a sweep of 4 variants (4 jobs, one embedding), and a job's
projected at the reference study's 50 epochs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DATASET, MODEL, EXPERIMENT = "synthetic", "bench-ast", "bench-probe"
ARCHITECTURES = {
    "ast-base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "patch_size": 16,
        "frequency_stride": 10,
        "time_stride": 10,
    },
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "patch_size": 16,
        "frequency_stride": 16,
        "time_stride": 16,
    },
}
SWEEP = 4
REFERENCE_EPOCHS = 50


def prepare(root: Path, args: argparse.Namespace) -> None:
    """The project: config, the preset, the dataset fetched and cached, the starting weights."""
    from audiopetl.cli.main import main
    from audiopetl.core import compat
    from audiopetl.models.build import build_model
    from audiopetl.study import load_study
    from audiopetl.training.determinism import seed_everything

    shutil.copytree(REPO / "config", root / "config")
    preset = {
        "experiment": EXPERIMENT,
        "datasets": {"synthetic": {"synthetic": {"clips_per_class_per_fold": args.clips}}},
        "models": {
            MODEL: {
                "pretrained": "weights",
                "attn_implementation": "sdpa",
                "architecture": ARCHITECTURES[args.shape],
            }
        },
        "training": {
            "epochs": args.epochs,
            "batch_size": 8,
            "precision": "fp32",
            "threads": args.threads,
            "device": args.device,
            "min_accuracy_over_chance": None,  # random weights: measure, do not judge
        },
        "study": {"models": [MODEL], "strategies": ["linear", "probe"], "folds": [1]},
    }
    path = root / "config" / "experiments" / f"{EXPERIMENT}.yaml"
    path.write_text(yaml.safe_dump(preset, sort_keys=False))
    sink = io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(sink):
        for command in ("fetch", "cache"):
            if main([command, DATASET, "--quiet", "--experiment", EXPERIMENT]) != 0:
                sys.exit(f"audiopetl {command} {DATASET} failed")
        study = load_study(Path("config/config.yaml"), EXPERIMENT)
        seed_everything(0)
        features = study.features(DATASET, MODEL)
        random = dataclasses.replace(study.model(MODEL), pretrained=None)
        compat.save_pretrained(build_model(random, features, 10, None), Path("weights"))


def train(study: Any, strategy: str, root: Path) -> dict[str, Any]:
    from audiopetl.training.run import run_trainer

    run = study.run(DATASET, MODEL, strategy, 1, 0, out=root / "runs" / strategy)
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        run_trainer(run)
    seconds = time.perf_counter() - started
    epochs = json.loads((run.out / "execution.json").read_text())["epochs"]
    return {"job_s": seconds, "epoch_s": statistics.mean(e["seconds"] for e in epochs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(ARCHITECTURES), default="ast-base")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=2, help="clips per class and fold")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from audiopetl.study import embeddings, load_study
    from audiopetl.training.embeddings import build_embeddings

    with tempfile.TemporaryDirectory(prefix="audiopetl-probe-bench-") as folder:
        root = Path(folder)
        prepare(root, args)
        with contextlib.chdir(root):
            study = load_study(Path("config/config.yaml"), EXPERIMENT)
            linear = train(study, "linear", root)
            started = time.perf_counter()
            build_embeddings(embeddings.settings(study, DATASET, MODEL))
            embed_s = time.perf_counter() - started
            probe = train(study, "probe", root)
    clips = 10 * 5 * args.clips
    print(f"shape {args.shape}, {clips} clips (train 60%), {args.epochs} epochs, device "
          f"{args.device}, {args.threads} threads")  # fmt: skip
    print(f"{'strategy':8} {'embed s':>8} {'epoch s':>8} {'job s':>8}")
    print(f"{'linear':8} {'-':>8} {linear['epoch_s']:8.2f} {linear['job_s']:8.2f}")
    print(f"{'probe':8} {embed_s:8.2f} {probe['epoch_s']:8.3f} {probe['job_s']:8.2f}")
    print(f"speed-up per epoch: {linear['epoch_s'] / probe['epoch_s']:.0f}x")
    print(f"speed-up per job (the embedding included): "
          f"{linear['job_s'] / (embed_s + probe['job_s']):.1f}x")  # fmt: skip
    sweep = SWEEP * linear["job_s"] / (embed_s + SWEEP * probe["job_s"])
    print(f"speed-up for a sweep of {SWEEP} variants (one embedding): {sweep:.1f}x")
    # The rest of a job (set-up, test, outputs) does not grow with the epochs.
    fixed_l = linear["job_s"] - args.epochs * linear["epoch_s"]
    fixed_p = probe["job_s"] - args.epochs * probe["epoch_s"]
    long_l = fixed_l + REFERENCE_EPOCHS * linear["epoch_s"]
    long_p = embed_s + fixed_p + REFERENCE_EPOCHS * probe["epoch_s"]
    print(f"projected per job at {REFERENCE_EPOCHS} epochs (the reference study's): "
          f"{long_l:.0f} s vs {long_p:.0f} s, {long_l / long_p:.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
