"""Compare one experiment's results from two software environments (modern vs legacy).

Same config, same seeds, same data order: the runs start from bitwise-identical weights in both
stacks (audiopetl seeds every parameter's initialisation by its version-independent name).
What differs is floating-point arithmetic (other kernels, other summation orders), and such
differences grow with every optimiser step. So the comparison has two tolerances, each with
its reason:

- ``first_loss_rtol``: the first epoch's mean training loss may differ only by rounding
  (relative 1e-3): a larger gap means the stacks do not compute the same model or data.
- ``accuracy_atol``: the mean test accuracy per model and strategy over folds and seeds may
  differ by a few test clips (absolute 0.10 on the quick preset, whose test folds hold 24
  clips): after many steps, rounding can flip a handful of borderline predictions, not more.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from audiopetl.core.atomic import write_json, write_text
from audiopetl.core.errors import DataError

FIRST_LOSS_RTOL = 1e-3
ACCURACY_ATOL = 0.10


@dataclass
class Comparison:
    runs: pd.DataFrame
    strategies: pd.DataFrame
    passed: bool
    environments: tuple[str, str]
    # Finished runs only one side has: a comparison of the rest would hide them.
    only_a: list[str]
    only_b: list[str]


def _runs(root: Path) -> dict[str, dict[str, Any]]:
    runs = {}
    for metrics_file in sorted(root.rglob("metrics.json")):
        run_dir = metrics_file.parent
        if not (run_dir / "history.csv").is_file():
            continue
        metrics = json.loads(metrics_file.read_text())
        history = pd.read_csv(run_dir / "history.csv")
        source_task = run_dir.parent.name == "pretrain"
        # runs/DATASET/MODEL/STRATEGY/seedN/foldF, or pretrain/MODEL
        model = run_dir.name if source_task else run_dir.parents[2].name
        runs[str(run_dir.relative_to(root))] = {
            "model": metrics.get("model", model),
            "strategy": "pretrain (source task)" if source_task else metrics["strategy"],
            "environment": metrics.get("environment", "?"),
            "accuracy": metrics["test"]["accuracy"],
            "first_loss": float(history["train_loss"].iloc[0]),
        }
    return runs


def compare(
    results_a: Path,
    results_b: Path,
    first_loss_rtol: float = FIRST_LOSS_RTOL,
    accuracy_atol: float = ACCURACY_ATOL,
) -> Comparison:
    a, b = _runs(results_a), _runs(results_b)
    common = sorted(set(a) & set(b))
    if not common:
        raise DataError(f"{results_a} and {results_b} share no finished run to compare")
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    rows = []
    for key in common:
        loss_a, loss_b = a[key]["first_loss"], b[key]["first_loss"]
        rel = abs(loss_a - loss_b) / max(abs(loss_a), 1e-12)
        rows.append(
            {
                "run": key,
                "model": a[key]["model"],
                "strategy": a[key]["strategy"],
                "accuracy_a": a[key]["accuracy"],
                "accuracy_b": b[key]["accuracy"],
                "first_loss_a": loss_a,
                "first_loss_b": loss_b,
                "first_loss_rel_diff": rel,
                "first_loss_ok": rel <= first_loss_rtol,
            }
        )
    runs = pd.DataFrame(rows)
    strategies = (
        runs.groupby(["model", "strategy"], sort=False)
        .agg(
            accuracy_a=("accuracy_a", "mean"),
            accuracy_b=("accuracy_b", "mean"),
            runs=("run", "count"),
        )
        .reset_index()
    )
    strategies["accuracy_diff"] = (strategies["accuracy_a"] - strategies["accuracy_b"]).abs()
    strategies["accuracy_ok"] = strategies["accuracy_diff"] <= accuracy_atol
    passed = bool(
        runs["first_loss_ok"].all()
        and strategies["accuracy_ok"].all()
        and not only_a
        and not only_b
    )
    envs = (a[common[0]]["environment"], b[common[0]]["environment"])
    return Comparison(runs, strategies, passed, envs, only_a, only_b)


def _missing_lines(result: Comparison) -> list[str]:
    lines = []
    for env, runs in zip(result.environments, (result.only_a, result.only_b), strict=True):
        if runs:
            lines += [f"Finished only in {env} (a failure: the other side lacks them):", ""]
            lines += [f"- {run}" for run in runs] + [""]
    return lines


def write_comparison(result: Comparison, out: Path, settings: Mapping[str, float]) -> None:
    """A Markdown report for people and a JSON twin for machines."""
    env_a, env_b = result.environments
    lines = [
        f"# Cross-environment comparison: {env_a} vs {env_b}",
        "",
        f"Verdict: **{'PASS' if result.passed else 'FAIL'}**",
        "",
        "Tolerances (see audiopetl.report.compare for the reasoning):",
        f"- first-epoch training loss, relative: {settings['first_loss_rtol']:g} "
        "(same initial weights and data order; only rounding may differ)",
        f"- mean test accuracy per model and strategy, absolute: {settings['accuracy_atol']:g} "
        "(rounding compounds over training and may flip a few borderline test clips)",
        "",
        *_missing_lines(result),
        "## Per model and strategy",
        "",
        f"| model | strategy | runs | accuracy {env_a} | accuracy {env_b} | difference | within |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result.strategies.itertuples():
        lines.append(
            f"| {r.model} | {r.strategy} | {r.runs} | {r.accuracy_a:.4f} | {r.accuracy_b:.4f} | "
            f"{r.accuracy_diff:.4f} | {'yes' if r.accuracy_ok else 'NO'} |"
        )
    lines += [
        "",
        "## Per run",
        "",
        f"| run | first loss {env_a} | first loss {env_b} | relative difference | "
        f"accuracy {env_a} | accuracy {env_b} |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result.runs.itertuples():
        lines.append(
            f"| {r.run} | {r.first_loss_a:.6f} | {r.first_loss_b:.6f} | "
            f"{r.first_loss_rel_diff:.2e} | {r.accuracy_a:.4f} | {r.accuracy_b:.4f} |"
        )
    write_text(out, "\n".join(lines) + "\n")
    write_json(
        out.with_suffix(".json"),
        {
            "environments": list(result.environments),
            "passed": result.passed,
            "tolerances": dict(settings),
            "only_in_a": result.only_a,
            "only_in_b": result.only_b,
            "strategies": result.strategies.to_dict(orient="records"),
            "runs": result.runs.to_dict(orient="records"),
        },
    )
