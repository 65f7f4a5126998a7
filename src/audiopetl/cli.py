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
from audiopetl.errors import AudiopetlError

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


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return load_config(args.config, args.experiment, args.overrides)


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _say_subset(cfg: dict[str, Any], dataset: str) -> None:
    from audiopetl.datasets import describe

    line = describe(cfg, dataset)
    if line is not None:
        print(f"dataset {dataset}: {line}", file=sys.stderr)


def cmd_fetch(args: argparse.Namespace) -> int:
    from audiopetl.datasets import fetch

    cfg = _config(args)
    path = fetch(cfg, args.dataset, force=args.force, progress=_progress(args))
    _say_subset(cfg, args.dataset)
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
        skip_bad=args.skip_bad,
        progress=_progress(args),
    )
    for item in result.skipped:
        log.warning("skipped %s: %s", item["path"], item["error"])
    print(result.path)
    return 0


def cmd_data_report(args: argparse.Namespace) -> int:
    from audiopetl.atomic import write_json
    from audiopetl.cache import read_metadata
    from audiopetl.data_report import build_report, format_report
    from audiopetl.datasets import load_manifest
    from audiopetl.paths import cache_path, data_report_path

    cfg = _config(args)
    manifest = load_manifest(cfg, args.dataset)
    cache = cache_path(cfg, args.dataset)
    meta = read_metadata(cache) if cache.is_file() else None
    from audiopetl.datasets import describe

    report = build_report(cfg, args.dataset, manifest, meta, describe(cfg, args.dataset))
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

    p = add("fetch", cmd_fetch, "put a verified dataset under data/raw/DATASET")
    p.add_argument("dataset", help="a dataset name from the config's `datasets`")
    p.add_argument("--force", action="store_true", help="fetch again even if present")

    p = add("cache", cmd_cache, "compute the log-mel feature cache (one parquet file)")
    p.add_argument("dataset")
    p.add_argument("--out", help="output file (default: data/features/DATASET-ID.parquet)")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave unreadable clips out and list them in the data report",
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
    if hasattr(args, "config"):
        _resolve_config_args(args)
    if not _progress(args):
        _quiet_library_progress()
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"audiopetl {args.command}: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except AudiopetlError as err:
        print(f"audiopetl {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
