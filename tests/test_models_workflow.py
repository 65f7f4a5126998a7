"""The `models` preset end to end on a fresh copy of the workflow: three model kinds (AST,
Whisper's encoder, wav2vec2), each pretrained on the synthetic source task, x full, linear and
LoRA over 5 folds; one cache per front end. Then, from the workflow's own pretrained models:
every other applicable strategy on every kind trains above chance, a run repeats to identical
bytes, a stopped run resumes to the uninterrupted run's bytes, and `plan --measure` reports
peak memory for every kind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from project_copy import copy_workflow
from training_helpers import assert_bitwise_equal, load_weights, run_in

from audiopetl.study import Study, load_study

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "models"
MODELS = ("tiny-ast", "tiny-whisper", "tiny-wav2vec2")
CLASSES = 10
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    copy_workflow(folder)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--config",
         f"experiment={EXPERIMENT}"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return folder


def cfg() -> Study:
    return load_study(ROOT / "config" / "config.yaml", EXPERIMENT)


def test_every_kind_and_strategy_trained_above_chance(project: Path) -> None:
    exp = project / "results" / EXPERIMENT
    runs = [project / r for r in cfg().runs()]
    assert len(runs) == 3 * 3 * 5
    for run in runs:
        evaluation = json.loads((run / "evaluation.json").read_text())
        assert evaluation["max_abs_logit_difference"] == 0.0, run
    summary = pd.read_csv(exp / "summary.csv")
    assert sorted(zip(summary["model"], summary["strategy"], strict=True)) == sorted(
        (m, s) for m in MODELS for s in ("full", "linear", "lora")
    )
    # Well above chance (10 classes): a broken front end or head gives chance.
    assert (summary["test_accuracy_mean"] > 1 / CLASSES + 0.4).all(), summary
    table = (exp / "models.md").read_text()
    for model in MODELS:
        assert f"| {model} |" in table
    assert (exp / "figures" / "accuracy_vs_params.pdf").read_bytes().startswith(b"%PDF")


def test_one_cache_per_dataset_and_front_end(project: Path) -> None:
    study = cfg()
    caches = sorted(p.name for p in (project / "data" / "features").glob("*.parquet"))
    expected = sorted(
        f"{d}-{study.features(d, m).feature_id}.parquet"
        for d in ("synthetic", "synthetic-source")
        for m in MODELS
    )
    assert caches == expected and len(caches) == 6
    # AST's fbank cache is the default preset's: other presets share it.
    default = load_study(ROOT / "config" / "config.yaml")
    assert (
        study.features("synthetic", "tiny-ast").feature_id
        == default.features("synthetic").feature_id
    )


def train(project: Path, model: str, strategy: str, out: Path, *sets: str) -> tuple[int, str]:
    args = ["train", "--experiment", EXPERIMENT, "--quiet", "--dataset", "synthetic",
            "--model", model, "--strategy", strategy, "--fold", "2", "--seed", "0",
            "--out", str(out), "--evaluate"]  # fmt: skip
    for item in sets:
        args += ["--set", item]
    code, _, err = run_in(project, args)
    return code, err


# Strategies the preset does not define, added on the command line.
EXTRA = {
    "bitfit": ("strategies.bitfit.kind=bitfit", "strategies.bitfit.lr=0.005"),
    "ia3": (
        "strategies.ia3.kind=peft",
        "strategies.ia3.tuner=IA3",
        "strategies.ia3.lr=0.01",
        "strategies.ia3.targets=[k,v,ffn_out]",
    ),
}
# Every strategy that applies to every kind but AST (prompt and prefix do not).
OTHERS = ("bitfit", "adapter", "conformer", "ia3")


@pytest.mark.parametrize("model", ["tiny-whisper", "tiny-wav2vec2"])
@pytest.mark.parametrize("strategy", OTHERS)
def test_other_strategies_train_above_chance(project: Path, tmp_path: Path, model, strategy):
    out = tmp_path / "run"
    code, err = train(project, model, strategy, out, *EXTRA.get(strategy, ()))
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 1 / CLASSES + 0.3, metrics["test"]
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["max_abs_logit_difference"] == 0.0


def workflow_run(project: Path, model: str, strategy: str) -> Path:
    runs = project / "results" / EXPERIMENT / "runs"
    return runs / "synthetic" / model / strategy / "seed0" / "fold2"


def sums(run: Path) -> dict[str, str]:
    lines = (run / "SHA256SUMS").read_text().splitlines()
    return {name.lstrip("*"): digest for digest, name in (line.split(maxsplit=1) for line in lines)}


@pytest.mark.parametrize("model", ["tiny-whisper", "tiny-wav2vec2"])
def test_a_run_repeats_to_identical_bytes(project: Path, tmp_path: Path, model: str) -> None:
    """The workflow's run, repeated by hand in another process: every file the same bytes but
    run.json, whose command line names each run's own --out."""
    out = tmp_path / "again"
    code, err = train(project, model, "lora", out)
    assert code == 0, err
    original = workflow_run(project, model, "lora")
    a, b = sums(out), sums(original)
    assert a.keys() == b.keys() and "history.csv" in a
    assert {k: v for k, v in a.items() if k != "run.json"} == {
        k: v for k, v in b.items() if k != "run.json"
    }
    info_a, info_b = (json.loads((r / "run.json").read_text()) for r in (out, original))
    assert info_a.pop("command") != info_b.pop("command")
    assert info_a == info_b


