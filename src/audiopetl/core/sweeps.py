"""Hyperparameter sweeps: a strategy that gives lists for its settings becomes one strategy per
variant, each with a stable, readable, folder-safe name made of its values.

``strategies.lora: {kind: lora, lr: 5e-3, rank: 8, sweep: {lr: [1e-3, 3e-3], rank: [4, 8]}}``
becomes ``lora.lr-0.001.rank-4``, ``lora.lr-0.001.rank-8``, ... (a grid, in the order given), or
``sweep_mode: random`` with ``sweep_points`` of them drawn from that grid with ``sweep_seed``.
A variant's name depends only on its own values, so adding a value adds only the new variants'
jobs and removing one leaves the others' folders and results untouched.

The expansion happens when the configuration is loaded (:func:`audiopetl.core.config.
load_config`), before validation: every variant is then an ordinary strategy, checked by its
kind's schema and run by the ordinary rules. ``study.strategies`` names the swept strategy (the
*method*) and gets its variants in its place; the top-level ``sweeps`` key records which
variants belong to which method and how the winner is chosen (on validation only:
:mod:`audiopetl.report.sweeps`). A configuration that was expanded already (a run's record)
passes through unchanged.
"""

from __future__ import annotations

import copy
import itertools
import random
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from audiopetl.core.errors import ConfigError

SWEEP = "sweep"
MODE = "sweep_mode"
POINTS = "sweep_points"
SEED = "sweep_seed"
SELECT_ON = "sweep_select_on"
KEYS = (SWEEP, MODE, POINTS, SEED, SELECT_ON)
# all: the mean validation metric over every split and seed; first_fold: over the first split
# only (HEAR's saving), after which only the winner runs on the other splits.
SELECT_ON_CHOICES = ("all", "first_fold")
# What the selection itself rests on cannot be swept: the variants would not be compared on
# the same footing (or, train_select_on_test, would be chosen on the test fold).
NOT_SWEPT = ("kind", "training", "training.split", "training.select_metric", "training.test_epoch")
# A variant's name: the strategy's, then `.key-value` per swept setting.
_VALUE_CHARS = re.compile(r"^[A-Za-z0-9_.+-]+$")


