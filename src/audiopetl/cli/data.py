"""The data subcommands: fetch a dataset, cache its features, report on it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from audiopetl.cli.common import config_of, log, progress


def _say_subset(cfg: dict[str, Any], dataset: str) -> None:
    from audiopetl.data.datasets import describe

    line = describe(cfg, dataset)
    if line is not None:
        print(f"dataset {dataset}: {line}", file=sys.stderr)


def cmd_fetch(args: argparse.Namespace) -> int:
    from audiopetl.data.datasets import fetch, skipped_files

    cfg = config_of(args)
    path = fetch(cfg, args.dataset, force=args.force, progress=progress(args))
    _say_subset(cfg, args.dataset)
    for item in skipped_files(cfg, args.dataset):
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    print(path)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from audiopetl.core.config import model_config, model_for_feature_id
    from audiopetl.core.paths import cache_path, manifest_path
    from audiopetl.data.datasets import load_manifest
    from audiopetl.features.cache import build_cache, read_metadata

    cfg = config_of(args)
    model = args.model
    if args.features_id is not None:
        model = model_for_feature_id(cfg, args.dataset, args.features_id)
    elif model is not None:
        model_config(cfg, model)  # an unknown name is a config error naming the models
    out = Path(args.out) if args.out else cache_path(cfg, args.dataset, model=model)
    manifest_file = manifest_path(cfg, args.dataset)
    # Without a manifest, load_manifest below says so (and how to make one).
    if out.is_file() and not args.force and manifest_file.is_file():
        from audiopetl.core.checksums import file_sha256

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
        progress=progress(args),
        model=model,
    )
    for item in result.skipped:
        print(f"skipped {item['path']}: {item['error']}", file=sys.stderr)
    print(result.path)
    return 0


def cmd_data_report(args: argparse.Namespace) -> int:
    from audiopetl.core.atomic import write_json
    from audiopetl.core.paths import cache_path, data_report_path
    from audiopetl.data.datasets import describe, load_manifest, skipped_files
    from audiopetl.data.report import build_report, format_report
    from audiopetl.features.cachefile import verify

    cfg = config_of(args)
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


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("fetch", cmd_fetch, "put a verified dataset under data/raw/DATASET-ID")
    p.add_argument("dataset", help="a dataset name from the config's `datasets`")
    p.add_argument("--force", action="store_true", help="fetch again even if present")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave unreadable files of a folder dataset out, listed with the reason "
        "(the setting data.skip_bad)",
    )

    p = add("cache", cmd_cache, "compute a dataset's feature cache (one parquet file)")
    p.add_argument("dataset")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--model", help="the front end this model reads (default: AST's fbank)", default=None
    )
    which.add_argument(
        "--features-id",
        help="the cache of this id (the hash in its file name; what the workflow passes)",
        default=None,
    )
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
