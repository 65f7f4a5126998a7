"""A trained run as a folder people load without audiopetl, where the libraries can express it.

    config.json, model.safetensors   AST as a plain ASTForAudioClassification (full, linear,
    preprocessor_config.json          BitFit; LoRA and peft's mergeable tuners merged into the
                                      weights): AutoModelForAudioClassification, the
                                      audio-classification pipeline; ASTFeatureExtractor at the
                                      run's feature settings
    base/, adapter/                  peft methods: the frozen model the tuner started from, and
                                      peft's adapter with the head and trained LayerNorms
                                      (modules_to_save): PeftModel.from_pretrained(base, adapter)
    base/, model/                    everything else (adapters, prompts, prefixes, the other model
                                      kinds' classifiers): audiopetl.load_model(DIR) in one call
    audiopetl.json                   the run's record: settings, classes, how to load it
    README.md                        the model card: data, split, method, parameters, test
                                      metrics with n, provenance
    SHA256SUMS                       every file's sha256, checked by load_model

Before the folder is moved into place, what was written is loaded back the way a user would
(transformers, peft, load_model) and must give the run's logits on a probe batch.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audiopetl.core import compat
from audiopetl.core.atomic import atomic_dir, write_json, write_text
from audiopetl.core.errors import TrainingError
from audiopetl.core.settings import RunSettings
from audiopetl.inference import card
from audiopetl.inference.model import (
    BASE_FOLDER,
    EXPORT_FORMAT,
    EXPORT_RECORD,
    WEIGHTS_FOLDER,
    Trained,
    base_checkpoint,
    load_model,
    planned_steps,
    rebuild,
    recorded_classes,
)
from audiopetl.models.build import build_model
from audiopetl.training.determinism import seed_everything
from audiopetl.training.evaluate import read_run_info
from audiopetl.training.multilabel import DEFAULT_THRESHOLD
from audiopetl.training.run_folder import verify_run_folder, write_sums

# A reloaded export must give the run's logits to this (one float32 rounding of a merge).
EXPORT_TOLERANCE = 1e-4
# ASTFeatureExtractor computes Kaldi's fbank at these settings, whatever it is given.
AST_EXTRACTOR_FIXED = {
    "frame_length_ms": 25.0,
    "frame_shift_ms": 10.0,
    "preemphasis": 0.97,
    "low_freq": 20.0,
    "high_freq": 0.0,
}


@dataclass
class Exported:
    folder: Path
    transformers: bool  # a plain transformers model at the top of the folder
    peft_adapter: bool  # base/ + adapter/ for peft
    why_not: str | None  # why transformers' pipeline cannot serve it
    files: list[str] = field(default_factory=list)


def ast_feature_extractor_problem(values: Mapping[str, Any]) -> str | None:
    """Why ASTFeatureExtractor cannot compute these fbank settings, or None."""
    differ = [k for k, v in AST_EXTRACTOR_FIXED.items() if float(values[k]) != v]
    if differ:
        return (
            f"the run's fbank settings ({', '.join(f'{k} {values[k]}' for k in differ)}) are not "
            "ASTFeatureExtractor's fixed ones"
        )
    return None


def feature_extractor(run: RunSettings) -> Any | None:
    """transformers' feature extractor computing the run's front end, where one does."""
    values = run.features.values
    kind = str(values.get("front_end", "fbank"))
    if kind == "fbank" and ast_feature_extractor_problem(values) is None:
        from transformers import ASTFeatureExtractor

        return ASTFeatureExtractor(
            sampling_rate=int(values["sample_rate"]),
            num_mel_bins=int(values["num_mel_bins"]),
            max_length=int(values["target_length"]),
            mean=float(values["mean"]),
            std=float(values["std"]),
            do_normalize=True,
            return_attention_mask=False,
        )
    if kind == "waveform":
        from transformers import Wav2Vec2FeatureExtractor

        return Wav2Vec2FeatureExtractor(
            sampling_rate=int(values["sample_rate"]),
            do_normalize=bool(values["normalize"]),
            # With the mask, a padded clip is normalised over its own samples, as ours.
            return_attention_mask=True,
            padding_value=0.0,
        )
    return None


def _save_extractor(extractor: Any, folder: Path) -> None:
    try:
        extractor.save_pretrained(str(folder))
    except ImportError:
        # transformers 4.28's ASTFeatureExtractor needs torchaudio to exist, not to be saved.
        data = {k: v for k, v in vars(extractor).items() if not k.startswith("_")}
        data["feature_extractor_type"] = type(extractor).__name__
        write_json(folder / "preprocessor_config.json", data)


def plain_problem(run: RunSettings) -> str | None:
    """Why the run's model is not a transformers class whatever the strategy, or None."""
    if run.model.kind != "ast":
        return (
            f"audiopetl's {run.model.kind} classifier (the mean of the encoder's frames, then "
            "LayerNorm and Linear) is not a transformers class"
        )
    if run.model.pooling != "cls-dist":
        return (
            f"pooling {run.model.pooling!r} (the mean of every token) is not "
            "ASTForAudioClassification's"
        )
    return ast_feature_extractor_problem(run.features.values)


