"""Training from features larger than memory: a job streaming a cache several times the memory
it may use, next to the in-memory path on a cache that fits, and the cache build's rate.

    python benchmarks/streaming.py [--gb 4] [--limit-gb 1] [--fit-gb 0.5] [--epochs 1]
                                   [--strategy linear] [--keep DIR]

A project in a temporary folder (or --keep DIR) holds two synthetic datasets (10 classes, 5
folds, 1.3 s clips) cached at 1024 frames x 128 mel bins (AST's 10-s input; 256 KiB of float16
per clip, padding included): a large one of --gb GB of features and a small one of --fit-gb.
Each training job (the tiny AST, from a random initialisation, train/validation/test over the
5 folds, batch 32, one thread) runs in a process of its own:

  big, streamed   `training.stream: true`, under a memory limit of --limit-gb: a cgroup (v1 or
                  v2, when this user may make one; the page cache the kernel keeps for the
                  row file is reclaimable inside it), else only measured
  fit, memory     the small cache held in memory (today's path)
  fit, streamed   the same job streaming

Printed: cache build clips/s (audio synthesis excluded: decode, features, parquet), the row
copy's seconds, each job's training samples/s (steady epochs, from execution.json) and peak
resident memory (the process's own, from wait4), the limit it ran under, and the streamed to
in-memory samples/s ratio on the cache that fits.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "bench-stream"
ROW_BYTES = 2 * 1024 * 128
CLASSES, FOLDS = 10, 5


def per_class_fold(gb: float) -> int:
    return max(2, round(gb * 2**30 / ROW_BYTES / (CLASSES * FOLDS)))


def preset(big: int, fit: int) -> dict[str, Any]:
    synthetic = {"classes": CLASSES, "folds": FOLDS, "duration_s": 1.3, "sample_rate": 16000}
    return {
        "experiment": EXPERIMENT,
        "features": {"target_length": 1024},
        "datasets": {
            name: {
                "kind": "synthetic",
                "synthetic": {
                    **synthetic,
                    "class_offset": 0,
                    "clips_per_class_per_fold": n,
                    "snr_db": [3.0, 20.0],
                    "seed": 1,
                },
            }
            for name, n in (("big", big), ("fit", fit))
        },
        "training": {"batch_size": 32, "threads": 1, "split": "train_val_test"},
        "study": {"datasets": ["fit"], "models": ["tiny-ast"], "strategies": ["linear"]},
    }


def prepare(root: Path, args: argparse.Namespace) -> dict[str, float]:
    from audiopetl.cli.main import main

    shutil.copytree(REPO / "config", root / "config")
    spec = preset(per_class_fold(args.gb), per_class_fold(args.fit_gb))
    (root / "config" / "experiments" / f"{EXPERIMENT}.yaml").write_text(yaml.safe_dump(spec))
    figures: dict[str, float] = {}
    with contextlib.chdir(root), contextlib.redirect_stdout(io.StringIO()):
        for name in ("big", "fit"):
            if main(["fetch", name, "--quiet", "--experiment", EXPERIMENT]) != 0:
                sys.exit(f"audiopetl fetch {name} failed")
            started = time.perf_counter()
            if main(["cache", name, "--quiet", "--experiment", EXPERIMENT]) != 0:
                sys.exit(f"audiopetl cache {name} failed")
            figures[f"{name}_cache_s"] = time.perf_counter() - started
    return figures


def worker(root: Path, dataset: str, stream: bool, epochs: int, strategy: str) -> None:
    """One training job in this process; one JSON line on stdout."""
    from audiopetl.features.cache import read_metadata
    from audiopetl.features.rows import open_rows
    from audiopetl.study import load_study
    from audiopetl.training.run import run_trainer

    os.chdir(root)
    warnings.filterwarnings("ignore")
    study = load_study(root / "config" / "config.yaml", EXPERIMENT)
    out = root / "runs" / f"{dataset}-{'stream' if stream else 'memory'}"
    shutil.rmtree(out, ignore_errors=True)
    run = study.run(dataset, "tiny-ast", strategy, 1, 0, out=out, pretrained=None)
    run = run.with_training(epochs=epochs, stream=stream, min_accuracy_over_chance=None)
    with open("/proc/self/statm") as statm:  # resident memory before the job loads anything
        result: dict[str, Any] = {
            "before_gb": int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
        }
    if stream:  # the one-time copy, timed apart from training
        cache = study.cache_path(dataset)
        started = time.perf_counter()
        open_rows(cache, read_metadata(cache))
        result["row_copy_s"] = time.perf_counter() - started
    with contextlib.redirect_stderr(io.StringIO()):
        trainer = run_trainer(run, progress=False)
    seconds = [e["seconds"] for e in json.loads((out / "execution.json").read_text())["epochs"]]
    steady = seconds[1:] or seconds
    result.update(
        samples_per_s=len(trainer.train) * len(steady) / sum(steady),
        clips=len(trainer.train) + len(trainer.val or []) + len(trainer.test),
        feature_gb=sum(d.nbytes for d in (trainer.train, trainer.val, trainer.test) if d) / 2**30,
        streamed=trainer.runtime.streamed,
    )
    print(json.dumps(result))


def memory_cgroup(limit: int) -> tuple[Path, Path] | None:
    """A memory cgroup of ``limit`` bytes to move a child into (its folder and its procs
    file), or None where this user may not make one."""
    v1, v2 = Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")
    if (v1 / "memory.limit_in_bytes").exists():
        base, limit_file = v1, "memory.limit_in_bytes"
    elif "memory" in _read(v2 / "cgroup.controllers"):
        base, limit_file = v2, "memory.max"
    else:
        return None
    group = base / f"audiopetl-bench-{os.getpid()}"
    try:
        group.mkdir()
        (group / limit_file).write_text(str(limit))
        swap = group / "memory.memsw.limit_in_bytes"  # v1: no swap beyond the limit either
        if swap.exists():
            swap.write_text(str(limit))
    except OSError:
        with contextlib.suppress(OSError):
            group.rmdir()
        return None
    return group, group / "cgroup.procs"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def job(root: Path, args: argparse.Namespace, dataset: str, stream: bool, limit: int | None):
    cmd = [sys.executable, __file__, "--worker", str(root), dataset, str(int(stream))]
    cmd += ["--epochs", str(args.epochs), "--strategy", args.strategy]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    group = memory_cgroup(limit) if limit else None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # The child joins the cgroup before it runs Python: everything it allocates counts.
        join = (lambda: group[1].write_text(str(os.getpid()))) if group else None
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, preexec_fn=join)
        _, status, usage = os.wait4(proc.pid, 0)
        charged = _read(group[0] / "memory.max_usage_in_bytes") if group else ""
        charged = charged or (_read(group[0] / "memory.peak") if group else "")
        out.seek(0), err.seek(0)
        text, problems = out.read().decode(), err.read().decode()
    if group is not None:
        with contextlib.suppress(OSError):
            group[0].rmdir()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{dataset} stream={stream}: exit {code}\n{problems[-3000:]}")
    result = json.loads(text.strip().splitlines()[-1])
    result["peak_gb"] = usage.ru_maxrss * 1024 / 2**30
    result["charged_gb"] = int(charged) / 2**30 if charged.strip() else None
    result["limit"] = f"cgroup {limit / 2**30:g} GB" if group else "none (measured only)"
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        parser = argparse.ArgumentParser()
        parser.add_argument("--worker", nargs=3)
        parser.add_argument("--epochs", type=int)
        parser.add_argument("--strategy")
        ns = parser.parse_args()
        root, dataset, stream = ns.worker
        worker(Path(root), dataset, stream == "1", ns.epochs, ns.strategy)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=4.0, help="features of the large cache")
    parser.add_argument("--limit-gb", type=float, default=1.0, help="memory of its job")
    parser.add_argument("--fit-gb", type=float, default=0.5, help="features of the small one")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--strategy", default="linear")
    parser.add_argument("--keep", type=Path, help="build the project here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="audiopetl-stream-"))
    try:
        if not (root / "config").is_dir():
            root.mkdir(parents=True, exist_ok=True)
            built = prepare(root, args)
        else:
            built = {}
        big = per_class_fold(args.gb) * CLASSES * FOLDS
        for name, seconds in built.items():
            clips = big if name.startswith("big") else per_class_fold(args.fit_gb) * 50
            rate = clips / seconds
            print(f"cache build {name[:-8]}: {clips} clips in {seconds:.1f} s = {rate:.0f} clips/s")
        rows = [
            ("big, streamed", job(root, args, "big", True, int(args.limit_gb * 2**30))),
            ("fit, memory", job(root, args, "fit", False, None)),
            ("fit, streamed", job(root, args, "fit", True, None)),
        ]
        print(
            f"{'job':<15} {'clips':>6} {'feat GB':>8} {'samples/s':>10} {'peak GB':>8} "
            f"{'growth GB':>9} {'cgroup peak':>11}  limit"
        )
        for name, r in rows:
            charged = f"{r['charged_gb']:.2f}" if r["charged_gb"] is not None else "-"
            print(
                f"{name:<15} {r['clips']:>6} {r['feature_gb']:>8.2f} {r['samples_per_s']:>10.1f} "
                f"{r['peak_gb']:>8.2f} {r['peak_gb'] - r['before_gb']:>9.2f} {charged:>11}  "
                f"{r['limit']}"
                + (f" (row copy {r['row_copy_s']:.1f} s)" if "row_copy_s" in r else "")
            )
        print(
            "peak: the job's peak resident memory, shared libraries (torch's ~0.5 GB) included; "
            "growth: peak minus its memory before loading data and model; cgroup peak: what "
            "the limit counted (page cache included, reclaimable)"
        )
        ratio = rows[2][1]["samples_per_s"] / rows[1][1]["samples_per_s"]
        print(f"streamed / in-memory samples/s on the cache that fits: {ratio:.3f}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
