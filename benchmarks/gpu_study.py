"""The ESC-50 PETL study's speed on this machine: AST-base from its config, ESC-50-shaped data.

    python benchmarks/gpu_study.py [--device auto|cuda|cpu] [--strategies full,lora,...]
                                   [--train-clips N] [--val-clips N] [--frames T] [--batch B]
                                   [--epochs E] [--precision auto|fp32|bf16|fp16] [--compile]
                                   [--peak-tflops X]

What runs is the real training loop (audiopetl.training.trainer.Trainer: its precision, features
on the device, fused AdamW, deferred loss reading, the resume state saved after every epoch) on
the esc50-petl-ast preset's settings and methods, with AST-base's architecture built from its config
(random weights: speed does not depend on them; nothing is downloaded) and random features of
ESC-50's shape: per fold-epoch 1200 training clips (3 folds) and 400 validation clips of 500
frames x 128 mel bins (600 patch tokens + 2). Each strategy runs in its own process, so its peak
memory is its own.

On a CPU the default is smaller (the same architecture on 16 + 16 clips of 128 frames, batch 8)
and the study is projected from the throughput measured there.

Columns:
  s/epoch      one fold-epoch (training + validation), the mean of the epochs after the first
               (which pays one-off costs: kernel selection, compilation)
  samples/s    training clips per second over the same epochs
  TFLOP/s      FLOPs of an epoch / s per epoch. FLOPs are counted by torch.utils.flop_counter
               on one clip (forward + backward for training, forward for validation) at the
               measured shape, attention through SDPA's math kernel so its matmuls are counted:
               matmuls, convolutions and attention, 2 FLOPs per multiply-add; elementwise
               work (norms, activations, the optimizer) is not counted
  % peak       of the device's dense bf16/fp16 (or fp32) peak: known GPUs or --peak-tflops
  peak mem     GPU: torch.cuda.max_memory_allocated; CPU: the process's peak RSS
  study        5 folds x 50 epochs of this method at ESC-50's full shape, plus the 5 test
               passes: measured epochs on a GPU at full shape, else full-shape FLOPs / the
               TFLOP/s achieved here

Targets on one H100-class GPU: LoRA <= 3 s per epoch, the projected LoRA study <= 15 minutes,
every PETL method at batch 32 within 12 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PRESET = "esc50-petl-ast"
DATASET, MODEL = "esc50", "ast-audioset"
STRATEGIES = {  # the benchmark's names -> the preset's
    "full": "full",
    "linear": "linear",
    "lora": "lora",
    "adapter": "adapter-pfeiffer-par",
    "conformer": "conformer-pfeiffer-par",
}
# ESC-50 per fold: 3 training folds, 1 validation, 1 test, 400 clips each; 5 s -> 500 frames.
FULL = {"train_clips": 1200, "val_clips": 400, "test_clips": 400, "frames": 500, "batch": 32}
SMALL = {"train_clips": 16, "val_clips": 16, "frames": 128, "batch": 8}
FOLDS, EPOCHS = 5, 50
CLASSES, MEL_BINS = 50, 128
# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' data sheets:
# (bf16/fp16, tf32, fp32). Matched by substring of torch.cuda.get_device_name.
GPU_PEAKS = {
    "H200": (989.0, 494.0, 67.0),
    "H100 PCIe": (756.0, 378.0, 51.0),
    "H100": (989.0, 494.0, 67.0),  # SXM
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.0, 183.0, 91.6),
    "L4": (121.0, 60.0, 30.3),
    "A10": (125.0, 62.5, 31.2),
    "RTX 4090": (165.2, 82.6, 82.6),
    "V100": (125.0, 15.7, 15.7),  # fp16 only: no bf16, no tf32
}
H100_CLASS = ("H100", "H200")
TARGETS = {"lora_epoch_s": 3.0, "lora_study_min": 15.0, "petl_mem_gb": 12.0}


def study_of(device: str, precision: str, compile_: bool, epochs: int, batch: int, frames: int):
    from audiopetl.study import load_study

    architecture = {  # AST-base (ASTConfig's defaults, written out): 12 x 768, patches 16/10/10
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "patch_size": 16,
        "frequency_stride": 10,
        "time_stride": 10,
    }
    overrides = [
        f"models.{MODEL}.pretrained=null",
        f"models.{MODEL}.revision=null",
        f"models.{MODEL}.architecture={json.dumps(architecture)}",
        f"features.target_length={frames}",
        f"datasets.{DATASET}.features.target_length={frames}",
        f"training.device={device}",
        f"training.precision={precision}",
        f"training.compile={str(compile_).lower()}",
        f"training.epochs={epochs}",
        f"training.batch_size={batch}",
        f"training.threads={os.cpu_count() if device == 'cpu' else 8}",
    ]
    return load_study(REPO / "config" / "config.yaml", PRESET, overrides)


def feature_set(n: int, frames: int, fold: int, seed: int) -> Any:
    import numpy as np
    import torch

    from audiopetl.features.cache import FeatureSet

    generator = torch.Generator().manual_seed(seed)
    features = (torch.randn(n, frames, MEL_BINS, generator=generator) * 0.5).half()
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    return FeatureSet(
        features=features,
        labels=labels,
        folds=np.full(n, fold),
        clip_ids=[f"{fold}-{i}" for i in range(n)],
        n_frames=np.full(n, frames),
        metadata={},
    )


def clip_flops(trainer: Any, frames: int) -> tuple[int, int]:
    """FLOPs of one clip: (forward + backward, forward only), counted as the module says."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, frames, MEL_BINS, device=trainer.device)
    y = torch.zeros(1, dtype=torch.long, device=trainer.device)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        F.cross_entropy(trainer.forward(x), y).backward()
    train = counter.get_total_flops()
    trainer.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        trainer.forward(x)
    return train, counter.get_total_flops()


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One strategy in this process: build, count, train, measure."""
    import resource

    import torch

    from audiopetl.training.determinism import make_deterministic
    from audiopetl.training.signals import StopRequested
    from audiopetl.training.state import TrainState
    from audiopetl.training.trainer import Trainer

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    args.epochs = args.epochs or (3 if cuda else 2)
    base = FULL if cuda else SMALL
    shape = {k: base[k] if getattr(args, k) is None else getattr(args, k) for k in SMALL}
    study = study_of(
        device, args.precision, args.compile, args.epochs, shape["batch"], shape["frames"]
    )
    with tempfile.TemporaryDirectory(prefix="audiopetl-gpu-study-") as tmp:
        names = (DATASET, MODEL, STRATEGIES[args.one], 1, 0)
        out = Path(tmp) / "run"
        # Random weights (pretrained null): nothing is downloaded.
        trainer = Trainer(study.run(*names, out=out, pretrained=None))
        make_deterministic(0, trainer.training.threads, False, trainer.device)
        trainer.class_names = [str(i) for i in range(CLASSES)]
        trainer.train = feature_set(shape["train_clips"], shape["frames"], 2, 1)
        trainer.val = feature_set(shape["val_clips"], shape["frames"], 3, 2)
        trainer.test = trainer.val
        trainer.data_record = {"manifest_sha256": "random", "rows": 0}
        trainer.build()
        flops_train, flops_eval = clip_flops(trainer, shape["frames"])
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        epochs, state = [], TrainState()
        with StopRequested() as stop:
            for epoch in range(1, args.epochs + 1):
                trainer.training = trainer.training.replace(epochs=epoch)
                started = time.perf_counter()
                state = trainer.fit(state, stop)
                if cuda:
                    torch.cuda.synchronize()
                epochs.append(time.perf_counter() - started)
        peak_gb = (
            torch.cuda.max_memory_allocated() / 2**30
            if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        )
        steady = epochs[1:] or epochs
        epoch_s = sum(steady) / len(steady)
        train_s = sum(row["seconds"] for row in state.history[1:] or state.history) / len(steady)
        epoch_flops = flops_train * shape["train_clips"] + flops_eval * shape["val_clips"]
        # The same method at ESC-50's full shape, counted on one clip there.
        if shape["frames"] != FULL["frames"]:
            full_study = study_of(device, args.precision, False, 1, 1, FULL["frames"])
            trainer_full = Trainer(full_study.run(*names, out=out, pretrained=None))
            trainer_full.class_names, trainer_full.data_record = trainer.class_names, {}
            trainer_full.train = trainer_full.val = trainer_full.test = feature_set(
                1, FULL["frames"], 2, 3
            )
            trainer_full.build()
            full_train, full_eval = clip_flops(trainer_full, FULL["frames"])
        else:
            full_train, full_eval = flops_train, flops_eval
        full_epoch = full_train * FULL["train_clips"] + full_eval * FULL["val_clips"]
        full_test = full_eval * FULL["test_clips"]
        measured_full = all(shape[k] == FULL[k] for k in shape)
        achieved = epoch_flops / epoch_s
        study_s = (
            FOLDS * EPOCHS * epoch_s + FOLDS * full_test / achieved
            if measured_full
            else FOLDS * (EPOCHS * full_epoch + full_test) / achieved
        )
        return {
            "strategy": args.one,
            "preset_strategy": STRATEGIES[args.one],
            "trainable": trainer.params.trainable,
            "device": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
            "cuda": cuda,
            "runtime": trainer.runtime.record(),
            "shape": shape,
            "epochs_s": [round(e, 3) for e in epochs],
            "epoch_s": epoch_s,
            "samples_per_s": shape["train_clips"] / train_s,
            "tflops": achieved / 1e12,
            "flops_per_clip": {"train": flops_train, "eval": flops_eval},
            "full_epoch_pflop": full_epoch / 1e15,
            "peak_gb": peak_gb,
            "study_s": study_s,
            "projected": not measured_full,
        }


def peak_tflops(device: str, precision: str, given: float | None) -> float | None:
    if given is not None:
        return given
    for name, (low, tf32, fp32) in GPU_PEAKS.items():
        if name in device:
            return low if precision in ("bf16", "fp16") else tf32 if precision == "fp32" else fp32
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--train-clips", dest="train_clips", type=int)
    parser.add_argument("--val-clips", dest="val_clips", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--epochs", type=int, help="per method; default 3 on a GPU, 2 on a CPU")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", dest="peak", type=float, help="the device's peak")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a worker process
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.one:
        print(json.dumps(worker(args)))
        return 0
    try:
        import torch.utils.flop_counter  # noqa: F401
    except ImportError:
        sys.exit("gpu_study: needs torch >= 2.1 (torch.utils.flop_counter): the modern env")
    rows = []
    for name in args.strategies.split(","):
        if name not in STRATEGIES:
            sys.exit(f"gpu_study: unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
        result = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--one", name],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            sys.stderr.write(result.stderr[-3000:])
            sys.exit(f"gpu_study: {name} failed (exit {result.returncode})")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"  {name}: {rows[-1]['epochs_s']} s per epoch", file=sys.stderr, flush=True)
    report(rows, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    first = rows[0]
    runtime, shape = first["runtime"], first["shape"]
    peak = peak_tflops(first["device"], runtime["precision"], args.peak)
    print(
        f"{first['device']}: AST-base ({PRESET} settings), {runtime['precision']} "
        f"(asked {runtime['precision_requested']}), attention {runtime['attention']}, "
        f"compile {runtime['compile']}, fused AdamW {runtime['fused_optimizer']}, features on "
        f"the device {runtime['data_on_device']}; {shape['train_clips']} training + "
        f"{shape['val_clips']} validation clips of {shape['frames']} frames, batch "
        f"{shape['batch']}; {len(first['epochs_s'])} epochs, the first not counted"
    )
    memory = "GPU GB" if first["cuda"] else "RSS GB"
    how = "projected" if first["projected"] else "measured"
    print(
        f"\n| method | trainable | s/epoch | samples/s | TFLOP/s | % peak | {memory} | "
        f"PFLOP per full epoch | 5x50 study ({how}) |\n|---|" + "---:|" * 8
    )
    for r in rows:
        share = f"{100 * r['tflops'] / peak:.1f}" if peak else "n/a"
        print(
            f"| {r['strategy']} ({r['preset_strategy']}) | {r['trainable']:,} | "
            f"{r['epoch_s']:.2f} | {r['samples_per_s']:.1f} | {r['tflops']:.2f} | {share} | "
            f"{r['peak_gb']:.2f} | {r['full_epoch_pflop']:.3f} | {r['study_s'] / 60:.1f} min |"
        )
    if peak is None:
        print("\n% peak: this device's peak is not known; give it with --peak-tflops")
    if not any(name in first["device"] for name in H100_CLASS) or first["projected"]:
        print("\ntargets (H100-class GPU at full shape): not judged on this device")
        return
    by = {r["strategy"]: r for r in rows}
    checks = []
    if "lora" in by:
        checks.append(
            ("LoRA s/epoch", by["lora"]["epoch_s"], TARGETS["lora_epoch_s"], "s"),
        )
        checks.append(
            ("LoRA study", by["lora"]["study_s"] / 60, TARGETS["lora_study_min"], "min"),
        )
    petl = [r for r in rows if r["strategy"] != "full"]
    if petl and shape["batch"] == 32:
        worst = max(petl, key=lambda r: r["peak_gb"])
        checks.append(
            (f"PETL memory ({worst['strategy']})", worst["peak_gb"], TARGETS["petl_mem_gb"], "GB")
        )
    print("\ntargets:")
    for what, value, target, unit in checks:
        verdict = "met" if value <= target else "MISSED"
        print(f"  {what}: {value:.2f} {unit} (target <= {target:g}): {verdict}")


if __name__ == "__main__":
    raise SystemExit(main())
