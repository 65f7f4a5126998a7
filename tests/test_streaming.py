"""Features larger than memory: a run streams them from the cache's row file (made once beside
the cache) a batch at a time, with the same results, bit for bit, as one holding them in
memory; its memory grows by a few batches, not by the features; damage to the copy is found."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from training_helpers import (  # noqa: F401
    QuickProject,
    assert_bitwise_equal,
    in_quick_project,
    load_weights,
    quick_lora_run,
    quick_project,
    restore_torch_globals,
    run_in,
    train_args,
)

from audiopetl.core import paths
from audiopetl.core.errors import DataError
from audiopetl.features import cachefile
from audiopetl.features.cache import read_clips, read_metadata, stream_clips
from audiopetl.features.rows import open_rows
from audiopetl.study import load_study
from audiopetl.training.data import BatchSource, epoch_order

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(in_quick_project: Path, tmp_path: Path) -> Path:  # noqa: F811
    """A private copy of the quick target dataset's cache."""
    study = load_study("config/config.yaml", "quick", [])
    copy = tmp_path / "features" / study.cache_path("synthetic").name
    copy.parent.mkdir()
    shutil.copy2(study.cache_path("synthetic"), copy)
    return copy


@pytest.mark.slow
def test_streamed_run_is_bitwise_the_in_memory_run(
    quick_project: QuickProject,  # noqa: F811
    quick_lora_run: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "streamed"
    code, _, err = run_in(quick_project.root, train_args("lora", out, "training.stream=true"))
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["runtime"]["streamed"] is True
    assert json.loads((quick_lora_run / "run.json").read_text())["runtime"]["streamed"] is False
    assert_bitwise_equal(load_weights(out), load_weights(quick_lora_run))
    for name in ("metrics.json", "predictions.parquet", "history.csv"):
        if name == "history.csv":  # its seconds and samples/s columns are timings
            cols = ["epoch", "step", "train_loss", "val_loss", "val_metric", "lr"]
            a, b = (pd.read_csv(d / name)[cols] for d in (out, quick_lora_run))
            assert a.equals(b)
        else:
            assert (out / name).read_bytes() == (quick_lora_run / name).read_bytes(), name


def test_streamed_set_reads_what_memory_holds(cache: Path) -> None:
    ids = sorted(pq.read_table(cache, columns=["clip_id"]).column("clip_id").to_pylist())[::3]
    held, streamed = read_clips(cache, ids), stream_clips(cache, ids)
    assert streamed.streamed and not held.streamed
    assert streamed.clip_ids == held.clip_ids and torch.equal(streamed.labels, held.labels)
    assert streamed.nbytes == held.nbytes
    cpu = torch.device("cpu")
    memory, disk = BatchSource(held, cpu, False), BatchSource(streamed, cpu, False)
    batches = list(epoch_order(len(held), 3, 1).split(5))
    disk.prefetch(batches[:2])
    for k, idx in enumerate(batches):
        disk.prefetch(batches[k + 2 : k + 3])
        x, y = disk.batch(idx)
        x0, y0 = memory.batch(idx)
        assert x.dtype == torch.float32 and x.numpy().tobytes() == x0.numpy().tobytes()
        assert torch.equal(y, y0)
    # A batch that was not announced (a stop, then another order) is read directly.
    idx = torch.tensor([4, 0, 2])
    assert torch.equal(disk.batch(idx)[0], memory.batch(idx)[0])


def test_row_file_is_made_once_and_again_for_another_cache(cache: Path) -> None:
    metadata = read_metadata(cache)
    rows_path = paths.stream_rows(cache)
    rows_path.unlink(missing_ok=True)
    first = open_rows(cache, metadata)
    assert rows_path.is_file() and first.rows == metadata["rows"]
    made = rows_path.stat().st_mtime_ns
    open_rows(cache, metadata)
    assert rows_path.stat().st_mtime_ns == made  # reused
    # A rebuilt cache (another file) gets a new copy.
    os.utime(cache, ns=(made + 10**9, made + 10**9))
    open_rows(cache, metadata)
    assert rows_path.stat().st_mtime_ns != made
    # A truncated copy too.
    with open(rows_path, "r+b") as f:
        f.truncate(first.row_bytes * 2)
    again = open_rows(cache, metadata)
    assert rows_path.stat().st_size == again.rows * again.row_bytes


def test_damaged_row_is_one_line_naming_the_copy(cache: Path) -> None:
    rows = open_rows(cache, read_metadata(cache))
    with open(rows.path, "r+b") as f:
        f.seek(rows.row_bytes * 5 + 17)
        byte = f.read(1)
        f.seek(rows.row_bytes * 5 + 17)
        f.write(bytes([byte[0] ^ 0xFF]))
    damaged = open_rows(cache, read_metadata(cache))  # same size, same source: not remade
    damaged.read([0, 1])
    with pytest.raises(DataError, match=r"row 5 of the streamed copy .* damaged") as err:
        damaged.read([4, 5])
    assert "\n" not in str(err.value) and str(rows.path) in str(err.value)


def test_auto_streams_over_the_memory_setting(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "auto"
    code, _, err = run_in(
        in_quick_project,
        train_args("linear", out, "training.feature_memory_gb=0.001", "training.epochs=1"),
    )
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["runtime"]["streamed"] is True


# -- memory: a cache of ~400 MB of features read an epoch through, held or streamed --------
ROWS, FRAMES, BINS = 1600, 1024, 128
ROW_BYTES = 2 * FRAMES * BINS
BATCH = 32


@pytest.fixture(scope="module")
def big_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache file of random features several times a streamed run's working memory."""
    path = tmp_path_factory.mktemp("big") / "data" / "features" / "big-0.parquet"
    path.parent.mkdir(parents=True)
    metadata = {"dataset": "big", "shape": [FRAMES, BINS], "rows": ROWS}
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, cachefile.schema(FRAMES * BINS), compression="none") as w:
        for start in range(0, ROWS, 200):
            n = min(200, ROWS - start)
            blob = rng.standard_normal((n, FRAMES * BINS), dtype=np.float32)
            features = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(ROW_BYTES), n, [None, pa.py_buffer(blob.astype(np.float16).tobytes())]
            )
            w.write_table(
                pa.table(
                    {
                        "clip_id": [f"c{start + i:05d}" for i in range(n)],
                        "label": pa.array(np.arange(n) % 4, pa.int32()),
                        "fold": pa.array(np.ones(n, dtype=np.int32)),
                        "group": [f"c{start + i:05d}" for i in range(n)],
                        "n_frames": pa.array(np.full(n, FRAMES, dtype=np.int32)),
                        "features": features,
                    },
                    schema=cachefile.schema(FRAMES * BINS),
                )
            )
        w.add_key_value_metadata({cachefile.META_KEY: cachefile.seal(metadata)})
    open_rows(path, read_metadata(path))  # the one-time copy, outside the measured process
    return path