def merged_plain(model: nn.Module, base_keys: set[str], kind: str) -> tuple[Any, str | None]:
    """The trained model as a plain transformers model (a peft tuner merged into a copy of
    the weights), or None and why not."""
    candidate = model
    if hasattr(model, "merge_and_unload"):
        try:
            candidate = copy.deepcopy(model).merge_and_unload()
        except (AttributeError, NotImplementedError, ValueError, TypeError) as err:
            return None, f"peft cannot merge strategy {kind!r} into the weights ({err})"
    extra = sorted(set(candidate.state_dict()) - base_keys)
    missing = sorted(base_keys - set(candidate.state_dict()))
    if extra or missing:
        names = ", ".join((extra or missing)[:3])
        return None, f"strategy {kind!r} adds modules transformers' AST does not have ({names})"
    return candidate, None


def export_run(run_dir: Path, out: Path, overrides: Iterable[str] = ()) -> Exported:
    """Write the export of the finished run ``run_dir`` to ``out`` (whole or not at all)."""
    from audiopetl.study.study import recorded_run

    info = read_run_info(run_dir)  # first: a folder that is no run is told so
    verify_run_folder(run_dir)
    run = recorded_run(run_dir, info, None, overrides)
    classes = recorded_classes(run_dir, info)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    steps = planned_steps(run, metrics["train_clips"])
    source = base_checkpoint(run_dir, run, info.get("weights") or {})
    seed_everything(run.seed)
    base = build_model(run.model, run.features, len(classes), source)
    labelled(base, classes, run)
    model, _ = rebuild(run, len(classes), source, run_dir / WEIGHTS_FOLDER, steps)
    is_peft = (run_dir / WEIGHTS_FOLDER / "adapter").is_dir()
    why_not = plain_problem(run)
    plain = None
    if why_not is None:
        plain, why_not = merged_plain(model, set(base.state_dict()), run.strategy.kind)
    threshold = (metrics.get("test") or {}).get("threshold", DEFAULT_THRESHOLD)
    record = {
        "format": EXPORT_FORMAT,
        "run": info["run"],
        "config": info["config"],
        "classes": classes,
        "threshold": threshold,
        "total_steps": steps,
        "transformers": plain is not None,
        "peft_adapter": plain is not None and is_peft,
        "pipeline": why_not,
        "source": {
            "weights": info.get("weights"),
            "data": info.get("data"),
            "git": info.get("git"),
            "versions": info.get("versions"),
        },
    }
    extractor = feature_extractor(run)
    with atomic_dir(out) as tmp:
        if plain is not None:
            labelled(plain, classes, run)
            plain.save_pretrained(str(tmp), safe_serialization=True)
        if plain is None or is_peft:
            base.save_pretrained(str(tmp / BASE_FOLDER), safe_serialization=True)
        if plain is not None and is_peft:
            shutil.copytree(run_dir / WEIGHTS_FOLDER / "adapter", tmp / "adapter")
            name_base(tmp / "adapter" / "adapter_config.json")
        if plain is None:
            shutil.copytree(run_dir / WEIGHTS_FOLDER, tmp / WEIGHTS_FOLDER)
        if extractor is not None:
            _save_extractor(extractor, tmp)
        write_json(tmp / EXPORT_RECORD, record)
        write_text(tmp / "README.md", card.model_card(record, run, metrics, info))
        write_sums(tmp)
        check_export(tmp, model, run)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    return Exported(out, plain is not None, bool(record["peft_adapter"]), why_not, files)


def name_base(config_file: Path) -> None:
    """The adapter's base is the export's own base/ (AST's position embeddings are fitted to
    the run's clip length, so the hub checkpoint itself would not fit): named relative to the
    export folder, where the run folder's adapter named the training's source."""
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = BASE_FOLDER
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def labelled(model: nn.Module, classes: list[str], run: RunSettings) -> None:
    """The dataset's classes in a model's config (what transformers' pipeline names)."""
    config = getattr(model, "config", None)
    if config is None or run.model.kind != "ast":
        return
    config.id2label = dict(enumerate(classes))
    config.label2id = {name: i for i, name in enumerate(classes)}
    config.problem_type = (
        "multi_label_classification" if run.dataset.multilabel else "single_label_classification"
    )


def probe(run: RunSettings, n: int = 4) -> torch.Tensor:
    """A fixed batch of inputs of the run's shape, rounded as the cache stores features."""
    from audiopetl.features.frontends import input_shape

    frames, bins = input_shape(run.features.values)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, frames, bins, generator=generator).to(torch.float16).float()


def check_export(folder: Path, model: nn.Module, run: RunSettings) -> None:
    """Load what was written as its users would and compare with the run's model."""
    x = probe(run)
    with torch.no_grad():
        wanted = model(input_values=x).logits.float()
        checks: dict[str, nn.Module] = {"audiopetl.load_model": _loaded(folder)}
        if (folder / "config.json").is_file():
            from transformers import AutoModelForAudioClassification

            checks["AutoModelForAudioClassification"] = (
                AutoModelForAudioClassification.from_pretrained(str(folder)).eval()
            )
        if (folder / "adapter").is_dir():
            from transformers import AutoModelForAudioClassification

            base = AutoModelForAudioClassification.from_pretrained(str(folder / BASE_FOLDER))
            checks["PeftModel.from_pretrained"] = compat.load_peft_adapter(
                base, folder / "adapter"
            ).eval()
        for name, loaded in checks.items():
            got = loaded(input_values=x).logits.float()
            diff = float((got - wanted).abs().max())
            if not diff <= EXPORT_TOLERANCE:
                raise TrainingError(
                    f"{folder}: the export read back by {name} differs from the run's model "
                    f"(max logit difference {diff:.3g}); nothing was exported (a bug)"
                )


def _loaded(folder: Path) -> nn.Module:
    trained: Trained = load_model(folder)
    return trained.model.cpu()
