"""How long DVC takes to find nothing to do, in a fresh clone of the project.

    python benchmarks/dvc_noop.py [--experiment NAME] [--keep DIR]

Target (issue "DVC"): after a first `dvc repro`, a second one reports "Data and pipelines are up
to date" within seconds. Prints the wall time of the first repro, of the no-op repro, of
`dvc status` and of a Snakemake dry run, and the size of what DVC tracks.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UP_TO_DATE = "Data and pipelines are up to date."


def timed(folder: Path, env: dict[str, str], *command: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed in {folder}:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout + result.stderr


def tracked_size(folder: Path) -> tuple[int, int]:
    """Files and bytes under DVC's cache: what the outputs take, stored once."""
    files = [p for p in (folder / ".dvc" / "cache").rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="quick", help="the preset (default: quick)")
    parser.add_argument("--keep", type=Path, help="clone into this new folder and keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="audiopetl-dvc-bench-")) / "audiopetl"
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"] = "audiopetl benchmark"
        env[f"GIT_{role}_EMAIL"] = "benchmark@audiopetl.invalid"
    # A clone, as a user's: the committed workflow (the code is the installed audiopetl).
    timed(ROOT, env, "git", "clone", "--quiet", str(ROOT), str(folder))
    config = folder / "config" / "config.yaml"
    text = re.sub(
        r"^experiment: \S+", f"experiment: {args.experiment}", config.read_text(), flags=re.M
    )
    config.write_text(text)
    timed(folder, env, "git", "commit", "--quiet", "--all", "--allow-empty", "-m", "benchmark")

    dvc = (sys.executable, "-m", "dvc")
    first, _ = timed(folder, env, *dvc, "repro")
    noop, said = timed(folder, env, *dvc, "repro")
    if UP_TO_DATE not in said or "Running stage" in said:
        sys.exit(f"the second `dvc repro` did something in {folder}:\n{said}")
    status, _ = timed(folder, env, *dvc, "status")
    dry, _ = timed(folder, env, sys.executable, "-m", "snakemake", "--dry-run", "--quiet")
    files, size = tracked_size(folder)
    print(f"experiment {args.experiment!r} on {os.cpu_count()} CPUs ({folder})")
    print(f"  first dvc repro      {first:8.1f} s")
    print(f"  no-op dvc repro      {noop:8.1f} s")
    print(f"  dvc status           {status:8.1f} s")
    print(f"  snakemake --dry-run  {dry:8.1f} s")
    print(f"  DVC cache            {files} files, {size / 2**20:.1f} MiB")
    if not args.keep:
        shutil.rmtree(folder.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
