"""Thesis figures: one style for all of them, every configured format, written atomically.

Each function takes already aggregated data and an output stem (``figures/learning_curves``)
and returns the files it wrote (``learning_curves.pdf``, ``learning_curves.png``...).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

# Figures are only ever written to files, often on cluster nodes without a display; Agg needs
# none and renders the same everywhere.
matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from audiopetl.core.atomic import atomic_path
from audiopetl.core.errors import DataError
from audiopetl.report.aggregate import METRIC_NAMES, base_metric, is_fraction
from audiopetl.report.defaults import DEFAULT_REPORT

# Heatmap cells get their number written in only while it stays legible.
MAX_ANNOTATED_CLASSES = 15
MAX_ANNOTATED_CELLS = 400


def _report(report_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**DEFAULT_REPORT, **(report_cfg or {})}


def metric_label(metric: str) -> str:
    name = base_metric(metric)
    label = METRIC_NAMES.get(name, name.replace("_", " ").capitalize())
    return f"{label} (%)" if is_fraction(name) else label


def in_sentence(label: str) -> str:
    """A label after another word: "Macro F1" -> "macro F1"; "mAP", "AUC" stay as written."""
    return label[:1].lower() + label[1:]


def _scale(metric: str) -> float:
    return 100.0 if is_fraction(metric) else 1.0


@contextlib.contextmanager
def thesis_style(report_cfg: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Seaborn ``ticks``/``paper`` with the configured font, palette and text width; the
    previous rcParams come back when the block ends, so a notebook's own style survives."""
    cfg = _report(report_cfg)
    size = float(cfg["font_size"])
    width = float(cfg["text_width_in"])
    rc = {
        "font.size": size,
        "axes.titlesize": size,
        "axes.labelsize": size,
        "legend.fontsize": size - 1,
        "legend.title_fontsize": size - 1,
        "xtick.labelsize": size - 1,
        "ytick.labelsize": size - 1,
        "figure.figsize": (width, width * 0.62),
        "figure.dpi": 100,
        "savefig.dpi": cfg["dpi"],
        # Fixed-size figures whose labels still fit: bbox_inches="tight" would change the
        # width and LaTeX would rescale the fonts.
        "figure.constrained_layout.use": True,
        # Embedded TrueType instead of Type 3: searchable, editable text in the PDF.
        "pdf.fonttype": 42,
        "svg.fonttype": "none",
        "svg.hashsalt": "audiopetl",  # stable SVG ids, so rebuilding changes no bytes
    }
    with matplotlib.rc_context():
        sns.set_theme(
            context="paper",
            style="ticks",
            palette=cfg["palette"],
            font=cfg["font_family"],
            rc=rc,
        )
        yield cfg


def _metadata(fmt: str) -> dict[str, Any] | None:
    # Without a creation date the same data gives the same bytes: rebuilding changes nothing.
    return {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt)


def save_figure(fig: Figure, out: Path, report_cfg: Mapping[str, Any]) -> list[Path]:
    """Write ``out.{fmt}`` for every configured format, each atomically; close the figure."""
    out = Path(out)
    written = []
    notes = report_cfg.get("data_notes") or []
    if notes:  # part of a dataset: the figure says so above its panels
        fig.suptitle("Data: " + "; ".join(notes), fontsize=float(report_cfg["font_size"]) - 1)
    try:
        for fmt in report_cfg["formats"]:
            target = out.parent / f"{out.name}.{fmt}"
            with atomic_path(target, suffix=f".{fmt}") as tmp:
                fig.savefig(tmp, format=fmt, dpi=report_cfg["dpi"], metadata=_metadata(fmt))
            written.append(target)
    finally:
        plt.close(fig)
    return written


def _figure(cfg: Mapping[str, Any], height_ratio: float, **subplots: Any) -> tuple[Figure, Any]:
    width = float(cfg["text_width_in"])
    return plt.subplots(figsize=(width, width * height_ratio), squeeze=False, **subplots)


def _varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c in frame and frame[c].nunique(dropna=False) > 1]


def config_labels(frame: pd.DataFrame) -> pd.Series:
    """A short name per row: the strategy, plus model/environment only where they vary."""
    extra = _varying(frame, ("model", "environment"))
    labels = frame["strategy"].astype(str)
    for column in extra:
        labels = labels + " · " + frame[column].astype(str)
    return labels


def strategy_labels(frame: pd.DataFrame) -> pd.Series:
    """The strategy, plus the environment where several: what a colour means in figures whose
    panels already say the dataset and model."""
    labels = frame["strategy"].astype(str)
    if "environment" in _varying(frame, ("environment",)):
        labels = labels + " · " + frame["environment"].astype(str)
    return labels


