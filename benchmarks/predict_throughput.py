"""Prediction throughput on the CPU: clips per second and the real-time factor of
`audiopetl predict`'s path (decoding, resampling, windows, features, the model) on real audio.

    python benchmarks/predict_throughput.py [--shape tiny|ast-base] [--threads T] [--hop-s S]
                                            [--clips N]

Shapes (built from their config at random: the weights' values change no timing):
  tiny      the default study's tiny AST (hidden 64, 2 layers) on 128-frame windows (1.29 s)
  ast-base  AST-base's architecture (768 hidden, 12 layers, stride 10) on 512-frame windows
            (5.1 s), the reference study's ESC-50 input

Input: ../shared/data's ESC-50 clips (44.1 kHz, 5 s) and FSDD recordings (8 kHz, 0.14-2.28 s),
or AUDIOPETL_SHARED_DATA. Printed per set: clips, windows, audio seconds, wall seconds,
clips/s, windows/s and the real-time factor (wall seconds per second of audio; below 1 is
faster than real time). The first batch is run once before timing (warm-up).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AUDIOPETL_SHARED_DATA") or REPO.parent / "shared" / "data")
AST_BASE = [
    "models.tiny-ast.architecture.hidden_size=768",
    "models.tiny-ast.architecture.num_hidden_layers=12",
    "models.tiny-ast.architecture.num_attention_heads=12",
    "models.tiny-ast.architecture.intermediate_size=3072",
    "models.tiny-ast.architecture.frequency_stride=10",
    "models.tiny-ast.architecture.time_stride=10",
    "features.target_length=512",
    "training.eval_batch_size=8",
]


def trained_model(shape: str, threads: int) -> Any:
    """A Trained of the shape, from the default study's settings, at random."""
    import torch

    from audiopetl.inference.model import Trained
    from audiopetl.models.build import build_model
    from audiopetl.models.strategies import get_strategy
    from audiopetl.study import load_study

    overrides = [f"training.threads={threads}", "training.device=cpu"]
    if shape == "ast-base":
        overrides += AST_BASE
    study = load_study(REPO / "config" / "config.yaml", "default", overrides)
    run = study.run("synthetic", "tiny-ast", "full", 1, 0, pretrained=None)
    classes = [f"class_{i}" for i in range(50)]
    torch.manual_seed(0)
    model = get_strategy(run.strategy).apply(build_model(run.model, run.features, 50, None))
    torch.set_num_threads(threads)
    return Trained(
        model=model.eval(),
        run=run,
        classes=classes,
        threshold=0.5,
        device=torch.device("cpu"),
        precision="fp32",
        folder=REPO,
        record={},
    )


def measure(trained: Any, paths: list[Path], hop_s: float | None) -> dict[str, float]:
    from audiopetl.inference.predict import predict_files

    predict_files(trained, paths[:2], hop_s=hop_s)  # warm-up
    started = time.perf_counter()
    result = predict_files(trained, paths, hop_s=hop_s)
    wall = time.perf_counter() - started
    audio = sum(c.seconds for c in result.clips)
    windows = sum(len(c.starts) for c in result.clips)
    return {
        "clips": len(result.clips),
        "windows": windows,
        "audio_s": audio,
        "wall_s": wall,
        "clips_per_s": len(result.clips) / wall,
        "windows_per_s": windows / wall,
        "rtf": wall / audio,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("tiny", "ast-base"), default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hop-s", type=float, help="default: half a window")
    parser.add_argument("--clips", type=int, default=200, help="FSDD recordings used")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    esc50 = sorted((SHARED / "esc50-subset" / "audio").glob("*.wav"))
    fsdd = sorted((SHARED / "fsdd" / "recordings").glob("*.wav"))[:: max(1, 3000 // args.clips)]
    if not esc50 or not fsdd:
        sys.exit(f"predict_throughput: no real audio under {SHARED} (../shared/data)")
    trained = trained_model(args.shape, args.threads)
    width = trained.window_samples / trained.sample_rate
    print(
        f"shape {args.shape}: windows of {width:.2f} s, hop {args.hop_s or width / 2:.2f} s, "
        f"{args.threads} threads, batch {trained.run.training.eval_batch_size}, CPU"
    )
    print(f"{'set':<8}{'clips':>7}{'windows':>9}{'audio s':>9}{'wall s':>8}"
          f"{'clips/s':>9}{'win/s':>8}{'RTF':>8}")  # fmt: skip
    for name, paths in (("esc50", esc50), ("fsdd", fsdd)):
        m = measure(trained, paths, args.hop_s)
        print(
            f"{name:<8}{m['clips']:>7}{m['windows']:>9}{m['audio_s']:>9.1f}{m['wall_s']:>8.2f}"
            f"{m['clips_per_s']:>9.1f}{m['windows_per_s']:>8.1f}{m['rtf']:>8.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
