"""Flat views of the report for DVC: headline metrics and the data behind two figures.

``dvc metrics``/``dvc exp show`` read nested JSON objects but not lists of rows, and a DVC plot
draws one ``y`` column per file, with one line per file. So the report also writes:

- ``metrics.json``: ``{dataset: {model: {strategy: {n_runs, trainable_params, test_*,
  test_*_std}}}}``, the test metrics as mean (and std) over folds and seeds;
- ``plots/learning_curves/{configuration}.csv``: per epoch, the mean over folds and seeds of
  ``train_loss``, ``val_loss``, ``val_accuracy`` and ``val_metric`` (the model-selection
  metric); one file per configuration;
- ``plots/accuracy_vs_params.csv``: one row per configuration, trainable parameters against
  the headline test metric (``test_metric``: accuracy; mAP for a multi-label study).

Every number comes from the same summary and histories as the tables and figures.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from audiopetl.core.atomic import write_json, write_text
from audiopetl.core.sweeps import methods
from audiopetl.report.aggregate import _json_value, summary_metrics

METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"
CURVES_DIR = "learning_curves"
ACCURACY_VS_PARAMS = "accuracy_vs_params.csv"
CURVE_COLUMNS = ("train_loss", "val_loss", "val_accuracy", "val_metric")
CONFIG_KEYS = ("dataset", "model", "strategy")


def _safe(name: str) -> str:
    # Configuration names are YAML keys; keep file names portable whatever they hold.
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _curve_name(dataset: str, model: str, strategy: str, several: bool) -> str:
    """``lora.csv`` for a study on one dataset and model, else ``{dataset}-{model}-lora.csv``."""
    parts = (dataset, model, strategy) if several else (strategy,)
    return "-".join(_safe(str(p)) for p in parts) + ".csv"


def _several(pairs: list[tuple[Any, Any]]) -> bool:
    return len(set(pairs)) > 1


def dvc_view_outputs(cfg: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Every file :func:`write_dvc_views` writes for ``cfg``'s study, so a workflow can
    declare them."""
    out_dir = Path(out_dir)
    study = cfg["study"]
    several = _several([(d, m) for d in study["datasets"] for m in study["models"]])
    curves = out_dir / PLOTS_DIR / CURVES_DIR
    return [
        out_dir / METRICS_FILE,
        out_dir / PLOTS_DIR / ACCURACY_VS_PARAMS,
        *(
            curves / _curve_name(d, m, s, several)
            for d in study["datasets"]
            for m in study["models"]
            # A sweep's curve is its selected variant's, under its method's name.
            for s in methods(cfg)
        ),
    ]


def _metrics_document(summary: pd.DataFrame) -> dict[str, Any]:
    tests = [m for m in summary_metrics(summary) if m.startswith("test_")]
    document: dict[str, Any] = {}
    for row in summary.to_dict(orient="records"):
        values: dict[str, Any] = {
            "n_runs": _json_value(row["n_runs"]),
            "trainable_params": _json_value(row["trainable_params_mean"]),
        }
        for metric in tests:
            values[metric] = _json_value(row[f"{metric}_mean"])
            values[f"{metric}_std"] = _json_value(row[f"{metric}_std"])
        cursor = document
        for key in CONFIG_KEYS[:-1]:
            cursor = cursor.setdefault(str(row[key]), {})
        cursor[str(row[CONFIG_KEYS[-1]])] = values
    return document


def _learning_curves(histories: pd.DataFrame) -> dict[tuple[str, str, str], pd.DataFrame]:
    """Per configuration, the mean over its runs (folds and seeds) of each epoch's values."""
    columns = [c for c in CURVE_COLUMNS if c in histories.columns]
    curves = {}
    for keys, part in histories.groupby(list(CONFIG_KEYS), sort=False):
        mean = part.groupby("epoch", sort=True)[columns].mean()
        curves[tuple(str(k) for k in keys)] = mean.reset_index()
    return curves


def write_dvc_views(
    summary: pd.DataFrame,
    histories: pd.DataFrame,
    out_dir: Path,
    metric: str = "accuracy",
    name_of: Callable[[str], str] = str,
) -> list[Path]:
    """Write metrics.json and the plot data under ``out_dir``; return the paths written.
    ``metric``: the headline (accuracy, or a multi-label study's mAP), plotted as test_metric.
    ``name_of``: a strategy's name in the curves' file names (a sweep variant's method: the
    files must be known before the selection is made)."""
    out_dir = Path(out_dir)
    written = [out_dir / METRICS_FILE]
    write_json(written[0], _metrics_document(summary))

    table = summary[[*CONFIG_KEYS, "trainable_params_mean"]].rename(
        columns={"trainable_params_mean": "trainable_params"}
    )
    for name in dict.fromkeys(("accuracy", metric)):
        if f"test_{name}_mean" in summary:
            table[f"test_{name}"] = summary[f"test_{name}_mean"]
            table[f"test_{name}_std"] = summary[f"test_{name}_std"]
    table["test_metric"] = summary[f"test_{metric}_mean"]
    table["test_metric_std"] = summary[f"test_{metric}_std"]
    target = out_dir / PLOTS_DIR / ACCURACY_VS_PARAMS
    write_text(target, table.to_csv(index=False, lineterminator="\n"))
    written.append(target)

    curves = _learning_curves(histories)
    several = _several([(d, m) for d, m, _ in curves])
    for (dataset, model, strategy), curve in curves.items():
        name = _curve_name(dataset, model, name_of(strategy), several)
        target = out_dir / PLOTS_DIR / CURVES_DIR / name
        write_text(target, curve.to_csv(index=False, lineterminator="\n"))
        written.append(target)
    return written