def _colors(labels: Sequence[str], palette: str) -> dict[str, Any]:
    # One colour per configuration, in first-appearance order, so a strategy keeps its colour
    # in every figure built from the same ordered data.
    unique = list(dict.fromkeys(labels))
    return dict(zip(unique, sns.color_palette(palette, len(unique)), strict=True))


def _percent_axis(ax: Axes, metric: str, axis: str = "y") -> None:
    if is_fraction(metric):
        target = ax.yaxis if axis == "y" else ax.xaxis
        target.set_major_formatter(ticker.FormatStrFormatter("%g"))


def _panel_keys(frame: pd.DataFrame, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    return list(dict.fromkeys(frame[list(columns)].itertuples(index=False, name=None)))


def _panel_title(keys: tuple[Any, ...], columns: Sequence[str], varying: Sequence[str]) -> str:
    return " · ".join(str(v) for c, v in zip(columns, keys, strict=True) if c in varying)


# --------------------------------------------------------------------------- learning curves


def _per_epoch(histories: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean and population std over runs of one column per configuration and epoch."""
    run_keys = ["label", "seed", "fold"]
    # Several rows per epoch (step logging) -> one value per run and epoch first, so every run
    # weighs the same in the band; validation is measured at the epoch's end: its last value.
    how = "mean" if column == "train_loss" else "last"
    per_run = histories.groupby([*run_keys, "epoch"], sort=False)[column].agg(how).dropna()
    grouped = per_run.groupby(level=["label", "epoch"], sort=False)
    stats = pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=0)}).reset_index()
    return stats.sort_values("epoch", kind="stable")


def _curve_panel(
    ax: Axes, frame: pd.DataFrame, column: str, colors: Mapping[str, Any], scale: float
) -> None:
    stats = _per_epoch(frame, column)
    for label in colors:
        part = stats[stats["label"] == label]
        if part.empty:
            continue
        x = part["epoch"].to_numpy()
        mean = part["mean"].to_numpy() * scale
        std = part["std"].to_numpy() * scale
        ax.plot(x, mean, color=colors[label], label=label, linewidth=1.2)
        ax.fill_between(x, mean - std, mean + std, color=colors[label], alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def _validation_name(histories: pd.DataFrame) -> str:
    names = histories.get("selected_by", pd.Series(dtype=object)).dropna().unique()
    return str(names[0]) if len(names) == 1 else "metric"


def learning_curves(
    histories: pd.DataFrame, out: Path, report_cfg: Mapping[str, Any] | None = None
) -> list[Path]:
    """Validation metric and training loss per epoch: mean over folds and seeds, ±1 std band.

    One row of panels per dataset (and model, where several); without any validation values
    only the training-loss panel is drawn.
    """
    with thesis_style(report_cfg) as cfg:
        # The panels name the dataset and model; a line's colour says the strategy (and the
        # environment, where several), the same in every panel, with one legend for all.
        frame = histories.assign(label=strategy_labels(histories).to_numpy())
        colors = _colors(list(frame["label"]), cfg["palette"])
        has_val = bool(frame["val_metric"].notna().any())
        val_name = _validation_name(frame)
        columns = (["val_metric"] if has_val else []) + ["train_loss"]
        panels = _panel_keys(frame, ("dataset", "model"))
        varying = _varying(frame, ("dataset", "model"))
        height = 0.36 * len(panels) + 0.08
        fig, axes = _figure(cfg, height, nrows=len(panels), ncols=len(columns), sharex=True)
        for row, keys in enumerate(panels):
            part = frame[(frame["dataset"] == keys[0]) & (frame["model"] == keys[1])]
            title = _panel_title(keys, ("dataset", "model"), varying)
            for col, column in enumerate(columns):
                ax = axes[row][col]
                scale = _scale(val_name) if column == "val_metric" else 1.0
                _curve_panel(ax, part, column, colors, scale)
                if column == "val_metric":
                    ax.set_ylabel(f"Validation {in_sentence(metric_label(val_name))}")
                    ax.set_title(f"Validation · {title}" if title else "Validation")
                else:
                    ax.set_ylabel("Training loss")
                    ax.set_title(f"Training · {title}" if title else "Training")
                if row == len(panels) - 1:  # the shared epoch axis is labelled once
                    ax.set_xlabel("Epoch")
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=c, linewidth=1.2, label=k) for k, c in colors.items()]
        fig.legend(handles=handles, loc="outside right center", frameon=False, title="Strategy")
        sns.despine(fig=fig)
        return save_figure(fig, out, cfg)


# ------------------------------------------------------------------------ accuracy vs params


def _mean_column(metric: str) -> str:
    name = metric if metric.startswith(("test_", "val_")) else f"test_{metric}"
    return f"{name}_mean"


def _require(frame: pd.DataFrame, column: str, what: str) -> None:
    if column not in frame.columns:
        raise DataError(
            f"{what}: no column {column!r}; the runs' metrics hold "
            f"{', '.join(c for c in frame.columns if c.startswith('test_')) or 'none'}"
        )


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats with as few parameters or fewer and a
    higher score: the methods worth their parameters, in parameter order."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def accuracy_vs_params(
    summary: pd.DataFrame,
    out: Path,
    report_cfg: Mapping[str, Any] | None = None,
    chance: Mapping[str, float] | None = None,
) -> list[Path]:
    """Test metric (mean ± std over folds and seeds) against trainable parameters on a log
    axis, one labelled marker per strategy and one panel per dataset: the usual PETL trade-off
    figure, with its Pareto front (dashed) and the chance level (dotted, where known). With
    several models, colour says the model and the marker the strategy."""
    with thesis_style(report_cfg) as cfg:
        metric = cfg["metric"]
        mean_col = _mean_column(metric)
        std_col = mean_col.removesuffix("_mean") + "_std"
        _require(summary, mean_col, "accuracy_vs_params")
        scale = _scale(metric)
        frame = summary.assign(label=config_labels(summary).to_numpy())
        # Several models: colour by model, marker by strategy, and legends instead of labels
        # (a label per point would not be readable with models x strategies of them).
        by_model = "model" in _varying(frame, ("model",))
        hue = frame["model" if by_model else "label"].astype(str)
        shape = frame["strategy" if by_model else "label"].astype(str)
        colors = _colors(list(hue), cfg["palette"])
        markers = {k: _MARKERS[i % len(_MARKERS)] for i, k in enumerate(dict.fromkeys(shape))}
        frame = frame.assign(_hue=hue.to_numpy(), _shape=shape.to_numpy())
        datasets = list(dict.fromkeys(frame["dataset"]))
        fig, axes = _figure(cfg, 0.5, ncols=len(datasets), sharey=False)
        for ax, dataset in zip(axes[0], datasets, strict=True):
            part = frame[frame["dataset"] == dataset]
            for _, row in part.iterrows():
                # A log axis has no zero; a frozen model would still train its head.
                x = max(float(row["trainable_params_mean"]), 1.0)
                y = float(row[mean_col]) * scale
                one_run = int(row.get("n_runs", 2)) == 1  # no spread to draw
                ax.errorbar(
                    x,
                    y,
                    yerr=None if one_run else float(row[std_col]) * scale,
                    marker=markers[row["_shape"]],
                    color=colors[row["_hue"]],
                    markersize=5,
                    capsize=2,
                    linewidth=1,
                    linestyle="none",
                )
            points = [
                (max(float(r["trainable_params_mean"]), 1.0), float(r[mean_col]) * scale)
                for _, r in part.iterrows()
            ]
            front = [points[i] for i in pareto_front(points)]
            if len(front) > 1:
                # Straight from one front point to the next: the line passes through each.
                ax.plot(*zip(*front, strict=True), linestyle="--", color="0.5", linewidth=0.8,
                        zorder=0, label="Pareto front", gid="pareto-front")  # fmt: skip
            level = (chance or {}).get(str(dataset))
            if level is not None and is_fraction(metric):
                ax.axhline(level * scale, linestyle=":", color="0.4", linewidth=0.8,
                           label="chance")  # fmt: skip
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.margins(x=0.15, y=0.15)
            ax.set_xlabel("Trainable parameters (log scale)")
            ax.set_ylabel(f"Test {in_sentence(metric_label(metric))}")
            _percent_axis(ax, metric)
            if len(datasets) > 1:
                ax.set_title(str(dataset))
        # A legend, not a label beside each point: labels collide where methods cost about
        # the same (conformer, lora and adapter in the default study).
        _key_legend(fig, colors, markers, cfg, by_model, axes[0][0])
        sns.despine(fig=fig)
        return save_figure(fig, out, cfg)


def _key_legend(
    fig: Figure,
    colors: Mapping[str, Any],
    markers: Mapping[str, str],
    cfg: Mapping[str, Any],
    by_model: bool,
    ax: Axes,
) -> Any:
    """One legend for every key, right of the panels (constrained layout makes room for it):
    with several models a coloured line per model and a grey marker per strategy, else a
    coloured marker per strategy; then the Pareto front and chance."""
    from matplotlib.lines import Line2D

    if by_model:
        handles = [Line2D([], [], color=c, linewidth=2, label=m) for m, c in colors.items()]
        handles += [
            Line2D([], [], color="0.3", marker=k, linestyle="none", label=s)
            for s, k in markers.items()
        ]
    else:
        handles = [
            Line2D([], [], color=colors[s], marker=k, linestyle="none", label=s)
            for s, k in markers.items()
        ]
    own, names = ax.get_legend_handles_labels()
    seen = {h.get_label() for h in handles}
    handles += [h for h, n in zip(own, names, strict=True) if n not in seen]
    return fig.legend(
        handles=handles,
        loc="outside right center",
        frameon=False,
        fontsize=float(cfg["font_size"]) - 1,
    )


# -------------------------------------------------------------------- accuracy per strategy


def _spread(n: int, width: float = 0.5) -> np.ndarray:
    # Even offsets instead of random jitter: the same runs always draw the same picture.
    return np.zeros(1) if n == 1 else np.linspace(-width / 2, width / 2, n)


def accuracy_per_strategy(
    runs: pd.DataFrame, out: Path, report_cfg: Mapping[str, Any] | None = None
) -> list[Path]:
    """Bars of the mean test metric per strategy with ±1 std (population, as in the summary;
    none for a single run) and every run's value drawn on top; one panel per dataset. With
    several models (or environments) the strategies' bars stand side by side, one colour per
    model, under one tick per strategy, and a legend names the models."""
    with thesis_style(report_cfg) as cfg:
        metric = cfg["metric"]
        column = f"test_{base_metric(metric)}"
        _require(runs, column, "accuracy_per_strategy")
        scale = _scale(metric)
        extra = _varying(runs, ("model", "environment"))
        group = runs[extra].astype(str).agg(" · ".join, axis=1) if extra else None
        frame = runs.assign(
            _group=group.to_numpy() if group is not None else "",
            _strategy=runs["strategy"].astype(str).to_numpy(),
        )
        groups = list(dict.fromkeys(frame["_group"]))
        keys = groups if extra else list(dict.fromkeys(frame["_strategy"]))
        colors = _colors(keys, cfg["palette"])
        datasets = list(dict.fromkeys(frame["dataset"]))
        fig, axes = _figure(cfg, 0.45, ncols=len(datasets))
        width = 0.8 / len(groups)
        for ax, dataset in zip(axes[0], datasets, strict=True):
            part = frame[frame["dataset"] == dataset]
            strategies = list(dict.fromkeys(part["_strategy"]))
            for i, strategy in enumerate(strategies):
                for j, name in enumerate(groups):
                    chosen = (part["_strategy"] == strategy) & (part["_group"] == name)
                    values = part.loc[chosen, column].to_numpy(float) * scale
                    values = values[np.isfinite(values)]
                    if not len(values):
                        continue
                    x = i + (j - (len(groups) - 1) / 2) * width
                    ax.bar(
                        x,
                        values.mean(),
                        yerr=values.std(ddof=0) if len(values) > 1 else None,
                        color=colors[name if extra else strategy],
                        alpha=0.6,
                        width=width * 0.9,
                        capsize=3,
                        error_kw={"linewidth": 1},
                        label=name if extra and i == 0 else None,
                    )
                    ax.scatter(x + _spread(len(values), width * 0.6), values, s=10,
                               color="black", zorder=3, linewidths=0)  # fmt: skip
            ax.set_xticks(range(len(strategies)), strategies, rotation=_rotation(strategies))
            ax.set_xlabel("Strategy")
            ax.set_ylabel(f"Test {in_sentence(metric_label(metric))}")
            _percent_axis(ax, metric)
            if len(datasets) > 1:
                ax.set_title(str(dataset))
        if extra:
            handles, labels = axes[0][0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside right center", frameon=False,
                       title=" · ".join(c.capitalize() for c in extra))  # fmt: skip
        sns.despine(fig=fig)
        return save_figure(fig, out, cfg)


def _rotation(labels: Sequence[str]) -> int:
    # Horizontal while the names fit side by side, slanted once they would touch.
    return 30 if len(labels) > 6 or sum(len(t) for t in labels) > 48 else 0


# -------------------------------------------------------------------- the best strategy


def best_row(summary: pd.DataFrame, metric: str) -> pd.Series:
    """The summary row with the highest mean test ``metric`` (fewer trainable params on ties)."""
    mean_col = _mean_column(metric)
    _require(summary, mean_col, "best_strategy")
    # Ties go to the cheaper strategy: the PETL question is what the extra parameters buy.
    ranked = summary.sort_values(
        [mean_col, "trainable_params_mean"], ascending=[False, True], kind="stable"
    )
    return ranked.iloc[0]


def best_strategy(summary: pd.DataFrame, metric: str) -> str:
    """The strategy with the highest mean test ``metric`` (fewer trainable params on ties).

    Pass the summary rows of one dataset and model: the choice is meaningless across them.
    """
    return str(best_row(summary, metric)["strategy"])
