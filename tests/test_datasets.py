"""Dataset kinds: the synthetic generator and a user's folder of audio (the real FSDD)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf
from conftest import FSDD, FSDD_PATTERN, make_project, needs_fsdd, tree_digest

from audiopetl.core.config import load_config
from audiopetl.core.errors import DataError
from audiopetl.data.datasets import fetch
from audiopetl.data.datasets.esc50 import esc50_manifest
from audiopetl.data.datasets.folder import folder_manifest
from audiopetl.data.datasets.synthetic import generate
from audiopetl.data.manifest import COLUMNS, class_names, read_manifest
from audiopetl.study import Study, load_study

SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]


def quick_study(*overrides: str) -> Study:
    return load_study("config/config.yaml", "quick", list(overrides))


# ---------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_same_settings_same_bytes(tmp_path, monkeypatch):
    digests = []
    for name in ("a", "b"):
        root = make_project(tmp_path / name)
        monkeypatch.chdir(root)
        study = quick_study()
        manifest = fetch(
            study.dataset("synthetic"),
            study.raw_dir("synthetic"),
            downloads=study.layout.downloads(),
            skip_bad=study.clips.skip_bad,
            progress=False,
        )
        assert (
            manifest
            == Path(f"data/raw/synthetic-{quick_study().dataset('synthetic').data_id}")
            / "manifest.csv"
        )
        digests.append(tree_digest(manifest.parent))
    a, b = digests
    assert len(a) == 4 * 3 * 6 + 3  # clips + meta/esc50.csv + manifest.csv + dataset.json
    assert "manifest.csv" in a and "meta/esc50.csv" in a and "dataset.json" in a
    assert a == b


def test_synthetic_seed_changes_bytes(tmp_path):
    cfg = load_config(make_project(tmp_path / "p") / "config/config.yaml", "quick")
    settings = dict(cfg["datasets"]["synthetic"]["synthetic"])
    generate(settings, tmp_path / "s1", progress=False)
    generate({**settings, "seed": settings["seed"] + 1}, tmp_path / "s2", progress=False)
    one, two = tree_digest(tmp_path / "s1"), tree_digest(tmp_path / "s2")
    assert one.keys() == two.keys()
    audio = [k for k in one if k.startswith("audio/")]
    assert len(audio) == 72
    # Every clip differs, the metadata (names, labels, folds) does not.
    assert all(one[k] != two[k] for k in audio)
    assert one["meta/esc50.csv"] == two["meta/esc50.csv"]


def test_synthetic_layout_read_by_esc50_reader(tmp_path):
    cfg = load_config(make_project(tmp_path / "p") / "config/config.yaml", "quick")
    settings = cfg["datasets"]["synthetic"]["synthetic"]
    root = tmp_path / "syn"
    generate(settings, root, progress=False)
    meta = pd.read_csv(root / "meta" / "esc50.csv", dtype=str)
    assert list(meta.columns) == [
        "filename",
        "fold",
        "target",
        "category",
        "esc10",
        "src_file",
        "take",
    ]
    df = esc50_manifest(root, settings["folds"])
    assert list(df.columns) == COLUMNS
    n = settings["classes"] * settings["folds"] * settings["clips_per_class_per_fold"]
    assert len(df) == len(meta) == n == 72
    assert sorted(df["label"].unique()) == list(range(settings["classes"]))
    assert sorted(df["fold"].unique()) == [1, 2, 3]
    assert df.groupby(["label", "fold"]).size().eq(settings["clips_per_class_per_fold"]).all()
    assert df["clip_id"].is_unique
    assert (df["sample_rate"] == settings["sample_rate"]).all()
    assert df["duration"].sub(settings["duration_s"]).abs().max() < 1e-3
    # Each clip's label matches the target in its ESC-50-style name.
    assert all(int(c.rsplit("-", 1)[1]) == lab for c, lab in zip(df.clip_id, df.label, strict=True))
    data, sr = sf.read(root / df["path"].iloc[0])
    assert sr == 16000 and data.ndim == 1 and len(data) == round(0.7 * 16000)
    assert 0 < abs(data).max() <= 0.5


def test_synthetic_class_offset_gives_other_classes(tmp_path):
    cfg = load_config(make_project(tmp_path / "p") / "config/config.yaml", "quick")
    target = cfg["datasets"]["synthetic"]["synthetic"]
    source = cfg["datasets"]["synthetic-source"]["synthetic"]
    assert target["class_offset"] == 0 and source["class_offset"] > 0
    generate(target, tmp_path / "t", progress=False)
    generate(source, tmp_path / "s", progress=False)
    t_names = class_names(esc50_manifest(tmp_path / "t", target["folds"]))
    s_names = class_names(esc50_manifest(tmp_path / "s", source["folds"]))
    assert len(t_names) == target["classes"] and len(s_names) == source["classes"]
    assert set(t_names).isdisjoint(s_names)


def test_synthetic_manifest_file(synthetic_project):
    df = read_manifest(synthetic_project.manifest)
    assert list(df.columns) == COLUMNS
    assert len(df) == 72
    # Relative paths resolve against the manifest's folder.
    assert all(Path(p).is_file() for p in df["path"])
    assert all(Path(p).parent == synthetic_project.manifest.parent / "audio" for p in df["path"])
    raw = pd.read_csv(synthetic_project.manifest, dtype=str)
    assert raw["path"].str.startswith("audio/").all()  # relative: the folder can move


# ---------------------------------------------------------------------------------------------
# folder dataset on the real FSDD


def fsdd_settings(**extra) -> dict:
    settings = {"root": str(FSDD), "manifest": None, "pattern": FSDD_PATTERN, "folds": None}
    settings.update(extra)
    return settings


@pytest.fixture(scope="module")
def fsdd_manifest() -> pd.DataFrame:
    return folder_manifest(fsdd_settings()).manifest


@needs_fsdd
def test_fsdd_by_pattern_leave_one_speaker_out(fsdd_manifest):
    df = fsdd_manifest
    assert set(COLUMNS) <= set(df.columns)
    assert len(df) == 3000
    assert sorted(df["label_name"].unique()) == [str(d) for d in range(10)]
    assert (df["label"] == df["label_name"].astype(int)).all()
    assert df["fold"].value_counts().sort_index().to_dict() == {f: 500 for f in range(1, 7)}
    # Each speaker in exactly one fold, each fold one speaker.
    assert df.groupby("group")["fold"].nunique().eq(1).all()
    assert df.groupby("fold")["group"].nunique().eq(1).all()
    assert sorted(df["group"].unique()) == SPEAKERS
    assert df["clip_id"].is_unique
    assert (df["sample_rate"] == 8000).all()
    assert 0.1 < df["duration"].min() < df["duration"].max() < 2.5
    row = df[df["clip_id"] == "7_theo_3"].iloc[0]
    assert row.label_name == "7" and row.group == "theo"
    assert row.path == "7_theo_3.wav"  # relative to the root
    assert row.duration == pytest.approx(sf.info(FSDD / row.path).duration)


@needs_fsdd
def test_fsdd_three_folds_balanced_without_splitting_speakers():
    df = folder_manifest(fsdd_settings(folds=3)).manifest
    assert df["fold"].value_counts().sort_index().to_dict() == {1: 1000, 2: 1000, 3: 1000}
    assert df.groupby("group")["fold"].nunique().eq(1).all()
    assert df.groupby("fold")["group"].nunique().eq(2).all()


@needs_fsdd
def test_fsdd_more_folds_than_speakers_is_an_error():
    with pytest.raises(DataError, match="6 groups cannot fill 7 folds"):
        folder_manifest(fsdd_settings(folds=7))


@needs_fsdd
def test_fsdd_through_cli_fetch(project, cli):
    result = cli(
        "fetch",
        "fsdd",
        "--quiet",
        "--set",
        f"datasets.fsdd.folder.root={FSDD}",
    )
    assert result.code == 0, result.err
    (manifest,) = Path("data/raw").glob("fsdd-*/manifest.csv")
    assert result.out.strip() == str(manifest)
    df = read_manifest(manifest, FSDD)  # a folder dataset's paths: relative to its root
    assert len(df) == 3000
    assert df.groupby("fold").size().eq(500).all()
    assert df.groupby("group")["fold"].nunique().eq(1).all()
    assert class_names(df) == [str(d) for d in range(10)]
    assert all(Path(p).parent == FSDD for p in df["path"].head(20))


def fsdd_subset_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    pd.DataFrame(rows, columns=["path", "label", "group"]).to_csv(path, index=False)
    return path


def subset_rows() -> list[tuple[str, str, str]]:
    # Two digits, three speakers, five takes each; paths relative to the root, named by word.
    words = {"3": "three", "8": "eight"}
    return [
        (f"{digit}_{speaker}_{take}.wav", words[digit], speaker)
        for digit in words
        for speaker in ("george", "lucas", "theo")
        for take in range(5)
    ]


@needs_fsdd
def test_folder_csv_manifest(tmp_path):
    csv = fsdd_subset_csv(tmp_path / "subset.csv", subset_rows())
    df = folder_manifest(fsdd_settings(manifest=str(csv), pattern=None)).manifest
    assert len(df) == 30
    assert sorted(df["label_name"].unique()) == ["eight", "three"]
    assert dict(zip(df.label_name, df.label, strict=True)) == {"eight": 0, "three": 1}
    assert sorted(df["fold"].unique()) == [1, 2, 3]  # one per speaker
    assert df.groupby("group")["fold"].nunique().eq(1).all()
    assert set(df["clip_id"]) == {Path(p).stem for p, _, _ in subset_rows()}
    # Relative to the root: the dataset works wherever the root is.
    assert all(not Path(p).is_absolute() and (FSDD / p).is_file() for p in df["path"])


@needs_fsdd
def test_folder_csv_with_labels_list_orders_labels(tmp_path):
    csv = fsdd_subset_csv(tmp_path / "subset.csv", subset_rows())
    df = folder_manifest(
        fsdd_settings(manifest=str(csv), pattern=None, labels=["three", "eight"])
    ).manifest
    assert dict(zip(df.label_name, df.label, strict=True)) == {"three": 0, "eight": 1}


@needs_fsdd
def test_folder_csv_missing_file_is_named(tmp_path):
    rows = [*subset_rows(), ("3_nobody_0.wav", "three", "nobody")]
    csv = fsdd_subset_csv(tmp_path / "subset.csv", rows)
    with pytest.raises(DataError, match=r"3_nobody_0\.wav"):
        folder_manifest(fsdd_settings(manifest=str(csv), pattern=None))


@needs_fsdd
def test_folder_unknown_label_names_the_file(tmp_path):
    csv = fsdd_subset_csv(tmp_path / "subset.csv", subset_rows())
    with pytest.raises(DataError) as info:
        folder_manifest(fsdd_settings(manifest=str(csv), pattern=None, labels=["three"]))
    message = str(info.value)
    assert "unknown label 'eight'" in message
    assert "8_george_0.wav" in message


@needs_fsdd
def test_folder_pattern_unknown_label_names_the_file():
    labels = [str(d) for d in range(9)]  # no "9"
    with pytest.raises(DataError, match=r"9_george_0\.wav: unknown label '9'"):
        folder_manifest(fsdd_settings(labels=labels))


@needs_fsdd
def test_folder_csv_without_label_column(tmp_path):
    csv = tmp_path / "nolabel.csv"
    pd.DataFrame({"path": ["3_theo_0.wav"], "group": ["theo"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"nolabel\.csv: missing column\(s\): label"):
        folder_manifest(fsdd_settings(manifest=str(csv), pattern=None))


@needs_fsdd
def test_folder_csv_with_bad_fold(tmp_path):
    csv = tmp_path / "folds.csv"
    pd.DataFrame(
        {"path": ["3_theo_0.wav", "3_theo_1.wav"], "label": ["3", "3"], "fold": ["1", "x"]}
    ).to_csv(csv, index=False)
    with pytest.raises(
        DataError, match=r"folds\.csv: row 3 \(3_theo_1\.wav\): fold 'x' is not a number"
    ):
        folder_manifest(fsdd_settings(manifest=str(csv), pattern=None))


def test_folder_pattern_needs_label_group(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"needs a named group \(\?P<label>"):
        folder_manifest({"root": str(tmp_path), "manifest": None, "pattern": r".*", "folds": None})


def test_folder_root_missing(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        folder_manifest(fsdd_settings(root=str(tmp_path / "nope")))
