"""The results table in CSV, Markdown and LaTeX (booktabs), from the summary.

LaTeX and Markdown come from small formatters here rather than ``DataFrame.style.to_latex``
(which needs jinja2, not a dependency of this project, and whose booktabs output still needs
post-editing for ``mean ± std`` cells and bold maxima) or ``to_markdown`` (which needs
tabulate). Both formats are simple enough that owning them is cheaper than the dependencies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from audiopetl.core.atomic import write_text
from audiopetl.report.aggregate import METRIC_NAMES, base_metric, is_fraction

# The table shows the headline metric and macro F1 (accuracy when macro F1 is the headline):
# four mean ± std columns would not fit \textwidth; summary.csv holds every metric.
SECOND_METRIC = {"macro_f1": "accuracy"}
ID_HEADERS = {"dataset": "Dataset", "model": "Model", "strategy": "Strategy", "environment": "Env."}
LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


@dataclass(frozen=True)
class Cell:
    """A mean ± std cell before it is typeset; ``best`` marks the per-dataset maximum."""

    mean: float
    std: float
    best: bool = False
    n: int = 2  # runs behind it: with one there is no spread to show


def table_metrics(summary: pd.DataFrame, headline: str) -> list[str]:
    first = base_metric(headline)
    wanted = [first, SECOND_METRIC.get(first, "macro_f1")]
    return [m for m in wanted if f"test_{m}_mean" in summary.columns]


def id_columns(summary: pd.DataFrame) -> list[str]:
    """Identifier columns worth a column: the strategy always, the others where they vary."""
    return [
        c
        for c in ID_HEADERS
        if c in summary.columns and (c == "strategy" or summary[c].nunique(dropna=False) > 1)
    ]


def _scale(metric: str) -> float:
    return 100.0 if is_fraction(metric) else 1.0


def _cells(summary: pd.DataFrame, metric: str, decimals: int) -> list[Cell | None]:
    scale = _scale(metric)
    means = summary[f"test_{metric}_mean"].astype(float) * scale
    stds = summary[f"test_{metric}_std"].astype(float) * scale
    # Best per dataset on the printed values, so two rows that print the same are both bold.
    shown = means.round(decimals)
    best = shown.groupby(summary["dataset"]).transform("max")
    runs = summary["n_runs"] if "n_runs" in summary else pd.Series(2, index=summary.index)
    return [
        None if math.isnan(m) else Cell(float(m), float(s), bool(r == b), int(n))
        for m, s, r, b, n in zip(means, stds, shown, best, runs, strict=True)
    ]


def _plain(cell: Cell | None, decimals: int) -> str:
    if cell is None:
        return "–"
    if cell.n == 1:  # one run: no spread; say so instead of a ± 0.00
        return f"{cell.mean:.{decimals}f} (n = 1)"
    return f"{cell.mean:.{decimals}f} ± {cell.std:.{decimals}f}"


def _latex_cell(cell: Cell | None, decimals: int) -> str:
    if cell is None:
        return "--"
    if cell.n == 1:
        body = f"{cell.mean:.{decimals}f}"
        return (f"$\\mathbf{{{body}}}$" if cell.best else f"${body}$") + " (n = 1)"
    body = f"{cell.mean:.{decimals}f} \\pm {cell.std:.{decimals}f}"
    return f"$\\mathbf{{{body}}}$" if cell.best else f"${body}$"


def _markdown_cell(cell: Cell | None, decimals: int) -> str:
    text = _plain(cell, decimals)
    if cell is None or not cell.best:
        return text
    if cell.n == 1:
        return f"**{cell.mean:.{decimals}f}** (n = 1)"
    return f"**{text}**"


def _params(value: float) -> str:
    return "–" if math.isnan(value) else f"{round(value):,}"


def _percent(value: float, decimals: int) -> str:
    return "–" if math.isnan(value) else f"{value:.{decimals}f}"


def in_sentence(label: str) -> str:
    """A label after another word: "Accuracy (%)" -> "accuracy (%)"; "mAP" stays."""
    return label[:1].lower() + label[1:]


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _metric_header(metric: str) -> str:
    name = METRIC_NAMES.get(metric, metric)
    return f"{name} (%)" if is_fraction(metric) else name


@dataclass(frozen=True)
class TableLayout:
    ids: list[str]
    metrics: list[str]
    decimals: int


def _rows(summary: pd.DataFrame, layout: TableLayout, cell_format) -> list[list[str]]:
    cells = {m: _cells(summary, m, layout.decimals) for m in layout.metrics}
    rows = []
    for i, (_, row) in enumerate(summary.iterrows()):
        values = [str(row[c]) for c in layout.ids]
        values.append(_params(float(row["trainable_params_mean"])))
        values.append(_percent(float(row["trainable_percent_mean"]), layout.decimals))
        values += [cell_format(cells[m][i], layout.decimals) for m in layout.metrics]
        rows.append(values)
    return rows


def _headers(layout: TableLayout) -> list[str]:
    return [
        *(ID_HEADERS[c] for c in layout.ids),
        "Trainable params",
        "Trainable (%)",
        *(_metric_header(m) for m in layout.metrics),
    ]


def to_markdown(summary: pd.DataFrame, layout: TableLayout) -> str:
    headers = _headers(layout)
    rows = _rows(summary, layout, _markdown_cell)
    align = ["---"] * len(layout.ids) + ["---:"] * (len(headers) - len(layout.ids))
    lines = [_md_line(headers), _md_line(align), *(_md_line(r) for r in rows)]
    return "\n".join(lines) + "\n"


def _md_line(values: Sequence[str]) -> str:
    return "| " + " | ".join(v.replace("|", r"\|") for v in values) + " |"


def to_latex(summary: pd.DataFrame, layout: TableLayout) -> str:
    headers = [latex_escape(h) for h in _headers(layout)]
    rows = _rows(summary, layout, _latex_cell)
    n_ids = len(layout.ids)
    spec = "l" * n_ids + "r" * (len(headers) - n_ids)
    lines = [
        "% Generated by audiopetl.report; needs \\usepackage{booktabs}.",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(headers) + " \\\\",
        "\\midrule",
    ]
    datasets = list(summary["dataset"])
    for i, row in enumerate(rows):
        ids = [latex_escape(v) for v in row[:n_ids]]
        if i and datasets[i] != datasets[i - 1]:
            lines.append("\\midrule")  # a rule between datasets, whose best values differ
        elif i and layout.ids[:1] == ["dataset"]:
            ids[0] = ""  # the dataset is named once per block, as in printed tables
        lines.append(" & ".join([*ids, *row[n_ids:]]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(summary: pd.DataFrame, layout: TableLayout) -> str:
    """Numbers, not typeset strings: the CSV is for other programs, in the table's units."""
    ids = [c for c in ID_HEADERS if c in summary.columns]
    out = summary[[*ids, "n_runs"]].copy()
    if "partial" in summary.columns and summary["partial"].notna().any():
        out["partial"] = summary["partial"]  # "subset: 414 of 2000 clips"
    out["trainable_params"] = summary["trainable_params_mean"].round().astype("Int64")
    out["trainable_percent"] = summary["trainable_percent_mean"].round(layout.decimals + 2)
    for metric in layout.metrics:
        unit = "_percent" if is_fraction(metric) else ""
        for stat in ("mean", "std"):
            value = summary[f"test_{metric}_{stat}"].astype(float) * _scale(metric)
            out[f"test_{metric}_{stat}{unit}"] = value.round(layout.decimals)
    return out.to_csv(index=False, lineterminator="\n")


