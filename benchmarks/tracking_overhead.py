"""What the experiment trackers cost a training job: the quick preset's LoRA job (tiny AST,
3 epochs) run as `audiopetl train` processes with no tracker, each installed backend alone and
all of them, offline (W&B offline, MLflow's file store).

    python benchmarks/tracking_overhead.py [--repeats N] [--epochs E]

Printed per configuration: the median wall seconds of the process (imports included: a
tracker's package is imported only when named), the median training seconds (execution.json:
the epochs' own time) and the difference to the untracked job. The job is tiny on purpose: what
is left is the trackers' fixed cost per job and per logged step, the figure that matters for a
study of many short jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--experiment", "quick", "--quiet"]


def cli(args: list[str], cwd: Path) -> float:
    """Run `audiopetl ARGS` in ``cwd``; its wall seconds."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "audiopetl", *args], cwd=cwd, env=env, capture_output=True
    )
    if done.returncode != 0:
        raise SystemExit(f"audiopetl {' '.join(args)} failed:\n{done.stderr.decode()[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "src"))
    from audiopetl.core.tracking import BACKENDS, missing_backends

    installed = [name for name in BACKENDS if not missing_backends([name])]
    configs = {"none": [], **{name: [name] for name in installed}, "all": installed}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        root.mkdir()
        shutil.copytree(REPO / "config", root / "config")
        for dataset in ("synthetic", "synthetic-source"):
            cli(["fetch", dataset, *QUICK], root)
            cli(["cache", dataset, *QUICK], root)
        cli(["pretrain", "--model", "tiny-ast", *QUICK], root)
        print(f"quick LoRA job, {args.epochs} epochs, {args.repeats} repeats, offline trackers")
        print(f"{'trackers':<28} {'wall s':>8} {'train s':>8} {'wall +s':>8}")
        base: float | None = None
        for label, backends in configs.items():
            walls, trains = [], []
            for k in range(args.repeats):
                out = root / "runs" / f"{label}-{k}"
                sets = [
                    "--set", f"training.epochs={args.epochs}",
                    "--set", f"tracking.backends=[{','.join(backends)}]",
                ]  # fmt: skip
                walls.append(
                    cli(
                        [
                            "train", *QUICK, "--dataset", "synthetic", "--model", "tiny-ast",
                            "--strategy", "lora", "--fold", "3", "--seed", "0",
                            "--out", str(out), *sets,
                        ],
                        root,
                    )
                )  # fmt: skip
                execution = json.loads((out / "execution.json").read_text())
                trains.append(execution["training_seconds"])
            wall, train = statistics.median(walls), statistics.median(trains)
            base = wall if base is None else base
            name = ", ".join(backends) or "none"
            print(f"{name:<28} {wall:8.2f} {train:8.3f} {wall - base:+8.2f}")


if __name__ == "__main__":
    main()
