"""UrbanSound8K: a generated miniature of the publisher's archive (its layout, metadata columns
and 10 folds) served from 127.0.0.1, fetched through the CLI and verified; every failure path
(wrong md5, a truncated archive, a missing, unlisted or misplaced excerpt, a recording in two
folds) is one error and leaves nothing behind; the subset route."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from http_server import serving

from audiopetl.data import download as download_mod
from audiopetl.data.datasets.urbansound8k import FOLD_SIZES
from audiopetl.data.manifest import read_manifest

ROOT = "UrbanSound8K"
CLASSES = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling"]
PATH = "/files/UrbanSound8K.tar.gz"
KEY = "datasets.urbansound8k.urbansound8k"


def excerpt(seed: int) -> bytes:
    """A short 22.05 kHz stereo excerpt (UrbanSound8K keeps the recordings' own formats)."""
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    sf.write(out, 0.1 * rng.standard_normal((4410, 2)), 22050, format="WAV", subtype="PCM_16")
    return out.getvalue()


def metadata() -> pd.DataFrame:
    """Two excerpts of one recording per fold and class pair: 10 folds x 2 classes x 2."""
    rows = []
    for fold in range(1, 11):
        for k in range(2):
            class_id = (fold + k) % len(CLASSES)
            fs_id = 1000 * fold + k
            for part in range(2):
                rows.append(
                    {
                        "slice_file_name": f"{fs_id}-{class_id}-0-{part}.wav",
                        "fsID": str(fs_id),
                        "start": f"{part * 0.1:.1f}",
                        "end": f"{part * 0.1 + 0.1:.1f}",
                        "salience": "1",
                        "fold": str(fold),
                        "classID": str(class_id),
                        "class": CLASSES[class_id],
                    }
                )
    return pd.DataFrame(rows)


def build(
    meta: pd.DataFrame | None = None,
    *,
    drop: str | None = None,
    extra: dict[str, bytes] | None = None,
    move: tuple[str, int] | None = None,
) -> bytes:
    meta = metadata() if meta is None else meta
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"{ROOT}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("metadata/UrbanSound8K.csv", meta.to_csv(index=False).encode())
        add("UrbanSound8K_README.txt", b"a miniature for tests\n")
        for i, (name, fold) in enumerate(zip(meta["slice_file_name"], meta["fold"], strict=True)):
            if name == drop:
                continue
            if move is not None and name == move[0]:
                fold = str(move[1])
            add(f"audio/fold{fold}/{name}", excerpt(i))
        for name, data in (extra or {}).items():
            add(name, data)
    return out.getvalue()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_mod, "BACKOFF_BASE_S", 0.01)


def fetch(cli: Callable, url: str, md5: str | None, *more: str) -> Any:
    md5_value = "null" if md5 is None else md5
    return cli("fetch", "urbansound8k", "--quiet", "--set", f"{KEY}.url={url}",
               "--set", f"{KEY}.md5={md5_value}", *more)  # fmt: skip


def raw_folders(project: Path) -> list[Path]:
    return sorted(p for p in (project / "data" / "raw").glob("urbansound8k-*") if p.is_dir())


