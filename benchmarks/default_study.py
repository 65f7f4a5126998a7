"""Wall time of `snakemake -c all` on the embedded default, from a fresh copy of the project.

    python benchmarks/default_study.py [--cores N] [--experiment NAME] [--keep DIR]

Target: the default study (seven methods, LoRA's 3 learning rates as a sweep, x 5 folds) in at
most 5 minutes on a 2-core machine; the
same for `--experiment models` (three model kinds x three methods x 5 folds).
Prints the wall time, the results table and the paired comparisons, and where the jobs' time
went: every audiopetl process appends its start, its first training step and its end to
$AUDIOPETL_TIMINGS (audiopetl.process.timings). Start-up is a training job's time from its process's
start to its first training step (Python, torch, transformers and peft imports, the config,
the cache, building the model); the share is start-up over all jobs' process time (training
and data jobs alike). Target: below 30%.
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
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["Snakefile", "rules", "config", "workflow", "envs"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="all")
    parser.add_argument("--experiment", default=None, help="a preset (default: the default)")
    parser.add_argument("--keep", type=Path, help="run here and keep the results")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="audiopetl-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source, target = ROOT / name, folder / name
        if target.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    timings = folder / "timings.jsonl"
    timings.unlink(missing_ok=True)
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        AUDIOPETL_TIMINGS=str(timings),
    )
    command = [sys.executable, "-m", "snakemake", "--cores", args.cores, "--quiet", "rules"]
    if args.experiment:
        command += ["--config", f"experiment={args.experiment}"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=folder, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        print(f"snakemake failed (exit {result.returncode}) in {folder}", file=sys.stderr)
        return result.returncode
    experiment = args.experiment or "default"
    summary = folder / "results" / experiment / "table.md"
    print(
        f"study {experiment!r}: {seconds:.1f} s wall time with --cores {args.cores} "
        f"on {os.cpu_count()} CPUs ({folder})"
    )
    print(summary.read_text())
    print((summary.parent / "paired.md").read_text())
    print(startup_report(timings, seconds))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def startup_report(path: Path, wall: float) -> str:
    jobs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    training = [j for j in jobs if "first_step" in j]
    total = sum(j["ended"] - j["started"] for j in jobs)
    startup = [j["first_step"] - j["started"] for j in training]
    trained = sum(j["ended"] - j["first_step"] for j in training)
    others = total - sum(j["ended"] - j["started"] for j in training)
    kinds = Counter(j["command"] for j in jobs)
    share = 100 * sum(startup) / total
    return (
        f"jobs: {', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))}; their "
        f"processes ran {total:.1f} s in all ({total / wall:.2f} per second of wall time)\n"
        f"start-up of the {len(training)} training jobs (process start -> first step): "
        f"{sum(startup):.1f} s in all, {statistics.median(startup):.2f} s median per job\n"
        f"training, scoring and writing after the first step: {trained:.1f} s; data and "
        f"report jobs: {others:.1f} s\n"
        f"start-up share of job time: {share:.1f}% (target < 30%)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
