"""Build the whole report of an experiment: summary, tables and figures, in a fixed order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from audiopetl.report.aggregate import (
    collect_histories,
    collect_runs,
    data_notes,
    group_columns,
    headline_metric,
    order_runs,
    read_metrics,
    summarize,
    write_summary,
)
from audiopetl.report.defaults import DEFAULT_REPORT
from audiopetl.report.dvc_views import write_dvc_views
from audiopetl.report.tables import write_model_table, write_tables

FIGURES_DIR = "figures"

STUDY_KEYS = (("dataset", "datasets"), ("model", "models"), ("strategy", "strategies"))


def _study_order(cfg: Mapping[str, Any]) -> dict[str, list[str]]:
    # The study's own order (e.g. full, linear, lora) reads better than the alphabet.
    study = cfg.get("study") or {}
    return {column: list(study[key]) for column, key in STUDY_KEYS if key in study}


def _class_figures(
    runs: pd.DataFrame, summary: pd.DataFrame, report_cfg: Mapping[str, Any], fig_dir: Path
) -> list[Path]:
    """Confusion matrix of the best strategy and per-class F1, per dataset and model.

    Classes only make sense within one dataset: with a single dataset and model the files
    are ``confusion_matrix``/``per_class_f1``; with several each gets a ``-{dataset}-{model}``
    suffix.
    """
    from audiopetl.report import class_figures, figures  # see build_report

    combos = list(dict.fromkeys(zip(summary["dataset"], summary["model"], strict=True)))
    keys = group_columns(runs)
    written = []
    for dataset, model in combos:
        suffix = "" if len(combos) == 1 else f"-{dataset}-{model}"
        several = len({d for d, _ in combos}) > 1
        context = f"{model} · {dataset}" if several else str(model)
        in_combo = (runs["dataset"] == dataset) & (runs["model"] == model)
        rows = summary[(summary["dataset"] == dataset) & (summary["model"] == model)]
        per_strategy: dict[str, list[dict[str, Any]]] = {}
        labels = figures.config_labels(runs[in_combo])
        for label, run_dir in zip(labels, runs.loc[in_combo, "run_dir"], strict=True):
            per_strategy.setdefault(label, []).append(read_metrics(Path(run_dir)))
        if (runs.loc[in_combo, "task"] == "multilabel").all():
            # No confusion matrix of several labels per clip: each class's AP instead.
            stem = fig_dir / f"per_class_ap{suffix}"
            written += class_figures.per_class_f1(
                per_strategy, stem, report_cfg, field="ap", context=context
            )
            continue
        best = figures.best_row(rows, report_cfg["metric"])
        # As strings: a missing environment is None, and None == None is False in pandas.
        chosen = in_combo & (runs[keys].astype(str) == best[keys].astype(str)).all(axis=1)
        best_metrics = [read_metrics(Path(d)) for d in runs.loc[chosen, "run_dir"]]
        written += class_figures.confusion_matrix(
            best_metrics,
            fig_dir / f"confusion_matrix{suffix}",
            report_cfg,
            title=figures.config_labels(rows).loc[best.name],
            context=context,
        )
        stem = fig_dir / f"per_class_f1{suffix}"
        written += class_figures.per_class_f1(per_strategy, stem, report_cfg, context=context)
    return written


def build_report(
    cfg: Mapping[str, Any],
    run_dirs: Sequence[Path],
    out_dir: Path,
    selections: Mapping[tuple[str, str, str], Mapping[str, Any]] | None = None,
) -> list[Path]:
    """Write summary.csv/json, table.csv/md/tex, models.csv/md/tex (model x strategy), the
    figures under ``out_dir/figures`` and
    the flat views for DVC (metrics.json, plots/); return every written path, in the order
    written. ``selections``: each sweep's choice ((dataset, model, method) -> its record,
    audiopetl.study.selection): only the chosen variant of a sweep is reported, and
    sweep.{csv,md} lists them all."""
    # Imported here, not at the top: matplotlib and seaborn take over a second to import, and
    # the workflow imports this module in every job only for expected_outputs().
    from audiopetl.report import figures

    report_cfg = {**DEFAULT_REPORT, **(cfg.get("report") or {})}
    out_dir = Path(out_dir)
    fig_dir = out_dir / FIGURES_DIR
    runs = order_runs(collect_runs(run_dirs), _study_order(cfg))
    report_cfg["metric"] = headline_metric(runs, report_cfg["metric"])
    from audiopetl.report import sweeps

    # Every variant, from the runs before the winners are kept (written last).
    sweep_rows = sweeps.sweep_table(runs, selections or {})
    written: list[Path] = []
    if selections:
        runs = sweeps.keep_selected(runs, selections)
    # Numbers from part of a dataset say so in every table and figure (not a setting).
    report_cfg["data_notes"] = data_notes(runs)
    if selections:
        report_cfg["data_notes"] += sweeps.notes(selections)
    summary = summarize(runs)
    written += write_summary(summary, out_dir)
    written += write_tables(summary, report_cfg, out_dir / "table")
    written += write_model_table(summary, report_cfg, out_dir / "models")
    histories = collect_histories(runs)
    written += figures.learning_curves(histories, fig_dir / "learning_curves", report_cfg)
    chance = chance_levels(runs)
    written += figures.accuracy_vs_params(
        summary, fig_dir / "accuracy_vs_params", report_cfg, {str(k): v for k, v in chance.items()}
    )
    written += figures.accuracy_per_strategy(runs, fig_dir / "accuracy_per_strategy", report_cfg)
    written += _class_figures(runs, summary, report_cfg, fig_dir)
    written += _paired_tables(runs, report_cfg, out_dir / "paired")
    from audiopetl.core.sweeps import method_of

    written += write_dvc_views(
        summary, histories, out_dir, report_cfg["metric"], lambda s: method_of(cfg, s)
    )
    # For every study (dvc.yaml versions them; DVC has no optional outputs): one without a
    # sweep says so.
    return written + sweeps.write_sweep_tables(sweep_rows, out_dir)


def chance_levels(runs: pd.DataFrame) -> dict[Any, float]:
    """Per dataset, the chance level of the headline metric: one over the number of classes
    (accuracy), or the mAP of a constant predictor, the labels' prevalence (multi-label; the
    mean over the runs' test sets)."""
    chance: dict[Any, float] = {}
    for dataset, part in runs.groupby("dataset", sort=False):
        if (part["task"] == "multilabel").all() and "chance_mAP" in part:
            chance[dataset] = float(pd.to_numeric(part["chance_mAP"]).mean())
        elif "classes" in part:
            chance[dataset] = 1.0 / float(part["classes"].max())
    return chance


