"""ESC-50 verified as a whole: every clip of the md5 index must be there and match, extra files
are reported, the complete list of problems is written to a file, and the archive's sha256 is
recorded at the first download and checked later. On a generated, complete miniature of ESC-50
(its own md5 index), so these run without the real audio."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from http_server import ARCHIVE_PATH, Server, serving

from audiopetl.core.checksums import file_sha256
from audiopetl.core.errors import DataError
from audiopetl.data.datasets import esc50
from audiopetl.data.datasets.esc50 import SOURCE_RECORD, fetch_esc50

ROOT = "ESC-50-master"


@dataclass(frozen=True)
class Mini:
    clips: dict[str, bytes]  # file name -> wav bytes
    meta: pd.DataFrame
    index: dict[str, str]  # clip id -> md5


def wav_bytes(seed: int) -> bytes:
    noise = np.random.default_rng(seed).normal(0, 0.1, 4410).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, noise, 44100, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mini() -> Mini:
    """Twelve clips: 3 classes, one recording per fold and class, named the ESC-50 way."""
    rows, clips = [], {}
    for target, category in enumerate(("dog", "rain", "siren")):
        for fold in range(1, 5):
            name = f"{fold}-{100 * target + fold}-A-{target}.wav"
            clips[name] = wav_bytes(len(clips))
            rows.append([name, str(fold), str(target), category, "False", name[2:-8], "A"])
    meta = pd.DataFrame(
        rows, columns=["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    )
    index = {n[:-4]: hashlib.md5(b, usedforsecurity=False).hexdigest() for n, b in clips.items()}
    return Mini(clips, meta, index)


@pytest.fixture(autouse=True)
def mini_index(mini: Mini, monkeypatch: pytest.MonkeyPatch) -> None:
    """The miniature's index stands in for ESC-50 v2.0.0's."""
    monkeypatch.setattr(esc50, "_shipped_md5_index", lambda: {"clips": mini.index})


def pack(
    path: Path,
    mini: Mini,
    *,
    drop: str | None = None,
    corrupt: str | None = None,
    meta: pd.DataFrame | None = None,
    extra: dict[str, bytes] | None = None,
    readme: str = "ESC-50 miniature\n",
) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{ROOT}/README.md", readme)
        for name, data in mini.clips.items():
            if name == drop:
                continue
            if name == corrupt:
                data = data[:-100] + bytes(100)
            zf.writestr(f"{ROOT}/audio/{name}", data)
        zf.writestr(
            f"{ROOT}/meta/esc50.csv", (mini.meta if meta is None else meta).to_csv(index=False)
        )
        for name, data in (extra or {}).items():
            zf.writestr(f"{ROOT}/{name}", data)
    return path


def settings(**kw: object) -> dict[str, object]:
    base = {
        "url": "http://127.0.0.1:9/unused.zip",
        "folds": 5,
        "archive": None,
        "retries": 1,
        "timeout_s": 5.0,
        "sha256": None,
        "subset": False,
    }
    return {**base, **kw}


def failure(tmp_path: Path, mini: Mini, **kw: object) -> tuple[str, list[str]]:
    archive = pack(tmp_path / "a.zip", mini, **kw)
    dest = tmp_path / "raw" / "esc50"
    with pytest.raises(DataError) as err:
        fetch_esc50(settings(archive=str(archive)), dest, progress=False)
    assert not dest.exists()
    listing = tmp_path / "raw" / "esc50.problems.txt"
    assert str(listing) in str(err.value)
    return str(err.value), listing.read_text().splitlines()


def test_complete_dataset_is_accepted_and_its_archive_recorded(mini: Mini, tmp_path: Path) -> None:
    archive = pack(tmp_path / "a.zip", mini)
    dest = tmp_path / "raw" / "esc50"
    source = fetch_esc50(settings(archive=str(archive)), dest, progress=False)
    assert source["clips"] == source["index_clips"] == 12
    assert source["archive_sha256"] == file_sha256(archive)
    assert json.loads((dest / SOURCE_RECORD).read_text()) == source
    assert len(pd.read_csv(dest / "manifest.csv")) == 12


def test_a_clip_missing_from_the_archive(mini: Mini, tmp_path: Path) -> None:
    victim = sorted(mini.clips)[3]
    row = int(mini.meta.index[mini.meta["filename"] == victim][0]) + 2
    message, lines = failure(tmp_path, mini, drop=victim)
    assert "1 problem(s) (1 missing)" in message
    assert lines == [f"missing: {ROOT}/audio/{victim} (listed in {ROOT}/meta/esc50.csv row {row})"]
    # Only clips missing, the others intact: a part of ESC-50, and the setting that takes one.
    assert message.splitlines()[0].endswith(
        "every clip present matches, some are missing: to study the part that is here, set "
        "the dataset's esc50.subset: true:"
    )


def test_a_clip_the_metadata_does_not_list(mini: Mini, tmp_path: Path) -> None:
    # The archive's own metadata cannot shrink the dataset: the md5 index decides.
    victim = sorted(mini.clips)[0]
    meta = mini.meta[mini.meta["filename"] != victim]
    message, lines = failure(tmp_path, mini, drop=victim, meta=meta)
    assert "1 problem(s) (1 not in metadata)" in message
    assert lines == [f"not in metadata: {victim}: in the md5 index, not in {ROOT}/meta/esc50.csv"]


def test_extra_files_are_reported(mini: Mini, tmp_path: Path) -> None:
    message, lines = failure(tmp_path, mini, extra={"audio/9-999-A-0.wav": wav_bytes(99)})
    assert "1 problem(s) (1 unlisted)" in message
    assert "esc50.subset" not in message  # not a part of ESC-50: something else is wrong
    assert lines == [f"unlisted: {ROOT}/audio/9-999-A-0.wav: not in {ROOT}/meta/esc50.csv"]


def test_mismatches_come_first_and_the_list_is_complete(mini: Mini, tmp_path: Path) -> None:
    names = sorted(mini.clips)
    extra = {f"audio/9-{900 + i}-A-0.wav": wav_bytes(900 + i) for i in range(25)}
    message, lines = failure(tmp_path, mini, corrupt=names[-1], extra=extra)
    assert "26 problem(s) (1 md5 mismatch, 25 unlisted)" in message
    # Shown first although 25 other problems sort before it by name; none hidden.
    assert message.splitlines()[1].strip().startswith(f"md5 mismatch: {ROOT}/audio/{names[-1]}")
    assert "(the first 20 of 26; all of them are in" in message
    assert len(lines) == 26 and lines[0].startswith("md5 mismatch: ")


@pytest.fixture
def server(mini: Mini, tmp_path: Path) -> Iterator[Server]:
    archive = pack(tmp_path / "served.zip", mini)
    with serving({ARCHIVE_PATH: archive.read_bytes()}) as state:
        yield state


def test_a_changed_archive_is_refused_until_pinned(
    mini: Mini, server: Server, tmp_path: Path
) -> None:
    dest = tmp_path / "raw" / "esc50"
    first = fetch_esc50(settings(url=server.url()), dest, progress=False)
    # The branch moved: same clips, another README, so other archive bytes.
    changed = pack(tmp_path / "changed.zip", mini, readme="moved on\n").read_bytes()
    server.files[ARCHIVE_PATH] = changed
    with pytest.raises(DataError) as err:
        fetch_esc50(settings(url=server.url()), dest, progress=False)
    new_sha = hashlib.sha256(changed).hexdigest()
    assert f"sha256 {new_sha} differs from {first['archive_sha256']}" in str(err.value)
    assert f"sha256: {new_sha}" in str(err.value)
    assert json.loads((dest / SOURCE_RECORD).read_text()) == first  # the old copy stays
    assert not (tmp_path / "raw" / ".downloads" / "master.zip").exists()
    # Pinned to the new archive, it is accepted (and its clips verified by md5 as always).
    second = fetch_esc50(settings(url=server.url(), sha256=new_sha), dest, progress=False)
    assert second["archive_sha256"] == new_sha and second["pinned"]


def test_a_pinned_sha256_is_checked_at_the_first_download(
    mini: Mini, server: Server, tmp_path: Path
) -> None:
    dest = tmp_path / "raw" / "esc50"
    with pytest.raises(DataError, match=f"differs from {'a' * 64} \\(datasets"):
        fetch_esc50(settings(url=server.url(), sha256="a" * 64), dest, progress=False)
    assert not dest.exists()
