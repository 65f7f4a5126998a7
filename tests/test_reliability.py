"""Damage and failure, as a user and a reliability engineer meet them: every case gives one
line that says what failed, which file and what to do, a non-zero exit and nothing
half-written; none gives a result with exit status 0. The workflow-level cases (kill -9 of
Snakemake, two Snakemake processes on one folder, identical reruns) are in
test_reliability_workflow.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from conftest import CONFIG_DIR, FSDD, QUICK, needs_fsdd
from safetensors.torch import load_file, save_file
from training_helpers import (  # noqa: F401
    QuickProject,
    quick_lora_run,
    quick_project,
    restore_torch_globals,
    run_main,
    train_args,
)

from audiopetl.features import cachefile
from audiopetl.study import Study, load_study
from audiopetl.training.run_folder import write_sums

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def quick(*sets: str) -> Study:
    return load_study(CONFIG_DIR / "config.yaml", "quick", sets)


@pytest.fixture
def project(
    quick_project: QuickProject,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    restore_torch_globals: None,  # noqa: F811
) -> Path:
    """A private copy of the prepared quick project (data, caches, pretraining), as cwd."""
    root = tmp_path / "project"
    shutil.copytree(quick_project.root, root)
    monkeypatch.chdir(root)
    return root


def one_line_error(err: str, *needles: str) -> str:
    """The failure's one line (library warnings aside), holding every needle, no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("audiopetl ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".part", ".old")))


# -- the feature cache --------------------------------------------------------------------------


def flip_bytes_in_a_data_page(path: Path) -> None:
    """Four flipped bytes inside the features' first data page: still a parquet file."""
    column = pq.ParquetFile(path).metadata.row_group(0).column(5)
    start = column.dictionary_page_offset or column.data_page_offset
    offset = start + column.total_compressed_size // 2
    assert offset + 4 < path.stat().st_size
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = bytes(b ^ 0xFF for b in data[offset : offset + 4])
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_the_cache_stop_training_and_the_report(project: Path, cli) -> None:
    cache = quick().cache_path("synthetic")
    flip_bytes_in_a_data_page(cache)
    out = project / "run"
    result = cli(*train_args("linear", out))
    assert result.code == 1
    one_line_error(
        result.err, str(cache), "damaged", "audiopetl cache synthetic --force", "checksum"
    )
    assert not out.exists()
    report = cli("data-report", "synthetic", *QUICK)
    assert report.code == 1
    one_line_error(report.err, str(cache), "damaged")
    assert "problems: none" not in report.out
    assert cachefile.damage(cache).startswith(f"{cache}: the feature cache is damaged")
    # What the error says to do repairs it.
    assert cli("cache", "synthetic", *QUICK, "--force").code == 0
    assert cachefile.damage(cache) == ""


def test_nan_features_in_an_intact_file_stop_training(project: Path, cli) -> None:
    # A cache whose checksums are right but whose features hold NaN: written as the cache
    # writer would, with one row poisoned.
    cache = quick().cache_path("synthetic")
    metadata = cachefile.read_metadata(cache)
    table = pq.read_table(cache)
    values = cachefile.feature_values(table, metadata["shape"]).copy()
    values[5, 3, 7] = np.nan
    blob = values.tobytes()
    width = 2 * metadata["shape"][0] * metadata["shape"][1]
    features = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(values), [None, pa.py_buffer(blob)]
    )
    table = table.set_column(5, "features", features)
    table = table.replace_schema_metadata({cachefile.META_KEY: cachefile.seal(metadata)})
    pq.write_table(table, cache, write_page_checksum=True)
    clip = table.column("clip_id")[5].as_py()
    result = cli(*train_args("linear", project / "run", fold=1))
    assert result.code == 1
    one_line_error(result.err, str(cache), "1 row(s)", "NaN or Inf", clip)


# -- a finished run's files ---------------------------------------------------------------------


@pytest.fixture
def lora_run(quick_lora_run: Path, tmp_path: Path, monkeypatch, quick_project) -> Path:  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(quick_lora_run, run)
    monkeypatch.chdir(quick_project.root)
    return run


