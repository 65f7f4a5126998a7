"""The one command-line entry point: every Snakemake rule and DVC stage calls a subcommand here.

Each subcommand resolves the configuration the same way (config file -> experiment preset ->
``--set`` overrides) and fails with one clear line and a non-zero exit on bad input.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from audiopetl.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    EXPERIMENT_ENV,
    ConfigError,
    load_config,
)
from audiopetl.errors import AudiopetlError, Stopped

log = logging.getLogger("audiopetl")

EXIT_ERROR = 1
EXIT_CONFIG = 2


def _common(parser: argparse.ArgumentParser) -> None:
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


def _resolve_config_args(args: argparse.Namespace) -> None:
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


def _config(args: argparse.Namespace) -> dict[str, Any]:
    overrides = list(args.overrides)
    if getattr(args, "skip_bad", False):
        overrides.append("data.skip_bad=true")  # the flag is the setting, so it names the data
    return load_config(
        args.config, args.experiment, overrides, training=args.command not in DATA_COMMANDS
    )


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _say_subset(cfg: dict[str, Any], dataset: str) -> None:
    from audiopetl.datasets import describe

    line = describe(cfg, dataset)
    if line is not None:
        print(f"dataset {dataset}: {line}", file=sys.stderr)


def cmd_fetch(args: argparse.Namespace) -> int:
    from audiopetl.datasets import fetch, skipped_files

    cfg = _config(args)
    path = fetch(cfg, args.dataset, force=args.force, progress=_progress(args))
    _say_subset(cfg, args.dataset)
    for item in skipped_files(cfg, args.dataset):
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    print(path)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from audiopetl.cache import build_cache, read_metadata
    from audiopetl.datasets import load_manifest
    from audiopetl.paths import cache_path, manifest_path

    cfg = _config(args)
    out = Path(args.out) if args.out else cache_path(cfg, args.dataset)
    manifest_file = manifest_path(cfg, args.dataset)
    # Without a manifest, load_manifest below says so (and how to make one).
    if out.is_file() and not args.force and manifest_file.is_file():
        from audiopetl.checksums import file_sha256

        meta = read_metadata(out)
        if meta.get("manifest_sha256") == file_sha256(manifest_file):
            print(out)
            return 0
        log.info("%s was built from another manifest; rebuilding", out)
    manifest = load_manifest(cfg, args.dataset)
    _say_subset(cfg, args.dataset)
    result = build_cache(
        cfg,
        args.dataset,
        manifest,
        manifest_file,
        out,
        skip_bad=cfg["data"]["skip_bad"],
        progress=_progress(args),
    )
    for item in result.skipped:
        print(f"skipped {item['path']}: {item['error']}", file=sys.stderr)
    print(result.path)
    return 0


def cmd_data_report(args: argparse.Namespace) -> int:
    from audiopetl.atomic import write_json
    from audiopetl.cachefile import verify
    from audiopetl.data_report import build_report, format_report
    from audiopetl.datasets import describe, load_manifest, skipped_files
    from audiopetl.paths import cache_path, data_report_path

    cfg = _config(args)
    manifest = load_manifest(cfg, args.dataset)
    cache = cache_path(cfg, args.dataset)
    # The whole cache is read and its checksums verified: a damaged one stops the report.
    meta = verify(cache) if cache.is_file() else None
    report = build_report(
        cfg,
        args.dataset,
        manifest,
        meta,
        describe(cfg, args.dataset),
        skipped_files(cfg, args.dataset),
    )
    out = Path(args.out) if args.out else data_report_path(cfg, args.dataset)
    write_json(out, report)
    print(format_report(report, out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiopetl",
        description="Reproducible parameter-efficient transfer learning for audio models.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str):
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        p.set_defaults(func=func)
        return p

    p = add("fetch", cmd_fetch, "put a verified dataset under data/raw/DATASET-ID")
    p.add_argument("dataset", help="a dataset name from the config's `datasets`")
    p.add_argument("--force", action="store_true", help="fetch again even if present")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave unreadable files of a folder dataset out, listed with the reason "
        "(the setting data.skip_bad)",
    )

    p = add("cache", cmd_cache, "compute the log-mel feature cache (one parquet file)")
    p.add_argument("dataset")
    p.add_argument("--out", help="output file (default: data/features/DATASET-ID.parquet)")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave unreadable or too short clips out and list them in the data report "
        "(the setting data.skip_bad)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")

    p = add("data-report", cmd_data_report, "what is in a dataset and what is wrong with it")
    p.add_argument("dataset")
    p.add_argument("--out", help="JSON report (default: data/reports/DATASET.json)")

    from audiopetl import cli_train

    cli_train.register(add)
    from audiopetl import doctor

    doctor.register(add)
    return parser


def _quiet_library_progress() -> None:
    """No library progress bars in logs (SLURM files, Snakemake logs): they are noise there."""
    # Read by huggingface_hub, whose switch transformers' own bars follow; set before import.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _version() -> str:
    from audiopetl import __version__

    return f"audiopetl {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    # Our own messages at INFO; libraries (fontTools, matplotlib, ...) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    job_log = None
    if getattr(args, "log", None):
        from audiopetl.joblog import JobLog

        job_log = JobLog(Path(args.log), args.command)
    if hasattr(args, "config"):
        _resolve_config_args(args)
    if not _progress(args):
        _quiet_library_progress()
    try:
        code, line = _run(args)
    except Exception as err:  # a bug: its traceback goes to the log, its name to stderr too
        if job_log is not None:
            job_log.end(1, f"audiopetl {args.command}: internal error (a bug, traceback in "
                           f"{args.log}): {type(err).__name__}: {err}")  # fmt: skip
        raise
    if job_log is not None:
        job_log.end(code, line)
    elif line:
        print(line, file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> tuple[int, str | None]:
    """The command's exit status, and the one line that says why it failed."""
    try:
        return int(args.func(args) or 0), None
    except ConfigError as err:
        if args.debug:
            raise
        return EXIT_CONFIG, f"audiopetl {args.command}: config error: {err}"
    except AudiopetlError as err:
        if args.debug:
            raise
        return EXIT_ERROR, f"audiopetl {args.command}: error: {err}"
    except OSError as err:  # the machine's: a full disk, a read-only folder, a missing file
        if args.debug:
            raise
        from audiopetl.failures import one_line

        return EXIT_ERROR, f"audiopetl {args.command}: error: {one_line(err)}"
    except Stopped as stop:  # a planned stop before a time limit, not a failure
        return stop.code, f"audiopetl {args.command}: {stop}"
