"""The workflow end to end: real Snakemake runs the quick preset in a temporary project."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.image as mpimg
import pandas as pd
import pytest
import yaml
from project_copy import copy_workflow, edit_preset

if TYPE_CHECKING:
    from audiopetl.study import Study

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "quick"

pytestmark = pytest.mark.slow


def snakemake(
    project: Path, *args: str, check: bool = True, experiment: str = EXPERIMENT
) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # The rules call `audiopetl`: the interpreter's own bin folder must come first on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--config", f"experiment={experiment}", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run."""
    counts: dict[str, int] = {}
    section = dry_run_output.split("Job stats:", 1)
    if len(section) < 2:
        return counts
    for line in section[1].splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("workflow")
    copy_workflow(folder)
    snakemake(folder, "--cores", "2")
    return folder


def quick_study() -> Study:
    from audiopetl.study import load_study

    return load_study(ROOT / "config" / "config.yaml", EXPERIMENT)


def run_dirs(project: Path) -> list[Path]:
    return [project / run for run in quick_study().runs()]


def test_every_output_present_and_consistent(project: Path) -> None:
    quick = quick_study()
    study = quick.config["study"]
    exp = project / "results" / EXPERIMENT
    for run in run_dirs(project):
        for name in (
            "metrics.json",
            "history.csv",
            "predictions.parquet",
            "run.json",
            "evaluation.json",
            "model/trainable.safetensors",
        ):
            assert (run / name).is_file(), run / name
        evaluation = json.loads((run / "evaluation.json").read_text())
        assert evaluation["matches_reported"] is True
        assert evaluation["max_abs_logit_difference"] == 0.0
    summary = pd.read_csv(exp / "summary.csv")
    assert len(summary) == len(study["datasets"]) * len(study["models"]) * len(study["strategies"])
    assert (summary["n_runs"] == len(study["folds"]) * len(study["seeds"])).all()
    assert set(summary["strategy"]) == set(study["strategies"])
    # The summary's mean is the mean of the runs' own metrics.
    lora = [
        json.loads((r / "metrics.json").read_text())["test"]["accuracy"]
        for r in run_dirs(project)
        if r.parts[-3] == "lora"
    ]
    row = summary[summary["strategy"] == "lora"].iloc[0]
    assert row["test_accuracy_mean"] == pytest.approx(sum(lora) / len(lora))
    figures = sorted((exp / "figures").glob("*.png"))
    assert {p.stem for p in figures} == {
        "learning_curves",
        "accuracy_vs_params",
        "accuracy_per_strategy",
        "confusion_matrix",
        "per_class_f1",
    }
    for png in figures:
        image = mpimg.imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0  # not a blank canvas
        assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    assert "\\toprule" in (exp / "table.tex").read_text()
    resolved = yaml.safe_load((exp / "config.resolved.yaml").read_text())
    assert resolved["experiment"] == EXPERIMENT
    report = json.loads((project / quick.data_report_path("synthetic")).read_text())
    assert report["clips"] > 0
    assert (
        project / "results" / EXPERIMENT / "pretrain" / "tiny-ast" / "pretrained" / "config.json"
    ).is_file()
    # Every job left a log.
    assert list((exp / "logs" / "train").rglob("*.log"))


def test_second_run_does_nothing(project: Path) -> None:
    result = snakemake(project, "--dry-run")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_self_contained_report(project: Path) -> None:
    snakemake(project, "--report", "report.html")
    html = (project / "report.html").read_text(errors="replace")
    assert "accuracy_vs_params" in html
    # Works offline: no script or stylesheet is loaded from the network.
    assert not re.search(r"<script[^>]+src=[\"']https?://", html)
    assert not re.search(r"<link[^>]+href=[\"']https?://[^\"']+\.css", html)


def test_training_only_change_never_rebuilds_the_cache(project: Path) -> None:
    original = (project / "config" / "experiments" / f"{EXPERIMENT}.yaml").read_text()
    try:
        edit_preset(project, EXPERIMENT, {"training": {"label_smoothing": 0.05}})
        counts = job_counts(snakemake(project, "--dry-run").stdout)
        assert counts.get("train") == len(run_dirs(project))
        assert "cache" not in counts and "fetch" not in counts
    finally:
        (project / "config" / "experiments" / f"{EXPERIMENT}.yaml").write_text(original)
    assert "Nothing to be done" in snakemake(project, "--dry-run").stdout


