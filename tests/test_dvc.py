"""DVC end to end: real DVC and Snakemake run the quick preset in a temporary git repository.

One repository is built and reproduced once per module; the tests then run in order on it, as a
user would: a no-op repro, one strategy changed, Snakemake first and DVC after, an experiment,
and a push/pull round trip into a fresh clone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import tree_digest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "quick"
RESULTS = Path("results") / EXPERIMENT
STRATEGIES = ("full", "linear", "lora")
UP_TO_DATE = "Data and pipelines are up to date."
NOTHING_TO_DO = "Nothing to be done"
TIMEOUT_S = 1800

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The stages run `python`, Snakemake's rules run `audiopetl`: this interpreter's bin first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"] = "audiopetl tests"
        env[f"GIT_{role}_EMAIL"] = "tests@audiopetl.invalid"
    return env


def call(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        list(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return call(cwd, sys.executable, "-m", "dvc", *args, check=check)


def snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return call(cwd, sys.executable, "-m", "snakemake", *args)


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return call(cwd, "git", *args)


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


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


def job_counts(dry_run: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake dry run."""
    counts: dict[str, int] = {}
    section = dry_run.split("Job stats:", 1)
    for line in section[1].splitlines()[3:] if len(section) == 2 else []:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def set_config(repo: Path, pattern: str, replacement: str) -> None:
    """Edit config/config.yaml as a person would: one line, comments kept."""
    path = repo / "config" / "config.yaml"
    text, count = re.subn(pattern, replacement, path.read_text(), count=1, flags=re.MULTILINE)
    assert count == 1, pattern
    path.write_text(text)


def quick_cfg(repo: Path) -> dict:
    from audiopetl.core.config import load_config

    return load_config(repo / "config" / "config.yaml", EXPERIMENT)


def run_dirs(repo: Path) -> list[Path]:
    from audiopetl.study import Study

    return Study(quick_cfg(repo)).runs()


def outputs_digest(repo: Path) -> dict[str, str]:
    """sha256 of every file DVC tracks (data/ and results/, logs aside: Snakemake's, untracked;
    and a run's execution.json, its machine's timings, which .dvcignore leaves out)."""
    digest = {f"data/{k}": v for k, v in tree_digest(repo / "data").items()}
    for name, value in tree_digest(repo / RESULTS).items():
        if not name.startswith("logs/") and not name.endswith("/execution.json"):
            digest[f"{RESULTS.as_posix()}/{name}"] = value
    return digest


