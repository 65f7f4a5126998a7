"""Fetching ESC-50 end to end: a local HTTP server serves an archive built from the 83 real
clips of ../shared/data, a part of ESC-50 (`subset: true`). Verification of the complete
dataset, on generated clips, is in test_esc50_verify.py."""

from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import ESC50_SUBSET, needs_esc50
from http_server import ARCHIVE_PATH, Server, serving

from audiopetl.core.errors import DataError
from audiopetl.data import download as download_mod
from audiopetl.data.datasets.esc50 import SOURCE_RECORD, esc50_manifest, fetch_esc50, verify_esc50
from audiopetl.data.manifest import COLUMNS, read_manifest

SUBSET = ESC50_SUBSET
ROOT = "ESC-50-master"

pytestmark = needs_esc50


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


@pytest.fixture
def server(archive: Path) -> Iterator[Server]:
    with serving({ARCHIVE_PATH: archive.read_bytes()}) as state:
        yield state


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_mod, "BACKOFF_BASE_S", 0.01)


def settings(url: str = "http://127.0.0.1:9/unused.zip", **kw: object) -> dict[str, object]:
    return {
        "url": url,
        "folds": 5,
        "archive": None,
        "retries": 2,
        "timeout_s": 5.0,
        "sha256": None,
        "subset": True,  # 83 of ESC-50's 2000 clips
        **kw,
    }


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


def test_fetch_subset_leaves_out_what_is_missing(source: Source, tmp_path: Path) -> None:
    # A part of ESC-50 is what `subset` is for: a clip the metadata lists but the archive lacks
    # is left out (test_esc50_verify.py: without `subset` it is an error that names it).
    victim = sorted(source.clips)[-1]
    local = build_archive(tmp_path / "a.zip", source, drop=victim)
    dest = tmp_path / "esc50"
    record = fetch_esc50(settings(archive=str(local)), dest, progress=False)
    manifest = pd.read_csv(dest / "manifest.csv", dtype=str)
    assert record["clips"] == len(manifest) == 82
    assert victim[:-4] not in set(manifest["clip_id"])


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
    root = tmp_path / "esc50"
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    for name in names:
        (root / "audio" / name).write_bytes((unpacked / "audio" / name).read_bytes())
    (root / "meta" / "esc50.csv").write_bytes((unpacked / "meta" / "esc50.csv").read_bytes())
    (root / "audio" / "stray.wav").write_bytes(b"")
    with pytest.raises(DataError) as err:
        verify_esc50(root, index)
    message = str(err.value)
    assert "84 problem(s) (82 md5 mismatch, 1 unknown, 1 unlisted)" in message
    lines = message.splitlines()
    # md5 mismatches come first, whatever else is wrong.
    assert lines[1].strip().startswith(f"md5 mismatch: {root / 'audio' / names[1]}: expected")
    listing = tmp_path / "esc50.problems.txt"
    assert f"(the first 20 of 84; all of them are in {listing})" in message
    written = listing.read_text().splitlines()
    assert len(written) == 84
    assert sum(line.startswith("md5 mismatch: ") for line in written[:82]) == 82
    assert f"unknown: {root / 'audio' / names[0]}: not in the ESC-50 md5 index" in written
    assert f"unlisted: {root / 'audio' / 'stray.wav'}: not in {root / 'meta/esc50.csv'}" in written


def test_verify_reports_inconsistent_metadata(unpacked: Path, tmp_path: Path) -> None:
    meta = pd.read_csv(unpacked / "meta" / "esc50.csv", dtype=str, keep_default_na=False)
    meta.loc[0, "category"] = "not_" + meta.loc[0, "category"]
    meta = pd.concat([meta, meta.iloc[[1]]], ignore_index=True)
    (tmp_path / "meta").mkdir()
    meta.to_csv(tmp_path / "meta" / "esc50.csv", index=False)
    (tmp_path / "audio").symlink_to(unpacked / "audio")
    with pytest.raises(DataError) as err:
        verify_esc50(tmp_path, subset=True)
    message = str(err.value)
    assert f"duplicate filename {meta.loc[1, 'filename']!r}" in message
    assert f"rows 3, {len(meta) + 1}" in message
    assert f"target {meta.loc[0, 'target']!r} has category" in message
    assert "md5 mismatch" not in message


def test_verify_default_index_accepts_real_clips_as_a_subset(unpacked: Path) -> None:
    verify_esc50(unpacked, subset=True)
    # Not as ESC-50: every clip of the index must be there, not only those the metadata lists.
    with pytest.raises(DataError, match=r"1917 problem\(s\) \(1917 not in metadata\)"):
        verify_esc50(unpacked)


def test_fetch_of_a_partial_dataset_needs_subset(source: Source, tmp_path: Path) -> None:
    full_meta = pd.read_csv(SUBSET / "meta" / "esc50.csv", dtype=str, keep_default_na=False)
    assert len(full_meta) == 2000
    local = build_archive(tmp_path / "a.zip", source, meta=full_meta)
    dest = tmp_path / "raw" / "esc50"
    with pytest.raises(DataError) as err:
        fetch_esc50(settings(archive=str(local), subset=False), dest, progress=False)
    message = str(err.value)
    assert "1917 problem(s) (1917 missing)" in message
    listing = tmp_path / "raw" / "esc50.problems.txt"
    assert str(listing) in message
    assert len(listing.read_text().splitlines()) == 1917
    assert not dest.exists()
    # The same archive as a declared subset: the 83 clips present are verified and counted.
    source_record = fetch_esc50(settings(archive=str(local)), dest, progress=False)
    assert source_record["clips"] == 83 and source_record["index_clips"] == 2000
    assert json.loads((dest / SOURCE_RECORD).read_text())["clips"] == 83
    assert len(pd.read_csv(dest / "manifest.csv")) == 83
    assert not listing.exists()  # a success clears the old list


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
