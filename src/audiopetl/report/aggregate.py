"""Gather the runs of an experiment into tables: one row per run, then one row per configuration.

Every statistic is computed here once, so the CSV, the JSON, the LaTeX table and the figures
cannot disagree about a number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audiopetl.core.atomic import write_json, write_text
from audiopetl.core.errors import DataError

ID_COLUMNS = ("dataset", "model", "strategy", "seed", "fold")
# What a run's metrics.json names besides: its split (fold3, official) and task.
RUN_KINDS = ("split", "task")
GROUP_COLUMNS = ("dataset", "model", "strategy")
RUN_SCALARS = (
    "environment",
    "best_epoch",
    "selected_by",
    "trainable_params",
    "total_params",
    "trainable_percent",
    "train_clips",
    "classes",
    "chance_mAP",
)
# Averaged next to the metrics: they are constant across folds of one configuration unless
# something went wrong, and a non-zero std in the summary then shows it.
PARAM_COLUMNS = ("trainable_params", "trainable_percent")
# Sample counts, not quality measures: a mean over folds of them means nothing.
COUNT_METRICS = frozenset({"n"})
SPLITS = ("test", "val")
# Rates in [0, 1] that readers expect in percent, in the figures as in the tables.
FRACTION_METRICS = frozenset(
    {"accuracy", "balanced_accuracy", "macro_f1", "top5_accuracy", "mAP", "macro_auc", "micro_f1"}
)
METRIC_NAMES = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro F1",
    "top5_accuracy": "Top-5 accuracy",
    "mAP": "mAP",
    "macro_auc": "Macro AUC",
    "micro_f1": "Micro F1",
    "dprime_per_class": "d' (per class, averaged)",
    "dprime_from_mean_auc": "d' (from the mean AUC)",
    "loss": "Loss",
}


def base_metric(name: str) -> str:
    """``val_accuracy`` / ``test_accuracy`` / ``accuracy`` -> ``accuracy``."""
    for prefix in ("test_", "val_"):
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    return name


def is_fraction(metric: str) -> bool:
    return base_metric(metric) in FRACTION_METRICS


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's ``metrics.json``; a missing, unreadable or malformed file is a DataError."""
    path = Path(run_dir) / "metrics.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"{path}: metrics.json not found (did the run finish?)") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read metrics: {err}") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    missing = [key for key in (*ID_COLUMNS, "test") if key not in data and key != "fold"]
    if "fold" not in data and "split" not in data:
        missing.append("fold or split")
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
    if not isinstance(data["test"], dict):
        raise DataError(f"{path}: 'test' must be a metrics object")
    return data


def _is_scalar(value: Any) -> bool:
    # bool is an int subclass; a flag is not a metric to average.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _split_scalars(split: str, metrics: Mapping[str, Any] | None) -> dict[str, float]:
    if not metrics:
        return {}
    return {f"{split}_{key}": value for key, value in metrics.items() if _is_scalar(value)}