def test_a_truncated_adapter_fails_evaluation(lora_run: Path, cli) -> None:
    adapter = lora_run / "model" / "adapter" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-100])
    result = cli("evaluate", lora_run)
    assert result.code == 1
    one_line_error(result.err, "differs from its SHA256SUMS", "model/adapter/adapter_model")
    # Even with its sums rewritten to match, the damaged file is named, not a traceback.
    write_sums(lora_run)
    result = cli("evaluate", lora_run)
    assert result.code == 1
    one_line_error(result.err, str(adapter), "damaged peft adapter", "rerun the run")
    assert not (lora_run / "evaluation.json").exists()


def test_an_adapter_full_of_inf_fails_evaluation(lora_run: Path, cli) -> None:
    adapter = lora_run / "model" / "adapter" / "adapter_model.safetensors"
    state = load_file(str(adapter))
    state = {k: v.fill_(float("inf")) if "lora_B" in k else v for k, v in state.items()}
    save_file(state, str(adapter), metadata={"format": "pt"})
    write_sums(lora_run)
    result = cli("evaluate", lora_run)
    assert result.code == 1
    one_line_error(result.err, "lora_B", "holds NaN or Inf", "rerun the run")
    result = (
        json.loads((lora_run / "evaluation.json").read_text())
        if (lora_run / "evaluation.json").exists()
        else None
    )
    assert result is None or result["matches_reported"] is False


# -- clips too short to give a frame ------------------------------------------------------------


def test_a_clip_too_short_is_bad_input(project: Path, cli) -> None:
    manifest = pd.read_csv(quick().manifest_path("synthetic"), dtype=str)
    clip = quick().manifest_path("synthetic").parent / manifest["path"][10]  # as cwd-relative
    sf.write(clip, np.zeros(150, np.float32) + 0.1, 16000, subtype="PCM_16")  # < one frame
    failed = cli("cache", "synthetic", *QUICK, "--force")
    assert failed.code == 1
    one_line_error(failed.err, str(clip), "0 frame(s), fewer than data.min_frames = 1")
    skipped = cli("cache", "synthetic", *QUICK, "--skip-bad")
    assert skipped.code == 0, skipped.err
    metadata = cachefile.read_metadata(Path(skipped.out.strip()))
    assert [item["path"] for item in metadata["skipped"]] == [str(clip)]
    assert metadata["rows"] == len(manifest) - 1


# -- a folder of one's own audio ----------------------------------------------------------------


def tone(path: Path, seconds: float, sr: int = 8000, **kw) -> None:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, **kw)


@pytest.fixture
def folder(project: Path) -> Path:
    audio = project / "my-audio"
    audio.mkdir()
    for label in ("yes", "no"):
        for speaker in ("ann", "bob", "cy"):
            tone(audio / f"{label}_{speaker}_0.wav", 0.5)
    return audio


def folder_sets(audio: Path, pattern: str = r"(?P<label>[a-z]+)_(?P<group>[a-z]+)_\d\.\w+") -> list:
    return [
        "--set",
        f"datasets.fsdd.folder.root={audio}",
        "--set",
        f"datasets.fsdd.folder.pattern={pattern}",
    ]


def test_every_matching_file_is_in_the_manifest_or_reported(folder: Path, cli) -> None:
    tone(folder / "yes_dee_0.mp3", 0.5, format="MP3")  # libsndfile >= 1.1 decodes MP3
    (folder / "no_dee_0.wav").write_bytes(b"RIFF not really a wav file")
    sets = folder_sets(folder)
    failed = cli("fetch", "fsdd", "--quiet", *sets)
    assert failed.code == 1
    one_line_error(failed.err, str(folder / "no_dee_0.wav"), "cannot read audio header")
    fetched = cli("fetch", "fsdd", "--quiet", *sets, "--skip-bad")
    assert fetched.code == 0, fetched.err
    assert f"skipped {folder / 'no_dee_0.wav'}: " in fetched.err
    manifest = pd.read_csv(fetched.out.strip(), dtype=str)
    assert "yes_dee_0.mp3" in set(manifest["path"])  # decoded, and relative to the root
    assert not any(Path(p).is_absolute() for p in manifest["path"])
    assert len(manifest) == 7
    skipping = [*sets, "--set", "data.skip_bad=true"]
    report = cli("data-report", "fsdd", "--quiet", *skipping)
    assert report.code == 0, report.err
    assert f"skipped while fetching: {folder / 'no_dee_0.wav'}" in report.out


