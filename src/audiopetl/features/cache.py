"""The log-mel feature cache: one parquet file per (dataset, feature settings).

Built once and read by every fold, model and strategy. Features are stored normalised, as
float16 bytes in a fixed-size binary column (fast to write and read; a list column is ~5x
slower), compressed with zstd. The file's metadata carries the feature settings, a hash of the
source manifest and the library versions, so a stale or foreign cache is recognised.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from audiopetl.core.atomic import atomic_path
from audiopetl.core.checksums import file_sha256
from audiopetl.core.errors import DataError
from audiopetl.core.settings import CacheSettings, ClipSettings, FeatureSettings
from audiopetl.data.audio import read_audio
from audiopetl.data.manifest import class_names
from audiopetl.features import FEATURE_VERSION, cachefile
from audiopetl.features.frontends import make_extractor
from audiopetl.features.rows import StreamedFeatures, open_rows


def library_versions() -> dict[str, str]:
    import soundfile
    import soxr

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "soundfile": soundfile.__version__,
        "soxr": soxr.__version__,
    }


@dataclass
class BuildResult:
    path: Path
    rows: int
    skipped: list[dict[str, str]] = field(default_factory=list)


def _batches(df: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(df), size):
        yield df.iloc[start : start + size]


def build_cache(
    features: FeatureSettings,
    manifest: pd.DataFrame,
    manifest_file: Path,
    out: Path,
    *,
    cache: CacheSettings,
    clips: ClipSettings,
    progress: bool = True,
) -> BuildResult:
    """Compute ``features`` for every clip of ``manifest`` and write them to ``out`` atomically.

    Memory stays bounded by one row group of ``cache.row_group_size`` rows. Bad clips raise
    DataError naming the file and the manifest row, unless ``clips.skip_bad``: then they are
    left out and listed in the metadata.
    """
    dataset = features.dataset
    skip_bad = clips.skip_bad
    extractor = make_extractor(features.values)
    n_values = extractor.target_length * extractor.num_mel_bins
    metadata = {
        "dataset": dataset,
        "feature_version": FEATURE_VERSION,
        "features": features.record(),
        "shape": [extractor.target_length, extractor.num_mel_bins],
        "dtype": "float16",
        "manifest_sha256": file_sha256(manifest_file),
        "class_names": class_names(manifest),
        "versions": library_versions(),
    }
    skipped: list[dict[str, str]] = []
    # Welford-free running sums of the unnormalised log-mels over real (unpadded) frames, so
    # the data report can tell whether the configured mean/std fit this dataset.
    stats = np.zeros(3)
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    rows_written = 0

    min_frames = clips.min_frames

    def load(item: tuple[int, str]) -> np.ndarray | DataError:
        row, path = item
        where = f"(manifest {manifest_file}, row {row + 2})"
        try:
            wave = read_audio(path, extractor.sample_rate, extractor.max_samples)
        except DataError as err:
            return DataError(f"{err} {where}")
        frames = extractor.num_frames(len(wave))
        if frames < min_frames:
            # Padding alone would make a blank example that still carries its label.
            return DataError(
                f"{path}: {len(wave) / extractor.sample_rate:.3f} s of audio give {frames} "
                f"frame(s), fewer than data.min_frames = {min_frames} {where}"
            )
        return wave

    with (
        atomic_path(out, ".parquet") as tmp,
        ThreadPoolExecutor(max_workers=cache.workers) as pool,
        tqdm(
            total=len(manifest), desc=f"cache {dataset}", unit="clip", disable=not progress
        ) as bar,
    ):
        writer = pq.ParquetWriter(
            tmp,
            cachefile.schema(n_values),
            compression="zstd",
            compression_level=cache.compression_level,
            # A CRC32 per data page, verified on every read: damage cannot pass for features.
            write_page_checksum=True,
            # Every clip's features are unique: a dictionary of them would only cost time.
            use_dictionary=["clip_id", "group"],
        )
        try:
            positions = {cid: i for i, cid in enumerate(manifest["clip_id"])}

            def submit(batch: pd.DataFrame) -> list[Future]:
                return [
                    pool.submit(load, (positions[c], p))
                    for c, p in zip(batch["clip_id"], batch["path"], strict=True)
                ]

            batches = list(_batches(manifest, cache.batch_size))
            pending_loads = submit(batches[0]) if batches else []
            for k, batch in enumerate(batches):
                loaded = [f.result() for f in pending_loads]
                # Decode the next batch while this one's features are computed.
                pending_loads = submit(batches[k + 1]) if k + 1 < len(batches) else []
                good = [i for i, w in enumerate(loaded) if not isinstance(w, DataError)]
                for i, w in enumerate(loaded):
                    if isinstance(w, DataError):
                        if not skip_bad:
                            raise w
                        skipped.append(
                            {
                                "clip_id": str(batch["clip_id"].iloc[i]),
                                "path": str(batch["path"].iloc[i]),
                                "error": str(w),
                            }
                        )
                bar.update(len(batch))
                if not good:
                    continue
                kept = batch.iloc[good]
                waves = [loaded[i] for i in good]
                feats, n_frames = extractor(waves)
                _accumulate(stats, feats, n_frames, extractor)
                pending.append(_record_batch(kept, feats, n_frames, n_values))
                pending_rows += len(kept)
                if pending_rows >= cache.row_group_size:
                    rows_written += _flush(writer, pending, cache.row_group_size)
                    pending_rows = 0
            rows_written += _flush(writer, pending, cache.row_group_size)
            if rows_written == 0:
                raise DataError(f"{manifest_file}: no clip could be read; no cache written")
            mean = stats[1] / stats[0]
            metadata["skipped"] = skipped
            metadata["observed"] = {
                # stats[0] counts values (frames x mel bins); report frames.
                "frames": int(stats[0]) // extractor.num_mel_bins,
                "mean": float(mean),
                "std": float(np.sqrt(max(stats[2] / stats[0] - mean**2, 0.0))),
            }
            metadata["rows"] = rows_written
            # Written last: the skipped clips and statistics are known only now.
            writer.add_key_value_metadata({cachefile.META_KEY: cachefile.seal(metadata)})
        finally:
            writer.close()
    return BuildResult(out, rows_written, skipped)


def _accumulate(
    stats: np.ndarray, feats: torch.Tensor, n_frames: Sequence[int], extractor: Any
) -> None:
    raw = extractor.unnormalised(feats)
    for i, n in enumerate(n_frames):
        valid = raw[i, : min(n, extractor.target_length)].double()
        stats[0] += valid.numel()
        stats[1] += float(valid.sum())
        stats[2] += float(valid.square().sum())


def _record_batch(
    kept: pd.DataFrame, feats: torch.Tensor, n_frames: Sequence[int], n_values: int
) -> pa.RecordBatch:
    blob = feats.to(torch.float16).numpy().tobytes()
    features = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(2 * n_values), len(kept), [None, pa.py_buffer(blob)]
    )
    return pa.record_batch(
        [
            pa.array(kept["clip_id"].astype(str).tolist(), pa.string()),
            pa.array(kept["label"].to_numpy(), pa.int32()),
            pa.array(kept["fold"].to_numpy(), pa.int32()),
            pa.array(kept["group"].astype(str).tolist(), pa.string()),
            pa.array(np.asarray(n_frames), pa.int32()),
            features,
        ],
        names=["clip_id", "label", "fold", "group", "n_frames", "features"],
    )


def _flush(writer: pq.ParquetWriter, pending: list[pa.RecordBatch], row_group_size: int) -> int:
    if not pending:
        return 0
    table = pa.Table.from_batches(pending, schema=writer.schema)
    writer.write_table(table, row_group_size=row_group_size)
    pending.clear()
    return table.num_rows


read_metadata = cachefile.read_metadata


@dataclass
class FeatureSet:
    """Rows of the cache: features stay float16 until a batch is used, in memory (a tensor)
    or, for a run whose features exceed its memory (training.stream), on disk."""

    features: torch.Tensor | StreamedFeatures  # (N, T, M) float16
    labels: torch.Tensor  # (N,) int64
    folds: np.ndarray
    clip_ids: list[str]
    n_frames: np.ndarray
    metadata: dict[str, Any]
    # A multi-label task's (N, classes) 0/1 targets (uint8); None for one label per clip.
    targets: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def nbytes(self) -> int:
        if isinstance(self.features, StreamedFeatures):
            return self.features.nbytes
        return self.features.numel() * self.features.element_size()  # 1.13: no Tensor.nbytes

    @property
    def streamed(self) -> bool:
        return isinstance(self.features, StreamedFeatures)


def read_folds(path: Path, folds: Sequence[int] | None = None) -> FeatureSet:
    """Load the rows of ``folds`` (all rows when None) into one tensor; every page's checksum
    is verified and every feature must be finite."""
    return _read(path, [("fold", "in", list(folds))] if folds is not None else None)


def read_clips(path: Path, clip_ids: Sequence[str]) -> FeatureSet:
    """Load the rows of ``clip_ids``, in the cache's order (the manifest's)."""
    return _read(path, [("clip_id", "in", list(clip_ids))])


class CacheStream:
    """A cache opened for streaming, once per run: its metadata, its row file (made once,
    audiopetl.features.rows) and every row's id and label; :meth:`clips` gives the rows of a
    split as :func:`read_clips` does (same order, labels, ids), features left on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metadata = read_metadata(path)
        self.rows = open_rows(path, self.metadata)
        columns = ["clip_id", "label", "fold", "n_frames"]
        self.table = cachefile.read_table(path, self.metadata, columns=columns)
        if self.table.num_rows != self.rows.rows:
            raise DataError(
                f"{path}: {self.table.num_rows} rows, its row file {self.rows.rows}; rerun"
            )

    def clips(self, clip_ids: Sequence[str]) -> FeatureSet:
        """Memory: the clips' ids and labels, not their features."""
        wanted = pa.array(list(clip_ids), pa.string())
        chosen = pc.is_in(self.table.column("clip_id"), value_set=wanted).to_numpy()
        positions = np.flatnonzero(chosen)
        table = self.table.take(pa.array(positions))
        return FeatureSet(
            features=StreamedFeatures(self.rows, positions),
            labels=torch.from_numpy(table.column("label").to_numpy().astype(np.int64)),
            folds=table.column("fold").to_numpy(),
            clip_ids=[str(c) for c in table.column("clip_id").to_pylist()],
            n_frames=table.column("n_frames").to_numpy(),
            metadata=self.metadata,
        )