def with_notes(text: str, suffix: str, notes: Sequence[str]) -> str:
    """A table's text with a line saying which of its datasets are partial, below it (CSV
    files, read by programs, carry it in a column instead)."""
    if not notes or suffix == ".csv":
        return text
    line = "Data: " + "; ".join(notes) + "."
    if suffix == ".tex":
        return text + f"\\par\\footnotesize {latex_escape(line)}\n"
    return text + f"\n_{line}_\n"


def write_tables(
    summary: pd.DataFrame, report_cfg: Mapping[str, Any], out_stem: Path
) -> list[Path]:
    """Write ``{out_stem}.csv``, ``.md`` and ``.tex`` atomically; return their paths."""
    layout = TableLayout(
        ids=id_columns(summary),
        metrics=table_metrics(summary, report_cfg["metric"]),
        decimals=int(report_cfg["decimals"]),
    )
    out_stem = Path(out_stem)
    notes = report_cfg.get("data_notes") or []
    written = []
    for suffix, render in ((".csv", to_csv), (".md", to_markdown), (".tex", to_latex)):
        # name + suffix, not with_suffix: a stem like "table.v2" must keep its dot.
        target = out_stem.parent / f"{out_stem.name}{suffix}"
        write_text(target, with_notes(render(summary, layout), suffix, notes))
        written.append(target)
    return written


