"""Atomic writes: a reader sees the old file or the whole new one, never a half-written one."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(target: Path) -> str:
    # The writer's process id in the name: a later writer of the same target can tell the
    # leftovers of a killed process from the work of a live one.
    return f".{target.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_leftovers(target: Path) -> list[Path]:
    """Remove the temporary files and folders a killed writer of ``target`` left beside it."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\..*\.tmp$")
    if not target.parent.is_dir():
        return removed
    for leftover in target.parent.iterdir():
        found = pattern.match(leftover.name)
        if found is None or _alive(int(found.group(1))):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


@contextlib.contextmanager
def _naming(target: Path) -> Iterator[None]:
    """An OSError while writing names the file being written, not its temporary name."""
    try:
        yield
    except OSError as err:
        if err.errno is None or err.filename == str(target):
            raise
        raise OSError(err.errno, err.strerror or str(err), str(target)) from err


@contextlib.contextmanager
def atomic_path(target: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    with _naming(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        fd, tmp_name = tempfile.mkstemp(
            prefix=_prefix(target), suffix=suffix + ".tmp", dir=target.parent
        )
        os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates owner-only files; results are meant to be shared like any other file.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with _naming(target):
            yield tmp
            os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# renameat2(2) flags and the "current directory" file descriptor, from <linux/fs.h>/<fcntl.h>.
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.renameat2
    except (OSError, AttributeError):
        return None


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system or the file system
    cannot (then nothing happened).

    Linux's renameat2(RENAME_EXCHANGE) (glibc >= 2.28; ext4, xfs, btrfs, tmpfs; not NFS), called
    through ctypes because Python's os module does not offer it.
    """
    call = _renameat2()
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; move it into place when the block succeeds.

    An existing ``target`` is replaced only after the new folder is complete, by swapping the
    two in one step, so a reader sees the old folder or the new one and never none. Where the
    file system cannot swap (NFS, non-Linux), the old folder is moved aside first, which leaves
    a moment without ``target``.
    """
    target = Path(target)
    with _naming(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        with _naming(target):
            yield tmp
            _share(tmp)
            if not target.exists():
                os.replace(tmp, target)
            elif exchange(tmp, target):
                shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
            else:
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _share(folder: Path) -> None:
    """Give every file and folder inside the user's umask: some writers (safetensors) make
    owner-only files, and results are meant to be read by a lab, like any other file."""
    mask = _umask()
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def write_text(target: Path | str, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: Path | str, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
