"""Which differences between methods are real when a dataset has one fixed test set (an
official split): every method against full fine-tuning and against the best method, on the
same test clips, the seeds pooled per clip (never counted as more clips: they share them).

Single-label: McNemar's exact test on the clips each method alone gets right decides
significance (exact, no resampling); a paired bootstrap over the clips gives the size of the
accuracy difference and its interval. Multi-label: no clip is simply right or wrong, so the
paired bootstrap of the mAP difference decides. The folds' paired t-tests
(:mod:`audiopetl.report.stats`) do not apply to one split: there is no sample of splits.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sklearn import metrics as skm

from audiopetl.core.atomic import write_text
from audiopetl.core.errors import DataError
from audiopetl.report.test_set import (
    ALPHA,
    CONFIDENCE,
    _holm,
    compare_on_test_set,
    paired_bootstrap,
)

BASELINE = "full"
RESAMPLES = 10_000


def _predictions(run_dir: str) -> pd.DataFrame:
    path = Path(run_dir) / "predictions.parquet"
    try:
        return pq.read_table(path).to_pandas()
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the run's predictions: {err}") from err


def _pooled(part: pd.DataFrame) -> dict[str, list[pd.DataFrame]]:
    """Per strategy, its predictions of the test clips, one table per seed (seeds in order,
    clips in one order); every strategy tested on the same clips with the same seeds."""
    out: dict[str, list[pd.DataFrame]] = {}
    for strategy, runs in part.groupby("strategy", sort=False):
        ordered = runs.sort_values("seed")
        out[str(strategy)] = [
            _predictions(d).sort_values("clip_id").reset_index(drop=True)
            for d in ordered["run_dir"]
        ]
    seeds = {name: sorted(part.loc[part["strategy"] == name, "seed"]) for name in out}
    clips = {name: [list(t["clip_id"]) for t in tables] for name, tables in out.items()}
    first = next(iter(out))
    for name in out:
        if seeds[name] != seeds[first] or clips[name] != clips[first]:
            raise DataError(
                f"strategy {name!r} was tested on other clips or seeds than {first!r}: "
                "methods can only be compared on the same test set with the same seeds"
            )
        if any(c != clips[name][0] for c in clips[name]):
            raise DataError(f"strategy {name!r}: its seeds were tested on different clips")
    return out


def _map_of(rows: np.ndarray, n_classes: int) -> float:
    """The mean over seeds of the mAP of ``rows``: a clip's targets, then its scores of each
    seed, side by side (classes without a positive among the rows left out)."""
    targets = rows[:, :n_classes]
    present = targets.sum(axis=0) > 0
    seeds = (rows.shape[1] - n_classes) // n_classes
    return float(
        np.mean(
            [
                skm.average_precision_score(
                    targets[:, present],
                    rows[:, n_classes * (1 + s) : n_classes * (2 + s)][:, present],
                )
                for s in range(seeds)
            ]
        )
    )


def test_set_comparisons(runs: pd.DataFrame, within: Sequence[str]) -> pd.DataFrame:
    """The comparison rows of the runs of official splits, per ``within`` group (dataset,
    model[, environment])."""
    rows: list[dict[str, Any]] = []
    for keys, part in runs.groupby(list(within), sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        names = dict(zip(within, keys, strict=True))
        multilabel = bool((part["task"] == "multilabel").all())
        pooled = _pooled(part)
        found = _multilabel_rows(pooled) if multilabel else _single_label_rows(pooled)
        rows += [{**names, **row} for row in found]
    return pd.DataFrame(rows)


def _references(means: dict[str, float]) -> list[tuple[str, str]]:
    refs = [("full fine-tuning", BASELINE)] if BASELINE in means else []
    best = max(means, key=means.__getitem__)
    if best != BASELINE or not refs:
        refs.append(("the best method", best))
    return refs


def _single_label_rows(pooled: dict[str, list[pd.DataFrame]]) -> list[dict[str, Any]]:
    correct = {
        name: np.column_stack(
            [(t["prediction"].to_numpy() == t["label"].to_numpy()) for t in tables]
        ).astype(float)
        for name, tables in pooled.items()
    }  # (clips, seeds)
    rows = []
    for label, reference in _references({n: float(c.mean()) for n, c in correct.items()}):
        for row in compare_on_test_set(correct, reference, resamples=RESAMPLES):
            if (row["method"], reference) == (BASELINE, _best(correct)):
                continue  # the best against full is full against the best: counted once
            rows.append(
                {
                    "strategy": row["method"], "against": label, "reference": reference,
                    "n": row["n"], "seeds": row["seeds"],
                    "mean_difference": row["difference"],
                    "ci_low": row["ci_low"], "ci_high": row["ci_high"],
                    "p_bootstrap": row["p_bootstrap"], "p_mcnemar": row["p_mcnemar"],
                    "decided_by": "McNemar's exact test",
                }
            )  # fmt: skip
    # Holm over every comparison of the dataset and model, as the folds' table does.
    for name in ("p_bootstrap", "p_mcnemar"):
        for row, adjusted in zip(rows, _holm([r.pop(name) for r in rows]), strict=True):
            row[f"{name}_holm"] = adjusted
    for row in rows:
        row["significant"] = bool(row["p_mcnemar_holm"] < ALPHA)
    return rows


def _best(correct: dict[str, np.ndarray]) -> str:
    return max(correct, key=lambda n: float(correct[n].mean()))


def _multilabel_rows(pooled: dict[str, list[pd.DataFrame]]) -> list[dict[str, Any]]:
    # Per strategy one row per clip: its targets, then its scores of every seed; resampling
    # rows keeps a clip's seeds together.
    stacked = {}
    n_classes = 0
    for name, tables in pooled.items():
        scores = [np.stack(t["probabilities"].to_numpy()) for t in tables]
        n_classes = scores[0].shape[1]
        targets = np.zeros_like(scores[0])
        for row, labels in enumerate(tables[0]["labels"]):
            targets[row, list(labels)] = 1.0
        stacked[name] = np.hstack([targets, *scores])
    means = {n: _map_of(s, n_classes) for n, s in stacked.items()}
    rows = []
    best = max(means, key=means.__getitem__)
    for label, reference in _references(means):
        for name, values in stacked.items():
            if name == reference or (name, reference) == (BASELINE, best):
                continue
            boot = paired_bootstrap(
                values,
                stacked[reference],
                metric=lambda rows, k=n_classes: _map_of(rows, k),
                resamples=RESAMPLES,
                confidence=CONFIDENCE,
            )
            rows.append(
                {
                    "strategy": name, "against": label, "reference": reference,
                    "n": len(values), "seeds": len(pooled[name]),
                    "mean_difference": boot["difference"],
                    "ci_low": boot["ci_low"], "ci_high": boot["ci_high"],
                    "p_bootstrap": boot["p_value"], "p_mcnemar_holm": float("nan"),
                    "decided_by": "paired bootstrap (mAP)",
                }
            )  # fmt: skip
    for row, adjusted in zip(rows, _holm([r.pop("p_bootstrap") for r in rows]), strict=True):
        row["p_bootstrap_holm"] = adjusted
        row["significant"] = bool(adjusted < ALPHA)
    return rows


CAPTION = (
    "Comparisons of each method with full fine-tuning and with the best method on the official "
    "test set (n: test clips). Difference: the method's mean test {metric} over seeds minus "
    "the reference's, in points, with its {confidence:.0%} paired-bootstrap interval (clips "
    "resampled, each with all its seeds). p: for single-label data McNemar's exact test on "
    "the clips one of the two gets right more often over the seeds (with one seed: the "
    "clips only one gets right), which is exact and decides significance; for multi-label "
    "data, where no clip is simply right, the paired bootstrap's; Holm-corrected over the "
    "comparisons of one dataset and model; * marks p < 0.05. The folds' paired t-tests do "
    "not apply: one split is no sample of splits."
)
HEADERS = ["dataset", "model", "method", "against", "n", "difference", "interval", "p",
           "decided by"]  # fmt: skip


def _p(value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def table_lines(comparisons: pd.DataFrame, metric: str, scale: float) -> tuple[list, list]:
    """The Markdown and LaTeX lines of the table (each a list of rows of cells) and caption."""
    rows = []
    for row in comparisons.itertuples(index=False):
        decisive = row.p_mcnemar_holm if "McNemar" in row.decided_by else row.p_bootstrap_holm
        rows.append(
            [
                str(row.dataset), str(row.model), str(row.strategy),
                f"{row.against} ({row.reference})", str(row.n),
                f"{row.mean_difference * scale:+.2f}",
                f"[{row.ci_low * scale:+.2f}, {row.ci_high * scale:+.2f}]",
                _p(decisive) + ("*" if row.significant else ""), str(row.decided_by),
            ]
        )  # fmt: skip
    return rows, [CAPTION.format(metric=metric, confidence=CONFIDENCE)]


def append_tables(
    comparisons: pd.DataFrame, metric: str, scale: float, written: list[Path]
) -> list[Path]:
    """Add the test-set table to the paired tables already written (``written``: their .csv,
    .md, .tex), below the folds' one."""
    from audiopetl.report.tables import latex_escape

    rows, (caption,) = table_lines(comparisons, metric, scale)
    for path in written:
        text = path.read_text()
        if path.suffix == ".csv":
            # One table for readers of the CSV: the folds' rows and these, told apart by what
            # they pair over, each with its own columns (empty where they do not apply).
            table = comparisons.assign(paired_over="test clips x seeds")
            if text.strip():
                folds = pd.read_csv(io.StringIO(text)).assign(paired_over="folds x seeds")
                table = pd.concat([folds, table], ignore_index=True)
            text = table.to_csv(index=False, lineterminator="\n", float_format="%.6g")
        elif path.suffix == ".md":
            text += "\n" + "\n".join(
                [
                    "| " + " | ".join(HEADERS) + " |",
                    "| " + " | ".join(["---"] * 4 + ["---:"] * 4 + ["---"]) + " |",
                    *("| " + " | ".join(r) + " |" for r in rows),
                    "",
                    caption,
                    "",
                ]
            )
        else:
            text += "\n".join(
                [
                    "\\begin{tabular}{llllrrrrl}",
                    "\\toprule",
                    " & ".join(latex_escape(h) for h in HEADERS) + " \\\\",
                    "\\midrule",
                    *(" & ".join(latex_escape(c) for c in r) + " \\\\" for r in rows),
                    "\\bottomrule",
                    "\\end{tabular}",
                    f"% {caption}",
                    "",
                ]
            )
        write_text(path, text)
    return written