def stream_clips(path: Path, clip_ids: Sequence[str]) -> FeatureSet:
    """The rows of ``clip_ids`` of one cache, streamed (a run opens a :class:`CacheStream`
    once for all its splits)."""
    return CacheStream(path).clips(clip_ids)


def _read(path: Path, filters: Any) -> FeatureSet:
    metadata = read_metadata(path)
    table = cachefile.read_table(path, metadata, filters=filters)
    values = cachefile.feature_values(table, metadata["shape"], metadata.get("dtype", "float16"))
    cachefile.check_finite(path, table, values, metadata)
    # Copy once: a zero-copy view would be read-only and tie the tensor to arrow's buffer.
    features = torch.from_numpy(values.copy())
    return FeatureSet(
        features=features,
        labels=torch.from_numpy(table.column("label").to_numpy().astype(np.int64)),
        folds=table.column("fold").to_numpy(),
        clip_ids=[str(c) for c in table.column("clip_id").to_pylist()],
        n_frames=table.column("n_frames").to_numpy(),
        metadata=metadata,
    )


def cache_folds(path: Path) -> list[int]:
    """The folds a cache holds."""
    metadata = read_metadata(path)
    table = cachefile.read_table(path, metadata, columns=["fold"])
    return sorted(set(table.column("fold").to_pylist()))
