"""Configuration checks that need to know the kinds behind the names: which strategies a model
kind takes, how many folds a dataset kind declares. Found before any job runs; each is passed
to :func:`audiopetl.core.config.load_config`, which knows no kind itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from audiopetl.core.embedding import EMBEDDING_KINDS
from audiopetl.core.tracking import INSTALL_HINTS, missing_backends, template_errors
from audiopetl.data.datasets import get_kind
from audiopetl.data.splits import get_scheme
from audiopetl.models.backbones import DEFAULT_KIND, get_backbone

Where = Callable[[list[str | int]], str]


def strategies_fit_models(cfg: Mapping[str, Any], where: Where, training: bool) -> list[str]:
    """Strategies that cannot apply to a model's architecture (prompt tokens where there is no
    token sequence to insert them into), in the study or in a model's pretraining."""
    pairs = [(m, s, ["study", "strategies"]) for m in cfg["study"]["models"]
             for s in cfg["study"]["strategies"]]  # fmt: skip
    pairs += [
        (m, model["pretrain"]["strategy"], ["models", m, "pretrain", "strategy"])
        for m, model in cfg["models"].items()
        if model.get("pretrain")
    ]
    problems = []
    for model_name, strategy_name, path in pairs:
        model = cfg["models"][model_name]
        strategy = cfg["strategies"][strategy_name]
        kind = model.get("kind") or DEFAULT_KIND
        why = get_backbone(kind).problem_with(strategy["kind"])
        if why:
            problems.append(
                f"{where(path)}: strategy {strategy_name!r} ({strategy['kind']}) cannot apply "
                f"to model {model_name!r} ({kind}): {why}"
            )
    return problems


def checkpointing_fits_models(cfg: Mapping[str, Any], where: Where, training: bool) -> list[str]:
    """training.gradient_checkpointing (global or a studied strategy's) on a model kind whose
    transformers model cannot checkpoint, found before any job builds one."""
    default = cfg["training"].get("gradient_checkpointing", False)
    own = {s: cfg["strategies"][s].get("training") or {} for s in cfg["study"]["strategies"]}
    on = [s for s, block in own.items() if block.get("gradient_checkpointing", default)]
    problems = []
    for model_name in cfg["study"]["models"] if on else []:
        kind = cfg["models"][model_name].get("kind") or DEFAULT_KIND
        why = get_backbone(kind).checkpointing_problem()
        if why:
            problems.append(
                f"{where(['training', 'gradient_checkpointing'])}: model {model_name!r} ({kind}, "
                f"strategies {', '.join(on)}): {why}; set it to false"
            )
    return problems


def folds_exist(cfg: Mapping[str, Any], where: Where, training: bool) -> list[str]:
    """The study's folds are among each dataset's, and a train/validation/test split has the
    three folds it needs. Data commands skip this: a dataset can be fetched whatever
    study.folds says."""
    if not training:
        return []
    problems = []
    declared = {}
    for name in cfg["study"]["datasets"]:
        dataset = cfg["datasets"][name]
        if (dataset.get("split") or {}).get("scheme", "folds") != "folds":
            continue  # an official split has no folds; sessions and speakers come from the data
        declared[name] = get_kind(dataset["kind"]).folds(dataset[dataset["kind"]])
        for i, fold in enumerate(cfg["study"]["folds"]):
            if declared[name] is not None and fold > declared[name]:
                problems.append(
                    f"{where(['study', 'folds', i])}: fold {fold} is outside dataset "
                    f"{name!r}'s folds 1..{declared[name]}"
                )
    split = cfg["training"]["split"]
    if split != "train_test" and any((n or 3) < 3 for n in declared.values()):
        problems.append(f"{where(['training', 'split'])}: {split} needs at least 3 folds")
    return problems


def splits_fit_datasets(cfg: Mapping[str, Any], where: Where, training: bool) -> list[str]:
    """A dataset's kind can make its task and split scheme, its scheme can serve the training
    split rule, and the model-selection metric suits its task."""
    problems = []
    names = cfg["study"]["datasets"] if training else list(cfg["datasets"])
    for name in dict.fromkeys(names):
        dataset = cfg["datasets"][name]
        kind = get_kind(dataset["kind"])
        task = dataset.get("task", "multiclass")
        scheme = (dataset.get("split") or {}).get("scheme", "folds")
        if task not in kind.tasks:
            problems.append(
                f"{where(['datasets', name, 'task'])}: a {kind.kind} dataset is "
                f"{' or '.join(kind.tasks)}"
            )
        if scheme not in kind.schemes:
            problems.append(
                f"{where(['datasets', name, 'split', 'scheme'])}: a {kind.kind} dataset splits by "
                f"{', '.join(kind.schemes)}, not {scheme}"
            )
        if not training or name not in cfg["study"]["datasets"]:
            continue
        for strategy in cfg["study"]["strategies"]:
            own = cfg["strategies"][strategy].get("training") or {}
            settings = {**cfg["training"], **own}
            path = ["strategies", strategy, "training"] if own else ["training"]
            rule = settings["split"]
            if rule not in get_scheme(scheme).rules:
                problems.append(
                    f"{where([*path, 'split'])}: {rule} does not apply to dataset {name!r}, "
                    f"which splits by {scheme} ({', '.join(get_scheme(scheme).rules)})"
                )
            metric = settings["select_metric"]
            if task == "multilabel" and metric in MULTICLASS_METRICS:
                problems.append(
                    f"{where([*path, 'select_metric'])}: {metric} is a single-label metric; "
                    f"dataset {name!r} is multi-label: select on mAP (or loss)"
                )
            if task == "multiclass" and metric in MULTILABEL_METRICS:
                problems.append(
                    f"{where([*path, 'select_metric'])}: {metric} is a multi-label metric; "
                    f"dataset {name!r} is multiclass"
                )
    if training:
        headline = cfg["report"]["metric"]
        tasks = {cfg["datasets"][n].get("task", "multiclass") for n in cfg["study"]["datasets"]}
        if headline in (*MULTILABEL_METRICS, "macro_auc") and "multiclass" in tasks:
            problems.append(
                f"{where(['report', 'metric'])}: {headline} is a multi-label metric and the "
                "study has single-label datasets: accuracy, balanced_accuracy, macro_f1 or "
                "top5_accuracy"
            )
    return list(dict.fromkeys(problems))


