"""Throughput of the feature cache on real audio: build, reference extractor, fold read.

    python benchmarks/cache_throughput.py [--clips N] [--ast-clips M] [--keep DIR]

The 83 real ESC-50 clips of ../shared/data/esc50-subset beside the project, or of
$AUDIOPETL_SHARED_DATA/esc50-subset (44.1 kHz, 5 s), are repeated to N
clips (symlinks with distinct names in a temporary folder), described as a `folder` dataset by a
CSV manifest (all in fold 1, so one fold holds N clips), and cached at AST's ESC-50 recipe
(16 kHz, 128 mel bins, target_length 512). Measured:

  a) `audiopetl cache` end to end, in-process (config, manifest, decode + resample, features,
     parquet write), in clips/s; the first run pays torch's one-off start-up, so both runs are
     shown. Also our extractor alone on pre-loaded waveforms, the number to set against b).
  b) transformers' ASTFeatureExtractor (the numpy path: torchaudio is not installed) on the same
     pre-loaded 16 kHz waveforms, in clips/s.
  c) reading the fold back with cache.read_folds (N x 512 x 128 float16), best of 3, in s.

Repeated files sit in the page cache after the first read, as a warm dataset would.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from audiopetl.cli.main import main as cli_main
from audiopetl.data.audio import read_audio
from audiopetl.data.datasets import load_manifest
from audiopetl.features.cache import read_folds
from audiopetl.features.fbank import LogMelExtractor
from audiopetl.study import load_study

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AUDIOPETL_SHARED_DATA") or REPO.parent / "shared" / "data")
SUBSET = SHARED_DATA / "esc50-subset"
DATASET = "bench"


def make_project(root: Path, n_clips: int) -> str:
    """Config copy, N symlinked clips and their CSV manifest; return the --set override."""
    shutil.copytree(REPO / "config", root / "config")
    meta = pd.read_csv(SUBSET / "meta" / "esc50.csv", dtype=str, keep_default_na=False)
    sources = sorted((SUBSET / "audio").glob("*.wav"))
    meta = meta[meta["filename"].isin([p.name for p in sources])].set_index("filename")
    audio = root / "audio"
    audio.mkdir()
    rows = []
    for i in range(n_clips):
        src = sources[i % len(sources)]
        name = f"r{i // len(sources):03d}_{src.name}"
        (audio / name).symlink_to(src)
        row = meta.loc[src.name]
        rows.append((name, row["category"], f"{i // len(sources)}-{row['src_file']}", 1))
    manifest = root / "bench.csv"
    pd.DataFrame(rows, columns=["path", "label", "group", "fold"]).to_csv(manifest, index=False)
    dataset = (
        f"{{kind: folder, folder: {{root: '{audio}', manifest: '{manifest}', pattern: null, "
        "folds: null}, features: {target_length: 512}}"
    )
    return f"datasets.{DATASET}={dataset}"


def run(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(list(args))
    if code != 0:
        sys.exit(f"audiopetl {' '.join(args)} failed with exit code {code}")
    return out.getvalue().strip()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=400, help="clips to cache (default 400)")
    parser.add_argument(
        "--ast-clips", type=int, default=83, help="clips for the slow reference (default 83)"
    )
    parser.add_argument("--keep", type=Path, help="build in this new folder and keep it")
    args = parser.parse_args()
    if not (SUBSET / "audio").is_dir():
        sys.exit(f"{SUBSET}: the real ESC-50 subset is needed")

    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True)
            root = args.keep.resolve()
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cachebench-")))
        stack.enter_context(contextlib.chdir(root))
        override = make_project(root, args.clips)
        common = ["--quiet", "--set", override]
        run("fetch", DATASET, *common)

        # a) end to end, twice
        builds = []
        for _ in range(2):
            seconds, path = timed(lambda: run("cache", DATASET, *common, "--force"))
            builds.append(seconds)
        cache = Path(path)
        size_mib = cache.stat().st_size / 2**20

        study = load_study("config/config.yaml", overrides=[override])
        settings = study.features(DATASET).record()
        # The manifest as the cache reads it: paths resolved against the folder's root.
        manifest = load_manifest(study.dataset(DATASET), study.raw_dir(DATASET))
        n_ref = min(args.ast_clips, args.clips)
        read_s, waves = min(
            (
                timed(lambda: [read_audio(p, 16000) for p in manifest["path"][:n_ref]])
                for _ in range(3)
            ),
            key=lambda t: t[0],
        )

        # a') our extractor alone, batches of cache.batch_size, best of 3
        extractor = LogMelExtractor(settings)
        batch = study.cache.batch_size
        ours_s = min(
            timed(lambda: [extractor(waves[i : i + batch]) for i in range(0, n_ref, batch)])[0]
            for _ in range(3)
        )

        # b) transformers' extractor (numpy path) on the same waveforms
        from transformers import ASTFeatureExtractor
        from transformers.utils import is_torchaudio_available

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            reference = ASTFeatureExtractor(
                max_length=settings["target_length"], mean=settings["mean"], std=settings["std"]
            )
            ast_s, ref = timed(lambda: reference(waves, sampling_rate=16000, return_tensors="np"))
        ours = extractor(waves)[0].numpy()
        max_diff = float(abs(ours - ref["input_values"]).max())

        # c) one fold back into memory, best of 3
        fold_s, features = min(
            (timed(lambda: read_folds(cache, [1])) for _ in range(3)), key=lambda t: t[0]
        )

    n = args.clips
    mib = features.features.numel() * 2 / 2**20
    e2e = n / min(builds)
    ast = n_ref / ast_s
    ours_rate = n_ref / ours_s
    print(
        f"cache throughput: {n} clips of real ESC-50 (83 distinct, 44.1 kHz, 5 s) -> "
        f"512 x 128 log-mels; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"cache.workers {study.cache.workers}, batch {batch}; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    backend = "torchaudio" if is_torchaudio_available() else "numpy"
    rows = [
        ("a) audiopetl cache, end to end, 1st run", n / builds[0], "clips/s", f"{builds[0]:.2f} s"),
        ("a) audiopetl cache, end to end, 2nd run", n / builds[1], "clips/s", f"{builds[1]:.2f} s"),
        ("   LogMelExtractor alone, pre-loaded", ours_rate, "clips/s", f"{ours_s:.2f} s/{n_ref}"),
        (
            "   read_audio (decode + resample), 1 thread",
            n_ref / read_s,
            "clips/s",
            f"{read_s:.2f} s/{n_ref}",
        ),
        (f"b) ASTFeatureExtractor ({backend} path)", ast, "clips/s", f"{ast_s:.2f} s/{n_ref}"),
        (
            "c) read_folds, one fold, best of 3",
            fold_s,
            "s",
            f"{len(features)} x 512 x 128 float16 ({mib:.0f} MiB in RAM, {size_mib:.0f} MiB file)",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, unit, note in rows:
        print(f"  {name:<{width}}  {value:9.3f} {unit:<7}  {note}")
    print(
        f"  speed-up over ASTFeatureExtractor: features alone x{ours_rate / ast:.1f}, "
        f"whole cache build x{e2e / ast:.1f}; max |ours - AST| = {max_diff:.2e}"
    )


if __name__ == "__main__":
    main()
