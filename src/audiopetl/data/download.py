"""Resumable, retrying downloads into a file that appears only when complete.

urllib from the standard library does the work: a single GET with a ``Range`` header is all a
resumable download needs, and requests/httpx would add a dependency (and its certificate
bundle) for no gain in this one place.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from audiopetl.core.errors import DataError

CHUNK = 1 << 16
# Module constants rather than arguments so tests can shrink the wait without widening the API.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
USER_AGENT = "audiopetl-download/1"
_NETWORK_SCHEMES = {"http", "https", "ftp"}
# Request timeout and "too many requests" are worth another try; other 4xx are not.
_RETRY_STATUS = {408, 429}


class _Transient(Exception):
    """A failure worth another attempt: a cut connection, a short body, a 5xx."""


def download(
    url: str, dest: Path, *, retries: int, timeout_s: float, progress: bool = True
) -> Path:
    """Download ``url`` to ``dest``; ``dest`` appears only once the whole file is there.

    Bytes collect in ``dest.name + ".part"``; another attempt, or a later call, resumes from its
    size. ``retries`` counts the attempts after the first. ``file://`` URLs and local paths are
    copied. Raises DataError naming the URL and the last error; the .part file stays for a rerun.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    local = _local_source(url)
    if local is not None:
        _copy_local(url, local, part, progress)
        os.replace(part, dest)
        return dest

    attempts = max(0, int(retries)) + 1
    last_err: BaseException | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(min(BACKOFF_BASE_S * 2 ** (attempt - 1), BACKOFF_CAP_S))
        try:
            _attempt(url, part, timeout_s, _show_progress(progress), dest.name)
        except (_Transient, http.client.HTTPException, OSError) as err:
            # OSError covers URLError (refused, DNS), TimeoutError and ConnectionResetError.
            last_err = err
            continue
        os.replace(part, dest)
        return dest
    kept = f"; {part} is kept so a rerun resumes" if part.exists() else ""
    raise DataError(
        f"{url}: download failed after {attempts} attempt(s): {_describe(last_err)}{kept}"
    )


def _show_progress(progress: bool) -> bool:
    # A progress bar in a log file is a wall of carriage returns; only draw it on a terminal.
    return progress and sys.stderr.isatty()


def _describe(err: BaseException | None) -> str:
    if isinstance(err, _Transient):
        return str(err)
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        return f"{type(err).__name__}: {err.reason}"
    return f"{type(err).__name__}: {err}" if err is not None else "no attempt made"


def _local_source(url: str) -> Path | None:
    """The local file behind a ``file://`` URL or plain path; None for a network URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(parts.path))
    # A one-letter "scheme" is a Windows drive letter.
    if parts.scheme == "" or len(parts.scheme) == 1:
        return Path(url).expanduser()
    if parts.scheme.lower() not in _NETWORK_SCHEMES:
        raise DataError(f"{url}: unsupported URL scheme {parts.scheme!r}")
    return None


def _copy_local(url: str, source: Path, part: Path, progress: bool) -> None:
    if not source.is_file():
        raise DataError(f"{url}: file not found")
    with (
        open(source, "rb") as src,
        open(part, "wb") as out,
        _bar(source.stat().st_size, 0, part.name[: -len(".part")], _show_progress(progress)) as bar,
    ):
        _copy_stream(src, out, bar)


def _bar(total: int | None, initial: int, name: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        desc=name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        leave=False,
    )


def _copy_stream(src: io.BufferedIOBase, out: io.BufferedIOBase, bar: tqdm) -> int:
    written = 0
    # read1 returns what has arrived instead of waiting for a full chunk, so bytes received
    # before a stall reach the .part file and are not lost with the timeout.
    while chunk := src.read1(CHUNK):
        out.write(chunk)
        written += len(chunk)
        bar.update(len(chunk))
    return written


def _attempt(url: str, part: Path, timeout_s: float, progress: bool, name: str) -> None:
    """One GET that appends to ``part``; returns only when ``part`` holds the whole file."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        with err:
            _handle_http_error(url, err, part, offset)
        return
    with response:
        offset = _resume_offset(response, part, offset)
        length = _content_length(response)
        total = offset + length if length is not None else None
        with (
            open(part, "ab" if offset else "wb") as out,
            _bar(total, offset, name, progress) as bar,
        ):
            got = _copy_stream(response, out, bar)
    if length is not None and got != length:
        raise _Transient(f"connection closed after {got} of {length} bytes")


def _handle_http_error(url: str, err: urllib.error.HTTPError, part: Path, offset: int) -> None:
    """Return when ``part`` is already complete; raise otherwise."""
    if err.code == 416 and offset:
        # Nothing left past our offset: either .part is the whole file (a run that stopped just
        # before the rename) or the remote file shrank, and only a fresh start can tell.
        total = _range_total(err.headers.get("Content-Range", ""))
        if total == offset:
            return
        part.unlink(missing_ok=True)
        raise _Transient(f"HTTP 416 for a resume at byte {offset}; starting over")
    if err.code >= 500 or err.code in _RETRY_STATUS:
        raise _Transient(f"HTTP {err.code} {err.reason}")
    raise DataError(f"{url}: HTTP {err.code} {err.reason}")


def _resume_offset(response: http.client.HTTPResponse, part: Path, offset: int) -> int:
    """The byte the response body starts at, given the offset we asked for."""
    if not offset:
        return 0
    if response.status != 206:
        # The server ignored the Range header and sends the whole file: start the file over.
        return 0
    start = _range_start(response.headers.get("Content-Range", ""))
    if start != offset:
        part.unlink(missing_ok=True)
        raise _Transient(f"server resumed at byte {start}, not {offset}; starting over")
    return offset


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


def _range_start(header: str) -> int | None:
    match = _CONTENT_RANGE.match(header.strip())
    return int(match.group(1)) if match and match.group(1) else None


def _range_total(header: str) -> int | None:
    match = _CONTENT_RANGE.match(header.strip())
    return int(match.group(2)) if match and match.group(2) != "*" else None


def obtain_archive(
    settings: Mapping[str, Any], downloads: Path, what: str, key: str, progress: bool
) -> tuple[Path, bool]:
    """A verified dataset's archive: the local ``archive`` its settings name, or the
    download of its ``url`` cached under ``downloads`` (only a complete download is ever
    renamed to its name, so an existing one is reused and a broken one resumes); and whether
    it is that cached download. ``what`` and ``key`` name the dataset and its settings block
    in errors."""
    from audiopetl.data.archive import archive_name

    if settings.get("archive"):
        archive = Path(str(settings["archive"])).expanduser()
        if not archive.is_file():
            raise DataError(f"{archive}: {what} archive not found ({key}.archive)")
        return archive, False
    url = str(settings["url"])
    cached = downloads / archive_name(url, f"{key}-archive")
    if not cached.is_file():
        download(
            url,
            cached,
            retries=int(settings["retries"]),
            timeout_s=float(settings["timeout_s"]),
            progress=progress,
        )
    return cached, True
