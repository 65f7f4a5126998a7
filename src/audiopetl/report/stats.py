"""Which differences between methods are real: every method against full fine-tuning and
against the best method, paired over the same folds and seeds.

Two tests, both over the n paired differences d (a method's test metric minus the
reference's, on the same fold and seed):

- the paired t-test (scipy.stats.ttest_rel): assumes the pairs are independent. Folds of one
  cross-validation share most of their training data, so it is optimistic (Dietterich, 1998).
- the corrected resampled t-test (Nadeau and Bengio, 2003; Bouckaert and Frank, 2004): the
  same statistic with the variance of the mean inflated from 1/n to 1/n + n_test/n_train, to
  account for that overlap; conservative. This is the one the table's verdict uses.

p-values are Holm-corrected (statsmodels) over all the comparisons of one dataset and model.
Wilcoxon's signed-rank test is no use here: with 5 pairs its smallest two-sided p is 0.0625.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
PAIR_KEYS = ("fold", "seed")


def _corrected_t(diffs: np.ndarray, test_over_train: float) -> tuple[float, float]:
    n = len(diffs)
    var = float(np.var(diffs, ddof=1)) if n > 1 else 0.0
    if var == 0.0:
        return float("nan"), float("nan")
    t = float(np.mean(diffs)) / math.sqrt((1.0 / n + test_over_train) * var)
    return t, float(2 * stats.t.sf(abs(t), df=n - 1))


def _paired_t(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if len(a) < 2 or float(np.var(a - b)) == 0.0:
        return float("nan"), float("nan")
    result = stats.ttest_rel(a, b)
    return float(result.statistic), float(result.pvalue)


def _holm(pvalues: Sequence[float]) -> list[float]:
    from statsmodels.stats.multitest import multipletests

    values = np.asarray(pvalues, dtype=float)
    out = np.full(len(values), np.nan)
    finite = np.isfinite(values)
    if finite.any():
        out[finite] = multipletests(values[finite], alpha=ALPHA, method="holm")[1]
    return [float(v) for v in out]


def paired_comparisons(
    runs: pd.DataFrame,
    metric: str,
    group: Sequence[str],
    test_over_train: Mapping[str, float],
    baseline: str = "full",
) -> pd.DataFrame:
    """One row per method and reference (full fine-tuning, and the best method by mean) within
    each ``group`` (dataset, model[, environment]): the mean paired difference, n, both tests'
    statistics and p-values, Holm-corrected, and whether the difference is significant.
    ``test_over_train`` gives each dataset's ratio of test to training clips (the correction)."""
    column = metric if metric.startswith(("test_", "val_")) else f"test_{metric}"
    rows: list[dict[str, Any]] = []
    for keys, part in runs.groupby(list(group), sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        table = part.pivot_table(index=list(PAIR_KEYS), columns="strategy", values=column)
        table = table[[s for s in pd.unique(part["strategy"]) if s in table.columns]]  # study order
        means = table.mean()
        references = []
        if baseline in table.columns:
            references.append(("full fine-tuning", baseline))
        best = str(means.idxmax())
        if best != baseline or not references:
            references.append(("the best method", best))
        ratio = float(test_over_train.get(str(dict(zip(group, keys, strict=True))["dataset"]), 0))
        found = []
        for label, reference in references:
            for strategy in table.columns:
                # Full fine-tuning against the best method is the best method against full
                # fine-tuning, already in the table: one test, counted once by Holm.
                if strategy == reference or (strategy, reference) == (baseline, best):
                    continue
                pairs = table[[strategy, reference]].dropna()
                a, b = pairs[strategy].to_numpy(), pairs[reference].to_numpy()
                diffs = a - b
                t_paired, p_paired = _paired_t(a, b)
                t_corr, p_corr = _corrected_t(diffs, ratio)
                found.append(
                    {
                        **dict(zip(group, keys, strict=True)),
                        "strategy": str(strategy),
                        "against": label,
                        "reference": str(reference),
                        "n": len(diffs),
                        "mean_difference": float(np.mean(diffs)) if len(diffs) else float("nan"),
                        "std_difference": float(np.std(diffs, ddof=1))
                        if len(diffs) > 1
                        else float("nan"),
                        "t_paired": t_paired,
                        "p_paired": p_paired,
                        "t_corrected": t_corr,
                        "p_corrected": p_corr,
                    }
                )
        for name in ("p_paired", "p_corrected"):
            for row, adjusted in zip(found, _holm([r[name] for r in found]), strict=True):
                row[f"{name}_holm"] = adjusted
        for row in found:
            row["significant"] = bool(row["p_corrected_holm"] < ALPHA)
        rows += found
    return pd.DataFrame(rows)


def overlap_ratios(runs: pd.DataFrame) -> dict[str, float]:
    """Per dataset, test clips over training clips of its runs (metrics.json's test n and
    train_clips), for the corrected t-test; 0 (the plain paired test) where unknown."""
    ratios = {}
    for dataset, part in runs.groupby("dataset", sort=False):
        if "test_n" not in part or "train_clips" not in part:
            ratios[str(dataset)] = 0.0
            continue
        test = pd.to_numeric(part["test_n"], errors="coerce")
        train = pd.to_numeric(part["train_clips"], errors="coerce")
        ratio = (test / train).replace([np.inf, -np.inf], np.nan).mean()
        ratios[str(dataset)] = 0.0 if pd.isna(ratio) else float(ratio)
    return ratios


# -- the table, in CSV, Markdown and LaTeX -----------------------------------------------------

CAPTION = (
    "Paired comparisons of each method with full fine-tuning and with the best method, over "
    "the same folds and seeds (n pairs). Difference: the method's mean test {metric} minus the "
    "reference's, in points. p (paired t): the paired t-test, which takes the pairs as "
    "independent; p (corrected): the corrected resampled t-test of Nadeau and Bengio, which "
    "accounts for the training data the folds share, and decides significance. Both "
    "Holm-corrected over the comparisons of one dataset and model; * marks p < 0.05."
)


def _format_p(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def table_rows(comparisons: pd.DataFrame, scale: float) -> list[list[str]]:
    rows = []
    for row in comparisons.itertuples(index=False):
        star = "*" if row.significant else ""
        rows.append(
            [
                str(row.dataset),
                str(row.model),
                str(row.strategy),
                f"{row.against} ({row.reference})",
                str(row.n),
                f"{row.mean_difference * scale:+.2f}",
                _format_p(row.p_paired_holm),
                _format_p(row.p_corrected_holm) + star,
            ]
        )
    return rows


HEADERS = ["dataset", "model", "method", "against", "n", "difference", "p (paired t)",
           "p (corrected)"]  # fmt: skip


def write_comparison_tables(
    comparisons: pd.DataFrame, metric: str, scale: float, out_stem: Any
) -> list[Any]:
    from pathlib import Path

    from audiopetl.core.atomic import write_text
    from audiopetl.report.tables import latex_escape

    out_stem = Path(out_stem)
    caption = CAPTION.format(metric=metric)
    rows = table_rows(comparisons, scale)
    markdown = [
        "| " + " | ".join(HEADERS) + " |",
        "| " + " | ".join(["---"] * 4 + ["---:"] * 4) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        caption,
    ]
    latex = [
        "% Generated by audiopetl.report; needs \\usepackage{booktabs}.",
        "\\begin{tabular}{llllrrrr}",
        "\\toprule",
        " & ".join(latex_escape(h) for h in HEADERS) + " \\\\",
        "\\midrule",
        *(" & ".join(latex_escape(c) for c in r) + " \\\\" for r in rows),
        "\\bottomrule",
        "\\end{tabular}",
        f"% {caption}",
    ]
    written = []
    for suffix, text in (
        (".csv", comparisons.to_csv(index=False, lineterminator="\n", float_format="%.6g")),
        (".md", "\n".join(markdown) + "\n"),
        (".tex", "\n".join(latex) + "\n"),
    ):
        target = out_stem.parent / f"{out_stem.name}{suffix}"
        write_text(target, text)
        written.append(target)
    return written
