"""The data commands end to end: bad input fails loudly and leaves nothing, --skip-bad and the
data report, --help."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import CONFIG_DIR, ESC50_SUBSET, FSDD, QUICK, needs_esc50, needs_fsdd

from audiopetl.core.errors import DataError
from audiopetl.data.datasets.esc50 import esc50_manifest
from audiopetl.features.cache import read_folds, read_metadata
from audiopetl.study import load_study

# Relative to the project folder each test runs in, as the CLI sees them.
QUICK_STUDY = load_study(CONFIG_DIR / "config.yaml", "quick")
MANIFEST = QUICK_STUDY.manifest_path("synthetic")
FEATURES = Path("data/features")
REPORT = QUICK_STUDY.data_report_path("synthetic")
# A clip in the second cache batch (batch_size 64), so row numbers are not trivially right.
VICTIM_ROW = 66  # line of manifest.csv (header is line 1)


def manifest_lines() -> list[str]:
    return MANIFEST.read_text().splitlines(keepends=True)


def clip_at(line: int) -> tuple[str, Path]:
    """clip id and audio file of the manifest's ``line``."""
    clip_id, rel = manifest_lines()[line - 1].split(",")[:2]
    return clip_id, MANIFEST.parent / rel


def remove_cache() -> None:
    shutil.rmtree(FEATURES)


def assert_nothing_cached() -> None:
    left = sorted(p.name for p in FEATURES.iterdir()) if FEATURES.exists() else []
    assert left == [], f"left in {FEATURES}: {left}"


def write_bad_audio(path: Path, kind: str) -> None:
    good = path.read_bytes()
    if kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(len(good)))
    elif kind == "garbage_header":
        path.write_bytes(
            b"RIFF\x00\x00\x00\x00GARBAGE!" + np.random.default_rng(1).bytes(28) + good[44:]
        )
    elif kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "no_frames":
        sf.write(path, np.zeros(0, np.float32), 16000, subtype="PCM_16")
    elif kind in ("nan", "inf"):
        data, sr = sf.read(path, dtype="float32")
        data[len(data) // 2] = np.nan if kind == "nan" else np.inf
        sf.write(path, data, sr, subtype="FLOAT")
    else:
        raise ValueError(kind)


# ---------------------------------------------------------------------------------------------
# bad audio: the cache fails naming file and manifest row, and leaves nothing behind


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("random_bytes", "cannot decode audio"),
        ("garbage_header", "cannot decode audio"),
        ("empty_file", "empty file (0 bytes)"),
        ("no_frames", "holds no samples"),
        ("nan", "NaN or Inf"),
        ("inf", "NaN or Inf"),
    ],
)
def test_bad_audio_fails_cache(synthetic_project, cli, kind, reason):
    _, audio = clip_at(VICTIM_ROW)
    write_bad_audio(audio, kind)
    remove_cache()
    result = cli("cache", "synthetic", *QUICK)
    assert result.code == 1
    assert result.out == ""
    assert f"{audio}: " in result.err and reason in result.err
    assert f"(manifest {MANIFEST}, row {VICTIM_ROW})" in result.err
    # What to do about it, in the same line.
    assert "or leave bad files out with --skip-bad (data.skip_bad: true)" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err
    assert_nothing_cached()