def run_row(data: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """One flat row of a run: identifiers, run facts, then the scalar metrics of each split."""
    row: dict[str, Any] = {key: data.get(key) for key in ID_COLUMNS}
    row["split"] = data.get("split") or f"fold{data['fold']}"
    row["task"] = data.get("task", "multiclass")
    row["partial"] = data.get("partial")  # "subset: 414 of 2000 clips", or None
    row.update({key: data.get(key) for key in RUN_SCALARS})
    for split in SPLITS:
        row.update(_split_scalars(split, data.get(split)))
    row["run_dir"] = str(run_dir)
    return row


def collect_runs(run_dirs: Iterable[Path]) -> pd.DataFrame:
    """One row per run, read from each folder's ``metrics.json``, in a fixed order."""
    rows = [run_row(read_metrics(Path(d)), Path(d)) for d in run_dirs]
    if not rows:
        raise DataError("no runs to report: the list of run folders is empty")
    runs = pd.DataFrame(rows)
    # First: runs of another split or task are not "the same run" twice, they do not compare.
    check_comparable(runs)
    keys = [*ID_COLUMNS, "split", "environment"]
    duplicated = runs.astype({"fold": object}).duplicated(subset=keys, keep=False)
    if duplicated.any():
        dirs = ", ".join(runs.loc[duplicated, "run_dir"])
        raise DataError(f"the same run appears more than once: {dirs}")
    # Sorted by identifiers, not by the caller's list, so the same runs give the same report.
    order = ["dataset", "model", "strategy", "seed", "split", "environment"]
    runs["_fold"] = pd.to_numeric(runs["fold"], errors="coerce")
    runs = runs.sort_values([*order[:4], "_fold", *order[4:]], kind="stable", na_position="last")
    return runs.drop(columns="_fold").reset_index(drop=True)


def check_comparable(runs: pd.DataFrame) -> None:
    """Runs of one dataset are aggregated and paired only when they split it the same way and
    share its task: a fold's accuracy next to an official split's, or an mAP next to an
    accuracy, is no comparison."""
    for dataset, part in runs.groupby("dataset", sort=False):
        kinds = part["split"].map(lambda s: "official" if s == "official" else "folds")
        for column, values in (("split", kinds), ("task", part["task"])):
            if values.nunique() > 1:
                found = ", ".join(sorted(set(values)))
                first = {v: part.loc[values == v, "run_dir"].iloc[0] for v in set(values)}
                raise DataError(
                    f"dataset {dataset!r}: its runs mix {column}s ({found}; e.g. "
                    + ", ".join(first.values())
                    + "): report runs of one split and task together only"
                )


def data_notes(runs: pd.DataFrame) -> list[str]:
    """A line per dataset whose runs used part of it ("esc50: subset: 414 of 2000 clips") or
    chose their epochs on the test fold, for every table and figure that shows its numbers."""
    notes = []
    for dataset, part in runs.groupby("dataset", sort=False):
        found = sorted({str(p) for p in part["partial"].dropna()}) if "partial" in part else []
        chosen = part["selected_by"].dropna().astype(str) if "selected_by" in part else []
        if any(c.startswith("test_") for c in chosen):  # training.split train_select_on_test
            found.append(
                "epochs selected on the test fold (the reference's UrbanSound8K protocol: "
                "optimistic, for comparison only)"
            )
        if found:
            notes.append(f"{dataset}: {'; '.join(found)}")
    return notes


def headline_metric(runs: pd.DataFrame, metric: str) -> str:
    """The metric the tables and figures show: ``report.metric`` for single-label runs, mAP
    for multi-label ones (accuracy means nothing there)."""
    tasks = set(runs["task"])
    if tasks == {"multilabel"}:
        return metric if metric in MULTILABEL_HEADLINES else "mAP"
    if "multilabel" in tasks:
        raise DataError(
            "the study mixes single-label and multi-label datasets, whose headline metrics "
            "differ (accuracy, mAP): report them in studies of their own"
        )
    if metric in MULTILABEL_HEADLINES:
        raise DataError(
            f"report.metric {metric} is a multi-label metric and the study's datasets are "
            "single-label: set report.metric to accuracy, balanced_accuracy, macro_f1 or "
            "top5_accuracy"
        )
    return metric


MULTILABEL_HEADLINES = ("mAP", "macro_auc")


def order_runs(runs: pd.DataFrame, order: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Reorder rows so each column named in ``order`` follows that sequence (e.g. the study's
    strategy order); values not listed go last, alphabetically."""
    keys = []
    for column in ID_COLUMNS:
        if column in order:
            wanted = {name: i for i, name in enumerate(order[column])}
            keys.append(runs[column].map(lambda v, w=wanted: (w.get(v, len(w)), str(v))))
        else:
            keys.append(runs[column].map(lambda v: (0, v)))
    sort_key = pd.Series(list(zip(*keys, strict=True)), index=runs.index)
    return runs.loc[sort_key.sort_values(kind="stable").index].reset_index(drop=True)


def group_columns(runs: pd.DataFrame) -> list[str]:
    """dataset, model, strategy; plus environment when runs come from more than one."""
    columns = list(GROUP_COLUMNS)
    if "environment" in runs and runs["environment"].nunique(dropna=False) > 1:
        columns.append("environment")
    return columns


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """The per-run metric columns (``test_*``, then ``val_*``) worth averaging."""
    out = []
    for split in SPLITS:
        prefix = f"{split}_"
        out += [
            c
            for c in runs.columns
            if c.startswith(prefix) and c.removeprefix(prefix) not in COUNT_METRICS
        ]
    return out


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over folds and seeds per configuration, plus ``n_runs``.

    The std is the population std (ddof=0), as in the reference study: the folds are the whole
    cross-validation, not a sample of it, and it keeps the numbers comparable with theirs.
    """
    keys = group_columns(runs)
    values = [*metric_columns(runs), *PARAM_COLUMNS]
    numeric = runs[values].apply(pd.to_numeric, errors="coerce")
    grouped = numeric.groupby([runs[k] for k in keys], sort=False, dropna=False)
    mean = grouped.mean()
    std = grouped.std(ddof=0)
    out = pd.DataFrame(index=mean.index)
    out["n_runs"] = grouped.size()
    for column in values:
        out[f"{column}_mean"] = mean[column]
        out[f"{column}_std"] = std[column]
    out = out.reset_index()
    if "partial" in runs and runs["partial"].notna().any():
        # Part of a dataset: the summary's rows of it say how much ("subset: 414 of 2000").
        partial = runs.dropna(subset=["partial"]).groupby("dataset")["partial"].first()
        out.insert(len(keys), "partial", out["dataset"].map(partial))
    return out


def summary_metrics(summary: pd.DataFrame) -> list[str]:
    """The metric names summarised (``test_accuracy``...), in column order."""
    return [
        c.removesuffix("_mean")
        for c in summary.columns
        if c.endswith("_mean") and c.removesuffix("_mean") not in PARAM_COLUMNS
    ]


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a metric absent from some runs reads as null
    return value


def write_summary(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write ``summary.csv`` and ``summary.json`` (rows plus a header naming the metrics)."""
    out_dir = Path(out_dir)
    csv_path = out_dir / "summary.csv"
    json_path = out_dir / "summary.json"
    write_text(csv_path, summary.to_csv(index=False, lineterminator="\n"))
    keys = [c for c in (*GROUP_COLUMNS, "environment") if c in summary.columns]
    document = {
        "group_by": keys,
        "metrics": summary_metrics(summary),
        "parameters": list(PARAM_COLUMNS),
        "std": "population (ddof=0) over folds and seeds",
        "rows": [
            {key: _json_value(value) for key, value in row.items()}
            for row in summary.to_dict(orient="records")
        ],
    }
    write_json(json_path, document)
    return [csv_path, json_path]


def read_history(run_dir: Path) -> pd.DataFrame:
    """The run's ``history.csv``; empty validation cells (no validation split) become NaN."""
    path = Path(run_dir) / "history.csv"
    try:
        history = pd.read_csv(path)
    except FileNotFoundError as err:
        raise DataError(f"{path}: history.csv not found (did the run finish?)") from err
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: cannot read history: {err}") from err
    missing = [c for c in ("epoch", "train_loss") if c not in history.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    for column in ("val_loss", "val_accuracy", "val_metric"):
        if column not in history.columns:
            history[column] = np.nan
    return history


def collect_histories(runs: pd.DataFrame) -> pd.DataFrame:
    """All runs' histories in one long table, tagged with the run's identifiers."""
    tags = [*ID_COLUMNS, "environment", "selected_by"]
    frames = []
    for _, run in runs.iterrows():
        history = read_history(Path(run["run_dir"]))
        for tag in tags:
            history[tag] = run.get(tag)
        frames.append(history)
    return pd.concat(frames, ignore_index=True)
