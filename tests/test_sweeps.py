"""Sweeps: a strategy's lists of values expand into named variants, each its own DAG jobs; the
winner is chosen on validation only and is what the tables report."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from project_copy import copy_workflow, edit_preset
from test_workflow import job_counts, snakemake

from audiopetl.core.errors import ConfigError
from audiopetl.study import load_study

EXPERIMENT = "quick-sweep"
CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


def quick(*overrides: str) -> dict:
    """The quick preset with ``overrides``, loaded as the CLI loads it (every check)."""
    return load_study(CONFIG, "quick", overrides).config


# -- expansion ----------------------------------------------------------------------------------
def test_grid_expands_into_named_variants_in_the_study_order() -> None:
    cfg = quick(
        "strategies.lora.sweep.lr=[1.0e-3, 3.0e-3]",
        "strategies.lora.sweep.rank=[4, 8]",
        "strategies.lora.sweep.weight_decay=[0.0]",
    )
    variants = [
        "lora.lr-0.001.rank-4.weight_decay-0.0",
        "lora.lr-0.001.rank-8.weight_decay-0.0",
        "lora.lr-0.003.rank-4.weight_decay-0.0",
        "lora.lr-0.003.rank-8.weight_decay-0.0",
    ]
    assert cfg["study"]["strategies"] == ["full", "linear", *variants]
    assert "lora" not in cfg["strategies"]
    block = cfg["strategies"]["lora.lr-0.003.rank-8.weight_decay-0.0"]
    # lr and rank are the strategy's, weight_decay a training setting.
    assert (block["lr"], block["rank"], block["training"]) == (0.003, 8, {"weight_decay": 0.0})
    assert block["alpha"] == 16 and "sweep" not in block
    assert cfg["sweeps"]["lora"]["select_on"] == "all"
    assert list(cfg["sweeps"]["lora"]["variants"]) == variants
    # The variant's run depends on its values only: the same settings as an unswept strategy.
    study = load_study(CONFIG, "quick", ["strategies.lora.rank=8", "strategies.lora.lr=3.0e-3"])
    swept = load_study(
        CONFIG, "quick", ["strategies.lora.sweep.lr=[3.0e-3]", "strategies.lora.sweep.rank=[8]"]
    )
    assert (
        swept.run_params("tiny-ast", "lora.lr-0.003.rank-8")["strategy"]
        == study.run_params("tiny-ast", "lora")["strategy"]
    )
    # An expanded configuration (a run's record) loads again unchanged.
    from audiopetl.study.study import validated

    assert validated(cfg, [], "run.json").config == cfg


def test_adding_a_value_keeps_the_other_variants_names() -> None:
    two = quick("strategies.lora.sweep.lr=[1.0e-3, 1.0e-2]")["sweeps"]["lora"]["variants"]
    three = quick("strategies.lora.sweep.lr=[1.0e-3, 3.0e-3, 1.0e-2]")["sweeps"]["lora"]
    assert set(two) < set(three["variants"])


def test_random_mode_draws_points_of_the_grid_reproducibly() -> None:
    args = (
        "strategies.lora.sweep.lr=[1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2]",
        "strategies.lora.sweep.rank=[2, 4, 8]",
        "strategies.lora.sweep_mode=random",
        "strategies.lora.sweep_points=4",
    )
    first, again = quick(*args), quick(*args)
    variants = list(first["sweeps"]["lora"]["variants"])
    assert len(variants) == 4 and variants == list(again["sweeps"]["lora"]["variants"])
    other = quick(*args, "strategies.lora.sweep_seed=1")
    assert list(other["sweeps"]["lora"]["variants"]) != variants


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategies.lora.sweep.select_metric=[loss]"], "cannot be swept"),
        (["strategies.lora.sweep.split=[train_test]"], "cannot be swept"),
        (["strategies.lora.sweep.rank=[]"], "a non-empty list"),
        (["strategies.lora.sweep.rank=[4, 4]"], "listed twice"),
        (["strategies.lora.sweep.ranq=[4]"], "unknown key (did you mean 'rank'?)"),
        (["strategies.lora.sweep.rank=[4, four]"], "expected integer"),
        (["strategies.full.sweep_points=2"], "only with a `sweep` block"),
        (["strategies.lora.sweep.rank=[4]", "strategies.lora.sweep_points=1"], "random"),
        (
            ["strategies.lora.sweep.rank=[4]", "strategies.lora.sweep_mode=random"],
            "needs the number of variants",
        ),
        (["strategies.lora.sweep.rank=[4]", "training.split=train_test"], "no validation set"),
        (["strategies.full.sweep.lr=[1.0e-3]"], "a pretraining needs one strategy"),
    ],
)
def test_a_bad_sweep_is_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        quick(*overrides)
    assert message in str(err.value), str(err.value)


# -- a study with a 2x2 sweep -------------------------------------------------------------------
@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = copy_workflow(tmp_path_factory.mktemp("sweep"))
    snakemake(project, "--cores", "2", experiment=EXPERIMENT)
    return project


def _val_means(project: Path) -> dict[str, float]:
    runs = project / "results" / EXPERIMENT / "runs" / "synthetic" / "tiny-ast"
    means = {}
    for folder in sorted(runs.glob("lora.*")):
        values = [
            json.loads(p.read_text())["val"]["accuracy"]
            for p in folder.glob("seed*/*/metrics.json")
        ]
        assert len(values) == 2, folder  # two folds, one seed
        means[folder.name] = sum(values) / len(values)
    return means


@pytest.mark.slow
def test_the_winner_is_chosen_on_validation_and_reported(swept: Path) -> None:
    out = swept / "results" / EXPERIMENT
    selection = json.loads((out / "sweeps" / "synthetic" / "tiny-ast" / "lora.json").read_text())
    means = _val_means(swept)
    assert len(means) == 4
    best = max(means.values())
    winner = next(name for name, value in means.items() if value == best)  # first of a tie
    assert selection["selected"] == winner
    assert selection["metric"] == "val_accuracy"
    assert "test" not in json.dumps(selection)
    table = (out / "table.md").read_text()
    assert winner in table and "linear" in table
    assert not [name for name in means if name != winner and name in table]
    assert f"variant {winner} selected on mean val_accuracy" in table
    sweep = (out / "sweep.md").read_text()
    assert all(name in sweep for name in means) and "not used for selection" in sweep
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(row["strategy"] for row in summary["rows"]) == sorted(["linear", winner])
    assert (out / "plots" / "learning_curves" / "lora.csv").is_file()


@pytest.mark.slow
def test_test_results_cannot_move_the_choice(
    swept: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every variant's test numbers rewritten to rank the variants the other way round: the
    selection, written again, is the same file byte for byte."""
    project = tmp_path / "copy"
    shutil.copytree(swept, project, symlinks=True)
    out = project / "results" / EXPERIMENT
    selected = out / "sweeps" / "synthetic" / "tiny-ast" / "lora.json"
    winner = json.loads(selected.read_text())["selected"]
    for path in (out / "runs" / "synthetic" / "tiny-ast").glob("lora.*/seed*/*/metrics.json"):
        metrics = json.loads(path.read_text())
        metrics["test"]["accuracy"] = 1.0 - metrics["val"]["accuracy"]
        path.write_text(json.dumps(metrics))
    means = {k: 1.0 - v for k, v in _val_means(project).items()}
    assert max(means, key=means.__getitem__) != winner  # test now favours another variant
    monkeypatch.chdir(project)
    again = tmp_path / "again.json"
    args = ("--dataset", "synthetic", "--model", "tiny-ast", "--strategy", "lora")
    result = cli("select", "--experiment", EXPERIMENT, *args, "--out", again)
    assert result.code == 0, result.err
    assert again.read_bytes() == selected.read_bytes()


