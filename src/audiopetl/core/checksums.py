"""Content hashes: of files (the identity of data, caches and weights in every record) and of
settings (the names of raw folders and caches, the identities of runs)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    # hashlib.file_digest would do this from Python 3.11; the legacy conda stack runs 3.10.
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path | str) -> str:
    return file_digest(path, "sha256")


def files_sha256(root: Path, names: Iterable[str]) -> dict[str, str]:
    """sha256 of each named file under ``root``, keyed by its name, in name order."""
    return {name: file_sha256(root / name) for name in sorted(names)}


def code_fingerprint() -> str:
    """A hash of audiopetl's own source: a change to the code makes another run of it. Here,
    not in provenance, so a light process (the warm-start client) can compute it cheaply."""
    code_dir = Path(__file__).resolve().parents[1]  # the audiopetl package
    digest = hashlib.sha256()
    for path in sorted(code_dir.rglob("*.py")):
        digest.update(path.relative_to(code_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stable_hash(value: Any, length: int = 12) -> str:
    """A short content hash of JSON-serialisable settings (key order does not matter)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