def lock(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository of the project on the quick preset, reproduced once by `dvc repro`."""
    folder = tmp_path_factory.mktemp("dvc") / "audiopetl"
    for name in project_files():
        source, target = ROOT / name, folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    set_config(folder, r"^experiment: \S+", f"experiment: {EXPERIMENT}")
    git(folder, "init", "--quiet")
    # DVC commits experiments itself: the identity must not depend on the machine's git config.
    git(folder, "config", "user.name", "audiopetl tests")
    git(folder, "config", "user.email", "tests@audiopetl.invalid")
    git(folder, "add", "--all")
    git(folder, "commit", "--quiet", "--message", "audiopetl on the quick preset")
    repro = dvc(folder, "repro")
    for stage in ("data", "features", "training", "report"):
        assert f"Running stage '{stage}'" in output(repro)
    return folder


def test_first_repro_runs_the_study(repo: Path) -> None:
    recorded = lock(repo)["stages"]
    assert set(recorded) == {"data", "features", "training", "report"}
    # Settings are recorded per stage: the training stage's own keys, not the report's.
    training_params = recorded["training"]["params"]["config/config.yaml"]
    assert set(training_params) == {"env", "data", "models", "strategies", "training", "study"}
    assert training_params["strategies"]["lora"]["rank"] == 8
    assert set(recorded["report"]["params"]["config/config.yaml"]) == {"env", "study", "report"}
    for run in run_dirs(repo):
        assert (repo / run / "evaluation.json").is_file(), run
        assert any((repo / run / "model").rglob("*.safetensors")), run
    # Every study writes into the same folders; DVC records them even when empty (no model
    # here is mirrored from a hub).
    outs = [out["path"] for stage in recorded.values() for out in stage.get("outs", [])]
    for folder in ("data/raw", "data/models", f"{RESULTS.as_posix()}/runs"):
        assert folder in outs and (repo / folder).is_dir(), folder
    metrics = json.loads((repo / RESULTS / "metrics.json").read_text())
    assert set(metrics["synthetic"]["tiny-ast"]) == set(STRATEGIES)
    # The workspace holds links into DVC's cache: a checkpoint takes its space once.
    checkpoint = next((repo / run_dirs(repo)[0] / "model").rglob("*.safetensors"))
    assert checkpoint.is_symlink()
    assert (repo / ".dvc" / "cache") in checkpoint.resolve().parents
    assert UP_TO_DATE in output(dvc(repo, "status"))
    # Data and results never go into git; the lock file does.
    untracked = git(repo, "status", "--porcelain", "--untracked-files=all").stdout.split("\n")
    assert [line for line in untracked if line] == ["?? dvc.lock"]
    for path in ("data/raw", "data/features", f"{RESULTS}/metrics.json"):
        assert call(repo, "git", "check-ignore", "--quiet", path, check=False).returncode == 0
    resume = run_dirs(repo)[0].parent / ".fold1.resume" / "state.pt"
    for path in (resume.as_posix(), "data/raw/.downloads/x.zip"):
        assert dvc(repo, "check-ignore", "--quiet", path, check=False).returncode == 0, path
    git(repo, "add", "dvc.lock")
    git(repo, "commit", "--quiet", "--message", "dvc repro")


def test_second_repro_does_nothing(repo: Path) -> None:
    before = outputs_digest(repo)
    result = output(dvc(repo, "repro"))
    assert UP_TO_DATE in result
    assert "Running stage" not in result
    assert outputs_digest(repo) == before
    assert NOTHING_TO_DO in output(snakemake(repo, "--dry-run"))


def test_metrics_and_plots_read_by_dvc(repo: Path) -> None:
    summary = pd.read_csv(repo / RESULTS / "summary.csv").set_index("strategy")
    shown = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    metrics = next(iter(shown.values()))["data"][f"{RESULTS.as_posix()}/metrics.json"]["data"]
    for strategy in STRATEGIES:
        values = metrics["synthetic"]["tiny-ast"][strategy]
        assert values["test_accuracy"] == pytest.approx(summary.loc[strategy, "test_accuracy_mean"])
        assert values["n_runs"] == summary.loc[strategy, "n_runs"]

    plots = json.loads(dvc(repo, "plots", "diff", "--json").stdout)
    assert not plots.get("errors")
    curves = f"{RESULTS.as_posix()}/plots/learning_curves"
    epochs = quick_cfg(repo)["training"]["epochs"]
    for strategy in STRATEGIES:
        (plot,) = plots["data"][f"{curves}/{strategy}.csv"]
        rows = plot["content"]["data"]["values"]
        assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
        assert all(0.0 <= float(r["val_accuracy"]) <= 1.0 for r in rows)
        assert plot["content"]["encoding"]["x"]["field"] == "epoch"
    (plot,) = plots["data"][f"{RESULTS.as_posix()}/plots/accuracy_vs_params.csv"]
    rows = {r["strategy"]: r for r in plot["content"]["data"]["values"]}
    assert set(rows) == set(STRATEGIES)
    for strategy, row in rows.items():
        assert float(row["trainable_params"]) == summary.loc[strategy, "trainable_params_mean"]
        assert float(row["test_accuracy"]) == pytest.approx(
            summary.loc[strategy, "test_accuracy_mean"]
        )


def test_a_preset_change_reruns_only_what_it_touches(repo: Path) -> None:
    """The active preset's settings are params of every stage, so editing it makes DVC run
    them all. DVC gives the outputs of the stages it runs new modification times (it copies
    them out of its cache and links them back); Snakemake compares the inputs' checksums
    instead and reruns only the report, the one thing this edit changes."""
    before = outputs_digest(repo)
    logs = repo / RESULTS / "logs"
    log_times = {p: p.stat().st_mtime_ns for p in logs.rglob("*.log")}
    preset = repo / "config" / "experiments" / f"{EXPERIMENT}.yaml"
    preset.write_text(preset.read_text() + "\nreport:\n  dpi: 150\n")

    status = output(dvc(repo, "status"))
    for stage in ("data", "features", "training", "report"):
        assert f"{stage}:" in status
    assert "config/experiments" in status
    # The preset's settings are params: DVC shows what the edit changed.
    diff = output(dvc(repo, "params", "diff"))
    assert f"config/experiments/{EXPERIMENT}.yaml" in diff and "report.dpi" in diff, diff
    result = output(dvc(repo, "repro"))
    for stage in ("data", "features", "training", "report"):
        assert f"Running stage '{stage}'" in result

    after = outputs_digest(repo)
    changed = {name for name in after if after[name] != before.get(name)}
    report_outputs = (f"{RESULTS.as_posix()}/figures/", f"{RESULTS.as_posix()}/config.resolved")
    assert changed and all(name.startswith(report_outputs) for name in changed), changed
    assert any("/figures/" in name for name in changed)
    rewritten = {
        p.relative_to(logs).as_posix() for p, t in log_times.items() if p.stat().st_mtime_ns != t
    }
    assert rewritten == {"report.log"}
    assert UP_TO_DATE in output(dvc(repo, "status"))
    assert NOTHING_TO_DO in output(snakemake(repo, "--dry-run"))
    git(repo, "commit", "--quiet", "--all", "--message", "quick: figures at 150 dpi")


def test_one_strategy_change_retrains_only_its_jobs(repo: Path) -> None:
    before = outputs_digest(repo)
    logs = repo / RESULTS / "logs" / "train"
    log_times = {p: p.stat().st_mtime_ns for p in logs.rglob("*.log")}
    set_config(repo, r"^(    lr): 5\.0e-3", r"\1: 4.0e-3")  # strategies.lora.lr

    status = output(dvc(repo, "status"))
    assert "training:" in status and "strategies" in status
    assert "data:" not in status and "features:" not in status
    result = output(dvc(repo, "repro"))
    assert "Stage 'features' didn't change, skipping" in result
    assert "Running stage 'training'" in result

    after = outputs_digest(repo)
    changed = {name for name in after if after[name] != before.get(name)}
    lora = [run for run in run_dirs(repo) if run.parts[-3] == "lora"]
    assert lora
    for run in run_dirs(repo):
        inside = {name for name in changed if name.startswith(f"{run.as_posix()}/")}
        # Every lora run is new (its run.json records the new rate); no other run changed.
        assert (f"{run.as_posix()}/run.json" in inside) == (run in lora), run
        assert bool(inside) == (run in lora), run
    assert not [n for n in changed if n.startswith(("data/", f"{RESULTS.as_posix()}/pretrain/"))]
    assert f"{RESULTS.as_posix()}/metrics.json" in changed
    # Snakemake ran exactly the lora jobs: only their logs were written again.
    rewritten = {
        p.relative_to(logs).parts[2] for p, t in log_times.items() if p.stat().st_mtime_ns != t
    }
    assert rewritten == {"lora"}

    assert lock(repo)["stages"]["training"]["params"]["config/config.yaml"]["strategies"]["lora"][
        "lr"
    ] == pytest.approx(4.0e-3)
    params = output(dvc(repo, "params", "diff"))
    assert "strategies.lora.lr" in params
    assert UP_TO_DATE in output(dvc(repo, "status"))
    git(repo, "commit", "--quiet", "--all", "--message", "lora: lr 4e-3")


def test_snakemake_first_then_dvc_commit(repo: Path) -> None:
    set_config(repo, r"^(  decimals): 2", r"\1: 1")
    counts = job_counts(output(snakemake(repo, "--cores", "2")))
    assert counts.get("report") == 1 and "train" not in counts
    assert "report:" in output(dvc(repo, "status"))

    dvc(repo, "commit", "--force")
    assert UP_TO_DATE in output(dvc(repo, "status"))
    result = output(dvc(repo, "repro"))
    assert UP_TO_DATE in result and "Running stage" not in result
    assert NOTHING_TO_DO in output(snakemake(repo, "--dry-run"))

    # A study run by Snakemake alone, never by DVC: `dvc commit` records every stage from the
    # workspace.
    recorded = (repo / "dvc.lock").read_text()
    (repo / "dvc.lock").unlink()
    dvc(repo, "commit", "--force")
    assert (repo / "dvc.lock").read_text() == recorded
    assert UP_TO_DATE in output(dvc(repo, "status"))
    git(repo, "commit", "--quiet", "--all", "--message", "report: one decimal")


def test_experiment_run_and_show(repo: Path) -> None:
    result = output(
        dvc(
            repo,
            "exp",
            "run",
            "--name",
            "linear-lr",
            "-S",
            "config/config.yaml:strategies.linear.lr=0.02",
        )
    )
    assert "Running stage 'training'" in result
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    experiments = {
        rev["name"]: rev["data"]
        for commit in shown
        for group in commit.get("experiments") or []
        for rev in group["revs"]
    }
    data = experiments["linear-lr"]
    params = data["params"]["config/config.yaml"]["data"]
    assert params["strategies"]["linear"]["lr"] == pytest.approx(0.02)
    metrics = data["metrics"][f"{RESULTS.as_posix()}/metrics.json"]["data"]
    assert set(metrics["synthetic"]["tiny-ast"]) == set(STRATEGIES)

    # Back to the committed results: DVC checks them out, Snakemake is told they are current.
    git(repo, "checkout", "--", "config/config.yaml", "dvc.lock")
    dvc(repo, "checkout", "--force")
    assert dvc(repo, "status", "--quiet", check=False).returncode == 0
    snakemake(repo, "--cores", "1", "--touch", "--forceall")
    assert NOTHING_TO_DO in output(snakemake(repo, "--dry-run"))
    assert UP_TO_DATE in output(dvc(repo, "status"))


def _stage_rules_without_records(clone: Path) -> list[str]:
    sys.path.insert(0, str(clone / "workflow"))
    try:
        import dvc_stage
    finally:
        sys.path.pop(0)
    stage = ["--rules", "pretrain", "train", "--omit-from", "report"]
    args = dvc_stage.parse_args(["--experiment", EXPERIMENT, *stage])
    cwd = Path.cwd()
    os.chdir(clone)
    try:
        return dvc_stage.rules_without_records(dvc_stage.snakemake_command(args), args.rules)
    finally:
        os.chdir(cwd)


def test_push_pull_round_trip(repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "dvc-remote"
    dvc(repo, "remote", "add", "--default", "local", str(remote))
    git(repo, "commit", "--quiet", "--all", "--message", "a local DVC remote")
    dvc(repo, "push")
    original = outputs_digest(repo)

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", str(repo), str(clone))
    dvc(clone, "pull")
    assert outputs_digest(clone) == original
    # An output folder the study leaves empty comes back too (no hub mirror in this study).
    assert (clone / "data" / "models").is_dir() and not any((clone / "data" / "models").iterdir())
    assert UP_TO_DATE in output(dvc(clone, "status"))
    result = output(dvc(clone, "repro"))
    assert UP_TO_DATE in result and "Running stage" not in result
    assert outputs_digest(clone) == original

    # Pulled files carry new modification times and Snakemake has no record of them yet: record
    # them as they are (the documented step), then Snakemake has nothing to do.
    assert dvc(clone, "status", "--quiet", check=False).returncode == 0
    snakemake(clone, "--cores", "1", "--touch", "--forceall")
    assert NOTHING_TO_DO in output(snakemake(clone, "--dry-run"))
    assert UP_TO_DATE in output(dvc(clone, "status"))
    assert outputs_digest(clone) == original

    # With the records in place a setting change reruns only the jobs it touches.
    config = clone / "config" / "config.yaml"
    original_config = config.read_text()
    set_config(clone, r"^(    lr): 4\.0e-3", r"\1: 3.0e-3")  # strategies.lora.lr
    counts = job_counts(output(snakemake(clone, "--dry-run")))
    lora = [run for run in run_dirs(clone) if run.parts[-3] == "lora"]
    assert counts.get("train") == len(lora) and "pretrain" not in counts
    config.write_text(original_config)

    # Without records (a queued experiment's fresh copy), a DVC stage reruns its rules instead
    # of keeping results it cannot vouch for.
    assert _stage_rules_without_records(clone) == []
    shutil.rmtree(clone / ".snakemake" / "metadata")
    assert _stage_rules_without_records(clone) == ["pretrain", "train"]


SCRATCH_PRESET = """\
# A study unlike the embedded ones: another dataset, a model without pretraining.
experiment: scratch
features:
  target_length: 64
datasets:
  synthetic-source:
    synthetic:
      classes: 4
      folds: 3
      clips_per_class_per_fold: 6
      duration_s: 0.7
models:
  scratch-ast:
    pretrained: null
    attn_implementation: sdpa
    architecture:
      hidden_size: 32
      num_hidden_layers: 1
      num_attention_heads: 2
      intermediate_size: 64
training:
  epochs: 1
  batch_size: 8
  threads: 1
  min_accuracy_over_chance: null
study:
  datasets: [synthetic-source]
  models: [scratch-ast]
  strategies: [linear]
  folds: [1]
  seeds: [0]
"""


def test_any_study_without_editing_dvc_yaml(repo: Path) -> None:
    """dvc.yaml names fixed folders, so a study on other datasets and models, without
    pretraining or hub checkpoints, is recorded and rerun as it stands; the folders it leaves
    empty still exist, as DVC requires of outputs."""
    from audiopetl.study import load_study

    (repo / "config" / "experiments" / "scratch.yaml").write_text(SCRATCH_PRESET)
    set_config(repo, r"^experiment: \S+", "experiment: scratch")
    study = load_study(repo / "config" / "config.yaml")
    run = repo / study.run_dir("synthetic-source", "scratch-ast", "linear", 1, 0)
    results = Path("results") / "scratch"

    # Snakemake first, DVC after, with the fixed folders a study may leave empty.
    counts = job_counts(output(snakemake(repo, "--cores", "2")))
    assert counts.get("train") == 1 and "pretrain" not in counts and "fetch_model" not in counts
    assert (run / "evaluation.json").is_file()
    for empty in (repo / results / "pretrain", repo / "data" / "models"):
        assert empty.is_dir() and not any(empty.iterdir()), empty
    dvc(repo, "commit", "--force")
    assert UP_TO_DATE in output(dvc(repo, "status"))
    outs = {
        out["path"]: out for stage in lock(repo)["stages"].values() for out in stage.get("outs", [])
    }
    assert outs[f"{results.as_posix()}/pretrain"]["nfiles"] == 0
    assert outs["data/models"]["nfiles"] == 0
    assert outs[f"{results.as_posix()}/runs"]["nfiles"] > 0
    metrics = json.loads((repo / results / "metrics.json").read_text())
    assert set(metrics["synthetic-source"]["scratch-ast"]) == {"linear"}
    # Even when Snakemake has nothing to do, the folders are there for DVC.
    (repo / results / "pretrain").rmdir()
    assert NOTHING_TO_DO in output(snakemake(repo, "--cores", "1"))
    assert UP_TO_DATE in output(dvc(repo, "status"))

    # And `dvc repro` reruns it after a change: the one run, then the report.
    before = json.loads((run / "run.json").read_text())
    set_config(repo, r"^(    lr): 1\.0e-2", r"\1: 2.0e-2")  # strategies.linear.lr
    result = output(dvc(repo, "repro"))
    assert "Running stage 'training'" in result and "Running stage 'report'" in result
    after = json.loads((run / "run.json").read_text())
    assert after["config"]["strategies"]["linear"]["lr"] == pytest.approx(2.0e-2)
    assert after != before
    again = output(dvc(repo, "repro"))
    assert UP_TO_DATE in again and "Running stage" not in again
