"""The two presets of other dataset shapes end to end under real Snakemake: an official split
(speechcommands-like: one run per method and seed, compared on the test clips) and a
multi-label task (multilabel-demo: selected and reported by mAP)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from project_copy import copy_workflow
from test_workflow import snakemake

from audiopetl.study import load_study

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = copy_workflow(tmp_path_factory.mktemp("shapes"))
    for experiment in ("speechcommands-like", "multilabel-demo"):
        snakemake(folder, "--cores", "2", experiment=experiment)
    return folder


def runs_of(experiment: str) -> list[Path]:
    return load_study(ROOT / "config/config.yaml", experiment).runs()


def test_an_official_split_runs_once_per_seed(project: Path) -> None:
    runs = runs_of("speechcommands-like")
    assert len(runs) == 3 * 2  # full, linear, lora x seeds 0, 1: no folds
    assert {run.name for run in runs} == {"official"}
    results = project / "results/speechcommands-like"
    assert not list(results.glob("runs/**/fold*"))
    for run in runs:
        metrics = json.loads((project / run / "metrics.json").read_text())
        assert metrics["split"] == "official" and metrics["fold"] is None
        record = json.loads((project / run / "run.json").read_text())
        assert record["run"]["splits"] == {"split": "official", "rule": "train_val_test"}
        # The split scheme is part of the dataset's identity, so of the run's record.
        assert record["config"]["datasets"]["keywords"]["split"]["scheme"] == "official"
        assert metrics["test"]["n"] == 80 and metrics["train_clips"] == 240
    summary = pd.read_csv(results / "summary.csv")
    assert summary["n_runs"].eq(2).all()
    assert summary["test_accuracy_mean"].gt(0.3).all()  # chance: 0.1
    assert (results / "figures/confusion_matrix.png").is_file()


def test_an_official_split_is_compared_on_its_test_clips(project: Path) -> None:
    results = project / "results/speechcommands-like"
    markdown = (results / "paired.md").read_text()
    assert "McNemar's exact test" in markdown
    assert "p (corrected)" not in markdown  # no folds' table: there are no folds to pair
    table = pd.read_csv(results / "paired.csv")
    assert set(table["paired_over"]) == {"test clips x seeds"}
    against_full = table[table["reference"] == "full"]
    assert set(against_full["strategy"]) == {"linear", "lora"}
    # The 80 test clips, each with both its seeds: seeds are never counted as more clips.
    assert against_full["n"].eq(80).all() and against_full["seeds"].eq(2).all()
    assert (against_full["ci_low"] <= against_full["mean_difference"]).all()
    assert (against_full["mean_difference"] <= against_full["ci_high"]).all()
    assert set(against_full["decided_by"]) == {"McNemar's exact test"}


def test_a_multilabel_study_reports_map(project: Path) -> None:
    results = project / "results/multilabel-demo"
    runs = runs_of("multilabel-demo")
    assert len(runs) == 3 * 3
    for run in runs:
        metrics = json.loads((project / run / "metrics.json").read_text())
        assert metrics["task"] == "multilabel" and metrics["selected_by"] == "val_mAP"
        assert metrics["test"]["mAP"] > metrics["chance_mAP"] + 0.2
    figures = {p.stem for p in (results / "figures").glob("*.png")}
    assert "per_class_ap" in figures and "confusion_matrix" not in figures
    assert "mAP (%)" in (results / "table.md").read_text().splitlines()[0]
    plotted = pd.read_csv(results / "plots/accuracy_vs_params.csv")
    summary = pd.read_csv(results / "summary.csv")
    assert plotted["test_metric"].tolist() == summary["test_mAP_mean"].tolist()
    paired = (results / "paired.md").read_text()
    assert "mean test mAP" in paired


def test_both_presets_are_then_up_to_date(project: Path) -> None:
    for experiment in ("speechcommands-like", "multilabel-demo"):
        result = snakemake(project, "--dry-run", experiment=experiment)
        assert "Nothing to be done" in result.stdout + result.stderr, experiment
