"""The figures of a study a thesis reader would judge: two models x six strategies, rendered
for real, and checked where a machine can check them: tick labels and text that do not
collide, one legend with an entry for every strategy drawn, one colour per strategy across
panels, a Pareto front through its points, titles that name the model. Also what a study of
part of a dataset, or of one run per method, says in its tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.figure import Figure
from test_report import CLASSES, EPOCHS, _history, _split

from audiopetl.core.config import load_config
from audiopetl.report import class_figures, figures
from audiopetl.report.build import build_report
from audiopetl.study import Study
from audiopetl.training.metrics import classification_metrics

CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
# Six strategies whose costs sit close together, as in the default study (conformer, lora and
# adapter within a factor of two), and two models.
STRATEGIES = {
    "full": (2.5, 1_200_000),
    "linear": (1.0, 325),
    "bitfit": (1.4, 2_100),
    "lora": (2.1, 41_285),
    "adapter": (2.0, 52_000),
    "conformer": (2.2, 60_500),
}
MODELS = {"tiny-ast": 0.0, "tiny-whisper": -0.4}
FOLDS = (1, 2)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")


def write_run(folder: Path, rng: np.random.Generator, model: str, strategy: str, fold: int,
              partial: str | None = None) -> None:  # fmt: skip
    signal, trainable = STRATEGIES[strategy]
    signal += MODELS[model]
    folder.mkdir(parents=True)
    labels, probabilities = _split(rng, 40, signal)
    metrics: dict[str, Any] = {
        "dataset": "synthetic",
        "model": model,
        "strategy": strategy,
        "fold": fold,
        "seed": 0,
        "best_epoch": EPOCHS,
        "selected_by": "val_accuracy",
        "trainable_params": trainable,
        "total_params": 1_200_000,
        "trainable_percent": 100.0 * trainable / 1_200_000,
        "environment": "modern",
        "classes": len(CLASSES),
        "test": classification_metrics(labels, probabilities, CLASSES),
        "val": classification_metrics(*_split(rng, 20, signal), CLASSES),
    }
    if partial:
        metrics["partial"] = partial
    (folder / "metrics.json").write_text(json.dumps(metrics))
    _history(rng, signal).to_csv(folder / "history.csv", index=False)
    pq.write_table(
        pa.table(
            {
                "clip_id": [f"{fold}-{i}" for i in range(len(labels))],
                "fold": pa.array([fold] * len(labels), pa.int64()),
                "label": pa.array(labels, pa.int64()),
                "prediction": pa.array(probabilities.argmax(axis=1), pa.int64()),
                "probabilities": pa.array(list(probabilities), pa.list_(pa.float32())),
            }
        ),
        folder / "predictions.parquet",
    )


def study_runs(root: Path, models=MODELS, folds=FOLDS, partial: str | None = None) -> tuple:
    overrides = [
        f"paths.results={root / 'results'}",
        f"study.strategies={list(STRATEGIES)}",
        f"study.models={list(models)}",
        "strategies.bitfit={kind: bitfit, lr: 0.001}",
    ]
    cfg = load_config(CONFIG, "models", overrides=overrides)
    study = Study(cfg)
    rng = np.random.default_rng(20261202)
    dirs = []
    for model in models:
        for strategy in STRATEGIES:
            for fold in folds:
                folder = study.run_dir("synthetic", model, strategy, fold, 0)
                write_run(folder, rng, model, strategy, fold, partial)
                dirs.append(folder)
    return cfg, dirs


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Figure]]:
    """Every figure of the two-model study, kept open after it was saved (drawn: its text
    has its final positions)."""
    root = tmp_path_factory.mktemp("two-models")
    cfg, dirs = study_runs(root)
    kept: dict[str, list[Figure]] = {}
    save = figures.save_figure

    def keep(fig: Figure, out: Path, report_cfg: Any) -> list[Path]:
        fig.canvas.draw()
        kept.setdefault(Path(out).name.split("-")[0], []).append(fig)
        written = save(fig, out, report_cfg)
        return written

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "save_figure", keep)
        patch.setattr(class_figures, "save_figure", keep)
        patch.setattr(figures.plt, "close", lambda fig=None: None)
        build_report(cfg, dirs, root / "report")
    return kept


def boxes(texts: list[Any]) -> list[Any]:
    renderer = texts[0].figure.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in texts if t.get_text() and t.get_visible()]


def assert_apart(found: list[Any], what: str) -> None:
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            assert not a.overlaps(b), f"{what}: {a} overlaps {b}"


def test_strategy_ticks_do_not_collide_with_two_models(drawn) -> None:
    (fig,) = drawn["accuracy_per_strategy"]
    (ax,) = fig.axes
    ticks = ax.get_xticklabels()
    assert [t.get_text() for t in ticks] == list(STRATEGIES)  # one tick per strategy
    assert_apart(boxes(ticks), "x tick labels")
    # The models are told apart by colour, named in one legend.
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == list(MODELS)
    assert len(ax.patches) == len(STRATEGIES) * len(MODELS)


def test_learning_curves_have_one_legend_and_one_colour_per_strategy(drawn) -> None:
    (fig,) = drawn["learning_curves"]
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == list(STRATEGIES)
    colours: dict[str, set[tuple]] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(tuple(line.get_color()))
    drawn_strategies = {k for k in colours if not k.startswith("_")}
    assert drawn_strategies == set(STRATEGIES)
    assert all(len(c) == 1 for c in colours.values()), colours  # the same in every panel
    titles = [ax.get_title() for ax in fig.axes]
    assert any("tiny-whisper" in t for t in titles) and any("tiny-ast" in t for t in titles)


def test_the_pareto_front_passes_through_its_points_and_labels_do_not_collide(drawn) -> None:
    (fig,) = drawn["accuracy_vs_params"]
    (ax,) = fig.axes
    (legend,) = fig.legends
    names = [t.get_text() for t in legend.get_texts()]
    assert set(MODELS) | set(STRATEGIES) | {"Pareto front"} <= set(names)
    points = []
    for container in ax.containers:
        line = container.lines[0]
        points.append((float(line.get_xdata()[0]), float(line.get_ydata()[0])))
    assert len(points) == len(STRATEGIES) * len(MODELS)
    (front_line,) = [line for line in ax.get_lines() if line.get_gid() == "pareto-front"]
    drawn_front = np.column_stack([front_line.get_xdata(), front_line.get_ydata()])
    expected = np.array([points[i] for i in figures.pareto_front(points)])
    assert drawn_front.shape == expected.shape and np.allclose(drawn_front, expected)
    assert front_line.get_drawstyle() == "default"  # straight segments, not steps
    # No label beside each point to collide: the legend names them.
    assert not ax.texts
    assert_apart(boxes(list(legend.get_texts())), "legend entries")


def test_class_figures_name_the_model(drawn) -> None:
    for name in ("confusion_matrix", "per_class_f1"):
        titles = [fig.axes[0].get_title() for fig in drawn[name]]
        assert len(titles) == len(MODELS), name
        for model in MODELS:
            assert sum(model in t for t in titles) == 1, (name, titles)


def test_one_run_per_method_shows_no_spread(tmp_path: Path) -> None:
    cfg, dirs = study_runs(tmp_path, models={"tiny-ast": 0.0}, folds=(1,))
    build_report(cfg, dirs, tmp_path / "report")
    md = (tmp_path / "report/table.md").read_text()
    assert "±" not in md and "(n = 1)" in md
    tex = (tmp_path / "report/table.tex").read_text()
    assert "\\pm" not in tex and "(n = 1)" in tex
    assert "\\pm" not in (tmp_path / "report/models.tex").read_text()


def test_a_subset_is_named_wherever_its_numbers_are(tmp_path: Path, monkeypatch) -> None:
    note = "subset: 414 of 2000 clips"
    cfg, dirs = study_runs(tmp_path, models={"tiny-ast": 0.0}, partial=note)
    titles: list[str] = []
    save = figures.save_figure

    def keep(fig: Figure, out: Path, report_cfg: Any) -> list[Path]:
        written = save(fig, out, report_cfg)
        titles.append(fig.get_suptitle())
        return written

    monkeypatch.setattr(figures, "save_figure", keep)
    monkeypatch.setattr(class_figures, "save_figure", keep)
    build_report(cfg, dirs, tmp_path / "report")
    assert titles and all(t == f"Data: synthetic: {note}" for t in titles)
    report = tmp_path / "report"
    for name in ("table.md", "table.tex", "models.md", "models.tex", "paired.md"):
        assert note in (report / name).read_text(), name
    assert set(pd.read_csv(report / "summary.csv")["partial"]) == {note}
    assert set(pd.read_csv(report / "table.csv")["partial"]) == {note}
