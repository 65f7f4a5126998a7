"""After the study: `audiopetl predict` on new audio (real clips at 44.1 and 8 kHz, shorter and
longer than the training length, in windows) and `audiopetl export`, each export kind loaded in
a fresh process by the libraries its users have (transformers alone, transformers + peft, both
environments where they allow it, audiopetl.load_model) and agreeing with predict."""

# The shared fixtures are imported by name and taken as parameters (pytest's way).
# ruff: noqa: F811

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import ESC50_SUBSET, FSDD, LEGACY_PYTHON, needs_esc50, needs_fsdd
from safetensors.torch import load_file, save_file
from test_task_training import multilabel_project, multilabel_run  # noqa: F401
from training_helpers import (  # noqa: F401
    QUICK,
    QuickProject,
    in_quick_project,
    quick_lora_run,
    quick_project,
    restore_torch_globals,
    run_in,
    run_main,
    train_args,
)

from audiopetl.data.audio import read_audio
from audiopetl.features.cache import read_clips
from audiopetl.inference.predict import window_starts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
    # transformers' numpy fbank for ASTFeatureExtractor: Kaldi's 128 bins leave one empty.
    pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values:UserWarning"),
]

RATE = 16000
# The quick preset's training length: 64 fbank frames, (64 - 1) * 160 + 400 samples.
WIDTH = 63 * 160 + 400
TOLERANCE = 1e-4


# -- windows ----------------------------------------------------------------------------------


def test_window_starts_cover_the_clip_and_end_at_its_end() -> None:
    assert window_starts(100, 400, 200) == [0]  # shorter: one window, padded
    assert window_starts(400, 400, 200) == [0]
    assert window_starts(401, 400, 200) == [0, 1]  # the last ends at the clip's end
    assert window_starts(800, 400, 400) == [0, 400]
    assert window_starts(1000, 400, 200) == [0, 200, 400, 600]
    assert window_starts(920, 400, 400) == [0, 400, 520]


# -- fixtures: runs, clips cut to the training length ------------------------------------------


def manifest_of(root: Path) -> tuple[Path, pd.DataFrame]:
    manifest = sorted((root / "data" / "raw").glob("synthetic-*/manifest.csv"))[0]
    return manifest, pd.read_csv(manifest)


@dataclass(frozen=True)
class Clips:
    folder: Path  # the test fold's clips cut to the training length, float WAV
    ids: list[str]
    waves: np.ndarray  # (clips, WIDTH)


@pytest.fixture(scope="module")
def test_clips(quick_project: QuickProject, tmp_path_factory) -> Clips:
    """The quick runs' test clips (fold 3) cut to the training length, written losslessly."""
    manifest, table = manifest_of(quick_project.root)
    folder = tmp_path_factory.mktemp("clips")
    rows = table[table["fold"] == 3]
    waves = []
    for clip_id, path in zip(rows["clip_id"], rows["path"], strict=True):
        wave = read_audio(manifest.parent / path, RATE)[:WIDTH]
        assert len(wave) == WIDTH
        sf.write(folder / f"{clip_id}.wav", wave, RATE, subtype="FLOAT")
        waves.append(wave)
    return Clips(folder, list(rows["clip_id"]), np.stack(waves))


_RUNS: dict[str, Path] = {}
# One of peft's tuners by name, merged into the weights on export as LoRA is.
IA3 = "strategies.ia3={kind: peft, tuner: IA3, lr: 0.01, targets: [k, v, ffn_out]}"


def trained(root: Path, strategy: str, base: Path, *sets: str) -> Path:
    key = f"{root}:{strategy}:{sets}"
    if key not in _RUNS:
        out = base / strategy
        code, _, err = run_in(root, train_args(strategy, out, *sets))
        assert code == 0, err
        _RUNS[key] = out
    return _RUNS[key]