def test_truncated_wav_reads_what_is_there(synthetic_project, cli):
    # The header claims 0.7 s; half the bytes are there. libsndfile reads what there is.
    clip_id, audio = clip_at(VICTIM_ROW)
    data = audio.read_bytes()
    audio.write_bytes(data[: 44 + (len(data) - 44) // 4])
    remove_cache()
    result = cli("cache", "synthetic", *QUICK, "--set", "features.target_length=80")
    assert result.code == 0, result.err
    features = read_folds(Path(result.out.strip()))
    n_frames = dict(zip(features.clip_ids, features.n_frames.tolist(), strict=True))
    assert n_frames[clip_id] < 20 < 68 == max(n_frames.values())


def test_bad_audio_is_not_noticed_while_cache_is_fresh(synthetic_project, cli):
    # The cache is keyed by the manifest's hash: audio edited in place needs --force.
    _, audio = clip_at(VICTIM_ROW)
    write_bad_audio(audio, "random_bytes")
    assert cli("cache", "synthetic", *QUICK).code == 0
    result = cli("cache", "synthetic", *QUICK, "--force")
    assert result.code == 1 and str(audio) in result.err
    # The failed rebuild leaves the old cache in place, and no temporary file.
    assert sorted(p.name for p in FEATURES.iterdir()) == [synthetic_project.cache.name]


# ---------------------------------------------------------------------------------------------
# bad manifest rows


def edit_manifest(edit) -> pd.DataFrame:
    df = pd.read_csv(MANIFEST, dtype=str, keep_default_na=False)
    df = edit(df)
    df.to_csv(MANIFEST, index=False)
    return df


def test_duplicate_clip_id(synthetic_project, cli):
    clip_id, _ = clip_at(VICTIM_ROW)
    edit_manifest(lambda df: pd.concat([df, df.iloc[[VICTIM_ROW - 2]]], ignore_index=True))
    remove_cache()
    result = cli("cache", "synthetic", *QUICK)
    assert result.code == 1
    assert f"{MANIFEST}: duplicate clip id(s): row 74 ({clip_id})" in result.err
    assert_nothing_cached()


def test_fold_outside_configured_range(synthetic_project, cli):
    clip_id, _ = clip_at(VICTIM_ROW)

    def to_fold_9(df):
        df.loc[VICTIM_ROW - 2, "fold"] = "9"
        return df

    edit_manifest(to_fold_9)
    remove_cache()
    result = cli("cache", "synthetic", *QUICK)
    assert result.code == 1
    assert (
        f"{MANIFEST}: row {VICTIM_ROW} ({clip_id}): fold 9 is outside the configured folds 1..3"
        in result.err
    )
    assert_nothing_cached()
    # data-report checks the same manifest.
    report = cli("data-report", "synthetic", *QUICK)
    assert report.code == 1 and "fold 9" in report.err
    assert not REPORT.exists()


def test_missing_manifest_column(synthetic_project, cli):
    edit_manifest(lambda df: df.drop(columns=["label_name"]))
    remove_cache()
    result = cli("cache", "synthetic", *QUICK)
    assert result.code == 1
    assert f"{MANIFEST}: missing manifest column(s): label_name" in result.err
    assert_nothing_cached()


def test_label_names_must_map_one_to_one(synthetic_project, cli):
    def rename(df):
        df.loc[VICTIM_ROW - 2, "label_name"] = "surprise"
        return df

    edit_manifest(rename)
    remove_cache()
    result = cli("cache", "synthetic", *QUICK)
    assert result.code == 1
    assert f"{MANIFEST}: labels and label names do not map one-to-one" in result.err
    assert "surprise" in result.err
    assert_nothing_cached()


def test_missing_manifest(project, cli):
    result = cli("cache", "synthetic", *QUICK)
    assert result.code == 1
    assert f"{MANIFEST}: manifest not found; run `audiopetl fetch synthetic` first" in result.err
    assert_nothing_cached()


def test_missing_manifest_beside_an_existing_cache(synthetic_project, cli):
    MANIFEST.unlink()
    result = cli("cache", "synthetic", *QUICK)
    assert result.code == 1
    assert f"{MANIFEST}: manifest not found" in result.err
    assert "Traceback" not in result.err


def test_skip_bad_with_nothing_readable(synthetic_project, cli):
    lines = manifest_lines()
    MANIFEST.write_text("".join(lines[:3]))
    for line in (2, 3):
        write_bad_audio(clip_at(line)[1], "empty_file")
    remove_cache()
    result = cli("cache", "synthetic", *QUICK, "--skip-bad")
    assert result.code == 1
    assert f"{MANIFEST}: no clip could be read; no cache written" in result.err
    assert_nothing_cached()


def test_esc50_layout_without_category_column(synthetic_project, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(MANIFEST.parent, root)
    meta = root / "meta" / "esc50.csv"
    pd.read_csv(meta, dtype=str).drop(columns=["category"]).to_csv(meta, index=False)
    with pytest.raises(DataError, match=re.escape(f"{meta}: missing column(s): category")):
        esc50_manifest(root, 3)


def test_esc50_layout_with_fold_9(synthetic_project, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(MANIFEST.parent, root)
    meta = root / "meta" / "esc50.csv"
    df = pd.read_csv(meta, dtype=str)
    df.loc[4, "fold"] = "9"
    df.to_csv(meta, index=False)
    clip = Path(df.loc[4, "filename"]).stem
    with pytest.raises(DataError, match=re.escape(f"{meta}: row 6 ({clip}): fold 9 is outside")):
        esc50_manifest(root, 3)


@needs_esc50
def test_fetch_esc50_archive_without_category(project, cli, tmp_path):
    meta = pd.read_csv(ESC50_SUBSET / "meta" / "esc50.csv", dtype=str)
    clip = sorted((ESC50_SUBSET / "audio").glob("*.wav"))[0]
    archive = tmp_path / "esc50.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(
            "ESC-50-master/meta/esc50.csv",
            meta[meta["filename"] == clip.name].drop(columns=["category"]).to_csv(index=False),
        )
        zf.write(clip, f"ESC-50-master/audio/{clip.name}")
    result = cli("fetch", "esc50", "--quiet", "--set", f"datasets.esc50.esc50.archive={archive}")
    assert result.code == 1
    assert "ESC-50-master/meta/esc50.csv: missing column(s): category" in result.err
    assert str(archive) in result.err
    assert list(Path("data/raw").glob("esc50-*/")) == []


# ---------------------------------------------------------------------------------------------
# a folder dataset: unknown labels and bad audio fail at fetch


@pytest.fixture
def small_folder(project) -> Path:
    folder = project / "my-audio"
    folder.mkdir()
    for digit in "012":
        for speaker in ("theo", "lucas"):
            for take in range(2):
                name = f"{digit}_{speaker}_{take}.wav"
                shutil.copy(FSDD / name, folder / name)
    return folder


def folder_args(folder: Path, *extra: str) -> tuple[str, ...]:
    return ("--quiet", "--set", f"datasets.fsdd.folder.root={folder}", *extra)


@needs_fsdd
def test_folder_unknown_label_fails_fetch(small_folder, cli):
    result = cli(
        "fetch",
        "fsdd",
        *folder_args(small_folder, "--set", "datasets.fsdd.folder.labels=['0', '1']"),
    )
    assert result.code == 1
    assert f"{small_folder / '2_lucas_0.wav'}: unknown label '2'" in result.err
    raw = Path("data/raw")
    assert not raw.exists() or list(raw.iterdir()) == []  # no half-built folder either
    result = cli("cache", "fsdd", *folder_args(small_folder))
    assert result.code == 1 and "manifest not found" in result.err


@needs_fsdd
def test_skip_bad_on_one_data_command_only_says_which_fetch(small_folder, cli):
    # For a folder dataset --skip-bad decides which files it lists: a cache with the flag
    # after a fetch without it names another dataset, and says which fetch makes it.
    assert cli("fetch", "fsdd", *folder_args(small_folder)).code == 0
    result = cli("cache", "fsdd", *folder_args(small_folder), "--skip-bad")
    assert result.code == 1
    assert "manifest not found (with --skip-bad: for a folder dataset data.skip_bad decides" in (
        result.err
    )
    assert result.err.strip().endswith("run `audiopetl fetch fsdd --skip-bad` first")
    assert len(result.err.strip().splitlines()) == 1
    assert_nothing_cached()


@needs_fsdd
def test_folder_corrupt_audio_fails_fetch(small_folder, cli):
    bad = small_folder / "1_theo_1.wav"
    bad.write_bytes(np.random.default_rng(0).bytes(3000))
    result = cli("fetch", "fsdd", *folder_args(small_folder))
    assert result.code == 1
    assert f"{bad.resolve()}" in result.err or f"{bad}" in result.err
    assert "cannot read audio header" in result.err
    assert list(Path("data/raw").glob("fsdd-*/")) == []


@needs_fsdd
def test_folder_fetch_cache_and_report(small_folder, cli):
    args = folder_args(small_folder, "--set", "datasets.fsdd.folder.folds=2")
    assert cli("fetch", "fsdd", *args).code == 0
    result = cli("cache", "fsdd", *args)
    assert result.code == 0, result.err
    features = read_folds(Path(result.out.strip()))
    assert len(features) == 12 and features.features.shape[1:] == (128, 128)
    assert sorted(set(features.folds.tolist())) == [1, 2]
    report = cli("data-report", "fsdd", *args)
    assert report.code == 0, report.err
    (report_file,) = Path("data/reports").glob("fsdd-*.json")
    data = json.loads(report_file.read_text())
    assert data["clips"] == 12 and data["classes"] == 3 and data["groups"] == 2
    assert data["sample_rates"] == {"8000": 12}
    assert data["clips_per_class_and_fold"] == {d: {"1": 2, "2": 2} for d in "012"}
    # FSDD clips are shorter than 1.28 s: padding the settings ask for is no problem.
    assert not any("target_length" in p for p in data["problems"])


@pytest.mark.parametrize(
    ("durations", "target_length", "flagged"),
    [
        ([1.0] * 8, 100, 0),  # one-second clips in 100 frames (1.015 s): a frame of padding
        ([5.0] * 8, 512, 0),  # ESC-50's 5 s clips in AST's 5.12 s
        ([5.0] * 7 + [1.2], 512, 1),  # one clip under half the others: truncated?
    ],
)
def test_the_data_report_flags_truncated_clips_not_padding(durations, target_length, flagged):
    from audiopetl.data.report import build_report

    study = load_study(
        CONFIG_DIR / "config.yaml", "quick", [f"features.target_length={target_length}"]
    )
    manifest = pd.DataFrame(
        {
            "clip_id": [f"c{i}" for i in range(8)],
            "path": [f"c{i}.wav" for i in range(8)],
            "label": [i % 2 for i in range(8)],
            "label_name": [("a", "b")[i % 2] for i in range(8)],
            "fold": [1 + i % 2 for i in range(8)],
            "group": [f"g{i}" for i in range(8)],
            "duration": durations,
            "sample_rate": 16000,
        }
    )
    report = build_report(study.dataset("synthetic"), study.features("synthetic"), manifest, None)
    short = [p for p in report["problems"] if "truncated?" in p]
    assert len(short) == flagged, report["problems"]
    if flagged:
        assert short[0].startswith("1 clip(s) shorter than 2.50 s, half the typical clip (5.00 s")


# ---------------------------------------------------------------------------------------------
# --skip-bad and the data report


def test_skip_bad_caches_the_rest_and_reports_them(synthetic_project, cli):
    victims = [clip_at(VICTIM_ROW), clip_at(5)]
    write_bad_audio(victims[0][1], "random_bytes")
    write_bad_audio(victims[1][1], "nan")
    remove_cache()
    failed = cli("cache", "synthetic", *QUICK)
    assert failed.code == 1
    assert_nothing_cached()

    result = cli("cache", "synthetic", *QUICK, "--skip-bad")
    assert result.code == 0, result.err
    cache = Path(result.out.strip())
    # --skip-bad is the setting data.skip_bad: a cache that may leave clips out is another one.
    skipping = load_study(CONFIG_DIR / "config.yaml", "quick", ["data.skip_bad=true"])
    assert cache == skipping.cache_path("synthetic") != synthetic_project.cache
    features = read_folds(cache)
    assert len(features) == 70
    assert not {cid for cid, _ in victims} & set(features.clip_ids)
    meta = read_metadata(cache)
    assert meta["rows"] == 70
    skipped = {item["clip_id"]: item for item in meta["skipped"]}
    assert set(skipped) == {cid for cid, _ in victims}
    for clip_id, audio in victims:
        assert skipped[clip_id]["path"] == str(audio)
    assert "cannot decode audio" in skipped[victims[0][0]]["error"]
    assert "NaN or Inf" in skipped[victims[1][0]]["error"]

    # The same flag on every data command; the report counts the clips a study trains on.
    report = cli("data-report", "synthetic", *QUICK, "--skip-bad")
    assert report.code == 0, report.err
    data = json.loads(skipping.data_report_path("synthetic").read_text())
    assert {item["path"] for item in data["skipped"]} == {str(a) for _, a in victims}
    assert (data["clips"], data["clips_listed"]) == (70, 72)
    assert report.out.startswith("dataset synthetic: 70 clips (72 listed, 2 left out as bad)")
    for _, audio in victims:
        assert f"skipped while caching: {audio}" in report.out
        assert any(str(audio) in p for p in data["problems"])


def test_data_report_contents(synthetic_project, cli):
    result = cli("data-report", "synthetic", *QUICK)
    assert result.code == 0, result.err
    data = json.loads(REPORT.read_text())
    names = ["tone_0", "chirp_0", "noise_burst_0", "click_train_0"]
    assert data["dataset"] == "synthetic"
    assert data["clips"] == 72 and data["classes"] == 4 and data["folds"] == [1, 2, 3]
    assert data["clips_per_class_and_fold"] == {n: {"1": 6, "2": 6, "3": 6} for n in names}
    assert data["duration_s"] == {"min": 0.7, "mean": 0.7, "max": 0.7}
    assert data["sample_rates"] == {"16000": 72}
    assert data["problems"] == [] and data["skipped"] == []
    assert data["observed_log_mel"]["frames"] == 72 * 64
    assert data["feature_target_s"] == 0.655
    out = result.out
    assert "dataset synthetic: 72 clips, 4 classes, folds [1, 2, 3]" in out
    assert "duration (s): min 0.7 / mean 0.7 / max 0.7" in out
    assert "sample rates: 16000 Hz x 72" in out
    assert re.search(r"fold1\s+fold2\s+fold3", out)
    for name in names:
        assert re.search(rf"{name}\s+6\s+6\s+6", out)
    assert "log-mel statistics: mean" in out
    assert "problems: none" in out
    assert f"written to {REPORT}" in out


def test_data_report_lists_problems(synthetic_project, cli):
    # Take all of one class out of fold 2: the report names the empty cell.
    def thin(df):
        empty = (df["label_name"] == "chirp_0") & (df["fold"] == "2")
        return df[~empty]

    edit_manifest(thin)
    result = cli("data-report", "synthetic", *QUICK, "--out", "elsewhere/report.json")
    assert result.code == 0, result.err
    data = json.loads(Path("elsewhere/report.json").read_text())
    assert data["clips_per_class_and_fold"]["chirp_0"] == {"1": 6, "2": 0, "3": 6}
    assert data["problems"] == ["1 class/fold cell(s) without clips: chirp_0 in fold 2"]
    assert "problems (1):" in result.out and "chirp_0 in fold 2" in result.out
    assert not REPORT.exists()


def test_data_report_without_cache(synthetic_project, cli):
    remove_cache()
    result = cli("data-report", "synthetic", *QUICK)
    assert result.code == 0, result.err
    data = json.loads(REPORT.read_text())
    assert "observed_log_mel" not in data and data["clips"] == 72


# ---------------------------------------------------------------------------------------------
# --help


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("fetch", ["--force"]),
        ("cache", ["--skip-bad", "--force", "--out"]),
        ("data-report", ["--out"]),
    ],
)
def test_help(project, cli, command, options):
    result = cli(command, "--help")
    assert result.code == 0
    assert f"usage: audiopetl {command}" in result.out
    for option in ["--config", "--experiment", "--set", "--quiet", *options]:
        assert option in result.out
    assert "dataset" in result.out.lower()


def test_top_level_help_lists_commands(project, cli):
    result = cli("--help")
    assert result.code == 0
    for command in ("fetch", "cache", "data-report"):
        assert command in result.out


def test_usage_error_exits_2(project, cli):
    result = cli("cache")
    assert result.code == 2
    assert "dataset" in result.err


@needs_esc50
def test_esc50_subset_is_verified_and_said_everywhere(project, cli, tmp_path):
    meta = pd.read_csv(ESC50_SUBSET / "meta" / "esc50.csv", dtype=str)
    archive = tmp_path / "esc50.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ESC-50-master/meta/esc50.csv", meta.to_csv(index=False))  # all 2000 rows
        for clip in sorted((ESC50_SUBSET / "audio").glob("*.wav")):
            zf.write(clip, f"ESC-50-master/audio/{clip.name}")
    sets = ("--quiet", "--set", f"datasets.esc50.esc50.archive={archive}")
    refused = cli("fetch", "esc50", *sets)
    assert refused.code == 1 and "1917 problem(s) (1917 missing)" in refused.err
    subset = (*sets, "--set", "datasets.esc50.esc50.subset=true")
    fetched = cli("fetch", "esc50", *subset)
    assert fetched.code == 0, fetched.err
    assert "subset: 83 of 2000 clips" in fetched.err
    report = cli("data-report", "esc50", *subset)
    assert report.code == 0, report.err
    assert "83 clips" in report.out and "(subset: 83 of 2000 clips)" in report.out
