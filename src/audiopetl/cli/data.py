"""The data subcommands: fetch a dataset, cache its features, report on it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from audiopetl.cli.common import log, progress, study_of

if TYPE_CHECKING:
    from audiopetl.study import Study


def _say_subset(study: Study, dataset: str) -> None:
    from audiopetl.data.datasets import describe

    line = describe(study.dataset(dataset), study.raw_dir(dataset))
    if line is not None:
        print(f"dataset {dataset}: {line}", file=sys.stderr)


def _require_fetched(study: Study, dataset: str) -> None:
    """A dataset's manifest, or one line saying which fetch makes it: for a folder dataset
    data.skip_bad (--skip-bad) decides which files it lists, so a fetch without the flag and a
    command with it (or the other way round) name two different datasets."""
    from audiopetl.core.errors import DataError
    from audiopetl.data.datasets import get_kind

    path = study.manifest_path(dataset)
    if path.is_file():
        return
    settings = study.dataset(dataset)
    flag = " --skip-bad" if study.clips.skip_bad else ""
    why = ""
    if get_kind(settings.kind).skip_bad_decides_files:
        why = (
            f" (with{'' if flag else 'out'} --skip-bad: for a {settings.kind} dataset "
            "data.skip_bad decides which files it lists, so give every data command the same "
            "flag, or set data.skip_bad in the preset)"
        )
    raise DataError(f"{path}: manifest not found{why}; run `audiopetl fetch {dataset}{flag}` first")


def cmd_fetch(args: argparse.Namespace) -> int:
    from audiopetl.data.datasets import fetch, skipped_files

    study = study_of(args)
    path = fetch(
        study.dataset(args.dataset),
        study.raw_dir(args.dataset),
        downloads=study.layout.downloads(),
        skip_bad=study.clips.skip_bad,
        force=args.force,
        progress=progress(args),
    )
    _say_subset(study, args.dataset)
    for item in skipped_files(study.raw_dir(args.dataset)):
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    print(path)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from audiopetl.data.datasets import load_manifest
    from audiopetl.features.cache import build_cache, read_metadata

    study = study_of(args)
    model = args.model
    if args.features_id is not None:
        model = study.model_for_feature_id(args.dataset, args.features_id)
    elif model is not None:
        study.model(model)  # an unknown name is a config error naming the models
    out = Path(args.out) if args.out else study.cache_path(args.dataset, model)
    manifest_file = study.manifest_path(args.dataset)
    _require_fetched(study, args.dataset)
    if out.is_file() and not args.force and manifest_file.is_file():
        from audiopetl.core.checksums import file_sha256

        meta = read_metadata(out)
        if meta.get("manifest_sha256") == file_sha256(manifest_file):
            print(out)
            return 0
        log.info("%s was built from another manifest; rebuilding", out)
    manifest = load_manifest(study.dataset(args.dataset), study.raw_dir(args.dataset))
    _say_subset(study, args.dataset)
    result = build_cache(
        study.features(args.dataset, model),
        manifest,
        manifest_file,
        out,
        cache=study.cache,
        clips=study.clips,
        progress=progress(args),
    )
    for item in result.skipped:
        print(f"skipped {item['path']}: {item['error']}", file=sys.stderr)
    print(result.path)
    return 0


def cmd_data_report(args: argparse.Namespace) -> int:
    from audiopetl.core.atomic import write_json
    from audiopetl.data.datasets import describe, load_manifest, skipped_files
    from audiopetl.data.report import build_report, format_report
    from audiopetl.features.cachefile import verify

    study = study_of(args)
    dataset, raw = study.dataset(args.dataset), study.raw_dir(args.dataset)
    _require_fetched(study, args.dataset)
    manifest = load_manifest(dataset, raw)
    cache = study.cache_path(args.dataset)
    # The whole cache is read and its checksums verified: a damaged one stops the report.
    meta = verify(cache) if cache.is_file() else None
    report = build_report(
        dataset,
        study.features(args.dataset),
        manifest,
        meta,
        describe(dataset, raw),
        skipped_files(raw),
    )
    out = Path(args.out) if args.out else study.data_report_path(args.dataset)
    write_json(out, report)
    print(format_report(report, out))
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from audiopetl.core.atomic import write_json
    from audiopetl.study.splits import check_study_splits, study_split_sizes

    study = study_of(args)
    sizes = study_split_sizes(study, args.dataset)
    print(f"{'split':<10} {'rule':<22} {'train':>6} {'valid':>6} {'test':>6} {'least/class':>12}")
    for s in sizes:
        least = min(s.train_per_class.values()) if s.train_per_class else 0
        print(f"{s.name:<10} {s.rule:<22} {s.train:>6} {s.val:>6} {s.test:>6} {least:>12}")
    check_study_splits(study, args.dataset)  # the first problem as the error, exit 1
    if args.out:
        write_json(Path(args.out), {"dataset": args.dataset, "splits": [s.row() for s in sizes]})
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
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="report on the dataset fetched and cached with --skip-bad (the setting "
        "data.skip_bad; the same on every data command)",
    )

    p = add(
        "splits",
        cmd_splits,
        "the training, validation and test clips of every run the study makes of a dataset; "
        "exit 1 when a set is too small to learn or judge on (data.min_split_clips)",
    )
    p.add_argument("dataset")
    p.add_argument("--out", help="also write the sizes as JSON (what the workflow's job does)")
