"""The typed, frozen settings every stage receives.

The configuration is read, merged and validated once (:mod:`audiopetl.core.config`), then
turned into these objects at the edge (the CLI and the workflow's rules, through
:mod:`audiopetl.study`). From there on the stages see only them: a training run gets one
:class:`RunSettings` (its dataset, features, model, strategy and training settings, its fold
and seed, its files) and never the configuration dict, so what a run depends on is written in
one place: :meth:`RunSettings.identity` (its resume identity) and :meth:`RunSettings.params`
(the workflow's rerun trigger) are computed from the same object.

Settings of one kind whose keys vary with a kind (a strategy's own keys, a front end's values,
a model's architecture block) are kept as a :class:`Frozen` mapping, validated by the kind's
schema; everything the code reads by name is a typed field. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from audiopetl.core.frozen import Frozen, thaw
from audiopetl.core.tracking import TrackingSettings


def _typed(cls: type, block: Mapping[str, Any]) -> Any:
    """``cls`` from the keys of ``block`` it has fields for (nested dataclasses included)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in block:
            continue
        value = block[f.name]
        nested = _NESTED.get((cls.__name__, f.name))
        if nested is not None and isinstance(value, Mapping):
            value = _typed(nested, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


# -- what counts as data, how caches are written ------------------------------------------------
@dataclass(frozen=True)
class ClipSettings:
    """The `data` block: what counts as a usable clip, and what happens to the others."""

    min_frames: int
    skip_bad: bool
    # The least each run's sets may hold (audiopetl.data.splits.sizes); keys not given keep
    # their defaults there.
    min_split_clips: Frozen = field(default_factory=lambda: Frozen({}))

    @classmethod
    def of(cls, block: Mapping[str, Any]) -> ClipSettings:
        clips = _typed(cls, {k: v for k, v in block.items() if k != "min_split_clips"})
        return dataclasses.replace(
            clips, min_split_clips=Frozen(block.get("min_split_clips") or {})
        )


@dataclass(frozen=True)
class CacheSettings:
    """The `cache` block: how a feature cache is written (not what it holds)."""

    batch_size: int
    row_group_size: int
    compression_level: int
    workers: int

    @classmethod
    def of(cls, block: Mapping[str, Any]) -> CacheSettings:
        return _typed(cls, block)


# -- a dataset and the features of it a model reads ---------------------------------------------
# A dataset's task and split scheme when its configuration names none.
DEFAULT_TASK = "multiclass"
DEFAULT_SPLIT: dict[str, Any] = {"scheme": "folds"}


@dataclass(frozen=True)
class DatasetSettings:
    """One dataset: its kind, the kind's own settings, its task and split scheme, and what
    names its raw folder."""

    name: str
    kind: str
    options: Frozen  # the kind's own block (datasets.NAME.KIND)
    features: Frozen  # its overrides of the global feature block
    identity: Frozen  # the settings that decide its raw folder's files
    data_id: str  # a hash of the identity: the raw folder's name
    folds: int | None  # the folds it declares; None when they follow from its files
    task: str = DEFAULT_TASK  # multiclass | multilabel
    split: Frozen = field(default_factory=lambda: Frozen(DEFAULT_SPLIT))  # scheme and options

    @property
    def scheme(self) -> str:
        return str(self.split["scheme"])

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"


@dataclass(frozen=True)
class FeatureSettings:
    """What a feature cache holds: a front end and every value of its settings (the cache
    records ``values`` and training refuses a cache that holds other ones)."""

    dataset: str
    front_end: str  # fbank | whisper | waveform | clap
    values: Frozen
    feature_id: str  # a hash of the data, the clips kept and the values: the cache's name

    def record(self) -> dict[str, Any]:
        return thaw(self.values)

    @classmethod
    def of(cls, dataset: str, values: Mapping[str, Any], feature_id: str) -> FeatureSettings:
        return cls(dataset, str(values.get("front_end", "fbank")), Frozen(values), feature_id)


# -- a model and a strategy ---------------------------------------------------------------------
# A model without `kind` is an AST.
DEFAULT_MODEL_KIND = "ast"


@dataclass(frozen=True)
class PretrainSettings:
    """A model's source-task pretraining (models.NAME.pretrain)."""

    dataset: str
    strategy: str
    epochs: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class ModelSettings:
    """One model: its kind and how it is built. ``block`` is the validated configuration block
    as written, for records, rerun triggers and resume identities."""

    name: str
    kind: str
    pretrained: str | None
    revision: str | None
    attn_implementation: str
    pooling: str
    zero_position_embeddings: bool
    architecture: Frozen
    front_end: Frozen
    pretrain: PretrainSettings | None
    block: Frozen = field(repr=False)

    @classmethod
    def of(cls, name: str, block: Mapping[str, Any]) -> ModelSettings:
        """The settings of a validated model block (models.NAME), defaults filled in."""
        pretrain = block.get("pretrain")
        return cls(
            name=name,
            kind=block.get("kind") or DEFAULT_MODEL_KIND,
            pretrained=block.get("pretrained"),
            revision=block.get("revision"),
            attn_implementation=block["attn_implementation"],
            pooling=block.get("pooling", "cls-dist"),
            zero_position_embeddings=bool(block.get("zero_position_embeddings", False)),
            architecture=Frozen(block.get("architecture") or {}),
            front_end=Frozen(block.get("front_end") or {}),
            pretrain=None
            if not pretrain
            else PretrainSettings(
                dataset=pretrain["dataset"],
                strategy=pretrain["strategy"],
                epochs=pretrain.get("epochs"),
                seed=int(pretrain.get("seed", 0)),
            ),
            block=Frozen(block),
        )

    def record(self) -> dict[str, Any]:
        return thaw(self.block)

    def without_pretrain(self) -> ModelSettings:
        """The model as its own source task trains it: from its configured weights."""
        block = {k: v for k, v in self.block.items() if k != "pretrain"}
        return dataclasses.replace(self, pretrain=None, block=Frozen(block))


@dataclass(frozen=True)
class StrategySettings:
    """One strategy: its kind, what every kind shares, and its kind's own keys (``options``,
    checked by resources/strategies/KIND.yaml; each strategy class types them)."""

    name: str
    kind: str
    lr: float
    layernorms: tuple[str, ...] | None
    frozen_eval: bool | None
    options: Frozen
    block: Frozen = field(repr=False)

    COMMON = ("kind", "lr", "layernorms", "frozen_eval", "training")

    @classmethod
    def of(cls, name: str, block: Mapping[str, Any]) -> StrategySettings:
        """The settings of a validated strategy block (strategies.NAME)."""
        layernorms = block.get("layernorms")
        return cls(
            name=name,
            kind=block["kind"],
            lr=float(block["lr"]),
            layernorms=None if layernorms is None else tuple(layernorms),
            frozen_eval=block.get("frozen_eval"),
            options=Frozen({k: v for k, v in block.items() if k not in cls.COMMON}),
            block=Frozen(block),
        )

    def record(self) -> dict[str, Any]:
        return thaw(self.block)


# -- training -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpecAugmentSettings:
    freq_mask: int
    time_mask: int


@dataclass(frozen=True)
class TrainingSettings:
    """The `training` block of one run (the global block with its strategy's own overrides)."""

    split: str
    epochs: int
    batch_size: int
    eval_batch_size: int
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    warmup_ratio: float
    grad_clip: float | None
    label_smoothing: float
    grad_accum_steps: int
    precision: str
    tf32: bool
    data_on_device: str | bool
    fused_optimizer: str | bool
    compile: bool
    log_every_steps: int
    save_state_every_s: float
    specaugment: SpecAugmentSettings
    mixup_alpha: float
    select_metric: str
    test_epoch: str
    early_stopping_patience: int | None
    max_trainable_fraction: float
    threads: int
    deterministic: bool
    device: str
    min_accuracy_over_chance: float | None
    # Added later, with defaults: see LATER.
    class_weights: str = "none"  # none | balanced
    sampler: str = "uniform"  # uniform | balanced
    loss: str = "cross_entropy"  # cross_entropy | focal
    focal_gamma: float = 2.0
    # Where a run's features live: memory, or streamed from disk (bit-identical results).
    stream: str | bool = "auto"  # auto | true | false
    feature_memory_gb: float = 8.0
    # Activations recomputed in the backward pass instead of kept (the same gradients).
    gradient_checkpointing: bool = False

    # Settings added after the first runs were made, with the value every earlier run had:
    # at that value they are left out of what a run depends on (its rerun trigger and resume
    # identity), so a study made before they existed reruns nothing.
    LATER: ClassVar[dict[str, Any]] = {
        "class_weights": "none",
        "sampler": "uniform",
        "loss": "cross_entropy",
        "focal_gamma": 2.0,
        "stream": "auto",
        "feature_memory_gb": 8.0,
        "gradient_checkpointing": False,
    }

    # Settings that change how often a run reads its losses from the device or saves its
    # resume state, whether it reads its features from memory or streams them from disk, or
    # whether it keeps its activations for the backward pass or recomputes them (gradient
    # checkpointing; both bit-identical, see audiopetl.models.checkpointing), never what it
    # computes: left out of what reruns a job and of what a resume must share, so changing
    # them costs nothing.
    BOOKKEEPING = (
        "log_every_steps",
        "save_state_every_s",
        "stream",
        "feature_memory_gb",
        "gradient_checkpointing",
    )
    # Settings that decide where and how fast a run is scored, not what it computes: a GPU run
    # may be scored again on a CPU (`evaluate --set training.device=cpu`).
    EXECUTION = (
        "device",
        "threads",
        "eval_batch_size",
        "deterministic",
        "tf32",
        "data_on_device",
        "fused_optimizer",
        "compile",
        *BOOKKEEPING,
    )
    # Settings that do not change what a pretraining computes: it has no validation split (no
    # model selection, no early stopping), and the guards only judge its result.
    NOT_IN_PRETRAINING = (
        "select_metric",
        "early_stopping_patience",
        "min_accuracy_over_chance",
        "max_trainable_fraction",
    )

    @classmethod
    def of(cls, block: Mapping[str, Any]) -> TrainingSettings:
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in block and f.name not in cls.LATER
        ]
        if missing:
            raise KeyError(f"training settings lack {missing}")
        return _typed(cls, block)

    def record(self) -> dict[str, Any]:
        return thaw(self)

    def computing(self) -> dict[str, Any]:
        """Every setting but the bookkeeping ones (and the later ones at their first value):
        what reruns a job."""
        return {
            k: v
            for k, v in self.record().items()
            if k not in self.BOOKKEEPING and not (k in self.LATER and v == self.LATER[k])
        }

    def replace(self, **changes: Any) -> TrainingSettings:
        if "specaugment" in changes and isinstance(changes["specaugment"], Mapping):
            changes["specaugment"] = SpecAugmentSettings(**changes["specaugment"])
        if "betas" in changes:
            changes["betas"] = tuple(changes["betas"])
        return dataclasses.replace(self, **changes)