def test_bookkeeping_settings_rerun_nothing(project: Path) -> None:
    """How often losses are read and the state is saved changes no result: no job reruns."""
    preset = project / "config" / "experiments" / f"{EXPERIMENT}.yaml"
    original = preset.read_text()
    try:
        change = {"training": {"log_every_steps": 1, "save_state_every_s": 60}}
        edit_preset(project, EXPERIMENT, change)
        assert "Nothing to be done" in snakemake(project, "--dry-run").stdout
    finally:
        preset.write_text(original)


def test_one_strategy_change_reruns_only_that_strategy(project: Path) -> None:
    runs = run_dirs(project)
    before = {r: (r / "metrics.json").stat().st_mtime_ns for r in runs}
    edit_preset(project, EXPERIMENT, {"strategies": {"lora": {"lr": 0.004}}})
    counts = job_counts(snakemake(project, "--dry-run").stdout)
    lora_runs = [r for r in runs if r.parts[-3] == "lora"]
    assert counts.get("train") == len(lora_runs)
    assert "pretrain" not in counts and "cache" not in counts
    snakemake(project, "--cores", "2")
    for run in runs:
        changed = (run / "metrics.json").stat().st_mtime_ns != before[run]
        assert changed == (run in lora_runs), run
    lr = json.loads((lora_runs[0] / "run.json").read_text())["config"]["strategies"]["lora"]["lr"]
    assert lr == 0.004
    assert "Nothing to be done" in snakemake(project, "--dry-run").stdout


def data_files(project: Path) -> dict[str, int]:
    """Every file under data/ with its modification time."""
    data = project / "data"
    return {str(p.relative_to(data)): p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}


def test_presets_alternate_without_refetching_or_retraining(project: Path) -> None:
    from audiopetl.study import load_study

    quick_data = data_files(project)
    quick_runs = {r: (r / "metrics.json").stat().st_mtime_ns for r in run_dirs(project)}
    # The default defines both synthetic datasets otherwise (more classes, clips, seconds):
    # its data goes into folders of its own, beside the quick preset's.
    default = load_study(project / "config" / "config.yaml", "default")
    targets = [
        str(default.data_report_path("synthetic")),
        str(default.cache_path("synthetic-source")),
    ]
    assert not any((project / t).exists() for t in targets)
    snakemake(project, "--cores", "2", *targets, experiment="default")
    after = data_files(project)
    assert {k: after[k] for k in quick_data} == quick_data  # the quick data untouched
    assert {Path(k).parts[0] for k in set(after) - set(quick_data)} == {
        "raw",
        "features",
        "reports",
    }
    # Back to quick: nothing to fetch, cache or train. And to the default: its data is there.
    assert "Nothing to be done" in snakemake(project, "--dry-run").stdout
    assert (
        "Nothing to be done"
        in snakemake(project, "--dry-run", *targets, experiment="default").stdout
    )
    assert all((r / "metrics.json").stat().st_mtime_ns == t for r, t in quick_runs.items())
    # A preset that shares the quick preset's data and changes only training reuses the data:
    # its jobs are its own pretraining and runs, no fetch, cache or data report.
    presets = project / "config" / "experiments"
    longer = yaml.safe_load((presets / "quick.yaml").read_text())
    longer["experiment"] = "quick-longer"
    (presets / "quick-longer.yaml").write_text(yaml.safe_dump(longer, sort_keys=False))
    try:
        edit_preset(project, "quick-longer", {"training": {"epochs": 5}})
        counts = job_counts(snakemake(project, "--dry-run", experiment="quick-longer").stdout)
        assert counts.get("train") == len(quick_runs) and counts.get("pretrain") == 1
        assert not {"fetch", "cache", "data_report"} & set(counts), counts
    finally:
        (presets / "quick-longer.yaml").unlink()


def is_module(name: str) -> bool:
    """Whether a dotted name is a module or package of src/, not a name defined in one."""
    path = ROOT / "src" / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_parsing_the_workflow_imports_neither_torch_nor_matplotlib() -> None:
    """Every job, each SLURM job included, parses the workflow again: the modules rules/*.smk
    import must stay light (torch and matplotlib take seconds to import)."""
    modules = set()
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for found in re.finditer(r"^from (audiopetl[\w.]*) import (\w+)", smk.read_text(), re.M):
            package, name = found.groups()
            # `from audiopetl.core import config` imports a module; `from x.y import f`, x.y.
            modules.add(f"{package}.{name}" if is_module(f"{package}.{name}") else package)
    assert {"audiopetl.core.config", "audiopetl.report.build"} <= modules, modules
    probe = (
        "import importlib, sys\n"
        f"for name in {sorted(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in ('torch', 'matplotlib', 'seaborn') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
