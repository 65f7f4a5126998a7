"""FSD50K: a generated miniature of the publisher's files (split zip archives made by Info-ZIP's
zip, the ground truth's dev.csv, eval.csv and vocabulary.csv) served from 127.0.0.1, fetched
through the CLI: the parts downloaded and md5-checked, joined, unpacked and verified into a
multi-label manifest on the publisher's split. Every failure path: a part's wrong md5, a
damaged part, a listed clip missing, an unlisted clip, an unknown label; the subset route; no
zip tool; the preset's plan."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from http_server import serving

from audiopetl.data import download as download_mod
from audiopetl.data.datasets import fsd50k as fsd50k_mod
from audiopetl.data.manifest import read_manifest

KEY = "datasets.fsd50k.fsd50k"
VOCABULARY = [("Bark", "/m/05tny_"), ("Music", "/m/04rlf"), ("Speech", "/m/09x0r")]
DEV = [  # fname, labels, split
    ("1001", "Bark", "train"),
    ("1002", "Music,Speech", "train"),
    ("1003", "Speech", "train"),
    ("1004", "Bark,Music", "train"),
    ("1005", "Music", "val"),
    ("1006", "Speech,Bark", "val"),
]
EVAL = [("2001", "Bark"), ("2002", "Music,Speech"), ("2003", "Speech")]


def clip(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = 0.1 * np.random.default_rng(seed).standard_normal(44100)  # incompressible: parts
    sf.write(path, noise, 44100, subtype="PCM_16")


def publish(work: Path, *, drop: str | None = None, extra: str | None = None,
            label: str | None = None) -> dict[str, bytes]:  # fmt: skip
    """The publisher's files: each audio archive split into 128 KiB parts by zip -s."""
    work.mkdir(parents=True)
    for k, (fname, _, _) in enumerate(DEV):
        if fname != drop:
            clip(work / "FSD50K.dev_audio" / f"{fname}.wav", k)
    if extra:
        clip(work / "FSD50K.dev_audio" / f"{extra}.wav", 99)
    for k, (fname, _) in enumerate(EVAL):
        clip(work / "FSD50K.eval_audio" / f"{fname}.wav", 50 + k)
    truth = work / "FSD50K.ground_truth"
    truth.mkdir()
    mids = dict(VOCABULARY)
    rows = ["fname,labels,mids,split"]
    for fname, labels, split in DEV:
        labels = label if label and fname == "1003" else labels
        ids = ",".join(mids.get(x, "/m/0") for x in labels.split(","))
        rows.append(f'{fname},"{labels}","{ids}",{split}')
    (truth / "dev.csv").write_text("\n".join(rows) + "\n")
    rows = ["fname,labels,mids"]
    for fname, labels in EVAL:
        ids = ",".join(mids[x] for x in labels.split(","))
        rows.append(f'{fname},"{labels}","{ids}"')
    (truth / "eval.csv").write_text("\n".join(rows) + "\n")
    (truth / "vocabulary.csv").write_text(
        "".join(f"{i},{name},{mid}\n" for i, (name, mid) in enumerate(VOCABULARY))
    )
    out = work / "out"
    out.mkdir()
    for stem, split in (("FSD50K.dev_audio", True), ("FSD50K.eval_audio", True),
                        ("FSD50K.ground_truth", False)):  # fmt: skip
        cmd = ["zip", "-q", "-r", *(["-s", "128k"] if split else []), str(out / f"{stem}.zip"),
               stem]  # fmt: skip
        subprocess.run(cmd, cwd=work, check=True)
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def parts_setting(files: dict[str, bytes]) -> str:
    """The parts setting for what zip made (fewer parts than the publisher's 5 and 1)."""
    by_stem: dict[str, list[str]] = {}
    for name in files:
        stem, suffix = name.rsplit(".", 1)
        by_stem.setdefault(stem, []).append("." + suffix)
    for suffixes in by_stem.values():
        suffixes.sort(key=lambda s: (s == ".zip", s))
    return "{" + ", ".join(f"{k}: [{', '.join(v)}]" for k, v in by_stem.items()) + "}"


def md5_setting(files: dict[str, bytes], wrong: str | None = None) -> str:
    def md5(name: str) -> str:
        return "f" * 32 if name == wrong else hashlib.md5(files[name]).hexdigest()

    return "{" + ", ".join(f"{name}: {md5(name)}" for name in files) + "}"


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_mod, "BACKOFF_BASE_S", 0.01)


def fetch(cli: Callable, files: dict[str, bytes], *more: str, wrong: str | None = None) -> Any:
    with serving({f"/files/{name}": data for name, data in files.items()}) as server:
        sets = [f"{KEY}.url={server.url('/files')}", f"{KEY}.md5={md5_setting(files, wrong)}",
                f"{KEY}.parts={parts_setting(files)}", *more]  # fmt: skip
        args = ["fetch", "fsd50k", "--quiet"]
        for item in sets:
            args += ["--set", item]
        return cli(*args)