@pytest.mark.slow
def test_adding_a_value_runs_only_its_variants(swept: Path, tmp_path: Path) -> None:
    project = tmp_path / "copy"
    shutil.copytree(swept, project, symlinks=True)
    edit_preset(
        project, EXPERIMENT, {"strategies": {"lora": {"sweep": {"lr": [1e-3, 1e-2, 3e-3]}}}}
    )
    dry = snakemake(project, "-n", "--cores", "1", experiment=EXPERIMENT)
    assert job_counts(dry.stdout)["train"] == 4  # lr 3e-3 x rank 2, 4 x two folds
    # Each train job's block names its outputs: .../runs/DATASET/MODEL/STRATEGY/seedS/SPLIT/.
    trained = set(
        re.findall(r"rule train:[^\n]*\n(?:[^\n]+\n)*?\s+output: \S+/tiny-ast/([^/]+)/", dry.stdout)
    )
    assert trained == {"lora.lr-0.003.rank-2", "lora.lr-0.003.rank-4"}
    # Removing a value trains nothing: the selection and the report are made again.
    edit_preset(project, EXPERIMENT, {"strategies": {"lora": {"sweep": {"lr": [1e-2]}}}})
    dry = snakemake(project, "-n", "--cores", "1", experiment=EXPERIMENT)
    assert "train" not in job_counts(dry.stdout)


@pytest.mark.slow
def test_first_fold_selection_runs_only_the_winner_elsewhere(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "first").mkdir()
    project = copy_workflow(tmp_path / "first")
    edit_preset(
        project,
        EXPERIMENT,
        {
            "strategies": {"lora": {"sweep": {"rank": [2]}, "sweep_select_on": "first_fold"}},
            "study": {"strategies": ["lora"]},
        },
    )
    monkeypatch.chdir(project)
    plan = cli("plan", "--experiment", EXPERIMENT)
    assert plan.code == 0, plan.err
    assert "train synthetic/tiny-ast/lora:winner/seed0/fold2" in plan.out
    assert "tiny-ast/lora.lr-0.01.rank-2/seed0/fold2" not in plan.out
    assert plan.out.count("train synthetic/") == 3  # two variants on fold1, the winner on fold2
    snakemake(project, "--cores", "2", experiment=EXPERIMENT)
    runs = project / "results" / EXPERIMENT / "runs" / "synthetic" / "tiny-ast"
    done = sorted(p.relative_to(runs).as_posix() for p in runs.glob("*/seed0/*/metrics.json"))
    winner = json.loads(
        (project / "results" / EXPERIMENT / "sweeps/synthetic/tiny-ast/lora.json").read_text()
    )["selected"]
    loser = next(v for v in ("lora.lr-0.001.rank-2", "lora.lr-0.01.rank-2") if v != winner)
    assert done == sorted(
        [f"{winner}/seed0/fold1/metrics.json", f"{winner}/seed0/fold2/metrics.json",
         f"{loser}/seed0/fold1/metrics.json"]
    )  # fmt: skip
    summary = json.loads((project / "results" / EXPERIMENT / "summary.json").read_text())
    assert [(row["strategy"], row["n_runs"]) for row in summary["rows"]] == [(winner, 2)]
    resolved = yaml.safe_load(
        (project / "results" / EXPERIMENT / "config.resolved.yaml").read_text()
    )
    assert resolved["sweeps"]["lora"]["select_on"] == "first_fold"
