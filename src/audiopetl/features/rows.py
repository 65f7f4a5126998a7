"""A cache's features as fixed-size rows on disk, for runs whose features do not fit in memory.

The parquet cache is compressed by row group, so reading one clip means decompressing its
whole group: fine for reading folds whole, ruinous for a shuffled epoch. The first run that
streams a cache therefore copies its features once, a row group at a time (every page
checksum verified, every value checked finite), into ``.NAME.rows`` beside it: raw float16
rows in the cache's order, with ``.NAME.rows.json`` holding what it was made from and a
CRC32 per row. A run then reads the rows of each batch with ``pread`` into its own buffer
and checks their CRC32s, so its memory is a few batches whatever the dataset's size (the
page cache the kernel keeps is reclaimable and not the process's), and damage to the copy is
found on the read that meets it. ``np.memmap`` would be shorter, but every page it touches
counts in the process's resident memory until the kernel evicts it, which makes a memory
bound impossible to state or to test.

A row file that does not match its cache (rebuilt since, or another size) is made again; the
copy is written atomically and under a lock, so jobs that start together make it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from audiopetl.core import paths
from audiopetl.core.atomic import atomic_path, write_json
from audiopetl.core.errors import DataError
from audiopetl.features import cachefile

ROW_FORMAT = 1


def _source(cache: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """What identifies the cache a row file was copied from: its metadata's digest (the data
    and settings it holds) and the file itself (a rebuilt cache is another file)."""
    stat = cache.stat()
    return {
        "format": ROW_FORMAT,
        "cache": cache.name,
        # The metadata as read (and verified) already: no second read of the footer.
        "metadata_sha256": hashlib.sha256(
            json.dumps(metadata, sort_keys=True).encode()
        ).hexdigest(),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "shape": list(metadata["shape"]),
    }


class RowFile:
    """The rows of one cache on disk, read by position with every row's CRC32 checked."""

    def __init__(self, path: Path, index: dict[str, Any], dataset: str | None) -> None:
        self.path = path
        self.shape = tuple(index["source"]["shape"])
        self.rows = int(index["rows"])
        self.crc = np.asarray(index["crc32"], dtype=np.uint32)
        self.row_bytes = 2 * self.shape[0] * self.shape[1]
        self.dataset = dataset
        self._fd = os.open(path, os.O_RDONLY)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def read(self, positions: Sequence[int] | np.ndarray, out: np.ndarray | None = None):
        """The rows at ``positions`` (in that order) as a (k, frames, bins) float16 array,
        read into ``out`` when given (pinned host memory, for a device)."""
        positions = np.asarray(positions, dtype=np.int64)
        if out is None:
            out = np.empty((len(positions), *self.shape), dtype=np.float16)
        flat = out.reshape(len(positions), self.row_bytes // 2).view(np.uint8)
        for k, pos in enumerate(positions.tolist()):
            view = memoryview(flat[k])
            got = os.preadv(self._fd, [view], pos * self.row_bytes)
            if got != self.row_bytes or zlib.crc32(view) != int(self.crc[pos]):
                raise DataError(
                    f"{self.path}: row {pos} of the streamed copy of a feature cache is "
                    f"damaged (CRC32 or length differs); delete it and rerun (it is copied "
                    f"again from {self.dataset or 'its'} cache)"
                )
        return out


def open_rows(cache: Path, metadata: dict[str, Any]) -> RowFile:
    """The row file of ``cache``, made first when it is missing or was made from another."""
    target = paths.stream_rows(cache)
    index_path = target.with_name(target.name + ".json")
    source = _source(cache, metadata)
    with FileLock(str(target.with_name(target.name + ".lock"))):
        index = _read_index(index_path)
        size = target.stat().st_size if target.is_file() else -1
        expected = 2 * source["shape"][0] * source["shape"][1] * int(index.get("rows", -1))
        if index.get("source") != source or size != expected:
            index = _copy(cache, metadata, target, index_path, source)
    return RowFile(target, index, metadata.get("dataset"))


def _read_index(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _copy(
    cache: Path, metadata: dict[str, Any], target: Path, index_path: Path, source: dict
) -> dict[str, Any]:
    """Copy the cache's features into ``target`` a row group at a time (bounded memory)."""
    crc: list[int] = []
    try:
        parquet = pq.ParquetFile(cache, page_checksum_verification=True)
        with atomic_path(target) as tmp, open(tmp, "wb") as out:
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=["clip_id", "features"])
                values = cachefile.feature_values(table, metadata["shape"])
                cachefile.check_finite(cache, table, values, metadata)
                for row in values:
                    data = row.tobytes()
                    crc.append(zlib.crc32(data))
                    out.write(data)
    except (OSError, pa.ArrowException) as err:
        raise DataError(
            f"{cache}: the feature cache is damaged ({str(err).splitlines()[0]}); "
            f"{cachefile.rebuild_hint(metadata.get('dataset'))}"
        ) from err
    index = {"source": source, "rows": len(crc), "crc32": crc}
    write_json(index_path, index)
    return index


class StreamedFeatures:
    """A split's features left on disk: the rows of a :class:`RowFile` at ``positions``,
    read a batch at a time. Indexing matches an in-memory (N, frames, bins) float16 tensor's."""

    def __init__(self, rows: RowFile, positions: np.ndarray) -> None:
        self.rows = rows
        self.positions = np.asarray(positions, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.positions), *self.rows.shape)

    @property
    def nbytes(self) -> int:
        return len(self.positions) * self.rows.row_bytes

    def take(self, idx: np.ndarray, pin: bool = False):
        """The rows ``idx`` of this split as a float16 torch tensor (in pinned memory for a
        CUDA device's asynchronous copy)."""
        import torch

        out = torch.empty((len(idx), *self.rows.shape), dtype=torch.float16, pin_memory=pin)
        self.rows.read(self.positions[idx], out.numpy())
        return out
