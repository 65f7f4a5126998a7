"""The report from fabricated run folders: numbers, tables, figures and atomic writes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.image
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audiopetl.core.config import load_config
from audiopetl.core.errors import DataError
from audiopetl.report.aggregate import collect_histories, collect_runs, summarize
from audiopetl.report.build import build_report
from audiopetl.report.dvc_views import dvc_view_outputs
from audiopetl.report.figures import best_strategy, learning_curves, thesis_style
from audiopetl.study import Study
from audiopetl.training.metrics import classification_metrics

CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
DATASET, MODEL = "synthetic", "tiny-ast"
STRATEGIES = {"full": (2.5, 1_200_000), "linear": (1.0, 325), "lora": (2.0, 41_285)}
TOTAL_PARAMS = 1_200_000
FOLDS = (1, 2, 3)
SEED = 0
CLASSES = [f"class_{c}" for c in range(6)]  # > 5: top-5 accuracy is computed
EPOCHS = 6
# Top-5 accuracy over 5 classes is trivially 1; sklearn says so once per run.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
FIGURES = (
    "learning_curves",
    "accuracy_vs_params",
    "accuracy_per_strategy",
    "confusion_matrix",
    "per_class_f1",
)


def _split(rng: np.random.Generator, n: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels covering every class and softmax probabilities that favour the true class."""
    labels = rng.permutation(np.arange(n) % len(CLASSES))
    logits = rng.normal(size=(n, len(CLASSES)))
    logits[np.arange(n), labels] += signal
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities.astype(np.float32)


def _history(rng: np.random.Generator, signal: float) -> pd.DataFrame:
    epoch = np.arange(1, EPOCHS + 1)
    return pd.DataFrame(
        {
            "epoch": epoch,
            "step": epoch * 10,
            "train_loss": 1.6 * np.exp(-0.3 * signal * epoch / EPOCHS) + rng.uniform(0, 0.05),
            "val_loss": 1.7 * np.exp(-0.25 * signal * epoch / EPOCHS),
            "val_accuracy": np.clip(0.2 + 0.1 * signal * epoch / EPOCHS, 0, 1),
            "val_metric": np.clip(0.2 + 0.1 * signal * epoch / EPOCHS + rng.normal(0, 0.02), 0, 1),
            "lr": np.linspace(1e-3, 0, EPOCHS),
            "seconds": rng.uniform(1, 2, EPOCHS),
            "samples_per_s": rng.uniform(100, 200, EPOCHS),
        }
    )


