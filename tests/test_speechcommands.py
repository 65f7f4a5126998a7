"""Speech Commands v0.02: generated miniatures of the publisher's two archives (their layout,
list files, background-noise recordings) served from 127.0.0.1, fetched through the CLI and
verified. The 35-word task (the official lists), the 12-class keyword task (keywords,
_unknown_, silence windows, the separate test archive), and every failure path: a wrong md5, a
truncated archive, a listed clip missing, a file outside the word folders, a clip in both lists,
a speaker on two sides of the split; the subset route; the preset's plan."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from http_server import serving

from audiopetl.data import download as download_mod
from audiopetl.data.datasets.speechcommands import SIZES_35
from audiopetl.data.manifest import read_manifest

MAIN, TEST = "/data/speech_commands_v0.02.tar.gz", "/data/speech_commands_test_set_v0.02.tar.gz"
KEY = "datasets.speechcommands.speechcommands"
# Per word: speakers in training, validation and test (the lists hash speakers).
SPEAKERS = {"train": ["0a0b0c0d", "1a1b1c1d"], "validation": ["2a2b2c2d"], "test": ["3a3b3c3d"]}
WORDS = ["yes", "no", "marvin", "bed"]  # two keywords, two of the other 25 words


def clip(seed: int, seconds: float = 1.0) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    wave = 0.1 * rng.standard_normal(int(16000 * seconds))
    sf.write(out, wave, 16000, format="WAV", subtype="PCM_16")
    return out.getvalue()


def tar(files: dict[str, bytes], prefix: str = "./") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def main_files(*, drop: str | None = None, extra: dict[str, bytes] | None = None,
               both: bool = False, leak: bool = False) -> dict[str, bytes]:  # fmt: skip
    files: dict[str, bytes] = {"LICENSE": b"CC BY 4.0\n", "README.md": b"a miniature\n"}
    lists: dict[str, list[str]] = {"validation": [], "test": []}
    seed = 0
    for word in WORDS:
        for part, speakers in SPEAKERS.items():
            for who in speakers:
                name = f"{word}/{who}_nohash_0.wav"
                seed += 1
                if name != drop:
                    files[name] = clip(seed)
                if part != "train":
                    lists[part].append(name)
    if both:
        lists["test"].append(lists["validation"][0])
    if leak:  # a training speaker's clip listed for validation
        files["yes/0a0b0c0d_nohash_1.wav"] = clip(99)
        lists["validation"].append("yes/0a0b0c0d_nohash_1.wav")
    files["validation_list.txt"] = ("\n".join(lists["validation"]) + "\n").encode()
    files["testing_list.txt"] = ("\n".join(lists["test"]) + "\n").encode()
    files["_background_noise_/white_noise.wav"] = clip(100, 3.0)
    files["_background_noise_/running_tap.wav"] = clip(101, 2.0)
    files.update(extra or {})
    return files


def keyword_test_files() -> dict[str, bytes]:
    files = {}
    for k, label in enumerate(
        ["down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes", "_unknown_",
         "_silence_"]
    ):  # fmt: skip
        files[f"{label}/9f9f9f{k:02d}_nohash_0.wav"] = clip(200 + k)
    return files


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_mod, "BACKOFF_BASE_S", 0.01)


def fetch(cli: Callable, main: bytes, *more: str, test: bytes | None = None,
          md5: str | None = None) -> Any:  # fmt: skip
    files = {MAIN: main, TEST: test or tar(keyword_test_files())}
    with serving(files) as server:
        sets = [
            f"{KEY}.url={server.url(MAIN)}",
            f"{KEY}.md5={md5 or hashlib.md5(main).hexdigest()}",
            f"{KEY}.test_url={server.url(TEST)}",
            f"{KEY}.test_md5={hashlib.md5(files[TEST]).hexdigest()}",
            *more,
        ]
        args = ["fetch", "speechcommands", "--quiet"]
        for item in sets:
            args += ["--set", item]
        return cli(*args)


def raw_folders(project: Path) -> list[Path]:
    return sorted(p for p in (project / "data" / "raw").glob("speechcommands-*") if p.is_dir())


def test_35_words_follow_the_official_lists(project: Path, cli: Callable) -> None:
    result = fetch(cli, tar(main_files()))
    assert result.code == 0, result.err
    (folder,) = raw_folders(project)
    manifest = read_manifest(folder / "manifest.csv")
    assert len(manifest) == len(WORDS) * 4  # background noise is not a class
    counts = manifest["split"].value_counts().to_dict()
    assert counts == {"train": 8, "validation": 4, "test": 4}
    assert set(manifest["label_name"]) == set(WORDS)
    # Training is every clip in neither list; a speaker sits in one part only.
    assert manifest.groupby("group")["split"].nunique().max() == 1
    row = manifest[manifest["clip_id"] == "marvin_2a2b2c2d_nohash_0"].iloc[0]
    assert row["split"] == "validation" and row["group"] == "2a2b2c2d"
    sums = (folder / "SHA256SUMS").read_text()
    assert "  validation_list.txt\n" in sums and "  _background_noise_/running_tap.wav\n" in sums
    assert json.loads((folder / "source.json").read_text())["verified_md5"]


def test_12_classes_cut_silence_and_test_on_the_test_archive(project: Path, cli: Callable) -> None:
    result = fetch(cli, tar(main_files()), f"{KEY}.classes=12")
    assert result.code == 0, result.err
    (folder,) = raw_folders(project)
    manifest = read_manifest(folder / "manifest.csv")
    parts = {part: manifest[manifest["split"] == part] for part in ("train", "validation", "test")}
    # The main archive's testing_list clips are left out; the test set is the test archive's.
    assert len(parts["test"]) == 12 and parts["test"]["clip_id"].str.startswith("test_").all()
    assert set(parts["test"]["label_name"]) == {
        "down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes", "_unknown_",
        "_silence_",
    }  # fmt: skip
    words = parts["train"][parts["train"]["label_name"] != "_silence_"]
    assert set(words["label_name"]) == {"yes", "no", "_unknown_"}  # marvin, bed: unknown
    # Silence: 1 s windows every 0.5 s; running_tap's (2 s: 2 windows) for validation.
    silence = manifest[manifest["label_name"] == "_silence_"]
    train_silence = silence[silence["split"] == "train"]
    assert sorted(train_silence["clip_id"]) == [
        f"silence_white_noise-{s}" for s in (0, 16000, 24000, 8000)
    ]
    assert list(silence[silence["split"] == "validation"]["group"]) == ["noise:running_tap"] * 2
    window, rate = sf.read(folder / "_silence_" / "white_noise-8000.wav", dtype="int16")
    noise, _ = sf.read(folder / "_background_noise_" / "white_noise.wav", dtype="int16")
    assert rate == 16000 and np.array_equal(window, noise[8000:24000])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"drop": "no/2a2b2c2d_nohash_0.wav"}, "1 missing"),
        ({"extra": {"banana/0a0b0c0d_nohash_0.wav": b"RIFF"}}, "1 unlisted"),
        ({"extra": {"notes.txt": b"hello"}}, "1 unlisted"),
        ({"both": True}, "1 metadata"),
    ],
)
def test_every_problem_is_listed_and_nothing_is_left(
    project: Path, cli: Callable, change: dict, expected: str
) -> None:
    result = fetch(cli, tar(main_files(**change)))
    assert result.code == 1
    assert "Speech Commands verification failed" in result.err and expected in result.err
    assert raw_folders(project) == []
    assert len(list((project / "data" / "raw").glob("speechcommands-*.problems.txt"))) == 1


def test_a_speaker_on_two_sides_of_the_split_is_refused(project: Path, cli: Callable) -> None:
    result = fetch(cli, tar(main_files(leak=True)))
    assert result.code == 1
    assert "0a0b0c0d" in result.err and len(result.err.strip().splitlines()) == 1
    assert raw_folders(project) == []


def test_a_wrong_md5_and_a_truncated_archive(project: Path, cli: Callable, tmp_path: Path) -> None:
    data = tar(main_files())
    result = fetch(cli, data, md5="0123456789abcdef" * 2)
    assert result.code == 1 and "differs from the publisher's" in result.err
    assert len(result.err.strip().splitlines()) == 1
    cut = tmp_path / "speech_commands_v0.02.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    result = fetch(cli, data, f"{KEY}.archive={cut}", md5=hashlib.md5(cut.read_bytes()).hexdigest())
    assert result.code == 1 and str(cut) in result.err
    assert raw_folders(project) == []


def test_a_test_archive_without_a_class_is_refused(project: Path, cli: Callable) -> None:
    files = keyword_test_files()
    del files["_silence_/9f9f9f11_nohash_0.wav"]
    result = fetch(cli, tar(main_files()), f"{KEY}.classes=12", test=tar(files, "test/"))
    assert result.code == 1 and "1 missing" in result.err and "_silence_/" in result.err
    assert raw_folders(project) == []


def test_a_subset_is_structure_checked_and_says_so(project: Path, cli: Callable) -> None:
    data = tar(main_files(drop="no/2a2b2c2d_nohash_0.wav"))
    result = fetch(cli, data, f"{KEY}.subset=true", md5="0123456789abcdef" * 2)
    assert result.code == 0, result.err
    (folder,) = raw_folders(project)
    assert len(read_manifest(folder / "manifest.csv")) == 15
    report = cli("data-report", "speechcommands", "--quiet", "--set", f"{KEY}.subset=true")
    assert report.code == 0, report.err
    total = sum(SIZES_35.values())
    assert f"subset: 15 of {total} clips (not checked against the publisher's md5)" in (
        report.out + report.err
    )


def test_the_preset_plans_the_official_split(project: Path, cli: Callable) -> None:
    assert sum(SIZES_35.values()) == 105829
    result = cli("plan", "--experiment", "speechcommands-petl-ast", "--quiet")
    assert result.code == 0, result.err
    assert "train speechcommands/ast-audioset/lora/seed10/official 84843/9981/11005" in result.out
    assert "84843/9981/11005" in result.out
