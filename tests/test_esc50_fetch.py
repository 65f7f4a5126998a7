"""Fetching ESC-50 end to end: a local HTTP server serves an archive built from real clips."""

from __future__ import annotations

import io
import re
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from audiopetl import download as download_mod
from audiopetl.datasets.esc50 import esc50_manifest, fetch_esc50, verify_esc50
from audiopetl.download import download
from audiopetl.errors import DataError
from audiopetl.manifest import COLUMNS, read_manifest

SUBSET = Path("/work/shared/data/esc50-subset")
ROOT = "ESC-50-master"
ARCHIVE_PATH = "/archive/master.zip"

pytestmark = pytest.mark.skipif(
    not (SUBSET / "meta" / "esc50.csv").is_file(), reason="real ESC-50 subset not available"
)


# ---------------------------------------------------------------------------------------------
# the real clips, packed the way GitHub packs ESC-50


@dataclass(frozen=True)
class Source:
    clips: dict[str, bytes]  # file name -> wav bytes
    meta: pd.DataFrame  # esc50.csv trimmed to the clips present, all strings


@pytest.fixture(scope="session")
def source() -> Source:
    clips = {p.name: p.read_bytes() for p in sorted((SUBSET / "audio").glob("*.wav"))}
    meta = pd.read_csv(SUBSET / "meta" / "esc50.csv", dtype=str, keep_default_na=False)
    meta = meta[meta["filename"].isin(clips)].reset_index(drop=True)
    assert len(clips) == len(meta) == 83
    return Source(clips, meta)


def build_archive(
    path: Path,
    source: Source,
    *,
    corrupt: str | None = None,
    drop: str | None = None,
    meta: pd.DataFrame | None = None,
    extra: dict[str, bytes] | None = None,
) -> Path:
    # Stored, not deflated: wav barely compresses and the tests stay fast.
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{ROOT}/README.md", "ESC-50 test copy\n")
        for name, data in source.clips.items():
            if name == drop:
                continue
            if name == corrupt:
                # Flip bytes in the samples, past the header: the file still decodes.
                flipped = bytearray(data)
                flipped[5000:5016] = bytes(b ^ 0xFF for b in flipped[5000:5016])
                data = bytes(flipped)
            zf.writestr(f"{ROOT}/audio/{name}", data)
        table = source.meta if meta is None else meta
        zf.writestr(f"{ROOT}/meta/esc50.csv", table.to_csv(index=False))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


@pytest.fixture(scope="session")
def archive(source: Source, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_archive(tmp_path_factory.mktemp("archive") / "master.zip", source)


# ---------------------------------------------------------------------------------------------
# a local HTTP server with Range support and scripted failures


@dataclass
class Server:
    files: dict[str, bytes]
    base: str = ""
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    cut_after: int | None = None  # first response: send this many body bytes, then hang up
    stall_s: float = 0.0  # first response: send some bytes, then go silent this long
    fail_status: int | None = None  # every response
    honor_range: bool = True

    def url(self, path: str = ARCHIVE_PATH) -> str:
        return self.base + path


def make_handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            first = len(state.requests) == 1
            if state.fail_status is not None:
                self.send_error(state.fail_status)
                return
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = self._start(data)
            if start is None:
                return
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if first and state.cut_after is not None:
                self.wfile.write(body[: state.cut_after])
                self.close_connection = True
            elif first and state.stall_s:
                self.wfile.write(body[:1000])
                self.wfile.flush()
                time.sleep(state.stall_s)
                self.close_connection = True
            else:
                self.wfile.write(body)

        def _start(self, data: bytes) -> int | None:
            """Send the status line; return where the body starts, None when already done."""
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if not (match and state.honor_range):
                self.send_response(200)
                return 0
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            return start

    return Handler


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hanging up mid-body is what some tests are about


@pytest.fixture
def server(archive: Path) -> Iterator[Server]:
    state = Server(files={ARCHIVE_PATH: archive.read_bytes()})
    httpd = QuietServer(("127.0.0.1", 0), make_handler(state))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02})
    thread.daemon = True
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_mod, "BACKOFF_BASE_S", 0.01)


def settings(url: str = "http://127.0.0.1:9/unused.zip", **kw: object) -> dict[str, object]:
    return {"url": url, "folds": 5, "archive": None, "retries": 2, "timeout_s": 5.0, **kw}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".part")))


