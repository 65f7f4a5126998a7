"""Do two revisions of the code give the same results? Byte for byte, on this machine.

    python benchmarks/same_results.py --against REV [--experiments default quick] [--work DIR]

Runs each experiment's whole study (`snakemake -c all`) twice: once with the code of git
revision REV and once with this checkout's working tree (committed or not), each in a fresh
project folder of its own, with this environment's installed packages (the code is put first
on the import path, so the editable install of this checkout does not leak into REV's run).
Then it compares every run folder's `metrics.json`, `history.csv`, `predictions.parquet` and
every file under `model/`, and every pretraining's `metrics.json` and `pretrained/` files, by
sha256: it prints one line per file that differs or exists on one side only, and exits 1 if
any does. A refactoring that changes no result passes; the check is bitwise, so both runs must
happen on the same machine (the same CPU kind), as README says.

REV's results are kept in DIR/REV-COMMIT (default DIR: a folder under the system's temporary
folder) and reused by later calls, so checking a change again costs only the working tree's run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What is compared in each run folder: the files the issue names as the results, not run.json
# (it records the git commit and the command line, which differ by construction).
RUN_FILES = ("metrics.json", "history.csv", "predictions.parquet")
RUN_FOLDERS = ("model",)
PRETRAIN_FILES = ("metrics.json", "history.csv", "predictions.parquet")
PRETRAIN_FOLDERS = ("pretrained",)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def export_revision(rev: str, dest: Path) -> None:
    """The tracked files of ``rev`` into ``dest`` (git archive: no worktree bookkeeping)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def export_working_tree(dest: Path) -> None:
    """This checkout's files as they are now: tracked ones and new ones git does not ignore."""
    names = git("ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    for name in filter(None, names):
        source = ROOT / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)


def run_study(project: Path, experiment: str) -> float:
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=str(project / "src"),
    )
    command = [sys.executable, "-m", "snakemake", "--cores", "all", "--quiet", "rules"]
    command += ["--config", f"experiment={experiment}"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=project, env=env)
    if result.returncode != 0:
        raise SystemExit(f"snakemake failed (exit {result.returncode}) in {project}")
    return time.perf_counter() - started


def digests(project: Path, experiment: str) -> dict[str, str]:
    """Relative path -> sha256 of every compared file of the experiment's results."""
    base = project / "results" / experiment
    found: dict[str, str] = {}
    groups = (
        (base / "runs", "metrics.json", RUN_FILES, RUN_FOLDERS),
        (base / "pretrain", "metrics.json", PRETRAIN_FILES, PRETRAIN_FOLDERS),
    )
    for root, marker, files, folders in groups:
        for metrics in sorted(root.rglob(marker)) if root.is_dir() else []:
            run = metrics.parent
            paths = [run / f for f in files if (run / f).is_file()]
            for folder in folders:
                paths += sorted(p for p in (run / folder).rglob("*") if p.is_file())
            for path in paths:
                found[str(path.relative_to(base))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def results_of(project: Path, experiments: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for experiment in experiments:
        seconds = run_study(project, experiment)
        out[experiment] = digests(project, experiment)
        print(f"  {experiment}: {len(out[experiment])} files in {seconds:.0f} s ({project})")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the git revision to compare with")
    parser.add_argument("--experiments", nargs="+", default=["default", "quick"])
    parser.add_argument("--work", type=Path, help="where the projects are made and kept")
    args = parser.parse_args()
    commit = git("rev-parse", "--verify", f"{args.against}^{{commit}}").strip()
    work = args.work or Path(tempfile.gettempdir()) / "audiopetl-same-results"
    before = work / f"rev-{commit[:12]}"
    if not (before / ".complete").is_file():
        shutil.rmtree(before, ignore_errors=True)
        export_revision(commit, before)
    print(f"{args.against} ({commit[:12]}):")
    theirs = results_of(before, args.experiments)
    (before / ".complete").write_text("")
    after = Path(tempfile.mkdtemp(prefix="working-tree-", dir=work))
    export_working_tree(after)
    print("working tree:")
    ours = results_of(after, args.experiments)
    differ = 0
    for experiment in args.experiments:
        a, b = theirs[experiment], ours[experiment]
        for name in sorted(set(a) | set(b)):
            if name not in a or name not in b:
                side = "working tree" if name in b else args.against
                print(f"ONLY IN {side}: {experiment}/{name}")
                differ += 1
            elif a[name] != b[name]:
                print(f"DIFFERS: {experiment}/{name}")
                differ += 1
        if not a:
            print(f"NO RESULTS: {experiment}")
            differ += 1
    total = sum(len(v) for v in ours.values())
    if differ:
        print(f"FAIL: {differ} of {total} files differ from {args.against}")
        return 1
    shutil.rmtree(after, ignore_errors=True)
    print(f"PASS: all {total} result files are byte-identical to {args.against}'s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
