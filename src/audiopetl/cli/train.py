"""Subcommands for training and evaluation, registered by :mod:`audiopetl.cli.main`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from audiopetl.study import Study

from audiopetl.cli.common import progress, study_of


def cmd_train(args: argparse.Namespace) -> int:
    from audiopetl.study import RESOLVE
    from audiopetl.training.run import train_run
    from audiopetl.training.trainer import Trainer

    study = study_of(args)
    run = study.run(
        args.dataset,
        args.model,
        args.strategy,
        args.split if args.split is not None else args.fold,
        args.seed,
        out=Path(args.out) if args.out else None,
        pretrained=args.pretrained or RESOLVE,
    )
    out = run.out

    def evaluate(trainer: Trainer) -> None:
        # A fresh model from the files just written, scored again: the run's own check.
        result = _evaluate(out, study)
        print(f"{out}: rebuilt from its files, {_matches(result)}")

    metrics = train_run(run, progress=progress(args), after=evaluate if args.evaluate else None)
    print(
        f"{out}: test {_headline(metrics['test'])} (best epoch {metrics['best_epoch']}, "
        f"{metrics['trainable_params']:,} of {metrics['total_params']:,} parameters trained)"
    )
    return 0


def _headline(test: dict) -> str:
    """A run's headline test metric: accuracy, or a multi-label run's mAP."""
    name = "accuracy" if "accuracy" in test else "mAP"
    return f"{name} {test[name]:.4f}"


def _matches(result: dict) -> str:
    return (
        f"test {_headline(result['test'])}, matches the stored run (max logit "
        f"difference {result['max_abs_logit_difference']:.2g})"
    )


def _evaluate(
    run_dir: Path, given: Study | None, overrides: Sequence[str] = (), out: Path | None = None
) -> dict:
    from audiopetl.study.study import recorded_run
    from audiopetl.training.evaluate import evaluate_run, read_run_info

    info = read_run_info(run_dir)
    return evaluate_run(run_dir, recorded_run(run_dir, info, given, overrides), info, out)


def cmd_embed(args: argparse.Namespace) -> int:
    from audiopetl.study import embeddings
    from audiopetl.training.embeddings import build_embeddings

    settings = embeddings.settings(study_of(args), args.dataset, args.model)
    print(build_embeddings(settings, progress=progress(args)))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from audiopetl.training.run import pretrain

    run = study_of(args).pretrain_run(args.model, Path(args.out) if args.out else None)
    print(pretrain(run, progress=progress(args)))
    return 0


def cmd_fetch_model(args: argparse.Namespace) -> int:
    from audiopetl.models.hub import fetch_model

    study = study_of(args)
    print(fetch_model(study.model(args.model), study.layout.mirror(args.model), force=args.force))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    # The run's own recorded configuration (with --set), unless one is named: then it must
    # agree with the record on everything the run computes.
    given = study_of(args) if args.config_given else None
    overrides = [] if args.config_given else args.overrides
    out = Path(args.out) if args.out else None
    result = _evaluate(Path(args.run_dir), given, overrides, out)
    print(f"{args.run_dir}: {_matches(result)}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from audiopetl.study.selection import select, write_selection

    study = study_of(args)
    key = (args.dataset, args.model, args.strategy)
    runs = study.selection_runs(*key)  # a ConfigError when the strategy is not swept
    sweep = study.sweeps()[args.strategy]
    metric = study.training(next(iter(sweep["variants"]))).select_metric
    record = {
        "dataset": args.dataset,
        "model": args.model,
        "method": args.strategy,
        "select_on": sweep["select_on"],
        **select(runs, sweep["variants"], metric),
    }
    out = Path(args.out) if args.out else study.selection_path(*key)
    write_selection(out, record)
    best = next(row for row in record["variants"] if row["variant"] == record["selected"])
    print(
        f"{out}: {record['selected']} ({record['metric']} {best[record['metric']]:.4f}, mean of "
        f"{best['runs']} run(s); {len(record['variants'])} variants)"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import yaml

    from audiopetl.core.atomic import write_text
    from audiopetl.report.build import build_report
    from audiopetl.study.selection import read_selection

    study = study_of(args)
    cfg = study.config
    out = Path(args.out) if args.out else study.layout.experiment_dir()
    selections = {key: read_selection(study.selection_path(*key)) for key in study.selections()}
    winners = {key: str(record["selected"]) for key, record in selections.items()}
    written = build_report(cfg, study.runs(winners), out, selections)
    resolved = out / "config.resolved.yaml"
    write_text(resolved, yaml.safe_dump(cfg, sort_keys=False))
    for path in [*written, resolved]:
        print(path)
    return 0


def cmd_compare_envs(args: argparse.Namespace) -> int:
    from audiopetl.report.compare import ACCURACY_ATOL, FIRST_LOSS_RTOL, compare, write_comparison

    settings = {
        "first_loss_rtol": FIRST_LOSS_RTOL
        if args.first_loss_rtol is None
        else args.first_loss_rtol,
        "accuracy_atol": ACCURACY_ATOL if args.accuracy_atol is None else args.accuracy_atol,
    }
    result = compare(Path(args.results_a), Path(args.results_b), **settings)
    write_comparison(result, Path(args.out), settings)
    missing = len(result.only_a) + len(result.only_b)
    print(
        f"{args.out}: {'PASS' if result.passed else 'FAIL'} "
        f"({len(result.runs)} runs, {' vs '.join(result.environments)}"
        f"{f'; {missing} finished on one side only' if missing else ''})"
    )
    return 0 if result.passed else 1


def cmd_plan(args: argparse.Namespace) -> int:
    from audiopetl.study.plan import format_plan, make_plan, profile_retries

    study = study_of(args)
    estimates = make_plan(study, args.samples_per_s, args.measure)
    table, warnings = format_plan(study, estimates, profile_retries(args.profile), args.profile)
    print(table)
    for line in warnings:
        print(f"WARNING: {line}", file=sys.stderr)
    return 0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of samples per second")
    return value


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "train", cmd_train, "train one run: dataset x model x strategy x split (or fold) x seed"
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--strategy", required=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--fold", type=int, help="the test fold (a dataset whose folds rotate)")
    which.add_argument(
        "--split", help="the split by name: foldN, or official (a dataset's official split)"
    )
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", help="run folder (default: results/EXPERIMENT/runs/D/M/S/seedN/SPLIT)")
    p.add_argument(
        "--pretrained",
        help="start from this save_pretrained folder or hub id "
        "instead of the model's configured `pretrained`",
    )
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="then rebuild the run from its files and score it again (evaluation.json), as "
        "`audiopetl evaluate` does, in the same process",
    )

    p = add(
        "pretrain",
        cmd_pretrain,
        "train a model on its source task (models.M.pretrain) and save it in save_pretrained form",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--out", help="folder (default: results/EXPERIMENT/pretrain/MODEL)")

    p = add(
        "embed",
        cmd_embed,
        "compute a frozen model's embeddings of a dataset once, for its probe runs (cached "
        "under data/embeddings/DATASET/MODEL/)",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)

    p = add(
        "fetch-model",
        cmd_fetch_model,
        "mirror a model's hub checkpoint (models.M.pretrained at models.M.revision) under "
        "data/models/M, recording its commit and file hashes; an existing mirror is verified",
    )
    p.add_argument("--model", required=True)
    p.add_argument(
        "--force", action="store_true", help="mirror again, replacing the existing mirror"
    )

    p = add(
        "select",
        cmd_select,
        "choose a swept strategy's variant on its runs' mean validation metric "
        "(training.select_metric; never a test number) and write the choice",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--strategy", required=True, help="the swept strategy (its method's name)")
    p.add_argument(
        "--out", help="file (default: results/EXPERIMENT/sweeps/DATASET/MODEL/STRATEGY.json)"
    )

    p = add("report", cmd_report, "summary, tables and thesis figures of the study")
    p.add_argument("--out", help="folder (default: results/EXPERIMENT)")

    p = add(
        "compare-envs",
        cmd_compare_envs,
        "compare an experiment's results from two "
        "environments (e.g. modern vs legacy) and write a report",
    )
    p.add_argument("results_a", help="results/EXPERIMENT of the first environment")
    p.add_argument("results_b", help="results/EXPERIMENT of the second environment")
    p.add_argument("--out", required=True, help="Markdown report (a .json twin is written)")
    p.add_argument("--first-loss-rtol", type=float, help="default: 1e-3 (see report/compare.py)")
    p.add_argument("--accuracy-atol", type=float, help="default: 0.10 (see report/compare.py)")

    p = add(
        "plan",
        cmd_plan,
        "the study's training jobs with a runtime estimate each; warns where one will not fit "
        "the SLURM time limit (resources.train.runtime) of one attempt",
    )
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--samples-per-s",
        type=_positive,
        metavar="X",
        help="training throughput to assume (e.g. samples_per_s of a run's execution.json)",
    )
    how.add_argument(
        "--measure",
        action="store_true",
        help="time a few training steps of each model and strategy on random input on this "
        "machine's device (run it where training runs, e.g. under srun --gpus=1)",
    )
    from audiopetl.study.plan import DEFAULT_PROFILE

    p.add_argument(
        "--profile",
        type=Path,
        default=DEFAULT_PROFILE,
        help="the SLURM profile whose retries resume long jobs (default: %(default)s)",
    )

    p = add(
        "evaluate",
        cmd_evaluate,
        "score a finished run folder again from its files, with the configuration it recorded "
        "(--set changes where it runs, e.g. training.device=cpu) or a given one that agrees "
        "with it",
    )
    p.add_argument("run_dir")
    p.add_argument("--out", help="evaluation JSON (default: RUN_DIR/evaluation.json)")
