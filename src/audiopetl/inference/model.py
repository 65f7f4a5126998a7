"""A trained model ready to score audio: rebuilt from a finished run folder or from an export.

A run folder is verified first (its SHA256SUMS), then rebuilt from its own record: the settings
in run.json, the base checkpoint it started from (checked against the sha256 run.json recorded,
so another checkpoint can never stand in for it), the strategy's trained weights. The front
end is the run's own (its feature settings in run.json), so a prediction cannot use other
features than the training did. An export (audiopetl.inference.export) carries the same record
and its own copy of the base weights, so it loads anywhere: :func:`load_model`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audiopetl.core.checksums import file_sha256
from audiopetl.core.errors import DataError, TrainingError
from audiopetl.core.settings import RunSettings
from audiopetl.features.frontends import make_extractor
from audiopetl.models.build import build_model
from audiopetl.models.strategies import Strategy, get_strategy
from audiopetl.training.determinism import seed_everything, select_device
from audiopetl.training.evaluate import precision_of, read_run_info
from audiopetl.training.multilabel import DEFAULT_THRESHOLD
from audiopetl.training.run_folder import verify_run_folder

# What an export records about itself (beside the run's config): audiopetl.inference.export.
EXPORT_RECORD = "audiopetl.json"
EXPORT_FORMAT = 1
BASE_FOLDER = "base"  # the frozen model a strategy started from, in transformers' format
WEIGHTS_FOLDER = "model"  # the strategy's trained weights, as in a run folder

_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Trained:
    """A model, its front end and its classes: what turns waveforms into class scores."""

    model: nn.Module
    run: RunSettings
    classes: list[str]
    threshold: float  # a multi-label task's decision threshold (the run's)
    device: torch.device
    precision: str | None  # what the run trained in, where this device has it
    folder: Path  # the run folder or export it came from
    record: dict[str, Any] = field(repr=False)  # run.json, or the export's record

    @property
    def multilabel(self) -> bool:
        return self.run.dataset.multilabel

    @functools.cached_property
    def extractor(self) -> Any:
        return make_extractor(self.run.features.values)

    @property
    def sample_rate(self) -> int:
        return int(self.extractor.sample_rate)

    @property
    def window_samples(self) -> int:
        """The training length: samples that fill the model's input."""
        return int(self.extractor.max_samples)

    def features(self, waves: Sequence[np.ndarray]) -> torch.Tensor:
        """The model's input for ``waves``, rounded to float16 as the feature cache stores it:
        the values training and testing saw."""
        feats, _ = self.extractor(list(waves))
        return feats.to(torch.float16).float()

    @torch.no_grad()
    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of features, in batches of the run's eval_batch_size."""
        size = self.run.training.eval_batch_size
        out = []
        for chunk in feats.split(size):
            x = chunk.to(self.device)
            if self.device.type == "cuda" and self.precision in _AMP:
                with torch.autocast(device_type="cuda", dtype=_AMP[self.precision]):
                    out.append(self.model(input_values=x).logits.float())
            else:
                out.append(self.model(input_values=x).logits.float())
        return torch.cat(out).cpu()

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        """Per-class probabilities: a sigmoid per class (multi-label), else a softmax."""
        probs = torch.sigmoid(logits) if self.multilabel else logits.softmax(dim=-1)
        return probs.numpy().astype(np.float32)

    def predict_waves(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Scores of clips no longer than the training length (longer ones are cut there)."""
        return self.scores(self.logits(self.features(waves)))


# -- rebuilding ---------------------------------------------------------------------------------


def planned_steps(run: RunSettings, train_clips: int) -> int:
    """The optimiser steps the run planned (AdaLoRA's rank schedule is set over them)."""
    t = run.training
    batches = math.ceil(train_clips / t.batch_size)
    return math.ceil(batches / t.grad_accum_steps) * t.epochs


def rebuild(
    run: RunSettings, n_classes: int, base: str | None, weights: Path, total_steps: int
) -> tuple[nn.Module, Strategy]:
    """The run's model: its base (seeded, as training built it), the strategy applied, the
    trained weights loaded, in eval mode."""
    seed_everything(run.seed)
    model = build_model(run.model, run.features, n_classes, base)
    strategy = get_strategy(run.strategy)
    strategy.total_steps = total_steps
    model = strategy.apply(model)
    strategy.load(model, weights)
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise DataError(f"{weights}: weight {name} holds NaN or Inf; rerun the run")
    model.eval()
    return model, strategy


def recorded_classes(run_dir: Path, info: Mapping[str, Any]) -> list[str]:
    classes = (info.get("run") or {}).get("classes")
    if not classes:
        raise DataError(
            f"{run_dir / 'run.json'}: no class list (written before audiopetl recorded one); "
            "rerun the run to predict with it"
        )
    return [str(c) for c in classes]


def base_checkpoint(run_dir: Path, run: RunSettings, weights: Mapping[str, Any]) -> str | None:
    """Where the base weights the run started from are now: a hub id as recorded, or the
    recorded folder (relative paths are the project's: tried from here and from every folder
    above the run), whose files must have the sha256 run.json recorded."""
    kind = weights.get("kind", "random")
    if kind == "random":
        return None
    if kind == "hub":
        return run.pretrained
    recorded = Path(str(weights["path"]))
    places = [recorded]
    if not recorded.is_absolute():
        places += [parent / recorded for parent in run_dir.resolve().parents]
    folder = next((p for p in places if p.is_dir()), None)
    if folder is None:
        raise DataError(
            f"{run_dir}: the base checkpoint it started from ({recorded}) is neither here nor "
            "above the run folder; run from the project folder, or export the run "
            "(audiopetl export) where its base is"
        )
    changed = [
        name
        for name, digest in (weights.get("files") or {}).items()
        if not (folder / name).is_file() or file_sha256(folder / name) != digest
    ]
    if changed:
        raise DataError(
            f"{folder}: not the base checkpoint the run {run_dir} started from "
            f"({', '.join(changed)} differ from the sha256 in its run.json): restore it or rerun "
            "the run"
        )
    return str(folder)


def load_run(run_dir: Path | str, overrides: Iterable[str] = ()) -> Trained:
    """A finished run folder as a :class:`Trained`, verified and rebuilt from its own record;
    ``overrides`` may change only where it runs (training.device, threads, eval_batch_size)."""
    from audiopetl.study.study import recorded_run

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)  # first: a folder that is no run is told so
    verify_run_folder(run_dir)
    run = recorded_run(run_dir, info, None, overrides)
    classes = recorded_classes(run_dir, info)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    base = base_checkpoint(run_dir, run, info.get("weights") or {})
    steps = planned_steps(run, metrics["train_clips"])
    model, _ = rebuild(run, len(classes), base, run_dir / WEIGHTS_FOLDER, steps)
    threshold = (metrics.get("test") or {}).get("threshold", DEFAULT_THRESHOLD)
    return _placed(model, run, classes, threshold, run_dir, info)


def _placed(
    model: nn.Module,
    run: RunSettings,
    classes: list[str],
    threshold: float,
    folder: Path,
    record: dict[str, Any],
) -> Trained:
    device = select_device(run.training.device)
    torch.set_num_threads(run.training.threads)
    return Trained(
        model=model.to(device),
        run=run,
        classes=classes,
        threshold=float(threshold),
        device=device,
        precision=precision_of(record, run),
        folder=folder,
        record=record,
    )


def load_model(folder: Path | str, overrides: Iterable[str] = ()) -> Trained:
    """A model trained with audiopetl, in one call: an export (``audiopetl export``) or a run
    folder. ``trained.predict_waves([wave])`` scores clips at ``trained.sample_rate``;
    ``audiopetl.inference.predict`` scores files of any length in windows."""
    from audiopetl.study.study import recorded_run

    folder = Path(folder)
    record_file = folder / EXPORT_RECORD
    if not record_file.is_file():
        if (folder / "run.json").is_file():
            return load_run(folder, overrides)
        raise DataError(
            f"{folder}: neither an audiopetl export ({EXPORT_RECORD}) nor a run folder (run.json)"
        )
    verify_run_folder(folder)
    record = json.loads(record_file.read_text())
    if record.get("format") != EXPORT_FORMAT:
        raise DataError(
            f"{record_file}: export format {record.get('format')!r}, this audiopetl reads "
            f"{EXPORT_FORMAT}; export the run again"
        )
    run = recorded_run(folder, record, None, overrides)
    classes = [str(c) for c in record["classes"]]
    if record.get("transformers"):
        model = _plain(folder, run)
    else:
        model, _ = rebuild(
            run, len(classes), str(folder / BASE_FOLDER), folder / WEIGHTS_FOLDER,
            int(record["total_steps"]),
        )  # fmt: skip
    return _placed(model, run, classes, record["threshold"], folder, record)


def _plain(folder: Path, run: RunSettings) -> nn.Module:
    """An export that is a plain transformers model: read as transformers reads it."""
    from audiopetl.core import compat
    from audiopetl.models.backbones import KIND_ATTRIBUTE

    if run.model.kind != "ast":
        raise TrainingError(f"{folder}: a plain transformers export must be an AST model")
    model = compat.ast_from_pretrained(str(folder), run.model.attn_implementation)
    setattr(model, KIND_ATTRIBUTE, run.model.kind)
    model.eval()
    return model
