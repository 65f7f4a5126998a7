"""What is in a dataset and what is wrong with it, before anyone trains on it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from audiopetl.core.settings import DatasetSettings, FeatureSettings
from audiopetl.data.manifest import SEPARATOR


def build_report(
    dataset: DatasetSettings,
    features: FeatureSettings,
    manifest: pd.DataFrame,
    cache_meta: dict | None,
    partial: str | None = None,
    fetch_skipped: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The report; ``partial`` says how much of a dataset is there ("subset: 83 of 2000 clips"),
    ``fetch_skipped`` which files the fetch left out and why. ``features`` are AST's fbank
    settings for the dataset (their clip length and normalisation are judged)."""
    settings = features.values
    # The parts of an official split, else the folds; a multi-label clip counts for each label.
    part = "split" if "split" in manifest.columns else "fold"
    names = manifest["label_name"].astype(str)
    if "labels" in manifest.columns:
        names = names.str.split(SEPARATOR)
    # A fresh index: crosstab of pandas 3.0 refuses the repeated one explode leaves.
    long = manifest.assign(label_name=names).explode("label_name", ignore_index=True)
    counts = pd.crosstab(long["label_name"], long[part])
    declared = dataset.folds
    if declared is not None and part == "fold":  # declared but empty folds stay visible
        counts = counts.reindex(columns=range(1, declared + 1), fill_value=0)
    noun = "part" if part == "split" else "fold"
    target_s = (
        (settings["target_length"] - 1) * settings["frame_shift_ms"] + settings["frame_length_ms"]
    ) / 1000.0
    problems: list[str] = []
    empty_folds = [f for f in counts.columns if counts[f].sum() == 0]
    if empty_folds:
        problems.append(
            f"{len(empty_folds)} {noun}(s) without any clip: {', '.join(map(str, empty_folds))}"
        )
    empty = [(str(c), f) for c in counts.index for f in counts.columns if counts.at[c, f] == 0]
    if empty:
        shown = ", ".join(f"{c} in {noun} {f}" for c, f in empty[:10])
        problems.append(f"{len(empty)} class/{noun} cell(s) without clips: {shown}")
    per_class = long["label_name"].value_counts()
    if len(per_class) > 1 and per_class.max() > 2 * per_class.min():
        problems.append(
            f"class imbalance: {per_class.idxmax()} has {per_class.max()} clips, "
            f"{per_class.idxmin()} has {per_class.min()}"
        )
    # Padding is what target_length asks for, not a problem (a 5 s clip in 5.12 s of frames, a
    # 1 s clip in 100 frames); a clip under half the set's typical length, and under the
    # target, is: a truncated file, or a clip of another kind, mostly padding.
    typical = float(manifest["duration"].median()) if len(manifest) else 0.0
    limit = min(target_s, typical) / 2
    short = int((manifest["duration"] < limit).sum())
    if short:
        problems.append(
            f"{short} clip(s) shorter than {limit:.2f} s, half the typical clip "
            f"({typical:.2f} s, the median): truncated? their features are mostly padding"
        )
    shared = manifest.groupby("group")[part].nunique()
    leaks = shared[shared > 1]
    if len(leaks):
        problems.append(
            f"{len(leaks)} group(s) span several {noun}s (possible leakage), e.g. {leaks.index[0]}"
        )
    report: dict[str, Any] = {
        "dataset": dataset.name,
        "partial": partial,
        "clips": len(manifest),
        "classes": int(long["label_name"].nunique()),
        "task": dataset.task,
        # An official split has parts, not folds (its manifest's fold column is 0 throughout).
        "folds": None if part == "split" else sorted(int(f) for f in manifest["fold"].unique()),
        "parts": (
            {p: int((manifest["split"] == p).sum()) for p in ("train", "validation", "test")}
            if part == "split"
            else None
        ),
        "groups": int(manifest["group"].nunique()),
        "split": dataset.scheme,
        "clips_per_class_and_fold": {
            str(c): {str(f): int(counts.at[c, f]) for f in counts.columns} for c in counts.index
        },
        "duration_s": _describe(manifest["duration"]),
        "sample_rates": {str(k): int(v) for k, v in manifest["sample_rate"].value_counts().items()},
        "feature_target_s": round(target_s, 3),
        "problems": problems,
        "skipped": [],
        "skipped_at_fetch": list(fetch_skipped or []),
    }
    for item in report["skipped_at_fetch"]:
        problems.append(f"skipped while fetching: {item['path']}: {item['reason']}")
    if cache_meta is not None:
        report["skipped"] = cache_meta.get("skipped", [])
        for item in report["skipped"]:
            problems.append(f"skipped while caching: {item['path']}: {item['error']}")
        # What a study trains on: the manifest's clips less those the cache left out.
        report["clips_listed"] = report["clips"]
        report["clips"] = report["clips"] - len(report["skipped"])
        observed = cache_meta.get("observed")
        if observed:
            report["observed_log_mel"] = observed
            problems += _normalisation_problems(observed, settings)
    return report


