"""Load, merge and validate the configuration.

The same function serves the CLI, the Snakefile and DVC, so a setting is checked the same way
whoever reads it. Layers, later ones winning: ``config/config.yaml`` -> the experiment preset
``config/experiments/{name}.yaml`` -> ``--set key.path=value`` overrides. Every key remembers the
layer it came from so an error can name the file as well as the key path.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from audiopetl.core import sweeps
from audiopetl.core.errors import ConfigError

DEFAULT_CONFIG = Path("config/config.yaml")
PRESET_DIR_NAME = "experiments"
# The workflow hands its configuration to every command through these variables; the CLI's
# --config and --experiment default to them.
CONFIG_ENV = "AUDIOPETL_CONFIG"
EXPERIMENT_ENV = "AUDIOPETL_EXPERIMENT"


class _StrictLoader(yaml.SafeLoader):
    """YAML loader whose booleans are only true/false.

    PyYAML follows YAML 1.1, where ``yes``, ``no``, ``on`` and ``off`` are booleans too; a
    category called ``no`` or a flag written ``off`` would silently change type. Such words
    stay strings here, and the schema then rejects them where a boolean is expected.
    """


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
# YAML 1.1 floats need a dot ("1.0e-3"); accept the YAML 1.2 forms "1e-3" and "1e30" too, as
# the --set help promises, rather than reading them as strings.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _no_duplicate_keys(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from err


def load_yaml_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    return data


def _kind_schemas(folder: str) -> list[tuple[str, dict[str, Any]]]:
    """(kind, its own schema) for every resources/FOLDER/KIND.yaml, by name."""
    entries = sorted(resources.files("audiopetl").joinpath(folder).iterdir(), key=lambda e: e.name)
    return [
        (entry.name.removesuffix(".yaml"), yaml.safe_load(entry.read_text()) or {})
        for entry in entries
        if entry.name.endswith(".yaml")
    ]


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    """The configuration schema, with every strategy kind's own settings composed in from
    resources/strategies/KIND.yaml, every model kind's from resources/backbones/KIND.yaml and
    every dataset kind's from resources/datasets/KIND.yaml (a new kind brings its schema file
    beside its code)."""
    package = resources.files("audiopetl")
    composed = yaml.safe_load(package.joinpath("resources/config.schema.yaml").read_text())
    strategy = composed["$defs"]["strategy"]
    strategies = _kind_schemas("resources/strategies")
    for kind, own in strategies:
        strategy.setdefault("allOf", []).append(
            {
                "if": {"properties": {"kind": {"const": kind}}},
                "then": {
                    "required": list(own.get("required", [])),
                    "properties": dict(own.get("properties") or {}),
                },
            }
        )
    strategy["properties"]["kind"] = {"enum": [kind for kind, _ in strategies]}
    # Each model kind's architecture and front-end keys.
    model = composed["$defs"]["model"]
    backbones = _kind_schemas("resources/backbones")
    for kind, own in backbones:
        named = {"required": ["kind"], "properties": {"kind": {"const": kind}}}
        # A model without `kind` is an AST.
        when = {"anyOf": [{"not": {"required": ["kind"]}}, named]} if kind == "ast" else named
        model.setdefault("allOf", []).append(
            {
                "if": when,
                "then": {
                    "properties": {
                        block: {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": dict(own.get(block) or {}),
                        }
                        for block in ("architecture", "front_end")
                    }
                },
            }
        )
    model["properties"]["kind"] = {"enum": [kind for kind, _ in backbones]}
    # Each dataset kind's own block, required when the dataset is of that kind.
    dataset = composed["$defs"]["dataset"]
    datasets = _kind_schemas("resources/datasets")
    for kind, own in datasets:
        dataset["properties"][kind] = own
        dataset.setdefault("allOf", []).append(
            {"if": {"properties": {"kind": {"const": kind}}}, "then": {"required": [kind]}}
        )
    dataset["properties"]["kind"] = {"enum": [kind for kind, _ in datasets]}
    return composed


def schema() -> dict[str, Any]:
    return copy.deepcopy(_schema())


@dataclass
class _Layered:
    """A merged mapping plus the source of each key path."""

    data: dict[str, Any] = field(default_factory=dict)
    origin: dict[tuple[str, ...], str] = field(default_factory=dict)

    def merge(self, layer: Mapping[str, Any], source: str) -> None:
        _merge_into(self.data, layer, (), source, self.origin)

    def source_of(self, path: tuple[str | int, ...]) -> str:
        keys = tuple(str(p) for p in path)
        while keys:
            if keys in self.origin:
                return self.origin[keys]
            keys = keys[:-1]
        return self.origin.get((), "config")


def _merge_into(
    base: dict[str, Any],
    layer: Mapping[str, Any],
    prefix: tuple[str, ...],
    source: str,
    origin: dict[tuple[str, ...], str],
) -> None:
    for key, value in layer.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            origin.setdefault(path, source)
            _merge_into(base[key], value, path, source, origin)
        else:
            base[key] = copy.deepcopy(value)
            origin[path] = source
            if isinstance(value, Mapping):
                _record_origins(value, path, source, origin)


def _record_origins(
    value: Mapping[str, Any], prefix: tuple[str, ...], source: str, origin: dict
) -> None:
    for key, sub in value.items():
        origin[(*prefix, str(key))] = source
        if isinstance(sub, Mapping):
            _record_origins(sub, (*prefix, str(key)), source, origin)


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``a.b.c=value`` into ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set {text!r}: empty key in {key!r}")
    value = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
    nested: dict[str, Any] = {}
    cursor = nested
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def preset_path(config_file: Path, experiment: str) -> Path:
    return config_file.parent / PRESET_DIR_NAME / f"{experiment}.yaml"


def available_presets(config_file: Path) -> list[str]:
    folder = config_file.parent / PRESET_DIR_NAME
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


# A preset's key naming the presets it starts from, applied in order before its own keys.
EXTENDS = "extends"


def merge_preset(layered: _Layered, config_file: Path, name: str, chain: tuple[str, ...]) -> None:
    """Merge preset ``name`` into ``layered``: first every preset it `extends` (in order, each
    with its own bases first), then its own keys, which win. A preset reached again along one
    chain is a cycle; an unknown name is one line naming the presets there are."""
    preset = preset_path(config_file, name)
    data = dict(load_yaml_file(preset))
    bases = data.pop(EXTENDS, None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{preset}: {EXTENDS}: a list of preset names, e.g. [models]")
    for base in bases:
        if base in (*chain, name):
            loop = " -> ".join([*chain, name, base])
            raise ConfigError(f"{preset}: {EXTENDS}: {base!r} extends itself ({loop})")
        if not preset_path(config_file, base).is_file():
            known = available_presets(config_file)
            raise ConfigError(
                f"{preset}: {EXTENDS}: no preset named {base!r}{closest(base, known)} "
                f"(presets: {', '.join(known)})"
            )
        merge_preset(layered, config_file, base, (*chain, name))
    layered.merge(data, str(preset))


def load_config(
    config_file: Path | str = DEFAULT_CONFIG,
    experiment: str | None = None,
    overrides: Iterable[str] = (),
    *,
    training: bool = True,
    checks: Iterable[Check] = (),
) -> dict[str, Any]:
    """Return the resolved, validated configuration.

    ``experiment`` names a preset; without one the base file's own ``experiment`` key decides,
    and a preset of that name is applied when it exists (``default`` has none). With
    ``training=False`` (the data commands) the checks of how the study splits its folds for
    training are left out: a dataset can be fetched whatever study.folds says.
    """
    config_file = Path(config_file)
    layered = _Layered()
    layered.merge(load_yaml_file(config_file), str(config_file))
    name = experiment or layered.data.get("experiment")
    if experiment is not None or (isinstance(name, str) and name != "default"):
        preset = preset_path(config_file, str(name))
        if preset.is_file():
            merge_preset(layered, config_file, str(name), ())
        elif experiment is not None and experiment != "default":
            known = available_presets(config_file)
            hint = closest(experiment, known)
            raise ConfigError(
                f"{preset}: no preset named {experiment!r}{hint} (presets: {', '.join(known)})"
            )
        layered.data["experiment"] = name
        layered.origin[("experiment",)] = str(preset) if preset.is_file() else "--experiment"
    for text in overrides:
        layered.merge(parse_override(text), "--set")
    expand_sweeps(layered)
    validate(layered, training=training, checks=checks)
    return layered.data


def expand_sweeps(layered: _Layered) -> None:
    """Each swept strategy replaced by its variants (audiopetl.core.sweeps), before the
    schema sees them: every variant is then checked like any strategy."""

    def where(path: list[str]) -> str:
        return f"{layered.source_of(path)}: {_key_path(path)}"

    def origin(variant: list[str], method: list[str]) -> None:
        layered.origin[tuple(variant)] = layered.source_of(method)

    training_keys = _schema()["$defs"]["training"]["properties"]
    sweeps.expand(layered.data, training_keys, where, origin)


def apply_overrides(
    config: Mapping[str, Any],
    overrides: Iterable[str],
    source: str,
    checks: Iterable[Check] = (),
) -> dict[str, Any]:
    """A resolved configuration (a run's record, say) with ``--set`` overrides, validated."""
    layered = _Layered(copy.deepcopy(dict(config)))
    layered.origin[()] = source
    for text in overrides:
        layered.merge(parse_override(text), "--set")
    expand_sweeps(layered)
    validate(layered, checks=checks)
    return layered.data


def validate_dict(
    config: Mapping[str, Any], source: str = "config", checks: Iterable[Check] = ()
) -> None:
    """Validate an already merged configuration."""
    layered = _Layered(dict(config))
    layered.origin[()] = source
    validate(layered, checks=checks)


def validate(layered: _Layered, *, training: bool = True, checks: Iterable[Check] = ()) -> None:
    validator_cls = jsonschema.validators.validator_for(schema())
    validator = validator_cls(schema())
    errors = sorted(validator.iter_errors(layered.data), key=lambda e: list(e.absolute_path))
    if errors:
        # A block whose keys are all known may still be "unevaluated" beside an error in one
        # of them: that describes as nothing, the error itself says what is wrong.
        lines = [line for err in _leaf_errors(errors) if (line := _describe(err, layered))]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(dict.fromkeys(lines)))
    _check_references(layered, training=training, checks=checks)


