"""Every dataset shape a study can have: split schemes (rotating folds, an official split given
by a column, list files, one CSV per part or split folders, sessions x speakers), a carved
validation set, multi-label labels, and the one-line errors of data that is none of these.

The folders are generated here, laid out as Speech Commands, Fluent Speech Commands, IEMOCAP
and Hugging Face's audiofolder lay theirs out (short noise clips stand in for the audio)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from conftest import make_project

from audiopetl.core.errors import ConfigError, DataError
from audiopetl.data.datasets import fetch
from audiopetl.data.manifest import check_manifest, class_names, label_sets, read_manifest
from audiopetl.data.splits import Splits, get_scheme
from audiopetl.study import Study, load_study


def wav(path: Path, seed: int = 0, seconds: float = 0.1) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).uniform(-0.1, 0.1, int(16000 * seconds))
    sf.write(path, noise.astype(np.float32), 16000)
    return path.name


def study_of(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dataset: Mapping[str, Any],
    **config: Any,
) -> Study:
    """A project whose experiment `shapes` has one dataset, `mine`, as given."""
    root = make_project(tmp_path / "project")
    experiment = {
        "experiment": "shapes",
        "datasets": {"mine": dict(dataset)},
        "study": {"datasets": ["mine"], "strategies": ["linear"], "folds": [1]},
        **config,
    }
    (root / "config/experiments/shapes.yaml").write_text(yaml.safe_dump(experiment))
    monkeypatch.chdir(root)
    return load_study("config/config.yaml", "shapes", [])


def fetched(study: Study, name: str = "mine") -> pd.DataFrame:
    path = fetch(
        study.dataset(name),
        study.raw_dir(name),
        downloads=study.layout.downloads(),
        progress=False,
    )
    return check_manifest(read_manifest(path), str(path), task=study.dataset(name).task)


def splits(study: Study, manifest: pd.DataFrame, name: str, rule: str = "train_val_test") -> Splits:
    return get_scheme(study.dataset("mine").scheme).splits(manifest, name, rule)


def stems(ids: tuple[str, ...]) -> set[str]:
    return {Path(i).name for i in ids}


# ---------------------------------------------------------------------------------------------
# Speech Commands: word folders, speaker_nohash_take.wav, validation_list.txt, testing_list.txt

WORDS = ("yes", "no", "up")
SC_PATTERN = r"(?P<label>[a-z]+)/(?P<group>[0-9a-f]+)_nohash_\d+\.wav"


def speech_commands(root: Path, speakers: int = 6, takes: int = 2) -> dict[str, list[str]]:
    """Speech Commands' layout; the last speaker's clips are the test list, the one before
    its validation list (as its lists hash whole speakers). The clips of each part."""
    parts: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for w, word in enumerate(WORDS):
        for s in range(speakers):
            for take in range(takes):
                rel = f"{word}/{s:08x}_nohash_{take}.wav"
                wav(root / rel, seed=100 * w + 10 * s + take)
                part = {speakers - 1: "test", speakers - 2: "validation"}.get(s, "train")
                parts[part].append(rel)
    wav(root / "_background_noise_/white_noise.wav", seed=999, seconds=0.5)
    (root / "validation_list.txt").write_text("\n".join(parts["validation"]) + "\n")
    (root / "testing_list.txt").write_text("\n".join(parts["test"]) + "\n")
    return parts


def sc_dataset(root: Path, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "folder",
        "split": {"scheme": "official"},
        "folder": {
            "root": str(root),
            "pattern": SC_PATTERN,
            "lists": {"validation": "validation_list.txt", "test": "testing_list.txt"},
            **extra,
        },
    }


def test_speech_commands_lists_make_the_official_split(tmp_path, monkeypatch):
    parts = speech_commands(tmp_path / "sc")
    study = study_of(tmp_path, monkeypatch, sc_dataset(tmp_path / "sc"))
    manifest = fetched(study)
    # Every clip of a word folder, none of _background_noise_.
    assert len(manifest) == len(WORDS) * 6 * 2
    assert class_names(manifest) == sorted(WORDS)
    split = splits(study, manifest, "official")
    for ids, part in zip((split.train, split.val, split.test), parts.values(), strict=True):
        assert sorted(ids) == sorted(p.removesuffix(".wav") for p in part)
    assert split.sizes() == (24, 6, 6)
    assert split.record == {"split": "official", "rule": "train_val_test"}
    # One run per seed: the official split, whatever study.folds says.
    assert study.split_names("mine") == ["official"]
    assert study.split_names("mine", [1, 2, 3]) == ["official"]
    # train_test drops the validation part only.
    assert splits(study, manifest, "official", "train_test").sizes() == (24, 0, 6)


def test_a_list_naming_a_missing_clip_is_one_line(tmp_path, monkeypatch):
    speech_commands(tmp_path / "sc")
    with (tmp_path / "sc/testing_list.txt").open("a") as out:
        out.write("yes/deadbeef_nohash_0.wav\n")
    study = study_of(tmp_path, monkeypatch, sc_dataset(tmp_path / "sc"))
    with pytest.raises(DataError) as info:
        fetched(study)
    message = str(info.value)
    assert "testing_list.txt: line 7: 'yes/deadbeef_nohash_0.wav' is not a clip of" in message
    assert "\n" not in message
    assert not study.raw_dir("mine").exists()  # no partial output


def test_a_speaker_on_two_sides_of_the_lists_is_leakage(tmp_path, monkeypatch):
    parts = speech_commands(tmp_path / "sc")
    # One of the validation speaker's clips listed for testing instead.
    moved = parts["validation"][0]
    (tmp_path / "sc/validation_list.txt").write_text("\n".join(parts["validation"][1:]) + "\n")
    (tmp_path / "sc/testing_list.txt").write_text("\n".join([*parts["test"], moved]) + "\n")
    study = study_of(tmp_path, monkeypatch, sc_dataset(tmp_path / "sc"))
    leak = r"group '00000004' sits in parts test, validation .*leakage"
    with pytest.raises(DataError, match=leak):
        fetched(study)


def test_a_split_given_twice_is_refused(tmp_path, monkeypatch):
    speech_commands(tmp_path / "sc")
    dataset = sc_dataset(tmp_path / "sc", pattern=r"(?P<label>[a-z]+)/(?P<split>[0-9a-f]+)_.*")
    study = study_of(tmp_path, monkeypatch, dataset)
    with pytest.raises(DataError, match="the split is given twice"):
        fetched(study)


# ---------------------------------------------------------------------------------------------
# Fluent Speech Commands: data/{train,valid,test}_data.csv, intent = action + object + location

FSC_INTENTS = [
    ("activate", "lights", "kitchen"),
    ("decrease", "volume", "none"),
    ("change language", "Chinese", "none"),
]


def fluent_speech_commands(root: Path) -> dict[str, set[str]]:
    speakers = {
        "train": ["2BqVo8kVB2Skwgyb", "4BrX8aDqK2cLZRYl"],
        "valid": ["8e5qRjN7dGuovkRY"],
        "test": ["kxgXN97ALmHbaezp"],
    }
    clips: dict[str, set[str]] = {}
    for part, people in speakers.items():
        rows = []
        for speaker in people:
            for n, (action, obj, location) in enumerate(FSC_INTENTS * 2):
                rel = f"wavs/speakers/{speaker}/{part}{n:03d}.wav"
                wav(root / rel, seed=len(rows) + 7 * n)
                rows.append((rel, speaker, f"say {n}", action, obj, location))
        table = pd.DataFrame(
            rows, columns=["path", "speakerId", "transcription", "action", "object", "location"]
        )
        table.to_csv(root / f"data/{part}_data.csv", index=True)  # with the unnamed index column
        clips[part] = {r[0].removesuffix(".wav") for r in rows}
    return clips


def test_fluent_speech_commands_one_csv_per_part(tmp_path, monkeypatch):
    (tmp_path / "fsc/data").mkdir(parents=True)
    clips = fluent_speech_commands(tmp_path / "fsc")
    root = tmp_path / "fsc"
    dataset = {
        "kind": "folder",
        "split": {"scheme": "official"},
        "folder": {
            "root": str(root),
            "manifest": {
                "train": str(root / "data/train_data.csv"),
                "validation": str(root / "data/valid_data.csv"),
                "test": str(root / "data/test_data.csv"),
            },
            "columns": {"label": ["action", "object", "location"], "group": "speakerId"},
            "metadata_columns": ["transcription"],
        },
    }
    study = study_of(tmp_path, monkeypatch, dataset)
    manifest = fetched(study)
    assert class_names(manifest) == [
        "activate_lights_kitchen",
        "change language_Chinese_none",
        "decrease_volume_none",
    ]
    split = splits(study, manifest, "official")
    assert set(split.train) == clips["train"]
    assert set(split.val) == clips["valid"]
    assert set(split.test) == clips["test"]
    # The speaker is the group: every clip of one speaker on one side.
    assert manifest.groupby("group")["split"].nunique().eq(1).all()


def test_a_renamed_column_that_is_not_there_is_named(tmp_path, monkeypatch):
    (tmp_path / "fsc/data").mkdir(parents=True)
    fluent_speech_commands(tmp_path / "fsc")
    root = tmp_path / "fsc"
    dataset = {
        "kind": "folder",
        "split": {"scheme": "official"},
        "folder": {
            "root": str(root),
            "manifest": {
                "train": str(root / "data/train_data.csv"),
                "test": str(root / "data/test_data.csv"),
            },
            "columns": {"label": ["action", "objekt"], "group": "speakerId"},
            "metadata_columns": ["transcription"],
        },
    }
    study = study_of(tmp_path, monkeypatch, dataset)
    with pytest.raises(DataError, match=r"_data\.csv: missing column\(s\): objekt$"):
        fetched(study)


# ---------------------------------------------------------------------------------------------
# IEMOCAP: 5 sessions x 2 speakers (here 3 x 2); test one speaker of a held-out session,
# validate on the other, train on the other sessions


def iemocap(root: Path, sessions: int = 3) -> Path:
    rows = []
    for session in range(1, sessions + 1):
        for sex in ("F", "M"):
            for n, emotion in enumerate(("neu", "hap", "sad", "ang") * 2):
                rel = f"Session{session}/sentences/wav/Ses0{session}{sex}_impro01_{sex}{n:03d}.wav"
                wav(root / rel, seed=100 * session + 10 * (sex == "M") + n)
                rows.append((rel, emotion, session, f"Ses0{session}{sex}"))
    csv = root / "iemocap.csv"
    pd.DataFrame(rows, columns=["path", "label", "fold", "group"]).to_csv(csv, index=False)
    return csv


def test_iemocap_sessions_and_speakers(tmp_path, monkeypatch):
    csv = iemocap(tmp_path / "iemocap")
    dataset = {
        "kind": "folder",
        "split": {"scheme": "session_speaker"},
        "folder": {"root": str(tmp_path / "iemocap"), "manifest": str(csv)},
    }
    study = study_of(
        tmp_path,
        monkeypatch,
        dataset,
        study={"datasets": ["mine"], "strategies": ["linear"], "folds": [1, 2, 3, 4, 5, 6]},
    )
    manifest = fetched(study)
    assert study.split_names("mine") == [f"fold{i}" for i in range(1, 7)]
    speaker = manifest.set_index("clip_id")["group"]
    session = manifest.set_index("clip_id")["fold"]
    expected = [
        (1, "Ses01F", "Ses01M"),
        (1, "Ses01M", "Ses01F"),
        (2, "Ses02F", "Ses02M"),
        (2, "Ses02M", "Ses02F"),
        (3, "Ses03F", "Ses03M"),
        (3, "Ses03M", "Ses03F"),
    ]
    for index, (held, tested, validated) in enumerate(expected, start=1):
        split = splits(study, manifest, f"fold{index}")
        assert set(speaker[list(split.test)]) == {tested}
        assert set(speaker[list(split.val)]) == {validated}
        assert held not in set(session[list(split.train)])
        assert len(split.train) == 2 * 2 * 8 and len(split.val) == len(split.test) == 8
        assert split.record == {"session": held, "test_speaker": tested, "rule": "train_val_test"}
    with pytest.raises(DataError, match="the data has 6 session/speaker pairs"):
        splits(study, manifest, "fold7")


def test_a_session_with_one_speaker_cannot_be_split(tmp_path, monkeypatch):
    csv = iemocap(tmp_path / "iemocap")
    table = pd.read_csv(csv)
    table[table["group"] != "Ses02M"].to_csv(csv, index=False)
    dataset = {
        "kind": "folder",
        "split": {"scheme": "session_speaker"},
        "folder": {"root": str(tmp_path / "iemocap"), "manifest": str(csv)},
    }
    study = study_of(tmp_path, monkeypatch, dataset)
    with pytest.raises(DataError, match="session 2 has one speaker"):
        fetched(study)


def test_a_speaker_in_two_sessions_is_leakage(tmp_path, monkeypatch):
    csv = iemocap(tmp_path / "iemocap")
    table = pd.read_csv(csv)
    table.loc[0, "fold"] = 2  # one of Ses01F's clips filed under session 2
    table.to_csv(csv, index=False)
    dataset = {
        "kind": "folder",
        "split": {"scheme": "session_speaker"},
        "folder": {"root": str(tmp_path / "iemocap"), "manifest": str(csv)},
    }
    study = study_of(tmp_path, monkeypatch, dataset)
    with pytest.raises(DataError, match=r"group 'Ses01F' spans folds \[1, 2\].*leakage"):
        fetched(study)


# ---------------------------------------------------------------------------------------------
# audiofolder (split folders, metadata.csv with file_name) and a carved validation set


def audiofolder(root: Path, parts: tuple[str, ...] = ("train", "test")) -> None:
    for p, part in enumerate(parts):
        rows = []
        for speaker in range(8 if part == "train" else 2):
            for n, label in enumerate(("cat", "dog") * 2):
                name = f"{part}-s{speaker}-{n}.flac"
                wav(root / part / name, seed=1000 * p + 10 * speaker + n)
                rows.append((name, label, f"{part}-s{speaker}"))
        pd.DataFrame(rows, columns=["file_name", "label", "group"]).to_csv(
            root / part / "metadata.csv", index=False
        )


def audiofolder_dataset(root: Path, **split: Any) -> dict[str, Any]:
    return {
        "kind": "folder",
        "split": {"scheme": "official", **split},
        "folder": {"root": str(root)},
    }


def test_audiofolder_needs_only_its_root(tmp_path, monkeypatch):
    audiofolder(tmp_path / "af", ("train", "validation", "test"))
    study = study_of(tmp_path, monkeypatch, audiofolder_dataset(tmp_path / "af"))
    manifest = fetched(study)
    split = splits(study, manifest, "official")
    assert {i.split("/")[0] for i in split.train} == {"train"}
    assert {i.split("/")[0] for i in split.val} == {"validation"}
    assert {i.split("/")[0] for i in split.test} == {"test"}
    assert split.sizes() == (32, 8, 8)
    assert class_names(manifest) == ["cat", "dog"]


def test_a_carved_validation_set_is_grouped_deterministic_and_recorded(tmp_path, monkeypatch):
    audiofolder(tmp_path / "af")
    carved = []
    for n, seed in enumerate((0, 0, 1)):
        study = study_of(
            tmp_path / str(n),
            monkeypatch,
            audiofolder_dataset(tmp_path / "af", validation_share=0.25, validation_seed=seed),
        )
        manifest = fetched(study)
        # Recorded in the manifest: the carved clips' split is validation.
        counts = manifest["split"].value_counts().to_dict()
        assert counts == {"train": 24, "validation": 8, "test": 8}
        # Whole speakers: none on both sides.
        assert manifest.groupby("group")["split"].nunique().eq(1).all()
        carved.append(set(splits(study, manifest, "official").val))
        assert study.dataset("mine").identity  # the split block is part of it (below)
    assert carved[0] == carved[1]
    assert carved[0] != carved[2]
    # The carving is part of the dataset's identity: another share or seed, another folder.
    names = {
        study_of(tmp_path / f"id{n}", monkeypatch, audiofolder_dataset(tmp_path / "af", **s))
        .dataset("mine")
        .data_id
        for n, s in enumerate(({"validation_share": 0.25}, {"validation_share": 0.5}, {}))
    }
    assert len(names) == 3


def test_an_official_split_without_validation_needs_a_share_or_train_test(tmp_path, monkeypatch):
    audiofolder(tmp_path / "af")
    dataset = audiofolder_dataset(tmp_path / "af", validation_share=None)
    study = study_of(tmp_path, monkeypatch, dataset)
    manifest = fetched(study)
    with pytest.raises(DataError, match="no validation clip: carve one"):
        splits(study, manifest, "official")
    assert splits(study, manifest, "official", "train_test").sizes() == (32, 0, 8)


def test_an_unknown_split_folder_is_named(tmp_path, monkeypatch):
    audiofolder(tmp_path / "af", ("train", "holdout"))
    study = study_of(tmp_path, monkeypatch, audiofolder_dataset(tmp_path / "af"))
    with pytest.raises(DataError, match=r"holdout/metadata\.csv: 'holdout' is not a split folder"):
        fetched(study)


# ---------------------------------------------------------------------------------------------
# A CSV with path, labels, split at the root; multi-label labels


def labelled_csv(root: Path, rows: list[tuple[str, str]], name: str = "clips.csv") -> None:
    """Clips a0.wav, a1.wav, ... with the given labels and splits."""
    table = []
    for n, (labels, split) in enumerate(rows):
        wav(root / f"a{n}.wav", seed=n)
        table.append((f"a{n}.wav", labels, split))
    pd.DataFrame(table, columns=["path", "labels", "split"]).to_csv(root / name, index=False)


MIXED = [
    ("dog,rain", "train"),
    ("dog", "train"),
    ("rain", "train"),
    ("car", "train"),
    ("car,dog", "validation"),
    ("rain", "validation"),
    ("dog,car,rain", "test"),
    ("car", "test"),
]


def multilabel_dataset(root: Path, **folder: Any) -> dict[str, Any]:
    return {
        "kind": "folder",
        "task": "multilabel",
        "split": {"scheme": "official"},
        "folder": {"root": str(root), **folder},
    }


def test_a_csv_with_path_labels_split_is_read_multilabel(tmp_path, monkeypatch):
    labelled_csv(tmp_path / "ml", MIXED)
    study = study_of(
        tmp_path,
        monkeypatch,
        multilabel_dataset(tmp_path / "ml"),
        training={"select_metric": "mAP"},
    )
    manifest = fetched(study)
    assert class_names(manifest) == ["car", "dog", "rain"]
    assert label_sets(manifest) == [[1, 2], [1], [2], [0], [0, 1], [2], [0, 1, 2], [0]]
    split = splits(study, manifest, "official")
    assert split.sizes() == (4, 2, 2)


def test_a_multiclass_row_with_several_labels_is_one_line(tmp_path, monkeypatch):
    labelled_csv(tmp_path / "ml", MIXED)
    dataset = {**multilabel_dataset(tmp_path / "ml"), "task": "multiclass"}
    study = study_of(tmp_path, monkeypatch, dataset)
    with pytest.raises(DataError) as info:
        fetched(study)
    assert str(info.value).endswith(
        "clips.csv: row 2 (a0.wav): label 'dog,rain' holds the separator ',': several labels? "
        "Set the dataset's task: multilabel (or folder.labels_separator, if the name really "
        "holds it)"
    )


def test_a_multilabel_row_with_an_unknown_label_is_one_line(tmp_path, monkeypatch):
    labelled_csv(tmp_path / "ml", MIXED)
    dataset = multilabel_dataset(tmp_path / "ml", labels=["car", "dog"])
    study = study_of(tmp_path, monkeypatch, dataset, training={"select_metric": "mAP"})
    with pytest.raises(DataError, match=r"a0\.wav: unknown label 'rain' \(folder\.labels: "):
        fetched(study)


def test_a_separator_of_ones_own(tmp_path, monkeypatch):
    rows = [(labels.replace(",", ";"), split) for labels, split in MIXED]
    labelled_csv(tmp_path / "ml", rows)
    dataset = multilabel_dataset(tmp_path / "ml", labels_separator=";")
    study = study_of(tmp_path, monkeypatch, dataset, training={"select_metric": "mAP"})
    assert label_sets(fetched(study))[0] == [1, 2]


def test_a_split_value_that_is_no_part_is_one_line(tmp_path, monkeypatch):
    labelled_csv(tmp_path / "ml", [*MIXED[:-1], ("car", "dev")])
    study = study_of(
        tmp_path,
        monkeypatch,
        multilabel_dataset(tmp_path / "ml"),
        training={"select_metric": "mAP"},
    )
    with pytest.raises(DataError) as info:
        fetched(study)
    assert str(info.value).endswith("row 9 (a7): split 'dev' is not one of train, validation, test")


def test_a_split_column_without_an_official_scheme_is_refused(tmp_path, monkeypatch):
    # The first trap: fold numbers written as a split; or a split the config ignores.
    labelled_csv(tmp_path / "ml", [(labels.split(",")[0], "1") for labels, _ in MIXED])
    dataset = {"kind": "folder", "folder": {"root": str(tmp_path / "ml")}}
    study = study_of(tmp_path, monkeypatch, dataset)
    with pytest.raises(DataError, match=r"its values are numbers: folds\? name the column fold"):
        fetched(study)


# ---------------------------------------------------------------------------------------------
# Checked before any job runs


@pytest.mark.parametrize(
    ("dataset", "config", "message"),
    [
        (
            {"split": {"scheme": "official"}},
            {"training": {"split": "train_val_test_before"}},
            "training.split: train_val_test_before does not apply to dataset 'mine', which "
            "splits by official (train_val_test, train_test)",
        ),
        (
            {},
            {"training": {"select_metric": "mAP"}},
            "mAP is a multi-label metric; dataset 'mine' is multiclass",
        ),
        (
            {"task": "multilabel"},
            {"training": {"select_metric": "accuracy"}},
            "accuracy is a single-label metric; dataset 'mine' is multi-label: select on mAP",
        ),
        (
            {},
            {"report": {"metric": "mAP"}},
            "report.metric: mAP is a multi-label metric and the study has single-label datasets",
        ),
        (
            {"split": {"scheme": "session_speaker"}},
            {},
            "a synthetic dataset splits by folds, official, not session_speaker",
        ),
    ],
)
def test_a_study_that_does_not_fit_its_data_stops_before_running(
    tmp_path, monkeypatch, dataset, config, message
):
    quick = load_study("config/config.yaml", "quick", []).config["datasets"]["synthetic"]
    with pytest.raises(ConfigError) as info:
        study_of(tmp_path, monkeypatch, {**quick, **dataset}, **config)
    assert message in str(info.value)


def test_a_column_that_is_not_read_is_named(tmp_path, monkeypatch):
    # The two silent losses a first study met: a second label column, and the transcription
    # of a set whose columns are not all audiopetl's.
    root = tmp_path / "own"
    rows = []
    for n in range(6):
        wav(root / f"c{n}.wav", seed=n)
        rows.append((f"c{n}.wav", "yes" if n % 2 else "no", "up", f"s{n % 3}", f"take {n}"))
    table = pd.DataFrame(rows, columns=["path", "label", "label2", "group", "transcription"])
    table.to_csv(root / "clips.csv", index=False)
    study = study_of(tmp_path, monkeypatch, {"kind": "folder", "folder": {"root": str(root)}})
    with pytest.raises(DataError) as info:
        fetched(study)
    assert str(info.value).endswith(
        "clips.csv: column(s) 'label2', 'transcription' not used: name what each holds in "
        "folder.columns (path, label, group, fold, split), or list it in "
        "folder.metadata_columns to keep it out on purpose"
    )
    # Named as metadata, they are left out on purpose; written by pandas with its index, the
    # index column is let be.
    table.to_csv(root / "clips.csv", index=True)
    dataset = {
        "kind": "folder",
        "folder": {"root": str(root), "metadata_columns": ["label2", "transcription"]},
    }
    study = study_of(tmp_path / "again", monkeypatch, dataset)
    assert len(fetched(study)) == 6


def test_a_fold_column_called_split_is_not_read_as_groups(tmp_path, monkeypatch):
    root = tmp_path / "own"
    rows = []
    for n in range(6):
        wav(root / f"c{n}.wav", seed=n)
        rows.append((f"c{n}.wav", "yes" if n % 2 else "no", f"s{n}", str(1 + n % 3)))
    pd.DataFrame(rows, columns=["path", "label", "group", "split"]).to_csv(
        root / "clips.csv", index=False
    )
    study = study_of(tmp_path, monkeypatch, {"kind": "folder", "folder": {"root": str(root)}})
    with pytest.raises(DataError, match=r"its values are numbers: folds\? name the column fold"):
        fetched(study)


# ---------------------------------------------------------------------------------------------
# splits too small to learn or judge on: refused before any training job


def lopsided(root: Path) -> Path:
    """A 414-clip-like mistake in small: 3 classes, folds by speaker, fold 3 holding one clip
    and class 'c' only in fold 1."""
    rows = []
    layout = {1: [("a", 4), ("b", 4), ("c", 4)], 2: [("a", 4), ("b", 4)], 3: [("a", 1)]}
    for fold, classes in layout.items():
        for label, count in classes:
            for n in range(count):
                name = f"f{fold}-{label}{n}.wav"
                wav(root / name, seed=100 * fold + 10 * ord(label) + n)
                rows.append((name, label, str(fold)))
    csv = root / "clips.csv"
    pd.DataFrame(rows, columns=["path", "label", "fold"]).to_csv(csv, index=False)
    return csv


def test_degenerate_splits_are_named_with_their_counts(tmp_path, monkeypatch):
    from audiopetl.study.splits import check_study_splits, study_split_sizes

    lopsided(tmp_path / "own")
    dataset = {"kind": "folder", "folder": {"root": str(tmp_path / "own")}}
    study = study_of(tmp_path, monkeypatch, dataset, study={
        "datasets": ["mine"], "strategies": ["linear"], "folds": [1, 2, 3]})  # fmt: skip
    fetched(study)
    sizes = {s.name: s for s in study_split_sizes(study, "mine")}
    assert (sizes["fold1"].train, sizes["fold1"].val, sizes["fold1"].test) == (1, 8, 12)
    assert sizes["fold2"].train_per_class == {"a": 4, "b": 4, "c": 4}
    with pytest.raises(DataError) as info:
        check_study_splits(study, "mine")
    message = str(info.value)
    assert message.startswith(
        "dataset mine, split fold1: 2 of 3 classes have no training clip (b, c): the run "
        "cannot learn them; relax with data.min_split_clips.train_per_class: 0"
    )
    assert "more problem(s): `audiopetl splits mine`" in message and "\n" not in message


@pytest.mark.parametrize(
    ("minimums", "problem"),
    [
        ({}, "split fold2: 1 validation clip(s), fewer than data.min_split_clips.validation = 10"),
        ({"validation": 0}, "split fold3: 1 test clip(s), fewer than data.min_split_clips.test"),
        ({"validation": 0, "test": 0, "train_per_class": 5}, "have fewer than 5 training clips"),
    ],
)
def test_each_minimum_is_a_setting(tmp_path, monkeypatch, minimums, problem):
    from audiopetl.data.splits.sizes import size_problems
    from audiopetl.study.splits import study_split_sizes

    lopsided(tmp_path / "own")
    dataset = {"kind": "folder", "folder": {"root": str(tmp_path / "own")}}
    study = study_of(tmp_path, monkeypatch, dataset, study={
        "datasets": ["mine"], "strategies": ["linear"], "folds": [2, 3]})  # fmt: skip
    fetched(study)
    found = [p for s in study_split_sizes(study, "mine") for p in size_problems(s, minimums, "d")]
    assert any(problem in p for p in found), found
    relaxed = {"train_per_class": 0, "validation": 0, "test": 0}
    assert [
        p for s in study_split_sizes(study, "mine") for p in size_problems(s, relaxed, "d")
    ] == []