@pytest.mark.parametrize("model", ["tiny-whisper", "tiny-wav2vec2"])
def test_a_stopped_run_resumes_to_the_same_bytes(
    project: Path, tmp_path: Path, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiopetl.training import trainer as train_module

    step = train_module.Trainer.train_step
    calls = {"n": 0}

    def stop_at_the_tenth(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:  # a scheduler's warning, mid-epoch
            os.kill(os.getpid(), signal.SIGUSR1)
        return step(self, *args, **kwargs)

    out = tmp_path / "stopped"
    monkeypatch.setattr(train_module.Trainer, "train_step", stop_at_the_tenth)
    code, err = train(project, model, "full", out)
    assert code == 75, err
    monkeypatch.setattr(train_module.Trainer, "train_step", step)
    code, err = train(project, model, "full", out)
    assert code == 0, err
    assert "epoch 1/12" not in err and "epoch 2/12" in err  # resumed inside epoch 2
    reference = workflow_run(project, model, "full")
    assert_bitwise_equal(load_weights(out), load_weights(reference))
    assert (out / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()


def test_plan_measures_peak_memory_of_every_kind(project: Path) -> None:
    code, out, err = run_in(project, ["plan", "--experiment", EXPERIMENT, "--measure"])
    assert code == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("peak training memory"))
    rows = []
    for line in lines[start + 1 :]:  # the table's indented rows, up to the next section
        if not line.startswith("  "):
            break
        rows.append(line.split())
    measured = {(r[0], r[1]): float(r[2]) for r in rows}
    assert set(measured) == {(m, s) for m in MODELS for s in ("full", "linear", "lora")}
    assert all(gib > 0 for gib in measured.values()), measured


@pytest.mark.parametrize("model", ["tiny-hubert", "tiny-wavlm"])
def test_hubert_and_wavlm_pretrain_and_transfer_above_chance(project: Path, tmp_path: Path, model):
    """The two waveform kinds outside the preset's study: pretrained on the source task (5
    epochs), then every applicable strategy on one fold (HuBERT and WavLM share the
    unnormalised waveform cache)."""
    short = f"models.{model}.pretrain.epochs=5"
    for dataset in ("synthetic", "synthetic-source"):
        code, _, err = run_in(
            project, ["cache", dataset, "--experiment", EXPERIMENT, "--quiet", "--model", model]
        )
        assert code == 0, err
    code, _, err = run_in(
        project, ["pretrain", "--experiment", EXPERIMENT, "--quiet", "--model", model,
                  "--set", short]
    )  # fmt: skip
    assert code == 0, err
    for strategy in ("full", "linear", "lora", *OTHERS):
        out = tmp_path / strategy
        code, err = train(project, model, strategy, out, short, *EXTRA.get(strategy, ()))
        assert code == 0, err
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["test"]["accuracy"] > 1 / CLASSES + 0.3, (strategy, metrics["test"])
        evaluation = json.loads((out / "evaluation.json").read_text())
        assert evaluation["max_abs_logit_difference"] == 0.0


def test_clap_audio_caches_trains_and_rebuilds(project: Path, tmp_path: Path) -> None:
    """CLAP's audio encoder (tiny, random init: HTS-AT reads 10 s at 48 kHz, 4096 tokens per
    clip, too slow on a CPU for a study in minutes): its own cache, a short full fine-tuning
    whose loss falls, and `evaluate` rebuilding identical logits."""
    code, _, err = run_in(
        project, ["cache", "synthetic", "--experiment", EXPERIMENT, "--quiet", "--model",
                  "tiny-clap"]
    )  # fmt: skip
    assert code == 0, err
    out = tmp_path / "clap"
    code, err = train(project, "tiny-clap", "full", out, "training.epochs=2")
    assert code == 0, err
    history = pd.read_csv(out / "history.csv")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["max_abs_logit_difference"] == 0.0
