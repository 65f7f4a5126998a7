"""Verifying a dataset's files against its publisher's checksums: every problem found at once,
counted by kind, the first few shown and the complete list written beside the dataset, so one
run says everything that is wrong (not the first mismatch of thousands)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from audiopetl.core.atomic import write_text
from audiopetl.core.checksums import file_digest
from audiopetl.core.errors import DataError

MAX_SHOWN = 20


def problems_file(dest: Path) -> Path:
    """Where the complete list of a failed verification of ``dest`` goes: beside it."""
    return dest.with_name(dest.name + ".problems.txt")


def raise_problems(
    where: str,
    what: str,
    problems: list[tuple[str, str]],
    order: Sequence[str],
    listing: Path,
    hint: str | None = None,
) -> None:
    """One DataError for all ``(kind, line)`` problems of dataset ``what``: counts per kind in
    ``order`` (the worst first), the first lines shown and the complete list written to
    ``listing``; ``hint``, what to do, ends the first line."""
    if not problems:
        return
    problems = sorted(problems, key=lambda p: order.index(p[0]))
    counts = Counter(kind for kind, _ in problems)
    summary = ", ".join(f"{counts[kind]} {kind}" for kind in order if counts[kind])
    lines = [line for _, line in problems]
    write_text(listing, "\n".join(lines) + "\n")
    shown = lines[:MAX_SHOWN]
    if len(lines) > MAX_SHOWN:
        shown.append(f"(the first {MAX_SHOWN} of {len(lines)}; all of them are in {listing})")
    else:
        shown.append(f"(also written to {listing})")
    advice = f"; {hint}" if hint else ""
    raise DataError(
        f"{where}: {what} verification failed, {len(problems)} problem(s) ({summary}){advice}:"
        "\n  " + "\n  ".join(shown)
    )


def hash_all(root: Path, rels: list[str], algorithm: str) -> list[str]:
    """The digests of the files ``rels`` under ``root``, in their order."""
    # hashlib releases the GIL on large buffers, so threads overlap reading and hashing.
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda rel: file_digest(root / rel, algorithm), rels))


def read_sums(path: Path) -> dict[str, str]:
    """A ``sha256sum``-style list: relative path -> digest."""
    sums = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name:
            sums[name] = digest
    return sums


def sums_text(files: Sequence[str], digests: Sequence[str]) -> str:
    return "".join(f"{d}  {n}\n" for n, d in zip(files, digests, strict=True))


def against_recorded(
    root: Path, files: list[str], record: Path, show: Callable[[str], str], subset: bool = False
) -> tuple[list[tuple[str, str]], list[str]]:
    """Hash ``files`` under ``root`` and compare them with the list ``record`` holds from the
    copy's first use (nothing to compare at the first): problems as (kind, line) among
    "sha256", "missing", "unlisted", and the digests. A subset may lack recorded files."""
    digests = hash_all(root, files, "sha256")
    if not record.is_file():
        return [], digests
    recorded = read_sums(record)
    found: list[tuple[str, str]] = []
    for name, digest in zip(files, digests, strict=True):
        if name not in recorded:
            found.append(("unlisted", f"unlisted: {show(name)}: not in {record}"))
        elif recorded[name] != digest:
            found.append(("sha256", f"sha256 mismatch: {show(name)}: {digest}, recorded "
                          f"{recorded[name]} ({record})"))  # fmt: skip
    if not subset:
        found += [("missing", f"missing: {show(name)} (recorded in {record})")
                  for name in sorted(set(recorded) - set(files))]  # fmt: skip
    return found, digests


SUMS = "SHA256SUMS"


def write_sums(root: Path, files: list[str], digests: Sequence[str] | None = None) -> list[str]:
    """Record the sha256 of ``files`` under ``root`` in ``root/SHA256SUMS`` (hashing them
    unless ``digests`` are given); return the digests."""
    digests = list(digests) if digests is not None else hash_all(root, files, "sha256")
    write_text(root / SUMS, sums_text(files, digests))
    return digests


def tree_files(root: Path, leave_out: Sequence[str] = ("manifest.csv",)) -> list[str]:
    """Every file under ``root`` (relative, sorted) but the names ``leave_out``."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name not in leave_out
    )


def record_first_use(record: Path, files: list[str], digests: Sequence[str]) -> None:
    """Keep a local copy's sha256 list from its first use, for every later fetch of it
    (:func:`against_recorded`); an existing list is never replaced."""
    if not record.exists():
        record.parent.mkdir(parents=True, exist_ok=True)
        write_text(record, sums_text(files, digests))
