"""How long DVC takes to find nothing to do, in a fresh git repository of the project.

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


def project_files() -> list[str]:
    """What a clone of the working tree holds: tracked files and new ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    return [name for name in listed if name and os.path.lexists(ROOT / name)]


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
    parser.add_argument("--keep", type=Path, help="build the repository here and keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="audiopetl-dvc-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    for name in project_files():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target, follow_symlinks=False)
    config = folder / "config" / "config.yaml"
    text = re.sub(
        r"^experiment: \S+", f"experiment: {args.experiment}", config.read_text(), flags=re.M
    )
    config.write_text(text)
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"] = "audiopetl benchmark"
        env[f"GIT_{role}_EMAIL"] = "benchmark@audiopetl.invalid"
    timed(folder, env, "git", "init", "--quiet")
    timed(folder, env, "git", "add", "--all")
    timed(folder, env, "git", "commit", "--quiet", "--message", "benchmark")

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
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
