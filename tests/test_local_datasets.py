"""The datasets only their publishers hand out (after registration or a signed form), read from
a local copy: Fluent Speech Commands (31 intents, the publisher's CSV split) and IEMOCAP (4
emotions, sessions and speakers). Generated miniatures of each layout; every file's sha256 is
recorded at a copy's first use and a later fetch is checked against it; every failure path (a
listed file missing, an unlisted one, a changed one, a speaker on two sides, the wrong count)
is one error and leaves no raw folder."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiopetl.data.manifest import read_manifest

FSC = "datasets.fluent_speech_commands.fluent_speech_commands"
IEM = "datasets.iemocap.iemocap"
ACTIONS = ["activate", "deactivate", "increase", "decrease", "bring", "change language"]


def wav(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, 0.1 * rng.standard_normal(800), 16000, subtype="PCM_16")


def intents(n: int) -> list[tuple[str, str, str]]:
    objects = ["lights", "heat", "volume", "music", "lamp", "newspaper", "juice", "socks"]
    locations = ["kitchen", "bedroom", "washroom", "none"]
    found = [(a, o, loc) for a in ACTIONS for o in objects for loc in locations]
    return found[:n]


def fluent_copy(root: Path, n_intents: int = 31, leak: bool = False) -> Path:
    """A Fluent Speech Commands layout: one utterance per intent and part, a speaker per part."""
    seed = 0
    for part, speaker in (("train", "spkTRAIN1"), ("valid", "spkVALID1"), ("test", "spkTEST01")):
        rows = []
        for k, (action, obj, location) in enumerate(intents(n_intents)):
            who = "spkTRAIN1" if leak and part == "test" and k == 0 else speaker
            rel = f"wavs/speakers/{who}/{part}-{k:02d}.wav"
            seed += 1
            wav(root / rel, seed)
            rows.append({"path": rel, "speakerId": who, "transcription": f"{action} {obj}",
                         "action": action, "object": obj, "location": location})  # fmt: skip
        (root / "data").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(root / "data" / f"{part}_data.csv")  # with pandas' index
    return root


def fetch(cli: Callable, kind: str, key: str, root: Path, *more: str):
    args = ["fetch", kind, "--quiet", "--set", f"{key}.root={root}"]
    for item in more:
        args += ["--set", item]
    return cli(*args)


def raw_folders(project: Path, kind: str) -> list[Path]:
    return sorted(p for p in (project / "data" / "raw").glob(f"{kind}-*") if p.is_dir())


def test_fluent_speech_commands_intents_and_split(
    project: Path, cli: Callable, tmp_path: Path
) -> None:
    root = fluent_copy(tmp_path / "fsc")
    result = fetch(cli, "fluent_speech_commands", FSC, root)
    assert result.code == 0, result.err
    (folder,) = raw_folders(project, "fluent_speech_commands")
    manifest = read_manifest(folder / "manifest.csv", root)
    assert manifest["split"].value_counts().to_dict() == {"train": 31, "validation": 31, "test": 31}
    assert manifest["label_name"].nunique() == 31
    assert "activate_socks_washroom" in set(manifest["label_name"])
    assert set(manifest["group"]) == {"spkTRAIN1", "spkVALID1", "spkTEST01"}
    assert (folder / "SHA256SUMS").read_text().count("\n") == 93 + 3
    (recorded,) = (project / "data" / "raw" / ".checksums").glob("fluent_speech_commands-*")
    assert recorded.read_text() == (folder / "SHA256SUMS").read_text()
    # A later fetch of the same copy (here: after its raw folder went) checks every file.
    for item in folder.iterdir():
        item.unlink()
    folder.rmdir()
    changed = root / "wavs/speakers/spkTEST01/test-03.wav"
    wav(changed, 999)
    again = fetch(cli, "fluent_speech_commands", FSC, root)
    assert again.code == 1
    assert "1 problem(s) (1 sha256)" in again.err and str(changed) in again.err
    assert raw_folders(project, "fluent_speech_commands") == []


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("missing", "1 missing"),
        ("unlisted", "1 unlisted"),
        ("intents", "30 intents, not the 31"),
    ],
)
def test_fluent_speech_commands_problems(
    project: Path, cli: Callable, tmp_path: Path, damage: str, expected: str
) -> None:
    root = fluent_copy(tmp_path / "fsc", n_intents=30 if damage == "intents" else 31)
    if damage == "missing":
        (root / "wavs/speakers/spkVALID1/valid-07.wav").unlink()
    elif damage == "unlisted":
        wav(root / "wavs/speakers/spkVALID1/stray.wav", 5)
    result = fetch(cli, "fluent_speech_commands", FSC, root)
    assert result.code == 1
    assert "Fluent Speech Commands verification failed" in result.err and expected in result.err
    assert raw_folders(project, "fluent_speech_commands") == []
    assert not (project / "data" / "raw" / ".checksums").exists()  # nothing recorded


def test_fluent_speech_commands_speaker_on_two_sides(
    project: Path, cli: Callable, tmp_path: Path
) -> None:
    result = fetch(cli, "fluent_speech_commands", FSC, fluent_copy(tmp_path / "fsc", leak=True))
    assert result.code == 1 and "spkTRAIN1" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_fluent_preset_plans_the_publishers_split(project: Path, cli: Callable) -> None:
    result = cli("plan", "--experiment", "fluent-speech-commands-petl-ast", "--quiet")
    assert result.code == 0, result.err
    assert "ast-audioset/lora/seed10/official 23132/3118/3793" in result.out


# -- IEMOCAP ------------------------------------------------------------------------------------
EMOTIONS = ["neu", "hap", "exc", "sad", "ang", "fru"]  # fru: not one of the 4 classes


def iemocap_copy(root: Path) -> Path:
    """Per session one improvised dialog; each speaker says one turn per emotion."""
    seed = 0
    for session in range(1, 6):
        dialog = f"Ses0{session}F_impro01"
        lines = ["% header line the format ignores", ""]
        for who in ("F", "M"):
            for k, emotion in enumerate(EMOTIONS):
                turn = f"{dialog}_{who}{k:03d}"
                lines.append(f"[{k}.0 - {k}.5]\t{turn}\t{emotion}\t[2.5000, 2.5000, 2.5000]")
                seed += 1
                wav(root / f"Session{session}/sentences/wav/{dialog}/{turn}.wav", seed)
        labels = root / f"Session{session}/dialog/EmoEvaluation/{dialog}.txt"
        labels.parent.mkdir(parents=True, exist_ok=True)
        labels.write_text("\n".join(lines) + "\n")
    return root


def test_iemocap_four_classes_sessions_and_speakers(
    project: Path, cli: Callable, tmp_path: Path
) -> None:
    root = iemocap_copy(tmp_path / "IEMOCAP_full_release")
    result = fetch(cli, "iemocap", IEM, root, f"{IEM}.subset=true")
    assert result.code == 0, result.err
    (folder,) = raw_folders(project, "iemocap")
    manifest = read_manifest(folder / "manifest.csv", root)
    assert len(manifest) == 5 * 2 * 5  # fru left out
    counts = manifest["label_name"].value_counts().to_dict()
    assert counts == {"happy": 20, "neutral": 10, "sad": 10, "angry": 10}  # exc is happy
    assert sorted(manifest["fold"].unique()) == [1, 2, 3, 4, 5]
    assert manifest.groupby("fold")["group"].unique().map(sorted).to_dict()[2] == [
        "Ses02F",
        "Ses02M",
    ]
    row = manifest[manifest["clip_id"] == "Ses03F_impro01_M002"].iloc[0]
    assert row["group"] == "Ses03M" and row["label_name"] == "happy"
    assert json.loads((folder / "dataset.json").read_text())["clips"] == 50
    plan = cli("plan", "--experiment", "iemocap-petl-ast", "--quiet", "--set", f"{IEM}.root={root}",
               "--set", f"{IEM}.subset=true")  # fmt: skip
    assert plan.code == 0, plan.err
    # 10 runs: a session held out, tested on one speaker, validated on the other.
    assert re.search(r"iemocap/ast-audioset/lora/seed10/fold10 +40/5/5 ", plan.out), plan.out
    report = cli("data-report", "iemocap", "--quiet", "--set", f"{IEM}.root={root}",
                 "--set", f"{IEM}.subset=true")  # fmt: skip
    assert report.code == 0, report.err
    assert "subset: 50 of 5531 utterances" in report.out + report.err


def test_iemocap_whole_copy_must_hold_every_utterance(
    project: Path, cli: Callable, tmp_path: Path
) -> None:
    root = iemocap_copy(tmp_path / "IEMOCAP_full_release")
    gone = root / "Session4/sentences/wav/Ses04F_impro01/Ses04F_impro01_F003.wav"
    gone.unlink()
    result = fetch(cli, "iemocap", IEM, root)
    assert result.code == 1
    assert "IEMOCAP verification failed" in result.err
    assert "1 missing" in result.err and str(gone) in result.err
    assert "50 utterances of the 4 classes, not IEMOCAP's 5531" in result.err
    assert raw_folders(project, "iemocap") == []


def test_iemocap_changed_file_after_first_use(project: Path, cli: Callable, tmp_path: Path) -> None:
    root = iemocap_copy(tmp_path / "IEMOCAP_full_release")
    assert fetch(cli, "iemocap", IEM, root, f"{IEM}.subset=true").code == 0
    labels = root / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    labels.write_text(labels.read_text().replace("\tsad\t", "\tang\t"))
    # Another raw folder of the same copy (subset: false is another identity) is checked.
    result = fetch(cli, "iemocap", IEM, root)
    assert result.code == 1 and "sha256 mismatch" in result.err and str(labels) in result.err