@pytest.fixture(scope="module")
def runs(quick_project: QuickProject, quick_lora_run: Path, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    return {
        "lora": quick_lora_run,
        "full": trained(quick_project.root, "full", base),
        "prompt": trained(quick_project.root, "prompt", base),
        "ia3": trained(quick_project.root, "ia3", base, IA3),
    }


def predict(root: Path, run: Path, out: Path, *inputs: object, extra: tuple = ()) -> tuple:
    code, stdout, err = run_in(root, ["predict", run, *inputs, "--out", out, *extra, "--quiet"])
    return code, stdout, err


def probabilities(table: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return table[[f"p_{c}" for c in classes]].to_numpy()


def classes_of(run: Path) -> list[str]:
    return json.loads((run / "run.json").read_text())["run"]["classes"]


# -- predict ----------------------------------------------------------------------------------


def test_predict_on_training_length_clips_equals_the_runs_own_predictions(
    quick_project: QuickProject,
    quick_lora_run: Path,
    test_clips: Clips,
    tmp_path: Path,
) -> None:
    out = tmp_path / "p.csv"
    code, stdout, err = predict(quick_project.root, quick_lora_run, out, test_clips.folder)
    assert code == 0, err
    assert f"{len(test_clips.ids)} clips ({len(test_clips.ids)} windows" in stdout
    table = pd.read_csv(out)
    table["clip_id"] = [Path(p).stem for p in table["path"]]
    stored = pd.read_parquet(quick_lora_run / "predictions.parquet")
    merged = stored.merge(table, on="clip_id")
    assert len(merged) == len(stored) == len(test_clips.ids)
    assert (merged["windows"] == 1).all()
    ours = probabilities(merged, classes_of(quick_lora_run))
    theirs = np.stack(merged["probabilities"].to_numpy())
    assert np.abs(ours - theirs).max() <= 1e-6
    labels = classes_of(quick_lora_run)
    assert list(merged["label_1"]) == [labels[i] for i in merged["prediction"]]


def test_windows_of_a_clip_built_from_two_known_halves(
    quick_project: QuickProject,
    quick_lora_run: Path,
    test_clips: Clips,
    tmp_path: Path,
) -> None:
    first, second = test_clips.waves[0], test_clips.waves[-1]  # classes 0 and 3
    joined = tmp_path / "joined.wav"
    sf.write(joined, np.concatenate([first, second]), RATE, subtype="FLOAT")
    halves = tmp_path / "halves"
    halves.mkdir()
    for name, wave in (("a", first), ("b", second)):
        sf.write(halves / f"{name}.wav", wave, RATE, subtype="FLOAT")
    classes = classes_of(quick_lora_run)
    code, _, err = predict(quick_project.root, quick_lora_run, tmp_path / "h.csv", halves)
    assert code == 0, err
    alone = probabilities(pd.read_csv(tmp_path / "h.csv"), classes)

    hop = f"{WIDTH / RATE!r}"
    out = tmp_path / "j.parquet"
    args = ("--hop-s", hop, "--windows")
    code, _, err = predict(quick_project.root, quick_lora_run, out, joined, extra=args)
    assert code == 0, err
    windows = pd.read_parquet(tmp_path / "j.windows.parquet")
    assert list(windows["start_s"]) == [0.0, WIDTH / RATE]
    np.testing.assert_allclose(probabilities(windows, classes), alone, atol=1e-6)
    clip = pd.read_parquet(out)
    assert clip["windows"].tolist() == [2]
    np.testing.assert_allclose(probabilities(clip, classes)[0], alone.mean(axis=0), atol=1e-6)

    # The default hop is half a window: a third window straddles the halves; max aggregates.
    out = tmp_path / "d.csv"
    args = ("--windows", "--aggregate", "max")
    code, _, err = predict(quick_project.root, quick_lora_run, out, joined, extra=args)
    assert code == 0, err
    windows = pd.read_csv(tmp_path / "d.windows.csv")
    assert windows["window"].tolist() == [0, 1, 2]
    assert windows["start_s"].tolist() == [0.0, WIDTH / 2 / RATE, WIDTH / RATE]
    per_window = probabilities(windows, classes)
    np.testing.assert_allclose(per_window[[0, 2]], alone, atol=1e-6)
    np.testing.assert_allclose(
        probabilities(pd.read_csv(out), classes)[0], per_window.max(axis=0), atol=1e-7
    )


def expected_windows(seconds: float) -> int:
    return len(window_starts(round(seconds * RATE), WIDTH, WIDTH // 2))


@needs_esc50
@needs_fsdd
def test_predict_on_real_clips_of_other_rates_and_lengths(
    quick_project: QuickProject,
    quick_lora_run: Path,
    tmp_path: Path,
) -> None:
    """ESC-50 (44.1 kHz, 5 s: many windows) named by folder, FSDD (8 kHz, 0.14-2.28 s: one
    window, padded, or several) listed in a CSV; the same bytes twice."""
    fsdd = sorted(FSDD.glob("*.wav"))
    by_size = sorted(fsdd, key=lambda p: p.stat().st_size)
    chosen = sorted({*fsdd[::150], *by_size[:3], *by_size[-3:]})
    listing = tmp_path / "list.csv"
    pd.DataFrame({"path": [str(p) for p in chosen]}).to_csv(listing, index=False)
    out = tmp_path / "real.csv"
    audio = ESC50_SUBSET / "audio"
    code, _, err = predict(quick_project.root, quick_lora_run, out, audio, listing)
    assert code == 0, err
    table = pd.read_csv(out)
    esc50 = sorted(audio.glob("*.wav"))
    assert table["path"].tolist() == [str(p) for p in [*esc50, *chosen]]
    rows = zip(table["path"], table["seconds"], table["windows"], strict=True)
    for path, seconds, windows in rows:
        info = sf.info(path)
        assert seconds == pytest.approx(info.frames / info.samplerate, abs=1 / RATE)
        assert windows == expected_windows(seconds)
    assert set(table["windows"][: len(esc50)]) == {expected_windows(5.0)}
    assert table["windows"].iloc[len(esc50) :].min() == 1  # the short FSDD clips
    assert table["windows"].iloc[len(esc50) :].max() > 1
    probs = probabilities(table, classes_of(quick_lora_run))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (table["score_1"] >= table["score_2"]).all()

    again = tmp_path / "again.csv"
    code, _, err = predict(quick_project.root, quick_lora_run, again, audio, listing)
    assert code == 0, err
    assert again.read_bytes() == out.read_bytes()


def test_predict_refuses_bad_input_in_one_line(
    quick_project: QuickProject,
    quick_lora_run: Path,
    test_clips: Clips,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    shutil.copytree(test_clips.folder, folder)
    (folder / "empty.wav").write_bytes(b"")
    out = tmp_path / "p.csv"
    code, _, err = predict(quick_project.root, quick_lora_run, out, folder)
    assert code == 1
    assert "empty.wav: empty file (0 bytes)" in err and "--skip-bad" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()

    skip = ("--skip-bad",)
    code, stdout, err = predict(quick_project.root, quick_lora_run, out, folder, extra=skip)
    assert code == 0, err
    assert f"skipped {folder / 'empty.wav'}" in err and "1 skipped" in stdout
    assert len(pd.read_csv(out)) == len(test_clips.ids)

    code, _, err = predict(quick_project.root, quick_lora_run, out, tmp_path / "nothing.wav")
    assert code == 1 and "nothing.wav: no such file or folder" in err
    listing = tmp_path / "list.csv"
    listing.write_text("file\na.wav\n")
    code, _, err = predict(quick_project.root, quick_lora_run, out, listing)
    assert code == 1 and "no `path` column" in err
    code, _, err = predict(quick_project.root, quick_lora_run, tmp_path / "p.txt", folder)
    assert code == 1 and "write predictions to a .csv or .parquet file" in err


def test_predict_verifies_the_run_and_its_base(
    quick_project: QuickProject,
    quick_lora_run: Path,
    test_clips: Clips,
    tmp_path: Path,
) -> None:
    damaged = tmp_path / "run"
    shutil.copytree(quick_lora_run, damaged)
    weights = damaged / "model" / "trainable.safetensors"
    state = load_file(str(weights))
    name = sorted(state)[0]
    state[name] = state[name] + 1.0
    save_file(state, str(weights))
    out = tmp_path / "p.csv"
    code, _, err = predict(quick_project.root, damaged, out, test_clips.folder)
    assert code == 1 and "changed: model/trainable.safetensors" in err
    assert not out.exists()

    # The base checkpoint a run started from is found from the project and must be the same.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, _, err = predict(elsewhere, quick_lora_run, out, test_clips.folder)
    assert code == 1 and "the base checkpoint it started from" in err
    project = tmp_path / "project"
    shutil.copytree(quick_project.root / "config", project / "config")
    pretrained = project / "results/quick/pretrain/tiny-ast/pretrained"
    shutil.copytree(quick_project.root / "results/quick/pretrain/tiny-ast/pretrained", pretrained)
    config = json.loads((pretrained / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6
    (pretrained / "config.json").write_text(json.dumps(config))
    code, _, err = predict(project, quick_lora_run, out, test_clips.folder)
    assert code == 1 and "not the base checkpoint the run" in err and "config.json" in err


# -- export -----------------------------------------------------------------------------------

# Run in a fresh interpreter: transformers (and peft) only, as a user without audiopetl.
TRANSFORMERS_ONLY = """
import sys
from pathlib import Path
import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
folder, waves_file, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
what = sys.argv[4:]
model = AutoModelForAudioClassification.from_pretrained(str(folder)).eval()
labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
multilabel = model.config.problem_type == "multi_label_classification"
def scores(logits):
    return (torch.sigmoid(logits) if multilabel else logits.softmax(-1)).numpy()
if "features" in what:
    features = np.load(out / "features.npy")
else:
    waves = list(np.load(waves_file))
    extractor = AutoFeatureExtractor.from_pretrained(str(folder))
    features = extractor(waves, sampling_rate=extractor.sampling_rate, return_tensors="np")[
        "input_values"
    ]
    np.save(out / "features.npy", features)
    from transformers import pipeline
    classify = pipeline("audio-classification", model=str(folder))
    results = classify(waves, top_k=None)
    np.save(out / "pipeline.npy", np.array([[{r["label"]: r["score"] for r in result}[name]
        for name in labels] for result in results]))
with torch.no_grad():
    np.save(out / "model.npy", scores(model(input_values=torch.from_numpy(features)).logits))
if "peft" in what:
    from peft import PeftModel
    base = AutoModelForAudioClassification.from_pretrained(str(folder / "base"))
    tuned = PeftModel.from_pretrained(base, str(folder / "adapter")).eval()
    with torch.no_grad():
        np.save(out / "peft.npy", scores(tuned(input_values=torch.from_numpy(features)).logits))
(out / "labels.txt").write_text("\\n".join(labels))
assert not [m for m in sys.modules if m.startswith("audiopetl")], "audiopetl was imported"
"""

LOAD_MODEL = """
import sys
import numpy as np
import audiopetl
trained = audiopetl.load_model(sys.argv[1])
np.save(sys.argv[3], trained.predict_waves(list(np.load(sys.argv[2]))))
"""


def fresh(python: Path | str, script: str, *args: object, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(python), "-c", script, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def export(root: Path, run: Path, out: Path) -> str:
    code, stdout, err = run_in(root, ["export", run, "--out", out, "--quiet"])
    assert code == 0, err
    return stdout


@pytest.fixture(scope="module")
def predicted(
    quick_project: QuickProject,
    runs: dict[str, Path],
    test_clips: Clips,
    tmp_path_factory,
) -> dict[str, np.ndarray]:
    """audiopetl predict's probabilities of the test clips, per run."""
    out = tmp_path_factory.mktemp("predicted")
    result = {}
    for name, run in runs.items():
        code, _, err = predict(quick_project.root, run, out / f"{name}.csv", test_clips.folder)
        assert code == 0, err
        result[name] = probabilities(pd.read_csv(out / f"{name}.csv"), classes_of(run))
    return result


@needs_esc50
@needs_fsdd
@pytest.mark.parametrize("strategy", ["full", "lora", "ia3"])
def test_a_plain_export_loads_in_transformers_and_peft_and_agrees_with_predict(
    strategy: str,
    quick_project: QuickProject,
    runs: dict[str, Path],
    predicted: dict[str, np.ndarray],
    test_clips: Clips,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "export"
    stdout = export(quick_project.root, runs[strategy], folder)
    assert "transformers (AutoModelForAudioClassification, pipeline)" in stdout
    config = json.loads((folder / "config.json").read_text())
    classes = classes_of(runs[strategy])
    assert config["id2label"] == {str(i): c for i, c in enumerate(classes)}
    assert config["label2id"] == {c: i for i, c in enumerate(classes)}
    card = (folder / "README.md").read_text()
    assert f"# tiny-ast · {strategy} on synthetic" in card
    assert ("peft (PeftModel.from_pretrained on base/)" in stdout) == (strategy != "full")
    assert "n = 24 clips" in card and "accuracy" in card and "git commit" in card
    waves = tmp_path / "waves.npy"
    np.save(waves, test_clips.waves)
    out = tmp_path / "out"
    out.mkdir()
    peft = ["peft"] if strategy in ("lora", "ia3") else []
    if peft:
        adapter = json.loads((folder / "adapter" / "adapter_config.json").read_text())
        assert {"classifier.dense", "classifier.layernorm"} <= set(adapter["modules_to_save"])
        assert adapter["base_model_name_or_path"] == "base"
    fresh(sys.executable, TRANSFORMERS_ONLY, folder, waves, out, *peft, cwd=tmp_path)
    wanted = predicted[strategy]
    assert (out / "labels.txt").read_text().splitlines() == classes
    for name in ["pipeline", "model", *peft]:
        assert np.abs(np.load(out / f"{name}.npy") - wanted).max() <= TOLERANCE, name
    # The exported feature extractor computes the run's cached features.
    record = json.loads((runs[strategy] / "run.json").read_text())
    cached = read_clips(quick_project.root / record["data"]["cache"], test_clips.ids)
    assert cached.clip_ids == test_clips.ids
    np.testing.assert_allclose(
        np.load(out / "features.npy"), cached.features.float().numpy(), atol=2e-3, rtol=0
    )
    fresh(sys.executable, LOAD_MODEL, folder, waves, out / "loaded.npy", cwd=tmp_path)
    assert np.abs(np.load(out / "loaded.npy") - wanted).max() <= TOLERANCE

    # On real clips too (44.1 kHz cut, 8 kHz padded): the exported extractor is the run's
    # front end, whose output the cache stores in float16.
    from transformers import AutoFeatureExtractor

    from audiopetl.features.frontends import make_extractor
    from audiopetl.inference import load_model

    fsdd = sorted(FSDD.glob("*.wav"), key=lambda p: p.stat().st_size)
    real = [read_audio(p, RATE) for p in [*sorted((ESC50_SUBSET / "audio").glob("*.wav"))[:6],
                                          *fsdd[:3], *fsdd[-3:]]]  # fmt: skip
    exported = AutoFeatureExtractor.from_pretrained(str(folder))
    theirs = exported(real, sampling_rate=RATE, return_tensors="np")["input_values"]
    with contextlib.chdir(quick_project.root):
        values = load_model(runs[strategy]).run.features.values
    ours, _ = make_extractor(values)(real)
    assert theirs.shape == tuple(ours.shape) == (len(real), 64, 128)
    np.testing.assert_allclose(theirs, ours.to(torch.float16).float().numpy(), atol=2e-3, rtol=0)


@pytest.mark.legacy_env
def test_a_plain_export_loads_in_the_legacy_transformers(
    quick_project: QuickProject,
    runs: dict[str, Path],
    predicted: dict[str, np.ndarray],
    test_clips: Clips,
    tmp_path: Path,
) -> None:
    """transformers 4.28 reads the export (saved in the original checkpoint names); it has no
    ASTFeatureExtractor without torchaudio, so it scores the features transformers 5 made."""
    folder = tmp_path / "export"
    export(quick_project.root, runs["full"], folder)
    waves = tmp_path / "waves.npy"
    np.save(waves, test_clips.waves)
    out = tmp_path / "out"
    out.mkdir()
    fresh(sys.executable, TRANSFORMERS_ONLY, folder, waves, out, cwd=tmp_path)
    (out / "model.npy").unlink()
    fresh(LEGACY_PYTHON, TRANSFORMERS_ONLY, folder, waves, out, "features", cwd=tmp_path)
    assert np.abs(np.load(out / "model.npy") - predicted["full"]).max() <= TOLERANCE


def test_an_export_transformers_cannot_express_loads_with_audiopetl(
    quick_project: QuickProject,
    runs: dict[str, Path],
    predicted: dict[str, np.ndarray],
    test_clips: Clips,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "export"
    stdout = export(quick_project.root, runs["prompt"], folder)
    assert "loads with audiopetl.load_model" in stdout
    assert "pipeline cannot serve it: strategy 'prompt' adds modules" in stdout
    assert not (folder / "config.json").exists()
    assert (folder / "base" / "config.json").is_file()
    assert (
        "pipeline cannot serve this model: strategy 'prompt' adds modules"
        in (folder / "README.md").read_text()
    )
    # Self-contained: loads in a fresh process from another folder, the project out of reach.
    moved = tmp_path / "elsewhere" / "export"
    shutil.copytree(folder, moved)
    waves = tmp_path / "waves.npy"
    np.save(waves, test_clips.waves)
    fresh(sys.executable, LOAD_MODEL, moved, waves, tmp_path / "p.npy", cwd=moved.parent)
    assert np.abs(np.load(tmp_path / "p.npy") - predicted["prompt"]).max() <= TOLERANCE
    # predict reads an export as it reads a run folder.
    code, _, err = predict(moved.parent, moved, tmp_path / "e.csv", test_clips.folder)
    assert code == 0, err
    got = probabilities(pd.read_csv(tmp_path / "e.csv"), classes_of(runs["prompt"]))
    assert np.abs(got - predicted["prompt"]).max() <= TOLERANCE
    # A damaged export is refused.
    (moved / "audiopetl.json").write_text((moved / "audiopetl.json").read_text() + " ")
    code, _, err = predict(moved.parent, moved, tmp_path / "x.csv", test_clips.folder)
    assert code == 1 and "changed: audiopetl.json" in err


WHISPER = (
    "models.tiny-whisper={kind: whisper-encoder, pretrained: null, attn_implementation: sdpa, "
    "front_end: {num_mel_bins: 80}, architecture: {d_model: 32, encoder_layers: 1, "
    "encoder_attention_heads: 2, encoder_ffn_dim: 64, dropout: 0.0}}"
)


def test_another_model_kind_exports_for_audiopetl_and_says_why(
    quick_project: QuickProject,
    test_clips: Clips,
    tmp_path: Path,
) -> None:
    root = tmp_path / "project"
    shutil.copytree(quick_project.root, root, symlinks=True)
    sets = ["--set", WHISPER]
    code, _, err = run_in(root, ["cache", "synthetic", "--model", "tiny-whisper", *QUICK, *sets])
    assert code == 0, err
    run = tmp_path / "run"
    args = train_args("lora", run, WHISPER, "training.epochs=2")
    args[args.index("tiny-ast")] = "tiny-whisper"
    code, _, err = run_in(root, args)
    assert code == 0, err
    folder = tmp_path / "export"
    stdout = export(root, run, folder)
    assert "whisper-encoder classifier" in stdout and "is not a transformers class" in stdout
    code, _, err = predict(root, run, tmp_path / "run.csv", test_clips.folder)
    assert code == 0, err
    waves = tmp_path / "waves.npy"
    np.save(waves, test_clips.waves)
    fresh(sys.executable, LOAD_MODEL, folder, waves, tmp_path / "p.npy", cwd=tmp_path)
    wanted = probabilities(pd.read_csv(tmp_path / "run.csv"), classes_of(run))
    assert np.abs(np.load(tmp_path / "p.npy") - wanted).max() <= TOLERANCE


def test_a_multilabel_run_predicts_by_the_max_and_exports_with_sigmoids(
    multilabel_project: Path,
    multilabel_run: Path,
    tmp_path: Path,
) -> None:
    manifest, table = manifest_of(multilabel_project)
    test = table[table["fold"] == 3]
    paths = [manifest.parent / p for p in test["path"]]
    listing = tmp_path / "test.csv"
    pd.DataFrame({"path": [str(p) for p in paths]}).to_csv(listing, index=False)
    out = tmp_path / "p.csv"
    code, _, err = predict(multilabel_project, multilabel_run, out, listing, extra=("--windows",))
    assert code == 0, err
    classes = classes_of(multilabel_run)
    clips = pd.read_csv(out, keep_default_na=False)
    windows = pd.read_csv(tmp_path / "p.windows.csv")
    assert (clips["windows"] == 2).all()  # 0.7 s clips: two windows of 0.655 s
    per_window = probabilities(windows, classes).reshape(len(clips), 2, len(classes))
    np.testing.assert_allclose(probabilities(clips, classes), per_window.max(axis=1), atol=1e-7)
    threshold = json.loads((multilabel_run / "metrics.json").read_text())["test"]["threshold"]
    for labels, scores in zip(clips["labels"], probabilities(clips, classes), strict=True):
        chosen = [c for c, s in zip(classes, scores, strict=True) if s >= threshold]
        assert (labels.split(";") if labels else []) == chosen
    # The first window is what the run was tested on.
    stored = pd.read_parquet(multilabel_run / "predictions.parquet")
    assert stored["clip_id"].tolist() == test["clip_id"].tolist()
    first = per_window[:, 0]
    assert np.abs(first - np.stack(stored["probabilities"].to_numpy())).max() <= 1e-6

    folder = tmp_path / "export"
    export(multilabel_project, multilabel_run, folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    waves = tmp_path / "waves.npy"
    np.save(waves, np.stack([read_audio(p, RATE)[:WIDTH] for p in paths]))
    result = tmp_path / "out"
    result.mkdir()
    fresh(sys.executable, TRANSFORMERS_ONLY, folder, waves, result, cwd=tmp_path)
    for name in ("pipeline", "model"):
        assert np.abs(np.load(result / f"{name}.npy") - first).max() <= TOLERANCE, name


@needs_esc50
@needs_fsdd
def test_a_waveform_models_exported_extractor_computes_its_front_end(tmp_path: Path) -> None:
    """Wav2Vec2FeatureExtractor at a waveform run's settings (normalised per clip or not)
    gives the run's input on real clips cut to the training length."""
    from transformers import AutoFeatureExtractor

    from audiopetl.features.frontends import make_extractor
    from audiopetl.inference.export import feature_extractor
    from audiopetl.study import load_study

    fsdd = sorted(FSDD.glob("*.wav"), key=lambda p: p.stat().st_size)
    paths = [*sorted((ESC50_SUBSET / "audio").glob("*.wav"))[:4], *fsdd[:2], *fsdd[-2:]]
    for model in ("tiny-wav2vec2", "tiny-hubert"):  # normalised, and not
        study = load_study(Path("config/config.yaml").resolve(), "models", [])
        run = study.run("synthetic", model, "full", 1, 0, pretrained=None)
        folder = tmp_path / model
        feature_extractor(run).save_pretrained(str(folder))
        loaded = AutoFeatureExtractor.from_pretrained(str(folder))
        values = run.features.values
        length = int(values["target_length"])
        waves = [read_audio(p, RATE)[:length] for p in paths]
        theirs = loaded(waves, sampling_rate=RATE, padding="max_length", max_length=length,
                        return_tensors="np")["input_values"]  # fmt: skip
        ours, _ = make_extractor(values)(waves)
        assert loaded.do_normalize == bool(values["normalize"])
        np.testing.assert_allclose(theirs, ours[..., 0].numpy(), atol=1e-5, rtol=0)