@pytest.mark.parametrize(
    ("pattern", "csv", "message"),
    [
        (
            r"(?P<label>[a-z]+)_[a-z]+_\d\.wav",
            None,
            "no group, no fold and folder.folds is null: that would make one fold per clip",
        ),
        (
            r"(?P<label>[a-z]+)_(?P<group>[a-z]+)_(?:f(?P<fold>\d)|\d)\.wav",
            None,
            "a fold is given for 1 of 6 files but not for",
        ),
        (None, "fold", "group 'ann' spans folds [1, 2]"),
    ],
)
def test_folds_that_cannot_be_right_are_refused(
    folder: Path, cli, pattern: str | None, csv: str | None, message: str
) -> None:
    if csv is not None:
        rows = [
            {"path": p.name, "label": p.name.split("_")[0], "group": p.name.split("_")[1]}
            for p in sorted(folder.glob("*.wav"))
        ]
        for i, row in enumerate(rows):
            row["fold"] = str(1 + i % 2)  # ann's two clips land in two folds
        pd.DataFrame(rows).to_csv(folder.parent / "list.csv", index=False)
        sets = [
            "--set", f"datasets.fsdd.folder.root={folder}",
            "--set", f"datasets.fsdd.folder.manifest={folder.parent / 'list.csv'}",
            "--set", "datasets.fsdd.folder.pattern=null",
        ]  # fmt: skip
    else:
        if "fold" in message:  # one name carries a fold (f1), the others do not
            (folder / "yes_ann_0.wav").rename(folder / "yes_ann_f1.wav")
        sets = folder_sets(folder, pattern)
    result = cli("fetch", "fsdd", "--quiet", *sets)
    assert result.code == 1
    one_line_error(result.err, message)
    assert list(Path("data/raw").glob("fsdd-*")) == []


def test_data_commands_ignore_how_training_splits_folds(project: Path, cli) -> None:
    # A two-fold dataset while the study names three folds: only training cares.
    sets = ["--set", "datasets.synthetic.synthetic.folds=2", "--set", "study.folds=[1, 2, 3]"]
    for command in (("fetch", "synthetic"), ("cache", "synthetic"), ("data-report", "synthetic")):
        result = cli(*command, *QUICK, *sets)
        assert result.code == 0, (command, result.err)
    failed = cli("train", *QUICK, *sets, "--dataset", "synthetic", "--model", "tiny-ast",
                 "--strategy", "linear", "--fold", "3", "--seed", "0")  # fmt: skip
    assert failed.code == 2  # a config error lists its problems, one line each
    assert "study.folds[2]: fold 3 is outside dataset 'synthetic''s folds 1..2" in failed.err


# -- the machine: a full disk, a read-only folder ----------------------------------------------


def _why_no_mounts() -> str | None:
    if os.geteuid() != 0:
        return "mounting a small or read-only tmpfs needs root"
    return None


needs_mounts = pytest.mark.skipif(_why_no_mounts() is not None, reason=str(_why_no_mounts()))


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@needs_mounts
def test_a_full_disk_is_said_as_such_and_leaves_nothing(project: Path, cli) -> None:
    with tmpfs(project.parent / "small", "size=160k") as small:
        out = small / "run"
        result = cli(*train_args("full", out, "training.epochs=2"))
        assert result.code == 1
        one_line_error(result.err, "no space left on device", str(small))
        assert not out.exists() and leftovers(small) == []
        # The cache writer too.
        cached = cli("cache", "synthetic", *QUICK, "--out", small / "c.parquet", "--force")
        assert cached.code == 1
        one_line_error(cached.err, "no space left on device", str(small / "c.parquet"))
        assert not (small / "c.parquet").exists() and leftovers(small) == []


@needs_mounts
def test_a_read_only_results_folder_is_said_as_such(project: Path, cli) -> None:
    with tmpfs(project.parent / "frozen", "ro,size=1m") as frozen:
        result = cli(*train_args("linear", frozen / "run"))
        assert result.code == 1
        one_line_error(result.err, "read-only file system", str(frozen))


