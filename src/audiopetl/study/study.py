"""The study: a validated configuration resolved into the typed settings each job receives.

:class:`Study` is what the edge (the CLI's commands, the workflow's rules, the benchmarks)
holds. It answers, for names of the configuration, the frozen settings of
:mod:`audiopetl.core.settings` and the paths of :mod:`audiopetl.core.paths`: a dataset and the
id of its raw folder, the features a model reads of it and the id of their cache, a model, a
strategy, the training settings of a run, and one :class:`RunSettings` per run. The stages
below receive those objects, never the configuration.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from audiopetl.core import sweeps
from audiopetl.core.checksums import stable_hash
from audiopetl.core.config import DEFAULT_CONFIG, apply_overrides, closest, load_config
from audiopetl.core.errors import ConfigError, TrainingError
from audiopetl.core.paths import PRETRAINED, Layout, split_name
from audiopetl.core.settings import (
    DEFAULT_SPLIT,
    DEFAULT_TASK,
    CacheSettings,
    ClipSettings,
    DatasetSettings,
    FeatureSettings,
    Frozen,
    ModelSettings,
    PretrainSettings,
    RunSettings,
    StrategySettings,
    TrainingSettings,
    thaw,
)
from audiopetl.core.tracking import TrackingSettings
from audiopetl.data.datasets import get_kind
from audiopetl.data.splits import get_scheme
from audiopetl.features import FEATURE_VERSION
from audiopetl.models.backbones import get_backbone
from audiopetl.study import embeddings
from audiopetl.study.checks import CHECKS

# `Study.run(pretrained=RESOLVE)`: where the model's weights come from by its settings.
RESOLVE = object()


# The `data` settings that decide which clips a cache holds.
CACHE_KEYS = ("min_frames", "skip_bad")


def load_study(
    config_file: Path | str = DEFAULT_CONFIG,
    experiment: str | None = None,
    overrides: Iterable[str] = (),
    *,
    training: bool = True,
) -> Study:
    """Load, merge and validate the configuration (every kind-aware check included)."""
    return Study(load_config(config_file, experiment, overrides, training=training, checks=CHECKS))


def validated(config: Mapping[str, Any], overrides: Iterable[str], source: str) -> Study:
    """A resolved configuration (a run's record) with ``--set`` overrides, validated."""
    return Study(apply_overrides(config, overrides, source, checks=CHECKS))


def _named(section: Mapping[str, Any], name: str, key: str, noun: str) -> Mapping[str, Any]:
    if name not in section:
        raise ConfigError(
            f"{key}.{name}: no {noun} named {name!r}{closest(name, section)} "
            f"(defined: {', '.join(section)})"
        )
    return section[name]


class Study:
    """A validated configuration and what it resolves to; the results are cached, so asking
    for the same settings twice costs nothing (the workflow asks once per job)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config: dict[str, Any] = dict(config)
        self.layout = Layout.of(self.config)
        # functools.cache on methods would keep every Study alive; a cache per instance.
        self._cache: dict[tuple[Any, ...], Any] = {}

    def _memo(self, key: tuple[Any, ...], make: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def name(self) -> str:
        return self.layout.experiment

    @property
    def clips(self) -> ClipSettings:
        return ClipSettings.of(self.config["data"])

    @property
    def cache(self) -> CacheSettings:
        return CacheSettings.of(self.config["cache"])

    # -- datasets and features ----------------------------------------------------------------
    def dataset(self, name: str) -> DatasetSettings:
        return self._memo(("dataset", name), lambda: self._dataset(name))

    def _dataset(self, name: str) -> DatasetSettings:
        block = _named(self.config["datasets"], name, "datasets", "dataset")
        kind = get_kind(block["kind"])
        options = block[block["kind"]]
        task = block.get("task", DEFAULT_TASK)
        split = {**DEFAULT_SPLIT, **(block.get("split") or {})}
        if split["scheme"] == "official":
            split = {"validation_share": 0.1, "validation_seed": 0, **split}
        identity = kind.identity(options)
        # The task and the split scheme decide the manifest too; at their defaults they are
        # left out, so the folders of datasets defined before they existed keep their names.
        if task != DEFAULT_TASK:
            identity["task"] = task
        if split != DEFAULT_SPLIT:
            identity["split"] = split
        named = dict(identity)
        if kind.skip_bad_decides_files:
            named["skip_bad"] = self.config["data"]["skip_bad"]
        return DatasetSettings(
            name=name,
            kind=block["kind"],
            options=Frozen(options),
            features=Frozen(block.get("features") or {}),
            identity=Frozen(identity),
            data_id=stable_hash(named, 10),
            folds=kind.folds(options),
            task=task,
            split=Frozen(split),
        )

    def features(self, dataset: str, model: str | None = None) -> FeatureSettings:
        """What a dataset's cache holds for ``model``: the front end of the model's kind, with
        the dataset's clip length. AST's fbank (the global feature block with the dataset's
        own overrides) when ``model`` is None or an AST; its settings keep the names of their
        caches."""
        return self._memo(("features", dataset, model), lambda: self._features(dataset, model))

    def _features(self, dataset: str, model: str | None) -> FeatureSettings:
        data = self.dataset(dataset)
        values = {**self.config["features"], **thaw(data.features)}
        if model is not None:
            settings = self.model(model)
            backbone = get_backbone(settings.kind)
            if backbone.front_end != "fbank":
                values = backbone.front_end_settings(values, settings)
        fid = stable_hash(
            {
                "version": FEATURE_VERSION,
                "data": data.data_id,
                # Which clips make it into the cache (not the guards on the splits' sizes).
                "clips": {k: v for k, v in self.config["data"].items() if k in CACHE_KEYS},
                **values,
            },
            10,
        )
        return FeatureSettings.of(dataset, values, fid)

    def feature_caches(self, dataset: str) -> dict[str, str | None]:
        """Every cache a configuration can ask of a dataset: its id -> a model that reads it
        (None for AST's fbank). The workflow's cache rule knows a cache by its id alone."""
        caches: dict[str, str | None] = {self.features(dataset).feature_id: None}
        for model in self.config["models"]:
            caches.setdefault(self.features(dataset, model).feature_id, model)
        return caches

    def model_for_feature_id(self, dataset: str, fid: str) -> str | None:
        caches = self.feature_caches(dataset)
        if fid not in caches:
            raise ConfigError(
                f"no model of this configuration reads a cache {fid!r} of dataset {dataset!r} "
                f"(known: {', '.join(caches)})"
            )
        return caches[fid]

    # -- models, strategies, training -------------------------------------------------------------
    def model(self, name: str) -> ModelSettings:
        return self._memo(("model", name), lambda: self._model(name))

    def _model(self, name: str) -> ModelSettings:
        return ModelSettings.of(name, _named(self.config["models"], name, "models", "model"))

    def strategy(self, name: str) -> StrategySettings:
        return self._memo(("strategy", name), lambda: self._strategy(name))

    def _strategy(self, name: str) -> StrategySettings:
        block = _named(self.config["strategies"], name, "strategies", "strategy")
        return StrategySettings.of(name, block)

    def training(self, strategy: str) -> TrainingSettings:
        """The global training block with the strategy's own overrides applied."""
        return self._memo(("training", strategy), lambda: self._training(strategy))

    def _training(self, strategy: str) -> TrainingSettings:
        merged = copy.deepcopy(self.config["training"])
        for key, value in (self.strategy(strategy).block.get("training") or {}).items():
            merged[key] = thaw(value)
        return TrainingSettings.of(merged)

    def pretraining(self, model: str) -> TrainingSettings:
        """The training settings of a model's source-task pretraining: its strategy's, trained
        on all but one fold (train_test) for `pretrain.epochs` when set."""
        pretrain = self._pretrain_of(model)
        settings = self.training(pretrain.strategy).replace(split="train_test")
        if pretrain.epochs is not None:
            settings = settings.replace(epochs=pretrain.epochs)
        return settings

    def _pretrain_of(self, model: str) -> PretrainSettings:
        pretrain = self.model(model).pretrain
        if pretrain is None:
            raise TrainingError(f"models.{model}: has no `pretrain` block")
        return pretrain

    # -- runs ---------------------------------------------------------------------------------
    def weights_source(self, model: str) -> str | None:
        """Where a model's weights come from: its own pretraining's output when it has a
        ``pretrain`` block, else the configured ``pretrained`` (a hub id replaced by its
        verified local mirror)."""
        if self.model(model).pretrain is not None:
            folder = self.layout.pretrain_dir(model) / PRETRAINED
            if not folder.is_dir():
                raise TrainingError(
                    f"models.{model}.pretrain: {folder} does not exist; run "
                    f"`audiopetl pretrain --model {model}` first"
                )
            return str(folder)
        from audiopetl.models.hub import resolve_pretrained

        return resolve_pretrained(self.model(model), self.layout.mirror(model))

    def run(
        self,
        dataset: str,
        model: str,
        strategy: str,
        split: int | str,
        seed: int,
        out: Path | None = None,
        pretrained: Any = RESOLVE,
    ) -> RunSettings:
        """One run's settings. ``split``: a name of :meth:`split_names` (fold3, official), or
        a test fold's number. ``pretrained``: where its weights come from (a folder or a hub
        id; None: at random); by default what :meth:`weights_source` says."""
        split = split_name(split)
        features = self.features(dataset, model)
        probe = embeddings.trains_on_embeddings(self.strategy(strategy))
        return RunSettings(
            dataset=self.dataset(dataset),
            features=features,
            model=self.model(model),
            strategy=self.strategy(strategy),
            training=self.training(strategy),
            split=split,
            seed=int(seed),
            out=self.run_dir(dataset, model, strategy, split, seed) if out is None else out,
            cache=self.layout.cache(dataset, features.feature_id),
            manifest=self.manifest_path(dataset),
            pretrained=self.weights_source(model) if pretrained is RESOLVE else pretrained,
            config=Frozen(self.config),
            min_split_clips=self.clips.min_split_clips,
            embeddings=embeddings.path(self, dataset, model) if probe else None,
            tracking=TrackingSettings.of(
                self.config.get("tracking"), self.layout, dataset, model, strategy, split, seed
            ),
        )

    def pretrain_run(self, model: str, out: Path | None = None) -> RunSettings:
        """The run of a model's source-task pretraining: its pretrain strategy, on all but one
        fold of its source dataset, from the model's configured weights."""
        pretrain = self._pretrain_of(model)
        if self.strategy(pretrain.strategy).kind != "full":
            raise TrainingError(
                f"models.{model}.pretrain.strategy: {pretrain.strategy!r} must be of kind full "
                "(a complete model is saved)"
            )
        source = self.model(model).without_pretrain()
        config = copy.deepcopy(self.config)
        config["models"][model] = source.record()
        features = self.features(pretrain.dataset, model)
        names = (pretrain.dataset, model, pretrain.strategy, "pretrain", pretrain.seed)
        from audiopetl.models.hub import resolve_pretrained

        return RunSettings(
            dataset=self.dataset(pretrain.dataset),
            features=features,
            model=source,
            strategy=self.strategy(pretrain.strategy),
            training=self.pretraining(model),
            split=self.split_names(pretrain.dataset, [1])[0],
            seed=pretrain.seed,
            out=self.layout.pretrain_dir(model) if out is None else out,
            cache=self.layout.cache(pretrain.dataset, features.feature_id),
            manifest=self.manifest_path(pretrain.dataset),
            pretrained=resolve_pretrained(source, self.layout.mirror(model)),
            config=Frozen(config),
            min_split_clips=self.clips.min_split_clips,
            tracking=TrackingSettings.of(config.get("tracking"), self.layout, *names),
        )

    def run_params(self, model: str, strategy: str) -> dict[str, Any]:
        """What reruns a training job (its rule's params): RunSettings.params, whose settings
        objects these are."""
        return RunSettings.params_of(
            self.model(model), self.strategy(strategy), self.training(strategy)
        )

    def pretrain_params(self, model: str) -> dict[str, Any]:
        """What reruns a pretraining job: the model as configured, its pretrain strategy and
        the training settings that change what a pretraining computes."""
        pretrain = self._pretrain_of(model)
        training = {
            k: v
            for k, v in self.pretraining(model).computing().items()
            if k not in TrainingSettings.NOT_IN_PRETRAINING
        }
        return {
            "model": self.model(model).record(),
            "strategy": self.strategy(pretrain.strategy).record(),
            "training": training,
        }

    # -- paths --------------------------------------------------------------------------------
    def raw_dir(self, dataset: str) -> Path:
        return self.layout.raw_dir(dataset, self.dataset(dataset).data_id)

    def manifest_path(self, dataset: str) -> Path:
        return self.layout.manifest(dataset, self.dataset(dataset).data_id)

    def cache_path(self, dataset: str, model: str | None = None) -> Path:
        """The cache of the front end ``model`` reads (AST's fbank when None)."""
        return self.layout.cache(dataset, self.features(dataset, model).feature_id)

    def data_report_path(self, dataset: str) -> Path:
        return self.layout.data_report(dataset, self.features(dataset).feature_id)

    def run_dir(
        self, dataset: str, model: str, strategy: str, split: int | str, seed: int | str
    ) -> Path:
        return self.layout.run_dir(dataset, model, strategy, split, seed)

    def split_check_params(self, dataset: str) -> dict[str, Any]:
        """What decides the `splits` job's check of a dataset (its rule's params): the splits
        the study runs, the rules its strategies split by, and the minimums."""
        strategies = self.config["study"]["strategies"]
        return {
            "splits": self.split_names(dataset),
            "rules": sorted({self.training(s).split for s in strategies}),
            "min_split_clips": thaw(self.clips.min_split_clips),
        }

    def split_names(self, dataset: str, folds: Iterable[int] | None = None) -> list[str]:
        """The splits a study runs of ``dataset``: one per study fold (``folds``, default the
        study's) for rotating folds, or its one official split."""
        scheme = get_scheme(self.dataset(dataset).scheme)
        return scheme.names(list(self.config["study"]["folds"] if folds is None else folds))

    def runs(self, winners: Mapping[tuple[str, str, str], str] | None = None) -> list[Path]:
        """Every run folder of the configured study matrix, in the study's order.

        A sweep selected on its first split (``sweep_select_on: first_fold``) runs every
        variant there and only its winner on the other splits: ``winners`` ((dataset, model,
        method) -> variant, the selections' files) adds those; without it only the first
        split's runs of such a sweep are listed (what its selection needs)."""
        study = self.config["study"]
        winners = winners or {}
        runs = []
        for d in study["datasets"]:
            splits = self.split_names(d)
            for m in study["models"]:
                for s in study["strategies"]:
                    method = sweeps.method_of(self.config, s)
                    first_only = self.select_on(method) == "first_fold"
                    chosen = winners.get((d, m, method))
                    for seed in study["seeds"]:
                        for split in splits:
                            if first_only and split != splits[0] and chosen != s:
                                continue
                            runs.append(self.run_dir(d, m, s, split, seed))
        return runs

    # -- sweeps -------------------------------------------------------------------------------
    def sweeps(self) -> dict[str, dict[str, Any]]:
        """method -> {select_on, variants: {variant: its values}} (audiopetl.core.sweeps)."""
        return dict(self.config.get("sweeps") or {})

    def select_on(self, method: str) -> str | None:
        sweep = self.sweeps().get(method)
        return None if sweep is None else str(sweep["select_on"])

    def selections(self) -> list[tuple[str, str, str]]:
        """(dataset, model, method) of every selection the study makes, in its order."""
        study = self.config["study"]
        methods = sweeps.methods(self.config)
        return [
            (d, m, method)
            for d in study["datasets"]
            for m in study["models"]
            for method in methods
            if method in self.sweeps()
        ]

    def selection_path(self, dataset: str, model: str, method: str) -> Path:
        return self.layout.sweep_selection(dataset, model, method)

    def selection_runs(self, dataset: str, model: str, method: str) -> dict[str, list[Path]]:
        """variant -> the runs its validation metric is averaged over: every split and seed,
        or the first split's seeds (first_fold)."""
        sweep = self.sweeps().get(method)
        if sweep is None:
            raise ConfigError(
                f"strategies.{method}: not swept (swept: {', '.join(self.sweeps()) or 'none'})"
            )
        splits = self.split_names(dataset)
        if sweep["select_on"] == "first_fold":
            splits = splits[:1]
        return {
            variant: [
                self.run_dir(dataset, model, variant, split, seed)
                for seed in self.config["study"]["seeds"]
                for split in splits
            ]
            for variant in sweep["variants"]
        }

    def datasets(self) -> list[str]:
        """Every dataset the study reads: its own, and its models' source tasks."""
        sources = [
            self.model(m).pretrain.dataset  # type: ignore[union-attr]
            for m in self.config["study"]["models"]
            if self.model(m).pretrain is not None
        ]
        return list(dict.fromkeys([*self.config["study"]["datasets"], *sources]))

    def caches(self) -> list[Path]:
        """Every feature cache the study's runs and pretrainings read, once each."""
        caches = []
        for model in self.config["study"]["models"]:
            pretrain = self.model(model).pretrain
            datasets = [
                *self.config["study"]["datasets"],
                *([pretrain.dataset] if pretrain else []),
            ]
            caches += [self.cache_path(d, model) for d in datasets]
        return list(dict.fromkeys(caches))


def recorded_run(
    run_dir: Path,
    info: Mapping[str, Any],
    given: Study | None = None,
    overrides: Iterable[str] = (),
) -> RunSettings:
    """The settings a finished run (``info``: its run.json) is scored with: those it recorded,
    with ``overrides``; or those of a given study (the workflow's, a preset), which must agree
    with the record on everything that decides what the run computes and may differ in where
    it runs (TrainingSettings.EXECUTION, paths)."""
    names = info["run"]
    study = given if given is not None else validated(info["config"], overrides, "run.json")

    def settings_of(of: Study) -> RunSettings:
        return of.run(
            names["dataset"],
            names["model"],
            names["strategy"],
            names.get("split") or int(names["fold"]),
            int(names["seed"]),
            out=run_dir,
            pretrained=names.get("pretrained"),
        )

    try:
        ours, theirs = settings_of(study), settings_of(Study(info["config"]))
    except ConfigError as err:
        raise ConfigError(f"{err} (the run needs it)") from err
    a, b = ours.computes(), theirs.computes()
    differ = [
        f"{part}.{key}"
        for part in a
        for key in sorted(set(a[part]) | set(b[part]))
        if a[part].get(key) != b[part].get(key)
    ]
    if differ:
        raise ConfigError(
            f"the configuration differs from the one the run was trained with in "
            f"{', '.join(differ)}: scoring it with these settings would not test its weights; "
            "use the run's own (no --config/--experiment) and --set only where it runs: "
            f"training.{{{','.join(TrainingSettings.EXECUTION)}}} and paths"
        )
    return ours
