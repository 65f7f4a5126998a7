"""The workflow under abuse: Snakemake killed with SIGKILL at random points and run again ends
with the same results, bit for bit, as a study never interrupted; two Snakemake processes on
one folder end with Snakemake's lock message; two fresh runs of a study in two processes give
identical files, so DVC's hashes of the run folders are equal; a damaged cache is noticed and
rebuilt by its own rule when a job needs it."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from project_copy import copy_workflow

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "quick"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def env() -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    environment["PATH"] = f"{BIN}{os.pathsep}{environment.get('PATH', '')}"
    return environment


def snakemake_command(*args: str) -> list[str]:
    return [str(BIN / "python"), "-m", "snakemake", "--config", f"experiment={EXPERIMENT}", *args]


def snakemake(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        snakemake_command(*args), cwd=project, env=env(), capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def new_project(folder: Path) -> Path:
    folder.mkdir(parents=True)
    copy_workflow(folder, ["Snakefile", "rules", "config", "workflow", "envs", "profiles"])
    shutil.copy2(ROOT / ".dvcignore", folder / ".dvcignore")
    return folder


def run_folders(project: Path) -> list[Path]:
    results = project / "results" / EXPERIMENT
    return sorted({p.parent for p in results.rglob("SHA256SUMS")})


def sums(run: Path) -> dict[str, str]:
    lines = (run / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines)}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two fresh runs of the quick study side by side, each in its own processes (and so its
    own PYTHONHASHSEED)."""
    base = tmp_path_factory.mktemp("twice")
    a, b = new_project(base / "a"), new_project(base / "b")
    with ThreadPoolExecutor(max_workers=2) as pool:
        for done in pool.map(lambda p: snakemake(p, "--cores", "1"), (a, b)):
            assert done.returncode == 0
    return a, b


def dvc_hash(project: Path, folder: str) -> str:
    """DVC's own hash of a folder, as `dvc add` records it (.dvcignore applied)."""
    dvc = [str(BIN / "dvc")]
    if not (project / ".dvc").is_dir():
        subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=project, check=True)
    subprocess.run([*dvc, "add", "-q", "--no-commit", folder], cwd=project, check=True)
    record = yaml.safe_load((project / f"{folder}.dvc").read_text())
    return record["outs"][0]["md5"]


def test_two_fresh_runs_give_identical_files_and_dvc_hashes(fresh: tuple[Path, Path]) -> None:
    a, b = fresh
    runs_a, runs_b = run_folders(a), run_folders(b)
    assert [r.relative_to(a) for r in runs_a] == [r.relative_to(b) for r in runs_b]
    assert len(runs_a) == 7  # the pretraining and 3 strategies x 2 folds
    for run_a, run_b in zip(runs_a, runs_b, strict=True):
        assert sums(run_a) == sums(run_b), run_a.relative_to(a)
        adapter = run_a / "model" / "adapter" / "adapter_config.json"
        if adapter.is_file():  # peft's target_modules: sorted, whatever the hash seed
            modules = json.loads(adapter.read_text())["target_modules"]
            assert modules == sorted(modules)
    for folder in ("results/quick/runs", "results/quick/pretrain"):
        assert dvc_hash(a, folder) == dvc_hash(b, folder), folder


def kill_group(process: subprocess.Popen) -> None:
    with_group = os.getpgid(process.pid)
    os.killpg(with_group, signal.SIGKILL)
    process.wait(timeout=60)


def test_kill_9_at_random_points_then_rerun_equals_the_uninterrupted_study(
    fresh: tuple[Path, Path], tmp_path: Path
) -> None:
    reference = fresh[0]
    project = new_project(tmp_path / "killed")
    draw = random.Random()
    kills = []
    for _ in range(3):
        after = round(draw.uniform(4.0, 30.0), 1)
        process = subprocess.Popen(
            snakemake_command("--cores", "2"), cwd=project, env=env(), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(after)
        finished = process.poll() is not None
        if not finished:
            kill_group(process)
        kills.append((after, "finished first" if finished else "killed"))
    # What README says to do after kill -9: unlock, then run the same command again.
    snakemake(project, "--unlock")
    snakemake(project, "--cores", "2")
    ours, theirs = run_folders(project), run_folders(reference)
    assert [r.relative_to(project) for r in ours] == [r.relative_to(reference) for r in theirs]
    for run, ref in zip(ours, theirs, strict=True):
        mine, other = sums(run), sums(ref)
        # Every file the same bytes but run.json, which records the interruptions.
        assert {k: v for k, v in mine.items() if k != "run.json"} == {
            k: v for k, v in other.items() if k != "run.json"
        }, (run, kills)
        info, ref_info = (json.loads((r / "run.json").read_text()) for r in (run, ref))
        info.pop("interruptions"), ref_info.pop("interruptions")
        assert info == ref_info, (run, kills)
    leftovers = [p for p in (project / "results").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [], kills


def test_two_snakemakes_on_one_folder_end_with_the_lock_message(tmp_path: Path) -> None:
    project = new_project(tmp_path / "race")
    first = subprocess.Popen(
        snakemake_command("--cores", "1"), cwd=project, env=env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(6)
        assert first.poll() is None, "the first Snakemake ended before the second started"
        second = snakemake(project, "--cores", "1", check=False)
    finally:
        kill_group(first)
    assert second.returncode != 0
    text = second.stdout + second.stderr
    assert "LockException" in text or "cannot be locked" in text, text[-2000:]
    assert "FileNotFoundError" not in text and "Traceback" not in text, text[-3000:]


def test_a_damaged_cache_is_rebuilt_by_its_rule(fresh: tuple[Path, Path], tmp_path: Path) -> None:
    project = tmp_path / "damaged"
    shutil.copytree(fresh[1], project, symlinks=True)
    cache = next((project / "data" / "features").glob("synthetic-[0-9a-f]*.parquet"))
    data = bytearray(cache.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    cache.write_bytes(bytes(data))
    # A run to redo needs the cache: the workflow notices the damage (it moves the file aside,
    # keeping it) and its cache rule builds it again before the run trains; no hand deletion.
    lost = next(r for r in run_folders(project) if "lora" in r.parts)
    shutil.rmtree(lost)
    target = str((lost / "evaluation.json").relative_to(project))
    dry = snakemake(project, "--dry-run", target)
    assert "the feature cache is damaged" in dry.stderr and "moved aside" in dry.stderr
    assert (cache.parent / f".{cache.name}.damaged").is_file()
    assert "rule cache:" in dry.stdout and cache.name in dry.stdout, dry.stdout[-3000:]
    snakemake(project, "--cores", "2", target)
    from audiopetl.features.cachefile import damage

    assert cache.is_file() and damage(cache) == ""
    assert (lost / "evaluation.json").is_file()
    assert "Nothing to be done" in snakemake(project, "--dry-run").stdout