def _write_run(folder: Path, rng: np.random.Generator, strategy: str, fold: int) -> dict:
    signal, trainable = STRATEGIES[strategy]
    folder.mkdir(parents=True)
    labels, probabilities = _split(rng, 40, signal)
    val_labels, val_probabilities = _split(rng, 20, signal)
    metrics = {
        "dataset": DATASET,
        "model": MODEL,
        "strategy": strategy,
        "fold": fold,
        "seed": SEED,
        "best_epoch": int(rng.integers(1, EPOCHS + 1)),
        "selected_by": "val_accuracy",
        "trainable_params": trainable,
        "total_params": TOTAL_PARAMS,
        "trainable_percent": 100.0 * trainable / TOTAL_PARAMS,
        "environment": "modern",
        "test": classification_metrics(labels, probabilities, CLASSES),
        "val": classification_metrics(val_labels, val_probabilities, CLASSES),
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    _history(rng, signal).to_csv(folder / "history.csv", index=False)
    table = pa.table(
        {
            "clip_id": [f"{fold}-{i}" for i in range(len(labels))],
            "fold": pa.array([fold] * len(labels), pa.int64()),
            "label": pa.array(labels, pa.int64()),
            "prediction": pa.array(probabilities.argmax(axis=1), pa.int64()),
            "probabilities": pa.array(list(probabilities), pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, folder / "predictions.parquet")
    return metrics


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("experiment")
    overrides = [f"paths.results={root / 'results'}", f"study.strategies={list(STRATEGIES)}"]
    cfg = load_config(CONFIG, overrides=overrides)
    study = Study(cfg)
    rng = np.random.default_rng(20261121)
    dirs, metrics = [], {}
    for strategy in STRATEGIES:
        for fold in FOLDS:
            folder = study.run_dir(DATASET, MODEL, strategy, fold, SEED)
            metrics[(strategy, fold)] = _write_run(folder, rng, strategy, fold)
            dirs.append(folder)
    out_dir = root / "report"
    # The caller's order must not matter: the report sorts the runs itself.
    written = build_report(cfg, list(reversed(dirs)), out_dir)
    return {"cfg": cfg, "dirs": dirs, "metrics": metrics, "out": out_dir, "written": written}


def _values(experiment: dict[str, Any], strategy: str, key: str) -> np.ndarray:
    runs = [experiment["metrics"][(strategy, fold)] for fold in FOLDS]
    return np.array([r["test"][key] if key in r["test"] else r[key] for r in runs], float)


def test_summary_matches_numpy(experiment: dict[str, Any]) -> None:
    summary = pd.read_csv(experiment["out"] / "summary.csv")
    assert list(summary["strategy"]) == list(STRATEGIES)  # the study's order
    assert len(summary) == 3
    assert (summary["n_runs"] == 3).all()
    assert "environment" not in summary.columns  # one environment only
    for strategy in STRATEGIES:
        row = summary[summary["strategy"] == strategy].iloc[0]
        for key in ("accuracy", "macro_f1", "top5_accuracy", "balanced_accuracy"):
            values = _values(experiment, strategy, key)
            assert row[f"test_{key}_mean"] == pytest.approx(np.mean(values))
            assert row[f"test_{key}_std"] == pytest.approx(np.std(values))  # ddof=0
        params = _values(experiment, strategy, "trainable_params")
        assert row["trainable_params_mean"] == pytest.approx(params.mean())
        assert row["trainable_percent_mean"] == pytest.approx(100 * params.mean() / TOTAL_PARAMS)
    document = json.loads((experiment["out"] / "summary.json").read_text())
    assert "test_accuracy" in document["metrics"]
    assert "test_n" not in document["metrics"]
    assert len(document["rows"]) == 3


def test_every_figure_in_every_format(experiment: dict[str, Any]) -> None:
    report = experiment["cfg"]["report"]
    expected_width = report["text_width_in"] * report["dpi"]
    figures = experiment["out"] / "figures"
    for name in FIGURES:
        pdf = figures / f"{name}.pdf"
        png = figures / f"{name}.png"
        assert pdf in experiment["written"] and png in experiment["written"]
        assert pdf.read_bytes().startswith(b"%PDF")
        width = matplotlib.image.imread(png).shape[1]
        assert abs(width - expected_width) <= 3, (name, width, expected_width)


def test_written_paths_are_deterministic(experiment: dict[str, Any]) -> None:
    out = experiment["out"]
    names = [p.relative_to(out).as_posix() for p in experiment["written"]]
    assert names[:5] == ["summary.csv", "summary.json", "table.csv", "table.md", "table.tex"]
    assert names[5:8] == ["models.csv", "models.md", "models.tex"]
    figures = [f"figures/{n}.{fmt}" for n in FIGURES for fmt in ("pdf", "png")]
    assert names[8 : 8 + len(figures)] == figures
    paired = ["paired.csv", "paired.md", "paired.tex"]
    assert names[8 + len(figures) : 11 + len(figures)] == paired
    dvc_views = dvc_view_outputs(experiment["cfg"], out)
    views = [p.relative_to(out).as_posix() for p in dvc_views]
    assert names[11 + len(figures) :] == [*views, "sweep.csv", "sweep.md"]
    # A study without a sweep says so (DVC versions the files for every study).
    assert "No sweep in this study" in (out / "sweep.md").read_text()
    assert (out / "sweep.csv").read_text() == "dataset,model,method,variant,selected,runs\n"
    assert all(p.is_file() for p in experiment["written"])


def test_latex_table(experiment: dict[str, Any]) -> None:
    tex = (experiment["out"] / "table.tex").read_text()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert rule in tex
    decimals = experiment["cfg"]["report"]["decimals"]
    means = {s: _values(experiment, s, "accuracy") for s in STRATEGIES}
    best = max(means, key=lambda s: round(100 * means[s].mean(), decimals))
    cell = f"{100 * means[best].mean():.{decimals}f} \\pm {100 * means[best].std():.{decimals}f}"
    best_line = next(line for line in tex.splitlines() if line.startswith(best + " &"))
    assert f"$\\mathbf{{{cell}}}$" in best_line
    assert tex.count("\\mathbf{") == 2  # accuracy and macro F1, no ties here
    assert "1,200,000" in tex  # thousands separators
    markdown = (experiment["out"] / "table.md").read_text()
    assert markdown.startswith("| Strategy |")
    plain = cell.replace(" \\pm ", " ± ")
    assert f"**{plain}**" in markdown


def test_best_strategy(experiment: dict[str, Any]) -> None:
    summary = pd.read_csv(experiment["out"] / "summary.csv")
    means = {s: _values(experiment, s, "accuracy").mean() for s in STRATEGIES}
    assert best_strategy(summary, "accuracy") == max(means, key=means.get)


def test_no_temporary_files_left(experiment: dict[str, Any]) -> None:
    leftovers = [p for p in experiment["out"].rglob("*") if p.name.startswith(".")]
    leftovers += [p for p in experiment["out"].rglob("*.tmp")]
    assert leftovers == []


def test_missing_metrics_names_the_file(experiment: dict[str, Any], tmp_path: Path) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    dirs[0].mkdir()
    (dirs[0] / "metrics.json").write_text(json.dumps(experiment["metrics"][("full", 1)]))
    dirs[1].mkdir()
    missing = dirs[1] / "metrics.json"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        collect_runs(dirs)
    missing.write_text("{ not json")
    with pytest.raises(DataError, match=re.escape(str(missing))):
        build_report(experiment["cfg"], dirs, tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_several_environments_are_kept_apart(experiment: dict[str, Any]) -> None:
    runs = collect_runs(experiment["dirs"])
    runs.loc[runs["fold"] == 1, "environment"] = "legacy"
    summary = summarize(runs)
    assert "environment" in summary.columns
    assert len(summary) == 6
    assert sorted(summary["n_runs"]) == [1, 1, 1, 2, 2, 2]
    assert (summary.loc[summary["n_runs"] == 1, "test_accuracy_std"] == 0).all()


def test_style_restores_rcparams() -> None:
    before = dict(matplotlib.rcParams)
    with thesis_style({"font_family": "serif", "font_size": 7, "text_width_in": 5.0}):
        assert matplotlib.rcParams["font.size"] == 7
        assert matplotlib.rcParams["figure.figsize"][0] == 5.0
    after = dict(matplotlib.rcParams)
    assert {k for k in before if before[k] != after[k]} == set()


def test_learning_curves_without_validation(experiment: dict[str, Any], tmp_path: Path) -> None:
    runs = collect_runs(experiment["dirs"])
    histories = collect_histories(runs)
    histories[["val_loss", "val_accuracy", "val_metric"]] = np.nan  # a train_test split
    report = {**experiment["cfg"]["report"], "formats": ["png"]}
    written = learning_curves(histories, tmp_path / "curves", report)
    assert written == [tmp_path / "curves.png"]
    image = matplotlib.image.imread(written[0])
    assert abs(image.shape[1] - report["text_width_in"] * report["dpi"]) <= 3


def test_rebuild_gives_identical_bytes(experiment: dict[str, Any], tmp_path: Path) -> None:
    again = build_report(experiment["cfg"], experiment["dirs"], tmp_path / "report")
    first = experiment["written"]
    assert [p.relative_to(experiment["out"]) for p in first] == [
        p.relative_to(tmp_path / "report") for p in again
    ]
    changed = [
        p.name for p, q in zip(first, again, strict=True) if p.read_bytes() != q.read_bytes()
    ]
    assert changed == []


def test_compare_envs_fails_when_a_side_lacks_runs(
    experiment: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from audiopetl.cli.main import main

    results = Path(experiment["cfg"]["paths"]["results"]) / experiment["cfg"]["experiment"]
    other = tmp_path / "other"
    shutil.copytree(results, other)
    out = tmp_path / "comparison.md"
    assert main(["compare-envs", str(results), str(other), "--out", str(out)]) == 0
    # One run never finished on the other side: comparing the rest would hide that.
    missing = experiment["dirs"][4].relative_to(results)
    shutil.rmtree(other / missing)
    assert main(["compare-envs", str(results), str(other), "--out", str(out)]) == 1
    assert "FAIL" in capsys.readouterr().out
    verdict = json.loads(out.with_suffix(".json").read_text())
    assert verdict["passed"] is False
    assert verdict["only_in_a"] == [str(missing)] and verdict["only_in_b"] == []
    assert f"- {missing}" in out.read_text()


def test_the_paired_table_compares_every_method(experiment: dict[str, Any]) -> None:
    table = pd.read_csv(experiment["out"] / "paired.csv")
    summary = pd.read_csv(experiment["out"] / "summary.csv")
    best = best_strategy(summary, "accuracy")
    expected = {(s, "full") for s in STRATEGIES if s != "full"}
    expected |= {(s, best) for s in STRATEGIES if s not in (best, "full")}
    assert set(zip(table.strategy, table.reference, strict=True)) == expected
    assert (table.n == len(FOLDS)).all()
    assert "corrected resampled t-test" in (experiment["out"] / "paired.md").read_text()


def test_model_strategy_table(tmp_path: Path) -> None:
    """Models down, strategies across, the best model of each strategy in bold."""
    from audiopetl.report.tables import write_model_table

    rows = [
        {
            "dataset": "d",
            "model": model,
            "strategy": strategy,
            "test_accuracy_mean": mean,
            "test_accuracy_std": 0.01,
        }
        for model, strategy, mean in (
            ("ast", "full", 0.85),
            ("ast", "lora", 0.80),
            ("whisper", "full", 0.70),
            ("whisper", "lora", 0.90),
        )
    ]
    settings = {"metric": "accuracy", "decimals": 2}
    written = write_model_table(pd.DataFrame(rows), settings, tmp_path / "models")
    assert [p.name for p in written] == ["models.csv", "models.md", "models.tex"]
    md = (tmp_path / "models.md").read_text().splitlines()
    assert md[2] == "| Model | full | lora |"
    assert md[4] == "| ast | **85.00 ± 1.00** | 80.00 ± 1.00 |"
    assert md[5] == "| whisper | 70.00 ± 1.00 | **90.00 ± 1.00** |"
    tex = (tmp_path / "models.tex").read_text()
    assert tex.count("\\mathbf{") == 2 and "\\toprule" in tex
    csv = pd.read_csv(tmp_path / "models.csv")
    assert list(csv.columns) == [
        "dataset",
        "model",
        "full_accuracy_mean_percent",
        "full_accuracy_std_percent",
        "lora_accuracy_mean_percent",
        "lora_accuracy_std_percent",
    ]
    assert csv["lora_accuracy_mean_percent"].tolist() == [80.0, 90.0]


@pytest.mark.parametrize(
    ("change", "mixed"),
    [
        ({"split": "official"}, "splits (folds, official"),
        ({"task": "multilabel"}, "tasks (multiclass, multilabel"),
    ],
)
def test_runs_of_other_splits_or_tasks_are_never_pooled(
    experiment: dict[str, Any], tmp_path: Path, change: dict[str, str], mixed: str
) -> None:
    # A run of the same dataset split another way (or read as another task), e.g. left in
    # the results after the dataset's split scheme changed.
    source = experiment["dirs"][0]
    other = tmp_path / "other"
    shutil.copytree(source, other)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics.update(change)
    if "split" in change:
        metrics.pop("fold")
    (other / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(DataError) as info:
        collect_runs([*experiment["dirs"], other])
    message = str(info.value)
    assert message.startswith(f"dataset {DATASET!r}: its runs mix {mixed}")
    assert str(other) in message and "report runs of one split and task together only" in message
    with pytest.raises(DataError, match="its runs mix"):
        build_report(experiment["cfg"], [*experiment["dirs"], other], tmp_path / "report")
    assert not (tmp_path / "report").exists()