def _paired_tables(runs: pd.DataFrame, report_cfg: Mapping[str, Any], out_stem: Path) -> list:
    from audiopetl.report.aggregate import is_fraction
    from audiopetl.report.stats import overlap_ratios, paired_comparisons, write_comparison_tables

    metric = report_cfg["metric"]
    within = [c for c in group_columns(runs) if c != "strategy"]  # dataset, model[, env]
    # Folds pair over folds and seeds; an official split's one test set pairs over its clips.
    official = runs["split"] == "official"
    comparisons = paired_comparisons(runs[~official], metric, within, overlap_ratios(runs))
    if comparisons.empty:
        comparisons = pd.DataFrame(columns=["dataset", "model", "strategy", "significant"])
    scale = 100.0 if is_fraction(metric) else 1.0
    if comparisons.empty and official.any():  # one kind of table only: the test set's
        from audiopetl.core.atomic import write_text

        written = [out_stem.parent / f"{out_stem.name}{s}" for s in (".csv", ".md", ".tex")]
        for path in written:
            write_text(path, "")
    else:
        written = write_comparison_tables(comparisons, metric, scale, out_stem)
    if official.any():
        from audiopetl.report.pairing import append_tables, test_set_comparisons

        on_test_set = test_set_comparisons(runs[official], within)
        if not on_test_set.empty:
            written = append_tables(on_test_set, metric, scale, written)
    notes = report_cfg.get("data_notes") or []
    if notes:
        from audiopetl.core.atomic import write_text
        from audiopetl.report.tables import with_notes

        for path in written:
            write_text(path, with_notes(path.read_text(), path.suffix, notes))
    return written


def expected_outputs(cfg: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Every file build_report writes for ``cfg``'s study, so a workflow can declare them."""
    out_dir = Path(out_dir)
    formats = list((cfg.get("report") or DEFAULT_REPORT)["formats"])
    names = ["learning_curves", "accuracy_vs_params", "accuracy_per_strategy"]
    combos = [(d, m) for d in cfg["study"]["datasets"] for m in cfg["study"]["models"]]
    for dataset, model in combos:
        suffix = "" if len(combos) == 1 else f"-{dataset}-{model}"
        if (cfg["datasets"][dataset].get("task") or "multiclass") == "multilabel":
            names.append(f"per_class_ap{suffix}")
        else:
            names += [f"confusion_matrix{suffix}", f"per_class_f1{suffix}"]
    tables = [
        out_dir / f"{stem}.{ext}"
        for stem, ext in (
            ("summary", "csv"),
            ("summary", "json"),
            ("table", "csv"),
            ("table", "md"),
            ("table", "tex"),
            ("models", "csv"),
            ("models", "md"),
            ("models", "tex"),
            ("paired", "csv"),
            ("paired", "md"),
            ("paired", "tex"),
        )
    ]
    tables += [out_dir / "sweep.csv", out_dir / "sweep.md"]
    return tables + [out_dir / FIGURES_DIR / f"{n}.{f}" for n in names for f in formats]