def raw_folders(project: Path) -> list[Path]:
    return sorted(p for p in (project / "data" / "raw").glob("fsd50k-*") if p.is_dir())


def test_parts_joined_verified_and_described(project: Path, cli: Callable, tmp_path: Path) -> None:
    files = publish(tmp_path / "publisher")
    assert sum(name.startswith("FSD50K.dev_audio.z0") for name in files) >= 2  # really split
    result = fetch(cli, files)
    assert result.code == 0, result.err
    (folder,) = raw_folders(project)
    manifest = read_manifest(folder / "manifest.csv")
    assert manifest["split"].value_counts().to_dict() == {"train": 4, "validation": 2, "test": 3}
    row = manifest[manifest["clip_id"] == "dev_1006"].iloc[0]
    assert row["labels"] == "0|2" and row["label_name"] == "Bark|Speech"  # in vocabulary order
    assert row["split"] == "validation" and (manifest["label"] == -1).all()
    assert (manifest["sample_rate"] == 44100).all()
    sums = (folder / "SHA256SUMS").read_text()
    assert "  FSD50K.dev_audio/1001.wav\n" in sums and "  FSD50K.ground_truth/eval.csv\n" in sums
    assert not (project / "data" / "raw" / ".downloads" / "fsd50k").exists()  # removed


def test_a_wrong_md5_names_the_part(project: Path, cli: Callable, tmp_path: Path) -> None:
    files = publish(tmp_path / "publisher")
    result = fetch(cli, files, wrong="FSD50K.dev_audio.z01")
    assert result.code == 1 and "1 part(s) differ" in result.err
    assert "FSD50K.dev_audio.z01" in result.err and len(result.err.strip().splitlines()) == 1
    assert raw_folders(project) == []
    assert not (project / "data/raw/.downloads/fsd50k/FSD50K.dev_audio.z01").exists()


def test_a_damaged_part_is_one_error(project: Path, cli: Callable, tmp_path: Path) -> None:
    files = publish(tmp_path / "publisher")
    local = tmp_path / "parts"
    local.mkdir()
    for name, data in files.items():
        (local / name).write_bytes(data[: len(data) // 2] if name.endswith(".z01") else data)
    result = fetch(cli, files, f"{KEY}.archives={local}", f"{KEY}.md5=null")
    assert result.code == 1 and len(result.err.strip().splitlines()) == 1
    assert "FSD50K.dev_audio.zip" in result.err
    assert raw_folders(project) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"drop": "1004"}, "1 missing"),
        ({"extra": "1999"}, "1 unlisted"),
        ({"label": "Bark,Meow"}, "Meow not in vocabulary.csv"),
    ],
)
def test_every_problem_is_listed(
    project: Path, cli: Callable, tmp_path: Path, change: dict, expected: str
) -> None:
    result = fetch(cli, publish(tmp_path / "publisher", **change))
    assert result.code == 1
    assert "FSD50K verification failed" in result.err and expected in result.err
    assert raw_folders(project) == []


def test_without_md5s_the_sizes_must_be_fsd50ks(
    project: Path, cli: Callable, tmp_path: Path
) -> None:
    # The md5s vouch for the parts; without them a whole copy must have FSD50K's sizes.
    result = fetch(cli, publish(tmp_path / "publisher"), f"{KEY}.md5=null")
    assert result.code == 1
    assert "dev.csv: 6 clips, not FSD50K's 40966" in result.err
    assert "vocabulary.csv: 3 classes, not 200" in result.err
    assert raw_folders(project) == []


def test_a_subset_says_so(project: Path, cli: Callable, tmp_path: Path) -> None:
    files = publish(tmp_path / "publisher", drop="1002")
    result = fetch(cli, files, f"{KEY}.subset=true", wrong="FSD50K.eval_audio.zip")
    assert result.code == 0, result.err
    report = cli("data-report", "fsd50k", "--quiet", "--set", f"{KEY}.subset=true")
    assert report.code == 0, report.err
    assert "subset: 8 of 51197 clips (not checked against the publisher's md5)" in (
        report.out + report.err
    )


def test_no_zip_tool_is_one_line(
    project: Path, cli: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = publish(tmp_path / "publisher")
    monkeypatch.setattr(fsd50k_mod.shutil, "which", lambda name: None)
    result = fetch(cli, files)
    assert result.code == 1 and "needs Info-ZIP's zip" in result.err
    assert raw_folders(project) == []


def test_the_preset_plans_the_publishers_split(project: Path, cli: Callable) -> None:
    result = cli("plan", "--experiment", "fsd50k-ast", "--quiet")
    assert result.code == 0, result.err
    assert "train fsd50k/ast-audioset/lora/seed10/official" in result.out
    assert "36796/4170/10231" in result.out


def test_the_tool_is_there() -> None:
    # The recipe joins the publisher's split archives with it; CI must have it.
    assert shutil.which("zip") is not None