def test_fetch_verifies_and_describes_the_official_folds(project: Path, cli: Callable) -> None:
    data = build()
    with serving({PATH: data}) as server:
        result = fetch(cli, server.url(PATH), hashlib.md5(data).hexdigest())
    assert result.code == 0, result.err
    (folder,) = raw_folders(project)
    manifest = read_manifest(folder / "manifest.csv")
    assert len(manifest) == 40 and sorted(manifest["fold"].unique()) == list(range(1, 11))
    assert manifest["path"].iloc[0] == str(folder / "audio/fold1/1000-1-0-0.wav")
    # Excerpts of one recording share a group (and a fold): never on both sides of a split.
    assert manifest.groupby("group")["fold"].nunique().max() == 1
    assert manifest.groupby("group").size().eq(2).all()
    assert set(manifest["label_name"]) == set(CLASSES)
    assert (manifest["sample_rate"] == 22050).all()
    sums = (folder / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 41 and sums[0].endswith("  audio/fold1/1000-1-0-0.wav")
    source = json.loads((folder / "source.json").read_text())
    assert source["verified_md5"] and source["archive_md5"] == hashlib.md5(data).hexdigest()
    assert not (project / "data" / "raw" / ".downloads").exists()  # removed once in place
    report = cli("data-report", "urbansound8k", "--quiet")
    assert report.code == 0, report.err
    assert "subset" not in report.out


def test_the_published_settings_plan_ten_folds_of_8732_clips(project: Path, cli: Callable) -> None:
    assert sum(FOLD_SIZES.values()) == 8732
    result = cli("plan", "--experiment", "urbansound8k-petl-ast", "--quiet")
    assert result.code == 0, result.err
    assert "train urbansound8k/ast-audioset/lora/seed10/fold1       7022/837/873" in result.out
    assert "150 training jobs" in result.out


def test_a_wrong_md5_stops_before_anything_is_written(project: Path, cli: Callable) -> None:
    data = build()
    with serving({PATH: data}) as server:
        result = fetch(cli, server.url(PATH), "0123456789abcdef" * 2)
    assert result.code == 1
    assert "archive md5" in result.err and "differs from the publisher's" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert raw_folders(project) == []
    assert not list((project / "data" / "raw" / ".downloads").glob("*.tar.gz"))  # deleted


def test_a_truncated_archive_is_one_error(project: Path, cli: Callable, tmp_path: Path) -> None:
    data = build()
    cut = tmp_path / "UrbanSound8K.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    result = fetch(cli, "http://127.0.0.1:9/unused", None, "--set", f"{KEY}.archive={cut}")
    assert result.code == 1
    assert str(cut) in result.err and "error:" in result.err
    assert raw_folders(project) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"drop": "3000-3-0-1.wav"}, "1 missing"),
        ({"extra": {"audio/fold2/9999-1-0-0.wav": b"RIFF"}}, "1 unlisted"),
        ({"move": ("5001-1-0-0.wav", 6)}, "1 misplaced"),
    ],
)
def test_every_clip_problem_is_listed(
    project: Path, cli: Callable, change: dict, expected: str
) -> None:
    data = build(**change)
    with serving({PATH: data}) as server:
        result = fetch(cli, server.url(PATH), hashlib.md5(data).hexdigest())
    assert result.code == 1
    assert "UrbanSound8K verification failed" in result.err and expected in result.err
    assert raw_folders(project) == []
    listing = sorted((project / "data" / "raw").glob("urbansound8k-*.problems.txt"))
    assert len(listing) == 1 and listing[0].read_text().strip()


def test_a_recording_in_two_folds_is_refused(project: Path, cli: Callable) -> None:
    meta = metadata()
    meta.loc[1, "fold"] = "2"  # the second excerpt of recording 1000 moves to fold 2
    data = build(meta)
    with serving({PATH: data}) as server:
        result = fetch(cli, server.url(PATH), hashlib.md5(data).hexdigest())
    assert result.code == 1
    assert "recording fsID 1000 in folds 1, 2" in result.err
    assert raw_folders(project) == []


def test_a_subset_is_structure_checked_and_says_so(project: Path, cli: Callable) -> None:
    meta = metadata()
    data = build(meta, drop="3000-3-0-1.wav")
    with serving({PATH: data}) as server:
        # No md5 can match a part of the archive: subset skips it, and says so.
        result = fetch(cli, server.url(PATH), "0123456789abcdef" * 2, "--set", f"{KEY}.subset=true")
        assert result.code == 0, result.err
        (folder,) = raw_folders(project)
        assert len(read_manifest(folder / "manifest.csv")) == 39
        report = cli("data-report", "urbansound8k", "--quiet", "--set", f"{KEY}.subset=true")
    assert report.code == 0, report.err
    assert "subset: 39 of 8732 clips (not checked against the publisher's md5)" in (
        report.out + report.err
    )
    assert not json.loads((folder / "source.json").read_text())["verified_md5"]
