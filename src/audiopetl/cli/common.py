"""What every subcommand shares: the configuration options and how they resolve, the data
commands' leniency about training settings, progress bars only on a terminal."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from audiopetl.core.config import CONFIG_ENV, DEFAULT_CONFIG, EXPERIMENT_ENV

if TYPE_CHECKING:
    from audiopetl.study import Study

log = logging.getLogger("audiopetl")


def common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"base configuration (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--experiment",
        metavar="NAME",
        help="experiment preset from config/experiments/NAME.yaml applied over the base "
        f"(default: ${EXPERIMENT_ENV}, else the base file's `experiment`)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one setting; VALUE is YAML (true/false, 3, 1e-3, [1, 2]); repeatable",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an expected failure too"
    )
    parser.add_argument(
        "--log",
        metavar="FILE",
        help="append all output to FILE, each attempt headed by its number and SLURM job; "
        "the line saying why it failed also goes to stderr (what the workflow's rules use)",
    )


def resolve_config_args(args: argparse.Namespace) -> None:
    """Fill --config and --experiment from the workflow's variables where not given, and say
    so in the log: a job's command line does not name them (rules/common.smk says why)."""
    args.config_given = args.config is not None or args.experiment is not None
    from_env = {}
    if args.config is None:
        args.config = Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
        if os.environ.get(CONFIG_ENV):
            from_env[CONFIG_ENV] = str(args.config)
    if args.experiment is None and os.environ.get(EXPERIMENT_ENV):
        args.experiment = os.environ[EXPERIMENT_ENV]
        from_env[EXPERIMENT_ENV] = args.experiment
    args.config_given = args.config_given or bool(from_env)
    if from_env:
        log.info(
            "configuration from the workflow: %s",
            ", ".join(f"{k}={v}" for k, v in from_env.items()),
        )


# Commands that only prepare data: study settings about training never stop them.
DATA_COMMANDS = {"fetch", "cache", "data-report", "fetch-model"}


def study_of(args: argparse.Namespace) -> Study:
    """The command's configuration, validated and resolved (audiopetl.study): the one place a
    command turns its options into settings."""
    from audiopetl.study import load_study

    overrides = list(args.overrides)
    if getattr(args, "skip_bad", False):
        overrides.append("data.skip_bad=true")  # the flag is the setting, so it names the data
    return load_study(
        args.config, args.experiment, overrides, training=args.command not in DATA_COMMANDS
    )


def progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()