# -- what a killed process leaves, and what a retry does -----------------------------------------


def test_the_next_run_removes_what_a_killed_one_left(project: Path, cli) -> None:
    out = project / "runs" / "fold3"
    out.parent.mkdir(parents=True)
    dead = 2**22 + 17  # above Linux's default pid_max: no such process
    (out.parent / f".fold3.{dead}.abc.tmp").mkdir()
    (out.parent / f".fold3.{dead}.abc.tmp" / "half.bin").write_bytes(b"x")
    (out.parent / ".fold3.resume").mkdir()
    (out.parent / ".fold3.resume" / f".state.pt.{dead}.xyz.pt.tmp").write_bytes(b"x")
    assert cli(*train_args("linear", out)).code == 0
    assert leftovers(out.parent) == []


def test_a_failure_a_retry_cannot_change_fails_at_once(project: Path, cli) -> None:
    out = project / "run"
    guard = "training.min_accuracy_over_chance=0.9"  # no run of the quick preset gets there
    first = cli(*train_args("linear", out, guard))
    assert first.code == 1
    line = one_line_error(first.err, "is not above chance", "min_accuracy_over_chance = 0.9")
    # The workflow's retry: the same run fails at once, with the same reason.
    again = cli(*train_args("linear", out, guard))
    assert again.code == 1
    repeat = one_line_error(again.err, "the previous attempt failed so")
    assert line.split("error: ", 1)[1] in repeat
    assert "Epoch" not in again.err and "epoch 1/" not in again.err  # nothing trained
    # A change that can matter (here the guard itself) tries again.
    assert cli(*train_args("linear", out, "training.min_accuracy_over_chance=0.0")).code == 0
    assert not (project / ".run.failed.json").exists()


def test_a_job_log_keeps_every_attempt_and_stderr_says_why(project: Path) -> None:
    log = project / "logs" / "train.log"
    command = [
        sys.executable, "-m", "audiopetl", *train_args("linear", project / "run"), "--log", log,
    ]  # fmt: skip
    failing = [*map(str, command), "--set", "training.min_accuracy_over_chance=0.9"]
    first = subprocess.run(failing, cwd=project, capture_output=True, text=True, timeout=300)
    assert first.returncode == 1
    assert first.stdout == "" and first.stderr.count("\n") == 1  # the cause, nothing else
    assert "is not above chance" in first.stderr
    # Snakemake deletes a job's log before every attempt: the earlier attempts survive that.
    log.unlink()
    second = subprocess.run(failing, cwd=project, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1
    log.unlink()
    done = subprocess.run(list(map(str, command)), cwd=project, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in log.parent.iterdir()) == ["train.log"]  # no hidden twin left
    text = log.read_text()
    headers = [line for line in text.splitlines() if line.startswith("==== audiopetl")]
    assert [h.split(": attempt ")[1].split(",")[0] for h in headers] == ["1", "2", "3"]
    assert text.count("==== ended (exit 1)") == 2 and text.count("==== ended (exit 0)") == 1
    assert "epoch 1/" in text  # the training's own lines are in the log


def test_files_follow_the_users_umask(project: Path, cli) -> None:
    previous = os.umask(0o002)
    try:
        out = project / "run"
        assert cli(*train_args("lora", out)).code == 0
    finally:
        os.umask(previous)
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert modes["model/trainable.safetensors"] == 0o664, modes
    assert {m for p, m in modes.items() if (out / p).is_file()} == {0o664}, modes
    assert {m for p, m in modes.items() if (out / p).is_dir()} == {0o775}, modes


@needs_fsdd
def test_fsdd_folder_manifest_is_relative_to_its_root(project: Path, cli) -> None:
    result = cli("fetch", "fsdd", "--quiet", "--set", f"datasets.fsdd.folder.root={FSDD}")
    assert result.code == 0, result.err
    manifest = pd.read_csv(result.out.strip(), dtype=str)
    assert manifest["path"].str.match(r"^\d_[a-z]+_\d+\.wav$").all()