def _leaf_errors(errors: list[jsonschema.ValidationError]) -> list[jsonschema.ValidationError]:
    # if/then and $ref wrap the helpful error in a context; report the innermost ones.
    leaves: list[jsonschema.ValidationError] = []
    for err in errors:
        if err.context:
            leaves.extend(_leaf_errors(list(err.context)))
        else:
            leaves.append(err)
    return leaves


def _key_path(path: Iterable[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def closest(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _describe(err: jsonschema.ValidationError, layered: _Layered) -> str:
    path = list(err.absolute_path)
    if err.validator == "unevaluatedProperties" and isinstance(err.instance, dict):
        # A key no schema part for this block knows (a strategy kind's own keys included).
        allowed = _known_keys(err.schema, err.instance)
        unknown = [k for k in err.instance if k not in allowed]
        parts = [
            f"{layered.source_of([*path, k])}: {_key_path([*path, k])}: unknown key"
            f"{closest(k, allowed)}"
            for k in unknown
        ]
        return "\n  ".join(parts)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = list(err.schema.get("properties", {}))
        unknown = [k for k in err.instance if k not in allowed]
        parts = []
        for key in unknown:
            full = [*path, key]
            parts.append(
                f"{layered.source_of(full)}: {_key_path(full)}: unknown key{closest(key, allowed)}"
            )
        return "\n  ".join(parts)
    where = layered.source_of(path)
    if err.validator == "type":
        return (
            f"{where}: {_key_path(path)}: {err.instance!r} is a "
            f"{type(err.instance).__name__}, expected {err.validator_value}"
        )
    if err.validator == "enum":
        hint = closest(str(err.instance), [str(v) for v in err.validator_value])
        return (
            f"{where}: {_key_path(path)}: {err.instance!r} is not one of "
            f"{err.validator_value}{hint}"
        )
    if err.validator == "required":
        return f"{where}: {_key_path(path)}: {err.message}"
    return f"{where}: {_key_path(path)}: {err.message}"


def _known_keys(block_schema: Mapping[str, Any], instance: Mapping[str, Any]) -> list[str]:
    """The keys a composed block (a strategy) accepts for this instance's kind."""
    keys = list(block_schema.get("properties", {}))
    for part in block_schema.get("allOf", []):
        kind = part.get("if", {}).get("properties", {}).get("kind", {}).get("const")
        if kind is not None and instance.get("kind") == kind:
            keys += list(part.get("then", {}).get("properties", {}))
    return keys


# A check that needs to know the kinds behind the names (which strategies a model kind
# takes, how many folds a dataset kind declares): given the configuration, a function that
# names a key path's file and path, and whether training settings are checked; returns one
# line per problem. The study layer (audiopetl.study) passes its registries' checks in, so this
# module imports none of them.
Check = Callable[[Mapping[str, Any], Callable[[list[str | int]], str], bool], list[str]]


def _check_references(
    layered: _Layered, *, training: bool = True, checks: Iterable[Check] = ()
) -> None:
    cfg = layered.data
    problems: list[str] = []
    for section, noun in (("datasets", "dataset"), ("models", "model"), ("strategies", "strategy")):
        for i, name in enumerate(cfg["study"][section]):
            if name not in cfg[section]:
                path = ["study", section, i]
                problems.append(
                    f"{layered.source_of(path)}: {_key_path(path)}: {noun} {name!r} "
                    f"is not defined under {section}{closest(name, cfg[section])}"
                )
    for model_name, model in cfg["models"].items():
        pretrain = model.get("pretrain")
        if model.get("pretrained") is None and not model.get("architecture"):
            path = ["models", model_name]
            problems.append(
                f"{layered.source_of(path)}: {_key_path(path)}: needs `pretrained` or "
                "`architecture` (a random initialisation needs its shape)"
            )
        if pretrain:
            for key, section in (("dataset", "datasets"), ("strategy", "strategies")):
                if pretrain[key] not in cfg[section]:
                    path = ["models", model_name, "pretrain", key]
                    problems.append(
                        f"{layered.source_of(path)}: {_key_path(path)}: {pretrain[key]!r} is "
                        f"not defined under {section}{closest(pretrain[key], cfg[section])}"
                    )
    for method, sweep in (cfg.get("sweeps") or {}).items():
        for variant in sweep["variants"]:
            if variant not in cfg["strategies"]:
                path = ["sweeps", method, "variants", variant]
                problems.append(
                    f"{layered.source_of(path)}: {_key_path(path)}: no strategy of that name "
                    "(the loader writes `sweeps` from the strategies' `sweep` blocks)"
                )
    for model_name in cfg["resources"].get("models") or {}:
        if model_name not in cfg["models"]:
            path = ["resources", "models", model_name]
            problems.append(
                f"{layered.source_of(path)}: {_key_path(path)}: model {model_name!r} is not "
                f"defined under models{closest(model_name, cfg['models'])}"
            )

    def where(path: list[str | int]) -> str:
        return f"{layered.source_of(path)}: {_key_path(path)}"

    for check in checks if not problems else ():
        problems += check(cfg, where, training)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
