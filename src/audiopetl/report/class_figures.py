"""The per-class figures of a study's best method: its confusion matrix and per-class F1, in
the thesis style of :mod:`audiopetl.report.figures`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from audiopetl.core.errors import DataError
from audiopetl.report.figures import (
    MAX_ANNOTATED_CELLS,
    MAX_ANNOTATED_CLASSES,
    _figure,
    save_figure,
    thesis_style,
)

# ------------------------------------------------------------------------- confusion matrix


def _test_metrics(run: Mapping[str, Any]) -> Mapping[str, Any]:
    # A whole metrics.json or just its "test" block.
    return run.get("test", run)


def _class_names(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    names = [list(_test_metrics(r)["class_names"]) for r in runs]
    if any(n != names[0] for n in names[1:]):
        raise DataError("runs disagree on the class names; cannot combine their metrics")
    return names[0]


def confusion_matrix(
    run_metrics: Sequence[Mapping[str, Any]],
    out: Path,
    report_cfg: Mapping[str, Any] | None = None,
    title: str | None = None,
    context: str | None = None,
) -> list[Path]:
    """The test confusion matrices of the given runs (one strategy's folds) summed and
    normalised per true class, so each row reads as recall in percent. The title names the
    strategy (``title``) and ``context``: the model (and dataset) the runs are of."""
    if not run_metrics:
        raise DataError("confusion_matrix: no runs given")
    names = _class_names(run_metrics)
    total = np.sum([np.asarray(_test_metrics(r)["confusion_matrix"]) for r in run_metrics], 0)
    support = total.sum(axis=1, keepdims=True)
    # A class without test clips gets an empty row, not a division by zero.
    normalised = np.divide(100.0 * total, support, out=np.zeros(total.shape), where=support > 0)
    with thesis_style(report_cfg) as cfg:
        n = len(names)
        fig, axes = _figure(cfg, 0.85 if n > MAX_ANNOTATED_CLASSES else 0.75)
        ax = axes[0][0]
        small = max(float(cfg["font_size"]) - (3 if n > 20 else 1), 4)
        sns.heatmap(
            normalised,
            ax=ax,
            vmin=0,
            vmax=100,
            cmap="Blues",
            square=True,
            annot=n <= MAX_ANNOTATED_CLASSES,
            fmt=".0f",
            annot_kws={"fontsize": small},
            xticklabels=names,
            yticklabels=names,
            cbar_kws={"label": "Share of true class (%)", "shrink": 0.8},
            linewidths=0,
        )
        ax.tick_params(axis="both", labelsize=small, length=0)
        ax.set_xticklabels(ax.get_xticklabels(), rotation=90)
        ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class")
        strategy = title or str(run_metrics[0].get("strategy", ""))
        model = context or str(run_metrics[0].get("model", ""))
        named = " · ".join(n for n in (strategy, model) if n)
        ax.set_title(f"Confusion matrix · {named}" if named else "Confusion matrix")
        return save_figure(fig, out, cfg)


# ---------------------------------------------------------------------------- per-class F1


def per_class_f1_table(
    runs_metrics: Mapping[str, Sequence[Mapping[str, Any]]], field: str = "f1"
) -> pd.DataFrame:
    """Classes x strategies: a per-class test metric (``f1``; ``ap``, a multi-label run's
    average precision) averaged over each strategy's runs, in percent."""
    columns = {}
    names: list[str] | None = None
    for strategy, runs in runs_metrics.items():
        if not runs:
            continue
        run_names = _class_names(runs)
        if names is not None and run_names != names:
            raise DataError(f"strategy {strategy!r} has other classes than the others")
        names = run_names
        values = [
            [_test_metrics(r)["per_class"][c][field] for c in names] for r in runs
        ]  # a class without positives in a run has no AP: left out of its mean
        array = np.array([[np.nan if v is None else v for v in row] for row in values], float)
        columns[str(strategy)] = 100.0 * np.nanmean(array, axis=0)
    if names is None:
        raise DataError(f"per_class_{field}: no runs given")
    return pd.DataFrame(columns, index=pd.Index(names, name="class"))


def per_class_f1(
    runs_metrics: Mapping[str, Sequence[Mapping[str, Any]]],
    out: Path,
    report_cfg: Mapping[str, Any] | None = None,
    field: str = "f1",
    context: str | None = None,
) -> list[Path]:
    """A classes x strategies heatmap of the per-class test F1 (a multi-label study's: its
    average precision, ``field="ap"``), mean over runs, classes sorted from easiest to
    hardest so the hard ones group together even with 50 classes; ``context`` (the model, and
    the dataset where there are several) goes into the title."""
    table = per_class_f1_table(runs_metrics, field)
    order = table.mean(axis=1).sort_values(ascending=False, kind="stable").index
    table = table.loc[order]
    label = {"f1": "F1", "ap": "AP"}[field]
    with thesis_style(report_cfg) as cfg:
        n_classes, n_strategies = table.shape
        width = float(cfg["text_width_in"])
        # About one text line per class, clamped to what fits on a page.
        height = float(np.clip(0.16 * n_classes + 1.0, 2.5, 8.5))
        fig, ax = plt.subplots(figsize=(width, height))
        small = max(float(cfg["font_size"]) - (3 if n_classes > 20 else 1), 4)
        sns.heatmap(
            table,
            ax=ax,
            vmin=0,
            vmax=100,
            cmap="viridis",
            annot=n_classes * n_strategies <= MAX_ANNOTATED_CELLS,
            fmt=".0f",
            annot_kws={"fontsize": small},
            cbar_kws={"label": f"{label} (%)"},
            yticklabels=True,  # every class, not every other one
        )
        ax.tick_params(axis="y", labelsize=small, length=0, rotation=0)
        ax.tick_params(axis="x", length=0)
        ax.set_xlabel("Strategy")
        ax.set_ylabel("Class")
        ax.set_title(
            f"Per-class test {label} · {context}" if context else f"Per-class test {label}"
        )
        return save_figure(fig, out, cfg)