# ---------------------------------------------------------------------------------------------
# fetch_esc50


def test_fetch_over_http(server: Server, source: Source, tmp_path: Path) -> None:
    dest = tmp_path / "raw" / "esc50"
    fetch_esc50(settings(server.url()), dest, progress=False)

    assert sorted(p.name for p in (dest / "audio").glob("*.wav")) == sorted(source.clips)
    assert (dest / "meta" / "esc50.csv").is_file()
    manifest = pd.read_csv(dest / "manifest.csv", dtype={"clip_id": str, "group": str})
    assert list(manifest.columns) == COLUMNS
    assert len(manifest) == 83
    merged = manifest.merge(
        source.meta.assign(clip_id=source.meta["filename"].str[:-4]), on="clip_id"
    )
    assert len(merged) == 83
    assert (merged["label"] == merged["target"].astype(int)).all()
    assert (merged["label_name"] == merged["category"]).all()
    assert (merged["fold_x"] == merged["fold_y"].astype(int)).all()
    assert (merged["group"] == merged["src_file"]).all()
    assert (merged["path"] == "audio/" + merged["filename"]).all()
    assert (merged["sample_rate"] == 44100).all()
    assert (merged["duration"] == 5.0).all()
    assert all(Path(p).is_file() for p in read_manifest(dest / "manifest.csv")["path"])
    # The cached download is removed once the dataset is in place.
    assert not (dest.parent / ".downloads").exists()
    assert leftovers(dest.parent) == []
    assert server.requests == [(ARCHIVE_PATH, None)]


def test_fetch_resumes_after_cut_connection(server: Server, tmp_path: Path) -> None:
    server.cut_after = 3_000_000
    dest = tmp_path / "esc50"
    fetch_esc50(settings(server.url()), dest, progress=False)
    assert len(list((dest / "audio").glob("*.wav"))) == 83
    assert server.requests == [(ARCHIVE_PATH, None), (ARCHIVE_PATH, "bytes=3000000-")]


def test_fetch_corrupt_clip_names_it_and_leaves_nothing(
    server: Server, source: Source, tmp_path: Path
) -> None:
    victim = sorted(source.clips)[5]
    corrupt = build_archive(tmp_path / "corrupt.zip", source, corrupt=victim)
    server.files["/corrupt.zip"] = corrupt.read_bytes()
    dest = tmp_path / "raw" / "esc50"
    with pytest.raises(DataError) as err:
        fetch_esc50(settings(server.url("/corrupt.zip")), dest, progress=False)
    message = str(err.value)
    assert "md5 mismatch" in message
    assert f"{ROOT}/audio/{victim}" in message
    assert "1 problem" in message
    assert not dest.exists()
    assert leftovers(dest.parent) == []


def test_fetch_missing_audio_names_it(source: Source, tmp_path: Path) -> None:
    victim = sorted(source.clips)[-1]
    local = build_archive(tmp_path / "a.zip", source, drop=victim)
    dest = tmp_path / "esc50"
    with pytest.raises(DataError, match=re.escape(victim)) as err:
        fetch_esc50(settings(archive=str(local)), dest, progress=False)
    assert "missing" in str(err.value)
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_fetch_from_local_archive(archive: Path, tmp_path: Path) -> None:
    dest = tmp_path / "esc50"
    # The URL is unreachable: the archive setting must win without a network attempt.
    fetch_esc50(settings(archive=str(archive)), dest, progress=False)
    assert len(pd.read_csv(dest / "manifest.csv")) == 83
    assert archive.is_file()  # a user's archive is theirs: never deleted
    assert not (tmp_path / ".downloads").exists()