def value_text(value: Any) -> str:
    """A value as it appears in a variant's name: floats as Python writes them (lossless:
    0.001, 1e-05), booleans as true/false, lists joined by '+'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "+".join(value_text(v) for v in value)
    return str(value)


def variant_name(method: str, values: Mapping[str, Any]) -> str:
    parts = [f"{key.replace('.', '_')}-{value_text(value)}" for key, value in values.items()]
    # '+' would be awkward in a wildcard; lists are joined by '_' in names.
    return ".".join([method, *parts]).replace("+", "_")


def _set_path(block: dict[str, Any], path: list[str], value: Any) -> None:
    cursor = block
    for part in path[:-1]:
        nested = cursor.get(part)
        cursor[part] = dict(nested) if isinstance(nested, Mapping) else {}
        cursor = cursor[part]
    cursor[path[-1]] = copy.deepcopy(value)


def target(key: str, training_keys: Iterable[str]) -> list[str]:
    """Where a swept key goes in the variant's block: a dotted key is a path into it; a
    setting of the `training` block (not a strategy's own, like ``lr``) goes into its
    ``training``; any other key is the strategy's."""
    path = key.split(".")
    if len(path) == 1 and key in set(training_keys) and key != "lr":
        return ["training", key]
    return path


def _grid(
    name: str,
    block: Mapping[str, Any],
    where: Callable[[list[str]], str],
    training_keys: Iterable[str],
) -> list[dict[str, Any]]:
    sweep = block[SWEEP]
    here = where(["strategies", name, SWEEP])
    if not isinstance(sweep, Mapping) or not sweep:
        raise ConfigError(
            f"{here}: a mapping of settings to lists of values, e.g. {{lr: [1e-3, 3e-3]}}"
        )
    for key, values in sweep.items():
        if ".".join(target(key, training_keys)) in NOT_SWEPT or key in KEYS:
            raise ConfigError(
                f"{here}.{key}: cannot be swept (the variants must be selected on the same "
                "validation metric, split and epoch rule); set it on the strategy instead"
            )
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{here}.{key}: a non-empty list of values, got {values!r}")
        texts = [value_text(v) for v in values]
        if len(set(texts)) != len(texts):
            raise ConfigError(f"{here}.{key}: a value is listed twice: {values!r}")
        for value, text in zip(values, texts, strict=True):
            if isinstance(value, Mapping) or not _VALUE_CHARS.match(text):
                raise ConfigError(
                    f"{here}.{key}: {value!r} cannot name a folder (letters, digits, . _ - only)"
                )
    keys = list(sweep)
    combos = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*sweep.values())]
    mode = block.get(MODE, "grid")
    if mode not in ("grid", "random"):
        raise ConfigError(f"{where(['strategies', name, MODE])}: {mode!r} is not grid or random")
    if mode == "grid":
        for key in (POINTS, SEED):
            if key in block:
                raise ConfigError(f"{where(['strategies', name, key])}: only with {MODE}: random")
        return combos
    points = block.get(POINTS)
    if not isinstance(points, int) or isinstance(points, bool) or points < 1:
        raise ConfigError(
            f"{where(['strategies', name, POINTS])}: {MODE}: random needs the number of "
            f"variants to draw (a positive integer), got {points!r}"
        )
    if points > len(combos):
        raise ConfigError(
            f"{where(['strategies', name, POINTS])}: {points} variants asked of a grid of "
            f"{len(combos)}; lower it or use {MODE}: grid"
        )
    seed = block.get(SEED, 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{where(['strategies', name, SEED])}: an integer, got {seed!r}")
    # Drawn as positions of the grid, then kept in the grid's order.
    chosen = sorted(random.Random(seed).sample(range(len(combos)), points))
    return [combos[i] for i in chosen]


def expand(
    config: dict[str, Any],
    training_keys: Iterable[str],
    where: Callable[[list[str]], str],
    origin: Callable[[list[str], list[str]], None] | None = None,
) -> None:
    """Replace every swept strategy of ``config`` by its variants, in place (see the module's
    docstring). ``training_keys``: the settings of the `training` block; a swept key that is
    one of them (and not a strategy's own, like ``lr``) goes into the variant's ``training``.
    ``origin(variant_path, method_path)``: lets the caller's error messages name the file a
    variant's keys came from."""
    strategies = config.get("strategies")
    if not isinstance(strategies, dict):
        return
    swept = [
        name for name, block in strategies.items() if isinstance(block, Mapping) and SWEEP in block
    ]
    stray = [
        (name, key)
        for name, block in strategies.items()
        if isinstance(block, Mapping) and SWEEP not in block
        for key in KEYS
        if key in block
    ]
    if stray:
        name, key = stray[0]
        raise ConfigError(f"{where(['strategies', name, key])}: only with a `sweep` block")
    if not swept:
        return
    training_keys = set(training_keys)
    sweeps: dict[str, Any] = dict(config.get("sweeps") or {})
    rebuilt: dict[str, Any] = {}
    for name, block in strategies.items():
        if name not in swept:
            rebuilt[name] = block
            continue
        select_on = block.get(SELECT_ON, "all")
        if select_on not in SELECT_ON_CHOICES:
            raise ConfigError(
                f"{where(['strategies', name, SELECT_ON])}: {select_on!r} is not one of "
                f"{list(SELECT_ON_CHOICES)}"
            )
        base = {k: copy.deepcopy(v) for k, v in block.items() if k not in KEYS}
        variants: dict[str, dict[str, Any]] = {}
        for values in _grid(name, block, where, training_keys):
            variant = copy.deepcopy(base)
            for key, value in values.items():
                _set_path(variant, target(key, training_keys), value)
            vname = variant_name(name, values)
            if vname in strategies or vname in rebuilt:
                raise ConfigError(
                    f"{where(['strategies', name, SWEEP])}: variant {vname!r} clashes with a "
                    "strategy of that name"
                )
            rebuilt[vname] = variant
            variants[vname] = {k: copy.deepcopy(v) for k, v in values.items()}
            if origin is not None:
                origin(["strategies", vname], ["strategies", name, SWEEP])
        sweeps[name] = {"select_on": select_on, "variants": variants}
    used_in_pretraining = [
        (model, spec["pretrain"]["strategy"])
        for model, spec in (config.get("models") or {}).items()
        if isinstance(spec, Mapping)
        and isinstance(spec.get("pretrain"), Mapping)
        and spec["pretrain"].get("strategy") in swept
    ]
    if used_in_pretraining:
        model, strategy = used_in_pretraining[0]
        raise ConfigError(
            f"{where(['models', model, 'pretrain', 'strategy'])}: {strategy!r} is swept; a "
            "pretraining needs one strategy (define an unswept one for it)"
        )
    config["strategies"] = rebuilt
    study = config.get("study")
    studied = study.get("strategies") if isinstance(study, dict) else None
    if isinstance(studied, list):
        # A sweep defined and not studied (the default's, under another preset) leaves its
        # variants defined and selects nothing.
        sweeps = {m: v for m, v in sweeps.items() if m not in swept or m in studied}
    config["sweeps"] = sweeps
    if isinstance(study, dict) and isinstance(study.get("strategies"), list):
        names: list[str] = []
        for name in study["strategies"]:
            names += list(sweeps[name]["variants"]) if name in swept else [name]
        study["strategies"] = names


def method_of(config: Mapping[str, Any], strategy: str) -> str:
    """The method a strategy is a variant of (itself when it is not swept)."""
    for method, sweep in (config.get("sweeps") or {}).items():
        if strategy in sweep["variants"]:
            return str(method)
    return strategy


def methods(config: Mapping[str, Any]) -> list[str]:
    """The study's strategies with each sweep's variants folded back into its method, in the
    study's order."""
    return list(dict.fromkeys(method_of(config, s) for s in config["study"]["strategies"]))