def _normalisation_problems(
    observed: Mapping[str, float], settings: Mapping[str, Any]
) -> list[str]:
    """The configured normalisation (x - mean) / (2 std) should give inputs near mean 0 and
    std 0.5 (AST's recipe); far off, the pretrained model sees inputs unlike its own."""
    mean, std = float(settings["mean"]), float(settings["std"])
    normalised_mean = (observed["mean"] - mean) / (2 * std)
    normalised_std = observed["std"] / (2 * std)
    if abs(normalised_mean) <= 0.5 and 0.25 <= normalised_std <= 1.0:
        return []
    return [
        f"the configured normalisation (features.mean {mean}, std {std}) is far from this "
        f"data's log-mel statistics (mean {observed['mean']:.4f}, std {observed['std']:.4f}): "
        f"inputs come out at mean {normalised_mean:.2f} and std {normalised_std:.2f} instead of "
        "about 0 and 0.5; consider setting features.mean and features.std to the data's"
    ]


def _describe(values: pd.Series) -> dict[str, float]:
    return {
        "min": round(float(values.min()), 4),
        "mean": round(float(values.mean()), 4),
        "max": round(float(values.max()), 4),
    }


def format_report(report: Mapping[str, Any], path: Path | None = None) -> str:
    lines = [
        f"dataset {report['dataset']}: {report['clips']} clips"
        + (
            f" ({report['clips_listed']} listed, {len(report['skipped'])} left out as bad)"
            if report.get("skipped")
            else ""
        )
        + f", {report['classes']} classes"
        f"{' (multi-label)' if report.get('task') == 'multilabel' else ''}, "
        + ("an official split" if report.get("split") == "official" else f"folds {report['folds']}")
        + f", {report['groups']} groups"
        + (f" ({report['partial']})" if report.get("partial") else ""),
        "duration (s): min {min} / mean {mean} / max {max}".format(**report["duration_s"]),
        "sample rates: " + ", ".join(f"{sr} Hz x {n}" for sr, n in report["sample_rates"].items()),
    ]
    table = pd.DataFrame(report["clips_per_class_and_fold"]).T
    official = report.get("split") == "official"
    if not official:
        table.columns = [f"fold{c}" for c in table.columns]
    what = "part of the official split" if official else "fold"
    lines += [f"clips per class and {what}:", table.to_string()]
    if "observed_log_mel" in report:
        obs = report["observed_log_mel"]
        lines.append(f"log-mel statistics: mean {obs['mean']:.4f}, std {obs['std']:.4f}")
    if report["problems"]:
        lines.append(f"problems ({len(report['problems'])}):")
        lines += [f"  - {p}" for p in report["problems"]]
    else:
        lines.append("problems: none")
    if path is not None:
        lines.append(f"written to {path}")
    return "\n".join(lines)
