"""The feature cache's file format, and its integrity: what can tell a good cache from a
damaged one without torch (the workflow asks here whenever it builds its DAG).

A cache is a parquet file with one row per clip (features as float16 bytes in a fixed-size
binary column) and audiopetl's metadata in the footer. Damage is caught by libraries, not by
hand: pyarrow writes a CRC32 checksum into every data page and verifies it on every read, and
the metadata carries the sha256 of its own JSON. A cache whose checksums fail, whose metadata
does not match its digest, or whose features hold NaN or Inf is refused, naming the file and
what rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from audiopetl.core.errors import DataError

META_KEY = b"audiopetl"
# Bumped when the file layout changes; older caches are refused with the command to rebuild.
FORMAT = 2
COLUMNS = ["clip_id", "label", "fold", "group", "n_frames", "features"]


def schema(n_values: int, itemsize: int = 2) -> pa.Schema:
    """The columns of a cache whose rows hold ``n_values`` values of ``itemsize`` bytes each
    (float16 features; a probe's embedding cache holds float32)."""
    return pa.schema(
        [
            ("clip_id", pa.string()),
            ("label", pa.int32()),
            ("fold", pa.int32()),
            ("group", pa.string()),
            ("n_frames", pa.int32()),
            ("features", pa.binary(itemsize * n_values)),
        ]
    )


def rebuild_hint(dataset: str | None) -> str:
    name = dataset or "DATASET"
    return f"rebuild it: `audiopetl cache {name} --force` (the workflow rebuilds it by itself)"


def seal(metadata: dict[str, Any]) -> bytes:
    """The metadata as stored: its JSON with the sha256 of that JSON beside it."""
    body = json.dumps(metadata, sort_keys=True)
    digest = hashlib.sha256(body.encode()).hexdigest()
    return json.dumps({"format": FORMAT, "metadata": body, "sha256": digest}).encode()


def read_metadata(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: feature cache not found; run `audiopetl cache` first")
    try:
        stored = pq.read_metadata(path).metadata or {}
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(
            f"{path}: the feature cache is damaged (not a readable parquet file: {err}); "
            f"{rebuild_hint(None)}"
        ) from err
    if META_KEY not in stored:
        raise DataError(f"{path}: not an audiopetl feature cache (no metadata)")
    try:
        envelope = json.loads(stored[META_KEY])
        body = envelope["metadata"]
        intact = hashlib.sha256(body.encode()).hexdigest() == envelope["sha256"]
        metadata = json.loads(body) if intact else None
    except (ValueError, KeyError, TypeError, AttributeError):
        envelope, metadata = {}, None
    if envelope.get("format") != FORMAT:
        raise DataError(
            f"{path}: a feature cache of another format (an older audiopetl, without "
            f"checksums); {rebuild_hint(None)}"
        )
    if metadata is None:
        raise DataError(
            f"{path}: the feature cache is damaged (its metadata does not match its sha256); "
            f"{rebuild_hint(None)}"
        )
    return metadata


def read_table(path: Path, metadata: dict[str, Any], filters: Any = None, columns: Any = None):
    """Rows of the cache with every page's checksum verified; damage is a DataError."""
    try:
        return pq.read_table(
            path, filters=filters, columns=columns, page_checksum_verification=True
        )
    except (OSError, pa.ArrowException) as err:
        raise DataError(
            f"{path}: the feature cache is damaged ({str(err).splitlines()[0]}); "
            f"{rebuild_hint(metadata.get('dataset'))}"
        ) from err


def feature_values(table: pa.Table, shape: list[int], dtype: str = "float16") -> np.ndarray:
    """The features column as a read-only (rows, frames, bins) view, of the cache's dtype."""
    column = table.column("features").combine_chunks()
    kind = np.dtype(dtype)
    width = kind.itemsize * shape[0] * shape[1]
    values = np.frombuffer(
        column.buffers()[1],
        dtype=kind,
        count=len(column) * width // kind.itemsize,
        offset=column.offset * width,
    )
    return values.reshape(len(column), *shape)


def check_finite(path: Path, table: pa.Table, values: np.ndarray, metadata: dict) -> None:
    """NaN or Inf features are damage too: name the rows and clips."""
    # Over every axis but the rows' (a reshape to (rows, -1) fails when no row matched).
    bad = np.flatnonzero(~np.isfinite(values).all(axis=tuple(range(1, values.ndim))))
    if len(bad):
        clips = table.column("clip_id").take(pa.array(bad[:5])).to_pylist()
        raise DataError(
            f"{path}: {len(bad)} row(s) of the feature cache hold NaN or Inf (rows "
            f"{', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}; clips "
            f"{', '.join(clips)}); {rebuild_hint(metadata.get('dataset'))}"
        )


def verify(path: Path) -> dict[str, Any]:
    """Read the whole cache, a row group at a time, verifying every checksum and that every
    feature is finite; return its metadata. Raises DataError naming the damage."""
    metadata = read_metadata(path)
    try:
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
        groups = range(parquet.num_row_groups)
        for group in groups:
            table = parquet.read_row_group(group)
            values = feature_values(table, metadata["shape"], metadata.get("dtype", "float16"))
            check_finite(path, table, values, metadata)
    except (OSError, pa.ArrowException) as err:
        raise DataError(
            f"{path}: the feature cache is damaged ({str(err).splitlines()[0]}); "
            f"{rebuild_hint(metadata.get('dataset'))}"
        ) from err
    return metadata


def damage(path: Path | str) -> str:
    """An empty string for a cache that is intact or absent, else what is wrong with it."""
    path = Path(path)
    if not path.exists():
        return ""
    try:
        verify(path)
    except DataError as err:
        return str(err)
    return ""


def set_aside_if_damaged(path: Path | str) -> tuple[Path, str] | None:
    """Move a damaged cache out of the way (kept beside it as .NAME.damaged), so that the
    workflow's cache rule, finding its output missing, builds it again; None when intact."""
    path = Path(path)
    problem = damage(path)
    if not problem:
        return None
    aside = path.with_name(f".{path.name}.damaged")
    os.replace(path, aside)
    return aside, problem
