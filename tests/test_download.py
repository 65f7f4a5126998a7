"""Resumable, retrying downloads against a local HTTP server, on generated payloads: these need
no real audio and run everywhere."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_server import ARCHIVE_PATH, Server, serving

from audiopetl.core.errors import DataError
from audiopetl.data import download as download_mod
from audiopetl.data.download import download

# Incompressible, reproducible bytes: big enough for several chunks and a cut in the middle.
PAYLOAD = random.Random(20261130).randbytes(3_000_000)


@pytest.fixture
def server() -> Iterator[Server]:
    with serving({ARCHIVE_PATH: PAYLOAD}) as state:
        yield state


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_mod, "BACKOFF_BASE_S", 0.01)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".part")))


def test_download_whole_file(server: Server, tmp_path: Path) -> None:
    dest = download(server.url(), tmp_path / "m.zip", retries=0, timeout_s=5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [(ARCHIVE_PATH, None)]
    assert leftovers(tmp_path) == []


def test_download_resumes_after_cut(server: Server, tmp_path: Path) -> None:
    server.cut_after = 1_000_000
    dest = download(server.url(), tmp_path / "m.zip", retries=2, timeout_s=5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[1] == (ARCHIVE_PATH, "bytes=1000000-")
    assert leftovers(tmp_path) == []


def test_download_rerun_resumes_from_part(server: Server, tmp_path: Path) -> None:
    server.cut_after = 123_456
    target = tmp_path / "m.zip"
    with pytest.raises(DataError, match="connection closed after 123456 of"):
        download(server.url(), target, retries=0, timeout_s=5, progress=False)
    part = tmp_path / "m.zip.part"
    assert part.stat().st_size == 123_456 and not target.exists()
    download(server.url(), target, retries=0, timeout_s=5, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert server.requests[-1] == (ARCHIVE_PATH, "bytes=123456-")
    assert not part.exists()


def test_download_restarts_when_range_ignored(server: Server, tmp_path: Path) -> None:
    server.cut_after = 500_000
    server.honor_range = False
    dest = download(server.url(), tmp_path / "m.zip", retries=1, timeout_s=5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[1] == (ARCHIVE_PATH, "bytes=500000-")


def test_download_complete_part_gets_416(server: Server, tmp_path: Path) -> None:
    (tmp_path / "m.zip.part").write_bytes(PAYLOAD)
    dest = download(server.url(), tmp_path / "m.zip", retries=0, timeout_s=5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_download_stalled_response_times_out_and_resumes(server: Server, tmp_path: Path) -> None:
    server.stall_s = 1.0
    dest = download(server.url(), tmp_path / "m.zip", retries=1, timeout_s=0.2, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[1] == (ARCHIVE_PATH, "bytes=1000-")


def test_download_404_is_not_retried(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="HTTP 404"):
        download(server.url("/nope.zip"), tmp_path / "m.zip", retries=3, timeout_s=5)
    assert len(server.requests) == 1


def test_download_server_errors_give_up_naming_url(server: Server, tmp_path: Path) -> None:
    server.fail_status = 500
    url = server.url()
    with pytest.raises(DataError, match="500") as err:
        download(url, tmp_path / "m.zip", retries=1, timeout_s=0.5, progress=False)
    assert url in str(err.value)
    assert len(server.requests) == 2  # the first try and one retry
    assert not (tmp_path / "m.zip").exists()


def test_download_local_file_and_file_url(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    plain = download(str(source), tmp_path / "a.zip", retries=0, timeout_s=1, progress=False)
    url = download(source.as_uri(), tmp_path / "b.zip", retries=0, timeout_s=1, progress=False)
    assert plain.read_bytes() == url.read_bytes() == PAYLOAD
    with pytest.raises(DataError, match="file not found"):
        download(str(tmp_path / "none.zip"), tmp_path / "c.zip", retries=0, timeout_s=1)