EPOCH = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from audiopetl.features.cache import read_clips, stream_clips
    from audiopetl.training.data import BatchSource, epoch_order

    def peak():
        # This process's own high-water mark (VmHWM): ru_maxrss would carry over the peak of
        # the process that forked it (Linux keeps it across exec), e.g. a large pytest.
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    cache, mode, batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    ids = [f"c{i:05d}" for i in range(int(sys.argv[4]))]
    before = peak()
    data = (stream_clips if mode == "stream" else read_clips)(cache, ids)
    source = BatchSource(data, torch.device("cpu"), False)
    batches = list(epoch_order(len(data), 0, 0).split(batch))
    total = 0.0
    source.prefetch(batches[:1])
    for k, idx in enumerate(batches):
        source.prefetch(batches[k + 1 : k + 2])
        total += float(source.batch(idx)[0][:, 0, 0].sum())
    print(json.dumps({"growth": peak() - before, "total": total}))
    """
)


def epoch_growth(cache: Path, mode: str) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", EPOCH, str(cache), mode, str(BATCH), str(ROWS)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_streaming_memory_is_batches_not_the_features(big_cache: Path) -> None:
    features = ROWS * ROW_BYTES  # 419 MB
    held = epoch_growth(big_cache, "memory")
    streamed = epoch_growth(big_cache, "stream")
    assert held["total"] == streamed["total"]
    # Held: the features at least once (arrow's buffer and the tensor, briefly twice).
    assert held["growth"] > features
    # Streamed: a few batches (float16 reads, the float32 copy), the ids and labels, and
    # torch's first allocations and lazily loaded code (~100 MB, whatever the data): well under
    # the features.
    assert streamed["growth"] < features / 2 < held["growth"] / 2, (streamed, held)
