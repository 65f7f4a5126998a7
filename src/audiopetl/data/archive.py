"""Reading the archives datasets come in (zip or tar, found by their content), refusing any
member that could escape the folder it is unpacked into; the same for every dataset kind.

Written here because neither zipfile nor tarfile refuses absolute or ``..`` member names on the
Pythons we support (tarfile's ``filter="data"`` arrives in 3.12 and not for zip archives), and a
damaged archive must be told from a full disk.
"""

from __future__ import annotations

import contextlib
import functools
import re
import tarfile
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from audiopetl.core.errors import DataError

_CHUNK = 1 << 20
# Errors that mean the archive itself is damaged (a truncated download, a bad resume).
ARCHIVE_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error)


class BrokenArchive(DataError):
    """The archive cannot be read: a cached download of it is worth throwing away."""


def archive_name(url: str, default: str) -> str:
    """The file name a download of ``url`` is kept under."""
    name = PurePosixPath(urllib.parse.urlsplit(url).path).name
    return name or default


@dataclass(frozen=True)
class Member:
    name: str
    kind: str  # "file", "dir" or "other" (links, devices)
    open: Callable[[], IO[bytes] | None]


@contextlib.contextmanager
def open_archive(path: Path) -> Iterator[list[Member]]:
    # Detect the format from the content: GitHub's archive is called "master.zip" but a user's
    # copy may be named anything.
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                yield [
                    Member(
                        i.filename, "dir" if i.is_dir() else "file", functools.partial(zf.open, i)
                    )
                    for i in zf.infolist()
                ]
            return
        if tarfile.is_tarfile(path):
            with tarfile.open(path, "r:*") as tf:
                yield [
                    Member(m.name, tar_kind(m), functools.partial(tf.extractfile, m))
                    for m in tf.getmembers()
                ]
            return
    except ARCHIVE_READ_ERRORS as err:
        raise BrokenArchive(f"{path}: cannot read archive: {err}") from err
    raise BrokenArchive(f"{path}: not a zip or tar archive")


def tar_kind(member: tarfile.TarInfo) -> str:
    if member.isfile():
        return "file"
    return "dir" if member.isdir() else "other"


def safe_name(archive: Path, name: str) -> str:
    """The member's name as a relative posix path; refuse anything that could escape."""
    norm = name.replace("\\", "/")
    parts = PurePosixPath(norm).parts
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in parts:
        raise DataError(f"{archive}: refusing archive member {name!r} (absolute path or '..')")
    return "/".join(p for p in parts if p != ".")


def write_member(archive: Path, name: str, member: Member, out: Path) -> None:
    with open(out, "wb") as dst:
        try:
            src = member.open()
            if src is None:
                raise BrokenArchive(f"{archive}: {name}: cannot read archive member")
            with src:
                # Read errors (a bad CRC, a truncated stream) mean a damaged archive; write
                # errors (a full disk) must not be mistaken for one.
                while True:
                    try:
                        chunk = src.read(_CHUNK)
                    except (*ARCHIVE_READ_ERRORS, OSError) as err:
                        raise BrokenArchive(f"{archive}: {name}: cannot read: {err}") from err
                    if not chunk:
                        break
                    dst.write(chunk)
        except ARCHIVE_READ_ERRORS as err:
            raise BrokenArchive(f"{archive}: {name}: cannot read: {err}") from err


def extract_folders(
    archive: Path, members: list[Member], root: str, folders: tuple[str, ...], target: Path
) -> None:
    """Unpack the ``members`` of the open ``archive`` under the prefix ``root`` ("" or "dir/")
    whose path below it starts with one of ``folders`` ("audio/", "meta/") into ``target``,
    straight into the final layout; anything but regular files and folders is refused."""
    for member in members:
        name = safe_name(archive, member.name)
        rel = name[len(root) :]
        if not name.startswith(root) or not rel.startswith(folders):
            continue
        out = target / rel
        if member.kind == "dir":
            out.mkdir(parents=True, exist_ok=True)
        elif member.kind == "file":
            out.parent.mkdir(parents=True, exist_ok=True)
            write_member(archive, name, member, out)
        else:
            raise DataError(f"{archive}: refusing archive member {name!r} (not a regular file)")