# -------------------------------------------------------------- model x strategy table


def model_strategy_grid(summary: pd.DataFrame, metric: str, decimals: int) -> pd.DataFrame:
    """One row per dataset and model, one column per strategy (in the summary's order), each
    cell the test metric's mean ± std; the best model of each strategy (per dataset) marked."""
    scale = _scale(metric)
    frame = summary.assign(
        _mean=summary[f"test_{metric}_mean"].astype(float) * scale,
        _std=summary[f"test_{metric}_std"].astype(float) * scale,
    )
    frame["_shown"] = frame["_mean"].round(decimals)
    frame["_best"] = frame.groupby(["dataset", "strategy"])["_shown"].transform("max")
    strategies = list(dict.fromkeys(frame["strategy"]))
    rows = []
    for (dataset, model), part in frame.groupby(["dataset", "model"], sort=False):
        row: dict[str, Any] = {"dataset": dataset, "model": model}
        by_strategy = {r["strategy"]: r for _, r in part.iterrows()}
        for strategy in strategies:
            r = by_strategy.get(strategy)
            row[strategy] = (
                None
                if r is None or math.isnan(r["_mean"])
                else Cell(
                    float(r["_mean"]),
                    float(r["_std"]),
                    bool(r["_shown"] == r["_best"]),
                    int(r["n_runs"]) if "n_runs" in r else 2,
                )
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=["dataset", "model", *strategies])


def write_model_table(
    summary: pd.DataFrame, report_cfg: Mapping[str, Any], out_stem: Path
) -> list[Path]:
    """``{out_stem}.csv``, ``.md`` and ``.tex``: models down, strategies across, the headline
    metric in each cell (bold: the best model for that strategy)."""
    metric = base_metric(report_cfg["metric"])
    decimals = int(report_cfg["decimals"])
    grid = model_strategy_grid(summary, metric, decimals)
    strategies = list(grid.columns[2:])
    multi = grid["dataset"].nunique() > 1
    ids = ["dataset", "model"] if multi else ["model"]

    csv = grid[["dataset", "model"]].copy()
    unit = "_percent" if is_fraction(metric) else ""
    for strategy in strategies:
        for stat in ("mean", "std"):
            csv[f"{strategy}_{metric}_{stat}{unit}"] = [
                float("nan") if c is None else round(getattr(c, stat), decimals)
                for c in grid[strategy]
            ]
    headers = [ID_HEADERS[c] for c in ids] + strategies
    md = [
        f"Test {in_sentence(_metric_header(metric))}, mean ± std over the runs (folds and "
        "seeds; one run: its value, n = 1).",
        "",
        _md_line(headers),
        _md_line(["---"] * len(ids) + ["---:"] * len(strategies)),
    ]
    tex = [
        "\\begin{tabular}{" + "l" * len(ids) + "r" * len(strategies) + "}",
        "\\toprule",
        " & ".join(latex_escape(h) for h in headers) + " \\\\",
        "\\midrule",
    ]
    for _, row in grid.iterrows():
        names = [str(row[c]) for c in ids]
        cells = [row[s] for s in strategies]
        md.append(_md_line(names + [_markdown_cell(c, decimals) for c in cells]))
        typeset = [*(latex_escape(n) for n in names), *(_latex_cell(c, decimals) for c in cells)]
        tex.append(" & ".join(typeset) + " \\\\")
    tex += ["\\bottomrule", "\\end{tabular}"]
    written = []
    for suffix, text in (
        (".csv", csv.to_csv(index=False, lineterminator="\n")),
        (".md", "\n".join(md) + "\n"),
        (".tex", "\n".join(tex) + "\n"),
    ):
        target = out_stem.parent / f"{out_stem.name}{suffix}"
        write_text(target, with_notes(text, suffix, report_cfg.get("data_notes") or []))
        written.append(target)
    return written
