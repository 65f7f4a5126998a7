"""The report's view of sweeps: the tables, figures and paired tests keep each method's selected
variant only, and ``sweep.{csv,md}`` lists every variant with the validation metric it was
chosen on and, labelled as not used for selection, its test metric over the same runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from audiopetl.core.atomic import write_text

Selections = Mapping[tuple[str, str, str], Mapping[str, Any]]


def keep_selected(runs: pd.DataFrame, selections: Selections) -> pd.DataFrame:
    """The runs without the variants a selection did not choose (of its dataset and model)."""
    drop = pd.Series(False, index=runs.index)
    for (dataset, model, _method), record in selections.items():
        losers = [
            row["variant"] for row in record["variants"] if row["variant"] != record["selected"]
        ]
        drop |= (
            (runs["dataset"] == dataset) & (runs["model"] == model) & runs["strategy"].isin(losers)
        )
    return runs[~drop].reset_index(drop=True)


def notes(selections: Selections) -> list[str]:
    """One line per selection for the tables' notes: what won, on what."""
    lines = []
    for (dataset, model, method), record in selections.items():
        best = next(r for r in record["variants"] if r["variant"] == record["selected"])
        over = "the first split's runs" if record["select_on"] == "first_fold" else "all runs"
        lines.append(
            f"{method} on {dataset} · {model}: variant {record['selected']} selected on mean "
            f"{record['metric']} over {over} ({best['runs']}) among {len(record['variants'])} "
            "(sweep.md)"
        )
    return lines


def sweep_table(runs: pd.DataFrame, selections: Selections) -> pd.DataFrame:
    """Every variant of every selection: its values, the validation metric it was chosen on,
    and the mean test metric over the same runs (reported, never used to choose)."""
    rows = []
    for (dataset, model, method), record in selections.items():
        metric = str(record["metric"])
        test_metric = "test_" + metric.removeprefix("val_")
        for row in record["variants"]:
            mine = runs[
                (runs["dataset"] == dataset)
                & (runs["model"] == model)
                & (runs["strategy"] == row["variant"])
            ]
            if record["select_on"] == "first_fold" and not mine.empty:
                mine = mine[mine["split"] == mine["split"].iloc[0]]
            test = mine[test_metric].mean() if test_metric in mine and not mine.empty else None
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "method": method,
                    "variant": row["variant"],
                    **{f"value_{k}": v for k, v in row["values"].items()},
                    "selected": row["variant"] == record["selected"],
                    "runs": row["runs"],
                    metric: row[metric],
                    f"{test_metric} (not used for selection)": test,
                }
            )
    return pd.DataFrame(rows)


# The columns every sweep table has (its values' and metrics' columns follow the sweep).
EMPTY_COLUMNS = ("dataset", "model", "method", "variant", "selected", "runs")


def write_sweep_tables(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    csv, md = Path(out_dir) / "sweep.csv", Path(out_dir) / "sweep.md"
    if table.empty:
        write_text(csv, ",".join(EMPTY_COLUMNS) + "\n")
        write_text(md, "# Sweeps\n\nNo sweep in this study: every method ran at one setting.\n")
        return [csv, md]
    write_text(csv, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    lines = [
        "# Sweeps: every variant, selected on validation",
        "",
        "Each method's variant is chosen on its mean validation metric; the test column is",
        "shown for reference and was not used to choose.",
        "",
        "| " + " | ".join(table.columns) + " |",
        "| " + " | ".join("---" for _ in table.columns) + " |",
    ]
    for _, row in table.iterrows():
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    write_text(md, "\n".join(lines) + "\n")
    return [csv, md]