def test_fetch_from_local_tar_gz(source: Source, tmp_path: Path) -> None:
    local = tmp_path / "ESC-50.tar.gz"
    with tarfile.open(local, "w:gz", compresslevel=1) as tf:
        for name, data in source.clips.items():
            info = tarfile.TarInfo(f"{ROOT}/audio/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        meta = source.meta.to_csv(index=False).encode()
        info = tarfile.TarInfo(f"{ROOT}/meta/esc50.csv")
        info.size = len(meta)
        tf.addfile(info, io.BytesIO(meta))
    dest = tmp_path / "esc50"
    fetch_esc50(settings(archive=str(local)), dest, progress=False)
    assert len(pd.read_csv(dest / "manifest.csv")) == 83


def test_fetch_server_errors_give_up_naming_url(server: Server, tmp_path: Path) -> None:
    server.fail_status = 500
    dest = tmp_path / "esc50"
    url = server.url()
    with pytest.raises(DataError, match=re.escape(url)) as err:
        fetch_esc50(settings(url, retries=1, timeout_s=0.5), dest, progress=False)
    assert "500" in str(err.value)
    assert len(server.requests) == 2  # the first try and one retry
    assert not dest.exists()


def test_fetch_metadata_missing_column(source: Source, tmp_path: Path) -> None:
    local = build_archive(tmp_path / "a.zip", source, meta=source.meta.drop(columns="category"))
    dest = tmp_path / "esc50"
    with pytest.raises(DataError, match=r"esc50\.csv.*missing column\(s\): category"):
        fetch_esc50(settings(archive=str(local)), dest, progress=False)
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_fetch_refuses_member_escaping_the_folder(source: Source, tmp_path: Path) -> None:
    local = build_archive(tmp_path / "a.zip", source, extra={"../evil.txt": b"x"})
    dest = tmp_path / "sub" / "esc50"
    with pytest.raises(DataError, match=r"refusing archive member '\.\./evil\.txt'"):
        fetch_esc50(settings(archive=str(local)), dest, progress=False)
    assert not (tmp_path / "evil.txt").exists()
    assert not dest.exists()


def test_fetch_deletes_a_damaged_cached_download(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "esc50"
    cached = tmp_path / ".downloads" / "master.zip"
    cached.parent.mkdir()
    cached.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="not a zip or tar archive"):
        fetch_esc50(settings(server.url()), dest, progress=False)
    assert not cached.exists()  # so the rerun downloads afresh, and succeeds
    fetch_esc50(settings(server.url()), dest, progress=False)
    assert (dest / "manifest.csv").is_file()


# ---------------------------------------------------------------------------------------------
# verify_esc50 and esc50_manifest on an unpacked copy


@pytest.fixture(scope="module")
def unpacked(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("unpacked") / "esc50"
    fetch_esc50(settings(archive=str(archive)), dest, progress=False)
    return dest


def test_verify_reports_every_bad_file(unpacked: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in (unpacked / "audio").glob("*.wav"))
    index = {Path(n).stem: "0" * 32 for n in names[1:]}  # first clip unknown, rest mismatch
    (tmp_path / "audio").mkdir()
    (tmp_path / "meta").mkdir()
    for name in names:
        (tmp_path / "audio" / name).write_bytes((unpacked / "audio" / name).read_bytes())
    (tmp_path / "meta" / "esc50.csv").write_bytes((unpacked / "meta" / "esc50.csv").read_bytes())
    (tmp_path / "audio" / "stray.wav").write_bytes(b"")
    with pytest.raises(DataError) as err:
        verify_esc50(tmp_path, index)
    message = str(err.value)
    assert "84 problem(s) (1 unknown, 1 unlisted, 82 md5 mismatch)" in message
    assert f"unknown: {tmp_path / 'audio' / names[0]}" in message
    assert f"unlisted: {tmp_path / 'audio' / 'stray.wav'}" in message
    assert f"md5 mismatch: {tmp_path / 'audio' / names[1]}: expected {'0' * 32}" in message
    assert "... and 64 more" in message  # 20 shown


def test_verify_reports_inconsistent_metadata(unpacked: Path, tmp_path: Path) -> None:
    meta = pd.read_csv(unpacked / "meta" / "esc50.csv", dtype=str, keep_default_na=False)
    meta.loc[0, "category"] = "not_" + meta.loc[0, "category"]
    meta = pd.concat([meta, meta.iloc[[1]]], ignore_index=True)
    (tmp_path / "meta").mkdir()
    meta.to_csv(tmp_path / "meta" / "esc50.csv", index=False)
    (tmp_path / "audio").symlink_to(unpacked / "audio")
    with pytest.raises(DataError) as err:
        verify_esc50(tmp_path)
    message = str(err.value)
    assert f"duplicate filename {meta.loc[1, 'filename']!r}" in message
    assert f"rows 3, {len(meta) + 1}" in message
    assert f"target {meta.loc[0, 'target']!r} has category" in message
    assert "md5 mismatch" not in message


def test_verify_default_index_accepts_real_clips(unpacked: Path) -> None:
    verify_esc50(unpacked)


def test_manifest_fold_outside_range_names_row_and_clip(unpacked: Path) -> None:
    with pytest.raises(DataError, match=r"esc50\.csv: row \d+ \(4-\d+-[A-Z]-\d+\): fold 4 is"):
        esc50_manifest(unpacked, 3)


def test_manifest_without_src_file_groups_by_clip(unpacked: Path, tmp_path: Path) -> None:
    meta = pd.read_csv(unpacked / "meta" / "esc50.csv", dtype=str)
    (tmp_path / "meta").mkdir()
    meta.drop(columns=["src_file", "take", "esc10"]).to_csv(
        tmp_path / "meta" / "esc50.csv", index=False
    )
    (tmp_path / "audio").symlink_to(unpacked / "audio")
    manifest = esc50_manifest(tmp_path, 5)
    assert list(manifest.columns) == COLUMNS
    assert (manifest["group"] == manifest["clip_id"]).all()


# ---------------------------------------------------------------------------------------------
# download on its own


def test_download_resumes_after_cut(server: Server, archive: Path, tmp_path: Path) -> None:
    server.cut_after = 1_000_000
    dest = download(server.url(), tmp_path / "m.zip", retries=2, timeout_s=5, progress=False)
    assert dest.read_bytes() == archive.read_bytes()
    assert server.requests[1] == (ARCHIVE_PATH, "bytes=1000000-")
    assert leftovers(tmp_path) == []


def test_download_rerun_resumes_from_part(server: Server, archive: Path, tmp_path: Path) -> None:
    server.cut_after = 123_456
    target = tmp_path / "m.zip"
    with pytest.raises(DataError, match="connection closed after 123456 of"):
        download(server.url(), target, retries=0, timeout_s=5, progress=False)
    part = tmp_path / "m.zip.part"
    assert part.stat().st_size == 123_456 and not target.exists()
    download(server.url(), target, retries=0, timeout_s=5, progress=False)
    assert target.read_bytes() == archive.read_bytes()
    assert server.requests[-1] == (ARCHIVE_PATH, "bytes=123456-")
    assert not part.exists()


def test_download_restarts_when_range_ignored(
    server: Server, archive: Path, tmp_path: Path
) -> None:
    server.cut_after = 500_000
    server.honor_range = False
    dest = download(server.url(), tmp_path / "m.zip", retries=1, timeout_s=5, progress=False)
    assert dest.read_bytes() == archive.read_bytes()
    assert server.requests[1] == (ARCHIVE_PATH, "bytes=500000-")


def test_download_complete_part_gets_416(server: Server, archive: Path, tmp_path: Path) -> None:
    (tmp_path / "m.zip.part").write_bytes(archive.read_bytes())
    dest = download(server.url(), tmp_path / "m.zip", retries=0, timeout_s=5, progress=False)
    assert dest.read_bytes() == archive.read_bytes()
    assert len(server.requests) == 1


def test_download_stalled_response_times_out_and_resumes(
    server: Server, archive: Path, tmp_path: Path
) -> None:
    server.stall_s = 1.0
    dest = download(server.url(), tmp_path / "m.zip", retries=1, timeout_s=0.2, progress=False)
    assert dest.read_bytes() == archive.read_bytes()
    assert server.requests[1] == (ARCHIVE_PATH, "bytes=1000-")


def test_download_404_is_not_retried(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="HTTP 404"):
        download(server.url("/nope.zip"), tmp_path / "m.zip", retries=3, timeout_s=5)
    assert len(server.requests) == 1


def test_download_local_file_and_file_url(archive: Path, tmp_path: Path) -> None:
    plain = download(str(archive), tmp_path / "a.zip", retries=0, timeout_s=1, progress=False)
    url = download(archive.as_uri(), tmp_path / "b.zip", retries=0, timeout_s=1, progress=False)
    assert plain.read_bytes() == url.read_bytes() == archive.read_bytes()
    with pytest.raises(DataError, match="file not found"):
        download(str(tmp_path / "none.zip"), tmp_path / "c.zip", retries=0, timeout_s=1)