_NESTED: dict[tuple[str, str], type] = {("TrainingSettings", "specaugment"): SpecAugmentSettings}


# -- one run ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSettings:
    """Everything one training run depends on, resolved from the configuration once.

    ``config`` is the resolved configuration as a whole, kept only for the run's record
    (run.json) and never read by the run.
    """

    dataset: DatasetSettings
    features: FeatureSettings
    model: ModelSettings
    strategy: StrategySettings
    training: TrainingSettings
    split: str  # which split of the dataset: fold3 (its test fold) or official
    seed: int
    out: Path  # the run folder
    cache: Path  # the feature cache it reads
    manifest: Path  # the manifest that cache was built from
    pretrained: str | None  # where its starting weights come from (None: random)
    config: Frozen = field(repr=False)
    # The least its sets may hold (data.min_split_clips): a guard, not part of its identity.
    min_split_clips: Frozen = field(default_factory=lambda: Frozen({}))
    # A probe's embedding cache (audiopetl.study.embeddings); None for every other strategy.
    embeddings: Path | None = None
    # The experiment trackers it reports to: a view of the run, never part of its identity.
    tracking: TrackingSettings | None = field(default=None, compare=False)

    @property
    def tracking_dir(self) -> Path:
        # The trackers' files while the run trains (beside the run folder, like the resume
        # state); moved into the finished folder as tracking/, which SHA256SUMS leaves out.
        return self.out.parent / f".{self.out.name}.tracking"

    @property
    def resume_dir(self) -> Path:
        # Beside the run folder, not inside it: Snakemake deletes a job's declared outputs
        # before it reruns the job, and the resume state must survive that.
        return self.out.parent / f".{self.out.name}.resume"

    @property
    def fold(self) -> int | None:
        """The test fold of a run of rotating folds; None for an official split."""
        return int(self.split[4:]) if self.split.startswith("fold") else None

    @property
    def names(self) -> dict[str, Any]:
        """What names the run in its records: a run of folds by its test fold (as ever), one
        of another split by that split."""
        names: dict[str, Any] = {
            "dataset": self.dataset.name,
            "model": self.model.name,
            "strategy": self.strategy.name,
            "fold": self.fold,
            "seed": self.seed,
        }
        if self.fold is None:
            names["split"] = self.split
        return names

    def identity(self) -> dict[str, Any]:
        """The settings an interrupted run and its resumption must share (with the data and
        the starting weights, checked by the loop)."""
        return {
            "spec": [
                self.dataset.name,
                self.model.name,
                self.strategy.name,
                self.split if self.fold is None else self.fold,
                self.seed,
            ],
            "training": self.training.computing(),
            "features": self.features.record(),
            "model": self.model.record(),
            "strategy": self.strategy.record(),
        }

    def params(self) -> dict[str, Any]:
        """What reruns the run's job in the workflow when it changes (the rule's params)."""
        return self.params_of(self.model, self.strategy, self.training)

    @staticmethod
    def params_of(
        model: ModelSettings, strategy: StrategySettings, training: TrainingSettings
    ) -> dict[str, Any]:
        """Only the settings a run depends on that can differ between a study's runs of one
        dataset: changing one strategy reruns only its jobs. (Its dataset's and features'
        settings reach it through its input, the cache, whose name carries their hash.)"""
        return {
            "strategy": strategy.record(),
            "training": training.computing(),
            "model": model.record(),
        }

    def computes(self) -> dict[str, Any]:
        """Everything that decides what the run computes (not where or how fast it runs): two
        configurations that agree on this may score each other's runs."""
        training = self.training.record()
        return {
            "dataset": thaw(self.dataset.identity),
            "features": self.features.record(),
            "model": self.model.record(),
            "strategy": self.strategy.record(),
            "training": {k: v for k, v in training.items() if k not in TrainingSettings.EXECUTION},
        }

    def with_training(self, **changes: Any) -> RunSettings:
        return dataclasses.replace(self, training=self.training.replace(**changes))