def _masking(cfg: Mapping[str, Any], strategy: str) -> list[str | int] | None:
    """Where a strategy's runs get SpecAugment masks from (its own training block or the
    global one); None when they mask nothing."""
    own = (cfg["strategies"][strategy].get("training") or {}).get("specaugment")
    masks = own or cfg["training"]["specaugment"]
    if not (masks["freq_mask"] or masks["time_mask"]):
        return None
    return ["strategies", strategy, "training", "specaugment"] if own else [
        "training", "specaugment"]  # fmt: skip


def masks_fit_front_ends(cfg: Mapping[str, Any], where: Where, training: bool) -> list[str]:
    """SpecAugment masks bands of a spectrogram's bins and frames: a model that reads the
    waveform has neither, and masking its samples would train on something else silently."""
    problems = []
    for model_name in cfg["study"]["models"]:
        kind = cfg["models"][model_name].get("kind") or DEFAULT_KIND
        if get_backbone(kind).front_end != "waveform":
            continue
        for name in cfg["study"]["strategies"]:
            path = _masking(cfg, name)
            if path:
                problems.append(
                    f"{where(path)}: SpecAugment masks spectrogram bins and frames, but model "
                    f"{model_name!r} ({kind}) reads the waveform: set them to 0, or study that "
                    "model in a preset of its own"
                )
    return list(dict.fromkeys(problems))


MULTICLASS_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
MULTILABEL_METRICS = ("mAP",)


def sweeps_select_on_validation(cfg: Mapping[str, Any], where: Where, training: bool) -> list[str]:
    """A sweep chooses its variant on validation: its runs need a validation split that is
    not the test fold (no train_test, no train_select_on_test)."""
    problems = []
    for method, sweep in (cfg.get("sweeps") or {}).items():
        variant = next(iter(sweep["variants"]))
        own = cfg["strategies"][variant].get("training") or {}
        split = own.get("split", cfg["training"]["split"])
        if split in ("train_test", "train_select_on_test"):
            problems.append(
                f"{where(['strategies', method, 'sweep'])}: training.split {split} has no "
                "validation set to choose a variant on; use train_val_test (or "
                "train_val_test_before)"
            )
    return problems


def probes_fit(cfg: Mapping[str, Any], where: Where, training: bool) -> list[str]:
    """A probe trains on cached embeddings of a pretrained backbone: a random one's would
    depend on the seed, and SpecAugment has no spectrogram to mask there."""
    problems = []
    probes = [
        s for s in cfg["study"]["strategies"] if cfg["strategies"][s]["kind"] in EMBEDDING_KINDS
    ]
    for name in probes:
        path = _masking(cfg, name)
        if path:
            problems.append(
                f"{where(path)}: strategy {name!r} is a probe, trained on embeddings: there is "
                f"no spectrogram to mask; set strategies.{name}.training.specaugment to 0 "
                "(or use kind `linear`, which runs the backbone on every batch)"
            )
    for model_name in cfg["study"]["models"] if probes else []:
        model = cfg["models"][model_name]
        if not model.get("pretrained") and not model.get("pretrain"):
            problems.append(
                f"{where(['models', model_name, 'pretrained'])}: strategy "
                f"{', '.join(map(repr, probes))} probes the embeddings of model {model_name!r}, "
                "which starts at random: give it pretrained weights (`pretrained` or a "
                "`pretrain` block)"
            )
    return list(dict.fromkeys(problems))


def trackers_installed(cfg: Mapping[str, Any], where: Where, training: bool) -> list[str]:
    """A tracker the config names must be importable where jobs train (a report or a plan
    needs none), and the run name template may use only the run's fields."""
    block = cfg.get("tracking") or {}
    problems = [
        f"{where(['tracking', 'run_name'])}: {problem}"
        for problem in template_errors(str(block.get("run_name", "")))
    ]
    missing = missing_backends(block.get("backends") or ()) if training else []
    if missing:
        # Here only: provenance imports torch, which parsing the workflow must not.
        from audiopetl.core.provenance import environment_name

        problems += [
            f"{where(['tracking', 'backends'])}: {name} is not installed in this environment "
            f"({environment_name()}): {INSTALL_HINTS[name]}"
            for name in missing
        ]
    return problems


CHECKS = (
    trackers_installed,
    checkpointing_fits_models,
    strategies_fit_models,
    folds_exist,
    splits_fit_datasets,
    masks_fit_front_ends,
    sweeps_select_on_validation,
    probes_fit,
)
