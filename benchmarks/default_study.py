"""Wall time of `snakemake -c all` on the embedded default, from a fresh copy of the project.

    python benchmarks/default_study.py [--cores N] [--experiment NAME] [--keep DIR]

Target: the default study (six methods x 5 folds) in at most 5 minutes on a 2-core machine.
Prints the wall time, the results table and the paired comparisons.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
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
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
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
        f"default study: {seconds:.1f} s wall time with --cores {args.cores} "
        f"on {os.cpu_count()} CPUs ({folder})"
    )
    print(summary.read_text())
    print((summary.parent / "paired.md").read_text())
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
