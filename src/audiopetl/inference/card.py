"""The model card (README.md) of an export: what was trained on what, how well, from what, and
how to load it. YAML front matter as the Hugging Face Hub reads it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from audiopetl.core.settings import RunSettings


def _headline(metrics: Mapping[str, Any], multilabel: bool) -> list[tuple[str, Any]]:
    test = metrics.get("test") or {}
    names = ("mAP", "macro_auc", "d_prime", "macro_f1") if multilabel else (
        "accuracy", "balanced_accuracy", "macro_f1", "top5_accuracy"
    )  # fmt: skip
    return [(name, test[name]) for name in names if isinstance(test.get(name), int | float)]


def _base(weights: Mapping[str, Any] | None) -> tuple[str | None, str]:
    """The base model's hub id (for the front matter) and a sentence about it."""
    weights = weights or {}
    kind = weights.get("kind", "random")
    if kind == "random":
        return None, "none: the backbone was initialised at random from its config and seed"
    if kind == "hub":
        return weights.get("repo_id"), (
            f"`{weights.get('repo_id')}` at revision `{weights.get('revision')}` (hub)"
        )
    files = ", ".join(f"`{n}` sha256 `{d[:16]}…`" for n, d in (weights.get("files") or {}).items())
    if kind == "mirror":
        return weights.get("repo_id"), (
            f"`{weights.get('repo_id')}` at revision `{weights.get('revision')}` (commit "
            f"`{weights.get('commit')}`), from a verified mirror: {files}"
        )
    return None, f"the folder `{weights.get('path')}` ({files})"


def _usage(record: Mapping[str, Any]) -> str:
    blocks = []
    if record["transformers"]:
        blocks.append(
            "With transformers alone:\n\n```python\n"
            "from transformers import AutoFeatureExtractor, AutoModelForAudioClassification,"
            " pipeline\n\n"
            'model = AutoModelForAudioClassification.from_pretrained("DIR")\n'
            'extractor = AutoFeatureExtractor.from_pretrained("DIR")\n'
            'classify = pipeline("audio-classification", model="DIR")\n'
            "classify(waveform_at_the_sampling_rate, top_k=None)\n```\n\n"
            "The pipeline reads the first window of the training length; `audiopetl predict` "
            "scores longer recordings in windows."
        )
    if record["peft_adapter"]:
        blocks.append(
            "With peft, the adapter unmerged on the frozen base it started from (`base/`); "
            "the head and the trained LayerNorms are saved with it (`modules_to_save`):\n\n"
            "```python\nfrom peft import PeftModel\n"
            "from transformers import AutoModelForAudioClassification\n\n"
            'base = AutoModelForAudioClassification.from_pretrained("DIR/base")\n'
            'model = PeftModel.from_pretrained(base, "DIR/adapter")\n```'
        )
    why = record.get("pipeline")
    if why:
        blocks.append(f"transformers' pipeline cannot serve this model: {why}.")
    blocks.append(
        "With audiopetl, in one call (every export):\n\n```python\nimport audiopetl\n\n"
        'trained = audiopetl.load_model("DIR")\n'
        "scores = trained.predict_waves([waveform_at_trained_sample_rate])\n```\n\n"
        "or `audiopetl predict DIR AUDIO... --out predictions.csv`."
    )
    return "\n\n".join(blocks)


def model_card(
    record: Mapping[str, Any],
    run: RunSettings,
    metrics: Mapping[str, Any],
    info: Mapping[str, Any],
) -> str:
    multilabel = run.dataset.multilabel
    base_id, base_text = _base(info.get("weights"))
    front: dict[str, Any] = {
        "library_name": "transformers" if record["transformers"] else "audiopetl",
        "pipeline_tag": "audio-classification",
        "tags": ["audio", "audio-classification", "audiopetl", run.strategy.kind]
        + (["peft"] if record["peft_adapter"] else []),
        "metrics": [name for name, _ in _headline(metrics, multilabel)][:1],
    }
    if base_id:
        front["base_model"] = base_id
    names = info["run"]
    test = metrics.get("test") or {}
    splits = names.get("splits") or {}
    split_text = ", ".join(f"{k} {v}" for k, v in splits.items()) or names.get("split", "")
    partial = metrics.get("partial")
    part = f" ({partial})" if partial else ""
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in _headline(metrics, multilabel))
    git = info.get("git") or {}
    data = info.get("data") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items())
    classes = ", ".join(f"`{c}`" for c in record["classes"])
    dirty = " (with uncommitted changes)" if git.get("dirty") else ""
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {names["model"]} · {names["strategy"]} on {names["dataset"]}

A model of kind `{run.model.kind}` adapted with **{run.strategy.kind}**
(strategy `{names["strategy"]}`) to the dataset `{names["dataset"]}`{part}, split
`{names.get("split") or f"fold{names.get('fold')}"}` ({split_text}), seed {names["seed"]}.
{metrics.get("trainable_params", 0):,} of {metrics.get("total_params", 0):,} parameters trained
({metrics.get("trainable_percent", 0.0):.2f}%), best epoch {metrics.get("best_epoch")} of
{metrics.get("epochs_run")} ({metrics.get("selected_by")}).

Classes ({len(record["classes"])}, in output order): {classes}.

## Test metrics (n = {test.get("n")} clips)

| metric | value |
| --- | --- |
{rows}

One run: its test set only, one seed; compare methods over folds and seeds with the study's
tables.

## Use it

{_usage(record)}

## Provenance

- base checkpoint: {base_text}
- data: manifest sha256 `{data.get("manifest_sha256")}`, {data.get("rows")} clips cached
- code: audiopetl at git commit `{git.get("commit")}`{dirty}
- software: {versions}
- front end: `{dict(run.features.values)}`
"""
