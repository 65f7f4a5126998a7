"""The commands after a study: predict on new audio with a trained run, export it for
transformers and peft users."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def cmd_predict(args: argparse.Namespace) -> int:
    from audiopetl.inference.model import load_model
    from audiopetl.inference.predict import (
        check_out,
        collect_inputs,
        predict_files,
        tables,
        windows_path,
        write_table,
    )

    out = Path(args.out)
    check_out(out)
    paths = collect_inputs(args.inputs)
    # The run's own settings; --set only where it runs (device, threads, eval_batch_size).
    trained = load_model(Path(args.run_dir), args.overrides)
    predictions = predict_files(
        trained, paths, hop_s=args.hop_s, aggregate=args.aggregate, skip_bad=args.skip_bad
    )
    if not predictions.clips:
        from audiopetl.core.errors import DataError

        skipped = len(predictions.skipped)
        raise DataError(f"no clip could be read ({skipped} skipped); nothing written")
    clips, windows = tables(trained, predictions, args.top_k)
    write_table(clips, out)
    written = [out]
    if args.windows:
        write_table(windows, windows_path(out))
        written.append(windows_path(out))
    for path, why in predictions.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    n_windows = sum(len(c.starts) for c in predictions.clips)
    skipped = f", {len(predictions.skipped)} skipped" if predictions.skipped else ""
    print(
        f"{', '.join(map(str, written))}: {len(predictions.clips)} clips ({n_windows} windows "
        f"of {trained.window_samples / trained.sample_rate:.3g} s){skipped}, scored by "
        f"{args.run_dir}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from audiopetl.inference.export import export_run

    exported = export_run(Path(args.run_dir), Path(args.out), args.overrides)
    ways = ["audiopetl.load_model"]
    if exported.transformers:
        ways.insert(0, "transformers (AutoModelForAudioClassification, pipeline)")
    if exported.peft_adapter:
        ways.insert(1, "peft (PeftModel.from_pretrained on base/)")
    print(f"{exported.folder}: loads with {', '.join(ways)}")
    if exported.why_not:
        print(f"transformers' pipeline cannot serve it: {exported.why_not}")
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "predict",
        cmd_predict,
        "score audio files with a trained run (or an export): its own front end and settings, "
        "clips longer than the training length in windows",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder or an export")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="audio files, folders (searched recursively) or CSV files with a `path` column",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="predictions (.csv or .parquet)")
    p.add_argument(
        "--hop-s",
        type=float,
        metavar="SECONDS",
        help="hop between windows of a long clip (default: half the training length)",
    )
    p.add_argument(
        "--aggregate",
        choices=("mean", "max"),
        help="how windows' probabilities make a clip's (default: mean; max for multi-label)",
    )
    p.add_argument("--top-k", type=int, default=5, help="labels listed per clip (default 5)")
    p.add_argument(
        "--windows", action="store_true", help="also write one row per window (OUT.windows.EXT)"
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave unreadable files out (listed on stderr) instead of stopping",
    )

    p = add(
        "export",
        cmd_export,
        "write a trained run as a folder transformers, peft or audiopetl.load_model loads "
        "(with a model card), checked by loading it back",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    p.add_argument("--out", required=True, metavar="DIR", help="the export folder")
