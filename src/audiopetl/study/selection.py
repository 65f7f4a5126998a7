"""Choosing a sweep's variant on validation, never on test.

A selection (dataset, model, method) reads only the ``val`` block of each variant's runs'
metrics.json: the mean of ``val_{training.select_metric}`` over the runs
(:meth:`audiopetl.study.Study.selection_runs`: every split and seed, or the first split's),
higher is better (lower for ``loss``); a tie goes to the variant listed first. The file it
writes holds no test number, so nothing about a test set can reach the choice or its bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from audiopetl.core.atomic import write_text
from audiopetl.core.errors import DataError

LOWER_IS_BETTER = frozenset({"loss"})


def validation_value(run_dir: Path, metric: str) -> float:
    """A finished run's validation ``metric`` (at its selected epoch) from its metrics.json."""
    path = Path(run_dir) / "metrics.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"{path}: not found; the variant's run has not finished") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read metrics: {err}") from err
    val = data.get("val") if isinstance(data, dict) else None
    value = val.get(metric) if isinstance(val, dict) else None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise DataError(
            f"{path}: no finite validation {metric!r} (val.{metric}): a sweep is selected on "
            "validation, so its runs need a validation split (training.split train_val_test)"
        )
    return float(value)


def select(
    variants: Mapping[str, Sequence[Path]],
    values: Mapping[str, Mapping[str, Any]],
    metric: str,
) -> dict[str, Any]:
    """The selection record: every variant's mean validation ``metric`` over its runs, and the
    winner. ``variants``: variant -> its runs, in the sweep's order; ``values``: variant -> its
    swept values."""
    rows = []
    for variant, runs in variants.items():
        if not runs:
            raise DataError(f"sweep variant {variant!r}: no runs to select on")
        scores = [validation_value(run, metric) for run in runs]
        rows.append(
            {
                "variant": variant,
                "values": dict(values.get(variant) or {}),
                "runs": len(scores),
                f"val_{metric}": sum(scores) / len(scores),
            }
        )
    key = f"val_{metric}"
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    # max() keeps the first of equal scores: the sweep's order breaks ties.
    best = max(rows, key=lambda row: sign * row[key])
    return {"metric": key, "selected": best["variant"], "variants": rows}


def write_selection(path: Path, record: Mapping[str, Any]) -> None:
    write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_selection(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(
            f"{path}: no selection yet; run the study (snakemake) or `audiopetl select` first"
        ) from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read the selection: {err}") from err
    if not isinstance(record, dict) or not isinstance(record.get("selected"), str):
        raise DataError(f"{path}: not a selection record (no 'selected'); delete it and rerun")
    return record
