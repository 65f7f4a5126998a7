"""Expected failures of the machine (a full disk, a read-only folder, a missing or damaged
file) as one line each: what failed, which file, what to do. Tracebacks are for bugs.

Libraries report the same failure in their own ways: torch's zip writer says "unexpected pos"
when the disk is full, safetensors "os error 28". The helpers here turn such reports into
OSError with its errno and file, or into DataError for a damaged file, at the place that knows
the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

from audiopetl.core.errors import DataError

_OS_ERROR = re.compile(r"os error (\d+)")


def _errno_in(text: str) -> int | None:
    found = _OS_ERROR.search(text)
    if found:
        return int(found.group(1))
    if "No space left on device" in text:
        return errno.ENOSPC
    return None


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Library errors while writing ``path`` become OSError naming it, with its errno."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    except Exception as err:  # safetensors' and torch's writers raise their own types
        code = _errno_in(str(err))
        if code is None and _disk_full(Path(path).parent):
            code = errno.ENOSPC  # torch's writer: "unexpected pos ..." on a full disk
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from err


@contextlib.contextmanager
def reading(path: Path | str, what: str, fix: str) -> Iterator[None]:
    """A file that cannot be parsed is damaged: DataError naming it and what to do."""
    try:
        yield
    except OSError:
        raise
    except Exception as err:  # safetensors, torch and pyarrow raise their own types
        if not _damage(err):
            raise  # not a damaged file: a bug, with its traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: damaged {what} ({first}); {fix}") from err


# How the libraries say that a file's bytes are not what they should be.
_DAMAGE_WORDS = ("PytorchStreamReader", "unexpected EOF", "deserializ", "header", "truncated")


def _damage(err: Exception) -> bool:
    if type(err).__name__ == "SafetensorError" or isinstance(err, (EOFError, UnicodeError)):
        return True
    return isinstance(err, (ValueError, RuntimeError)) and any(
        word in str(err) for word in _DAMAGE_WORDS
    )


def _disk_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 1 << 20


ADVICE = {
    errno.ENOSPC: "no space left on device: free space there (or point paths.data / "
    "paths.results elsewhere) and run again; nothing half-written was kept",
    errno.EDQUOT: "disk quota exceeded: free space or ask for more, and run again",
    errno.EACCES: "permission denied: make it writable for you, or point paths.data / "
    "paths.results elsewhere",
    errno.EPERM: "operation not permitted: check the folder's owner and permissions",
    errno.EROFS: "read-only file system: point paths.data / paths.results to a writable place",
    errno.ENOENT: "no such file or folder",
}


def one_line(err: OSError) -> str:
    where = err.filename if err.filename is not None else "(no file named)"
    advice = ADVICE.get(err.errno or -1, err.strerror or str(err))
    return f"{where}: {advice}"
