"""The training loop with real runs of the tiny AST on the cached quick synthetic data: splits,
model selection, early stopping, regularisation, precision, numerical guards, determinism, the
run folder, and one run on real recordings."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import FSDD, needs_fsdd
from safetensors.torch import load_file
from training_helpers import (  # noqa: F401
    HISTORY_COLUMNS,
    LONG_RUN,
    QUICK,
    QUICK_BATCH,
    QUICK_CLASSES,
    QUICK_CLIPS_PER_FOLD,
    RUN_FILES,
    QuickProject,
    SubprocessRuns,
    assert_bitwise_equal,
    in_quick_project,
    load_weights,
    quick_lora_run,
    quick_project,
    restore_torch_globals,
    resume_state_file,
    run_main,
    start_cli,
    subprocess_runs,
    train_args,
    weights_differ,
)

from audiopetl.core.checksums import file_sha256
from audiopetl.core.config import load_config
from audiopetl.core.errors import DataError
from audiopetl.data.splits.folds import split_folds
from audiopetl.features.cache import FeatureSet
from audiopetl.study import load_study
from audiopetl.training import data as data_mod
from audiopetl.training.augment import spec_augment
from audiopetl.training.data import epoch_order
from audiopetl.training.run_folder import read_sums, verify_run_folder
from audiopetl.training.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def metrics_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "metrics.json").read_text())


def history_of(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "history.csv")


# -- pure functions ---------------------------------------------------------------------------


def test_split_folds() -> None:
    assert vars(split_folds([1, 2, 3], 3, "train_val_test")) == {
        "train": [2],
        "val": [1],  # the fold after the test fold, cyclic
        "test": [3],
    }
    assert vars(split_folds([3, 1, 2], 1, "train_val_test")) == {
        "train": [3],
        "val": [2],
        "test": [1],
    }
    assert vars(split_folds([1, 2, 3, 4, 5], 5, "train_val_test")) == {
        "train": [2, 3, 4],
        "val": [1],
        "test": [5],
    }
    assert vars(split_folds([1, 2, 3], 2, "train_test")) == {
        "train": [1, 3],
        "val": [],
        "test": [2],
    }
    with pytest.raises(DataError, match="fold 4 is not among"):
        split_folds([1, 2, 3], 4, "train_val_test")
    with pytest.raises(DataError, match="needs 3 folds"):
        split_folds([1, 2], 1, "train_val_test")


def test_epoch_order_depends_on_seed_and_epoch_only() -> None:
    torch.manual_seed(1)
    a = epoch_order(50, seed=3, epoch=2)
    torch.manual_seed(99)  # the global RNG plays no part
    assert torch.equal(a, epoch_order(50, seed=3, epoch=2))
    assert sorted(a.tolist()) == list(range(50))
    assert not torch.equal(a, epoch_order(50, seed=3, epoch=3))
    assert not torch.equal(a, epoch_order(50, seed=4, epoch=2))


def test_spec_augment_masks() -> None:
    torch.manual_seed(0)
    frames, bins, f_max, t_max = 64, 128, 10, 12
    x = torch.rand(64, frames, bins) + 1.0  # no zero anywhere
    original = x.clone()
    y = spec_augment(x, freq_mask=f_max, time_mask=t_max)
    assert torch.equal(x, original)  # the input is not modified
    widths_f, widths_t = [], []
    for clip, out in zip(x, y, strict=True):
        zero = out == 0
        zero_bins = zero.all(dim=0).nonzero().flatten().tolist()
        zero_frames = zero.all(dim=1).nonzero().flatten().tolist()
        for band, limit, widths in ((zero_bins, f_max, widths_f), (zero_frames, t_max, widths_t)):
            assert len(band) <= limit
            if band:  # one contiguous band
                assert band == list(range(band[0], band[0] + len(band)))
            widths.append(len(band))
        # Zero exactly in the masked bands; untouched elsewhere.
        masked = torch.zeros_like(zero)
        masked[:, zero_bins] = True
        masked[zero_frames, :] = True
        assert torch.equal(zero, masked)
        assert torch.equal(out[~masked], clip[~masked])
    assert max(widths_f) > 0 and max(widths_t) > 0
    assert len(set(widths_f)) > 1 and len(set(widths_t)) > 1  # widths are drawn
    assert torch.equal(spec_augment(x, 0, 0), x)


def test_override_floats_in_exponent_form(in_quick_project: Path) -> None:  # noqa: F811
    sets = ["strategies.full.lr=1e30", "training.weight_decay=1e-3"]
    cfg = load_config("config/config.yaml", "quick", sets)
    assert cfg["strategies"]["full"]["lr"] == 1e30
    assert cfg["training"]["weight_decay"] == 1e-3


# -- runs in-process --------------------------------------------------------------------------


def test_train_val_test_run(quick_lora_run: Path) -> None:  # noqa: F811
    run = json.loads((quick_lora_run / "run.json").read_text())["run"]
    assert run["splits"] == {"train": [2], "val": [1], "test": [3]}
    metrics = metrics_of(quick_lora_run)
    history = history_of(quick_lora_run)
    assert metrics["selected_by"] == "val_accuracy"
    assert metrics["epochs_run"] == len(history) == 3
    # The best epoch is the first with the highest validation accuracy.
    assert metrics["best_epoch"] == int(history["val_metric"].idxmax()) + 1
    assert metrics["val"]["n"] == QUICK_CLIPS_PER_FOLD
    assert metrics["test"]["n"] == QUICK_CLIPS_PER_FOLD


def test_train_test_run(in_quick_project: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    sets = ("training.split=train_test", "training.epochs=2")
    assert run_main(train_args("full", out, *sets, fold=2)) == 0
    run = json.loads((out / "run.json").read_text())["run"]
    assert run["splits"] == {"train": [1, 3], "val": [], "test": [2]}
    metrics, history = metrics_of(out), history_of(out)
    assert metrics["best_epoch"] == metrics["epochs_run"] == 2
    assert metrics["selected_by"] == "last epoch (train_test split)"
    assert metrics["val"] is None
    assert history[["val_loss", "val_accuracy", "val_metric"]].isna().all().all()
    assert history["step"].tolist() == [6, 12]  # 48 clips in batches of 8


def _record_epochs(monkeypatch: pytest.MonkeyPatch) -> dict[int, dict[str, torch.Tensor]]:
    """Snapshot the trainable weights after every epoch (a copy, taken after validation)."""
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    end_epoch = Trainer.end_epoch

    def recording(self: Trainer, state: Any, seconds: float) -> bool:
        stop = end_epoch(self, state, seconds)
        snapshots[state.epoch] = {
            k: v.clone() for k, v in self.strategy.trainable_state(self.model).items()
        }
        return stop

    monkeypatch.setattr(Trainer, "end_epoch", recording)
    return snapshots


def test_best_epoch_weights_are_a_copy_and_give_the_reported_numbers(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    snapshots = _record_epochs(monkeypatch)
    # A learning rate this high makes validation accuracy go up and down; take the first
    # setting where the best epoch is not the last (the reference study's defect 2 would then
    # report the last epoch's weights).
    for lr in ("1.0", "0.5", "2.0", "0.3"):
        out = tmp_path / f"lr{lr}"
        snapshots.clear()
        sets = (f"strategies.linear.lr={lr}", "training.epochs=4")
        assert run_main(train_args("linear", out, *sets)) == 0
        metrics = metrics_of(out)
        if metrics["best_epoch"] < metrics["epochs_run"]:
            break
    else:
        pytest.fail("no setting made the best epoch differ from the last")
    best, last = metrics["best_epoch"], metrics["epochs_run"]
    assert sorted(snapshots) == [1, 2, 3, 4]
    saved = load_weights(out)
    assert_bitwise_equal(saved, snapshots[best])
    assert weights_differ(saved, snapshots[last])
    history = history_of(out)
    assert history["val_metric"].iloc[best - 1] == history["val_metric"].max()
    assert metrics["val"]["accuracy"] == history["val_accuracy"].iloc[best - 1]
    # The reported test numbers are those of the saved weights.
    assert run_main(["evaluate", out]) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["max_abs_logit_difference"] == 0.0
    assert evaluation["test"] == metrics["test"]
    assert evaluation["test_loss"] == metrics["test_loss"]


def test_early_stopping(in_quick_project: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    sets = ("strategies.linear.lr=1.0", "training.epochs=8", "training.early_stopping_patience=1")
    assert run_main(train_args("linear", out, *sets)) == 0
    metrics, history = metrics_of(out), history_of(out)
    assert metrics["epochs_run"] < 8
    assert len(history) == metrics["epochs_run"]
    # Stopped after the first epoch that did not improve on the best one.
    assert metrics["epochs_run"] == metrics["best_epoch"] + 1
    scores = history["val_metric"].tolist()
    assert scores[-1] <= max(scores[:-1])
    assert all(b > a for a, b in itertools.pairwise(scores[:-1]))


def _first_loss(run: Path) -> float:
    return float(history_of(run)["train_loss"].iloc[0])


@pytest.mark.parametrize(
    ("name", "sets"),
    [
        ("label_smoothing", ("training.label_smoothing=0.2",)),
        ("specaugment", ("training.specaugment.freq_mask=16", "training.specaugment.time_mask=8")),
        ("mixup", ("training.mixup_alpha=0.4",)),
        ("bf16", ("training.precision=bf16",)),
    ],
)
def test_training_options_run_and_change_the_run(
    name: str,
    sets: tuple[str, ...],
    quick_lora_run: Path,  # noqa: F811
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / name
    assert run_main(train_args("lora", out, *sets)) == 0
    history = history_of(out)
    assert np.isfinite(history["train_loss"]).all() and np.isfinite(history["val_loss"]).all()
    assert _first_loss(out) != _first_loss(quick_lora_run)
    assert metrics_of(out)["epochs_run"] == 3
    for tensor_name, tensor in load_weights(out).items():
        assert torch.isfinite(tensor).all(), tensor_name
    trained = json.loads((out / "run.json").read_text())["config"]["training"]
    baseline = json.loads((quick_lora_run / "run.json").read_text())["config"]["training"]
    assert trained != baseline


@pytest.mark.parametrize(("every", "saves"), [(0, 3), (3600, 0)])
def test_resume_state_saved_every_epoch_or_at_most_every_interval(
    every: int,
    saves: int,
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    original = Trainer.save_resume

    def counted(self: Trainer, state: Any) -> None:
        calls.append(state.epoch)
        original(self, state)

    monkeypatch.setattr(Trainer, "save_resume", counted)
    out = tmp_path / "run"
    assert run_main(train_args("linear", out, f"training.save_state_every_s={every}")) == 0
    assert len(calls) == saves  # 3 epochs


def test_bookkeeping_settings_are_not_part_of_the_resume_identity(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    study = load_study("config/config.yaml", "quick")
    run = study.run("synthetic", "tiny-ast", "lora", 3, 0, out=tmp_path / "run")

    def settings_identity(trainer: Trainer) -> dict[str, Any]:
        return {**trainer.run.identity(), "precision": trainer.precision}

    plain = settings_identity(Trainer(run))
    changed = {
        "log_every_steps": 1,
        "save_state_every_s": 600,
        "stream": True,  # bit-identical: neither a rerun nor another resume identity
        "feature_memory_gb": 0.5,
    }
    assert settings_identity(Trainer(run.with_training(**changed))) == plain
    assert settings_identity(Trainer(run.with_training(precision="bf16"))) != plain


def test_gradient_accumulation(in_quick_project: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    assert run_main(train_args("lora", out, "training.grad_accum_steps=2")) == 0
    history = history_of(out)
    batches = math.ceil(QUICK_CLIPS_PER_FOLD / QUICK_BATCH)  # 3
    steps = math.ceil(batches / 2)
    assert history["step"].tolist() == [steps * e for e in (1, 2, 3)]
    assert np.isfinite(history["train_loss"]).all()


def test_gradient_clipping(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clip, norms_after = 1e-6, []
    original = torch.nn.utils.clip_grad_norm_

    def spy(params: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        params = list(params)
        assert max_norm == clip
        total = original(params, max_norm, *args, **kwargs)
        norms_after.append(torch.norm(torch.stack([p.grad.norm() for p in params])).item())
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    out = tmp_path / "run"
    assert run_main(train_args("lora", out, "training.grad_clip=1e-6")) == 0
    assert len(norms_after) == 9
    assert max(norms_after) <= clip * (1 + 1e-3)
    # Still trains: LoRA's B matrices start at zero and moved.
    weights = load_weights(out)
    lora_b = [t for n, t in weights.items() if ".lora_B." in n]
    assert lora_b and all(t.abs().max() > 0 for t in lora_b)
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_fp16_on_cpu_is_refused(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    assert run_main(train_args("lora", out, "training.precision=fp16")) == 1
    assert "training.precision fp16 needs a CUDA device" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("every", "noticed"), [(1, 1), (50, 3)])
def test_non_finite_features_stop_the_run(
    every: int,
    noticed: int,
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    read_clips = data_mod.read_clips

    def poisoned(path: Path, ids: Any = None) -> FeatureSet:
        data = read_clips(path, ids)
        data.features[:, 5, 7] = float("nan")  # one value of every clip
        return data

    monkeypatch.setattr(data_mod, "read_clips", poisoned)
    out = tmp_path / "run"
    assert run_main(train_args("full", out, f"training.log_every_steps={every}")) == 1
    err = capsys.readouterr().err
    # Losses are read from the device every `log_every_steps` steps (and at an epoch's end:
    # 3 steps here); the error names the step the NaN first appeared at all the same.
    assert re.search(
        r"non-finite loss nan at epoch 1, step 1 \(gradient norm none computed yet; noticed "
        rf"at step {noticed}, weight norm then \S+\); run \S+ stopped",
        err,
    ), err
    assert not out.exists()
    assert not resume_state_file(out).parent.exists()


@pytest.mark.slow
def test_non_finite_loss_fails_the_cli(
    quick_project: QuickProject,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    args = train_args("full", out, "strategies.full.lr=1e30")
    proc = start_cli(args, quick_project.root, tmp_path / "logs", "nan")
    code = proc.wait()
    err = proc.err
    assert code == 1, err
    match = re.search(
        r"error: non-finite (loss|gradient norm) (\S+).* at epoch (\d+), step (\d+) "
        r"\(gradient norm ([^;]+); noticed at step (\d+), weight norm then (\S+)\)",
        err,
    )
    assert match, err
    assert match.group(2) in ("nan", "inf", "-inf")
    assert int(match.group(4)) <= int(match.group(6))  # first seen at or before noticed
    assert "Traceback" not in err
    assert not out.exists()


def test_at_chance_guard(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    sets = ("training.min_accuracy_over_chance=0.99", "training.epochs=1")
    assert run_main(train_args("linear", out, *sets)) == 1
    err = capsys.readouterr().err
    assert "is not above chance (0.2500) by more than" in err
    assert "training.min_accuracy_over_chance = 0.99" in err  # the margin's value, said
    assert not out.exists()


def test_at_chance_without_guard_only_warns(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "run"
    # lr ~0: nothing learns; the quick preset turns the guard off (null): a warning only.
    assert (
        run_main(train_args("linear", out, "strategies.linear.lr=1e-12", "training.epochs=1")) == 0
    )
    metrics = metrics_of(out)
    if metrics["at_chance"]:
        assert "at chance level" in caplog.text
    else:
        assert metrics["test"]["accuracy"] > 1 / QUICK_CLASSES


# -- determinism: separate processes ----------------------------------------------------------


@pytest.mark.slow
def test_same_seed_same_bits_other_seed_other_bits(
    subprocess_runs: SubprocessRuns,  # noqa: F811
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    # Two uninterrupted runs of the same command in two processes.
    a, b = subprocess_runs.reference["lora"], subprocess_runs.lora_twin
    assert_bitwise_equal(load_weights(a), load_weights(b))
    # metrics.json is fully deterministic: every byte.
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    preds_a = pq.read_table(a / "predictions.parquet").to_pydict()
    assert preds_a == pq.read_table(b / "predictions.parquet").to_pydict()
    # Every file the same bytes (SHA256SUMS lists them all; timings are in execution.json),
    # but run.json, whose command line names each run's own --out.
    sums_a, sums_b = read_sums(a), read_sums(b)
    assert sums_a.keys() == sums_b.keys() and "history.csv" in sums_a
    assert {k: v for k, v in sums_a.items() if k != "run.json"} == {
        k: v for k, v in sums_b.items() if k != "run.json"
    }
    info_a, info_b = (json.loads((r / "run.json").read_text()) for r in (a, b))
    assert info_a.pop("command") != info_b.pop("command")
    assert info_a == info_b
    adapter_a = load_file(str(a / "model" / "adapter" / "adapter_model.safetensors"))
    adapter_b = load_file(str(b / "model" / "adapter" / "adapter_model.safetensors"))
    assert_bitwise_equal(adapter_a, adapter_b)
    # Another seed, everything else the same: other weights.
    c = tmp_path / "seed1"
    assert run_main(train_args("lora", c, *LONG_RUN, seed=1)) == 0
    assert weights_differ(load_weights(a), load_weights(c))
    assert metrics_of(a)["test_loss"] != metrics_of(c)["test_loss"]
    # Re-evaluating a run of another process reproduces its logits exactly.
    assert run_main(["evaluate", a]) == 0
    assert json.loads((a / "evaluation.json").read_text())["max_abs_logit_difference"] == 0.0


# -- the run folder ---------------------------------------------------------------------------


def test_run_folder_contents(quick_lora_run: Path, quick_project: QuickProject) -> None:  # noqa: F811
    run = quick_lora_run
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert (run / "model" / "trainable.safetensors").is_file()
    assert (run / "model" / "adapter" / "adapter_model.safetensors").is_file()
    assert not resume_state_file(run).parent.exists()  # removed after a successful finish
    # Weights only as safetensors: no pickle anywhere.
    pickles = [p for p in run.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".ckpt")]
    assert pickles == []
    adapter = load_file(str(run / "model" / "adapter" / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in adapter) and any("lora_B" in k for k in adapter)

    history = history_of(run)
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["step"].tolist() == [3, 6, 9]
    assert history.notna().all().all()

    table = pq.read_table(run / "predictions.parquet")
    assert table.column_names == [
        "clip_id",
        "fold",
        "label",
        "prediction",
        "probabilities",
        "logits",
    ]
    study = load_study(quick_project.root / "config/config.yaml", "quick")
    cfg = study.config
    manifest_file = quick_project.root / study.manifest_path("synthetic")
    manifest = pd.read_csv(manifest_file, dtype=str)
    test_ids = sorted(manifest.loc[manifest["fold"] == "3", "clip_id"])
    assert sorted(table.column("clip_id").to_pylist()) == test_ids
    assert set(table.column("fold").to_pylist()) == {3}
    probs = np.stack(table.column("probabilities").to_numpy(zero_copy_only=False))
    logits = np.stack(table.column("logits").to_numpy(zero_copy_only=False))
    assert probs.shape == logits.shape == (len(test_ids), QUICK_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    predictions = np.array(table.column("prediction").to_pylist())
    assert (probs.argmax(axis=1) == predictions).all()
    labels = dict(zip(manifest["clip_id"], manifest["label"].astype(int), strict=True))
    stored_labels = table.column("label").to_pylist()
    assert stored_labels == [labels[c] for c in table.column("clip_id").to_pylist()]

    metrics = metrics_of(run)
    for key in (
        "best_epoch",
        "selected_by",
        "trainable_params",
        "total_params",
        "trainable_percent",
        "test",
    ):
        assert key in metrics, key
    test = metrics["test"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix"):
        assert key in test, key
    assert len(test["per_class"]) == QUICK_CLASSES
    confusion = np.array(test["confusion_matrix"])
    assert confusion.shape == (QUICK_CLASSES, QUICK_CLASSES)
    assert confusion.sum() == len(test_ids)
    assert test["accuracy"] == pytest.approx(float((predictions == stored_labels).mean()))

    info = json.loads((run / "run.json").read_text())
    assert set(info["git"]) == {"commit", "dirty"}
    for key in ("python", "torch", "transformers", "peft", "numpy"):
        assert isinstance(info["versions"][key], str), key
    assert info["versions"]["torch"] == torch.__version__
    assert info["hardware"]["device"] == "cpu"
    assert info["hardware"]["threads"] == 1  # the quick preset's training.threads
    assert info["seed"] == 0 and info["run"]["seed"] == 0
    # The resolved config, whole but for the trackers' settings (a view of the run, not part
    # of it: tests/test_tracking.py).
    expected = {k: v for k, v in json.loads(json.dumps(cfg)).items() if k != "tracking"}
    assert info["config"] == expected
    assert info["parameters"] == {
        "trainable": metrics["trainable_params"],
        "total": metrics["total_params"],
    }
    # Timings are this machine's, outside what identical runs share.
    assert not {"wall_seconds", "training_seconds", "peak_memory"} & set(info)
    execution = json.loads((run / "execution.json").read_text())
    assert execution["wall_seconds"] > 0 and execution["training_seconds"] > 0
    assert execution["peak_memory"]["host_rss_mb"] > 0
    assert [e["epoch"] for e in execution["epochs"]] == [1, 2, 3]
    assert all(e["seconds"] > 0 and e["samples_per_s"] > 0 for e in execution["epochs"])
    verify_run_folder(run)  # SHA256SUMS covers every other file
    assert set(read_sums(run)) == {
        p.relative_to(run).as_posix()
        for p in run.rglob("*")
        if p.is_file() and p.name not in ("SHA256SUMS", "execution.json")
    }
    assert info["run"]["pretrained"] == "results/quick/pretrain/tiny-ast/pretrained"
    # What was enforced, not only asked for: on the CPU, every operation, bitwise.
    assert info["deterministic"]["requested"] is True and info["deterministic"]["bitwise"]
    assert info["deterministic"]["enforced"].startswith("every operation")
    # The exact data and weights the run started from.
    assert info["data"]["manifest_sha256"] == file_sha256(manifest_file)
    assert info["data"]["rows"] == len(manifest)
    weights = quick_project.root / info["run"]["pretrained"]
    assert info["weights"]["kind"] == "folder"
    assert info["weights"]["files"]["model.safetensors"] == file_sha256(
        weights / "model.safetensors"
    )
    assert set(info["weights"]["files"]) == {"config.json", "model.safetensors"}


def test_cache_of_another_manifest_is_refused(
    quick_project: QuickProject,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The manifest on disk changed after the cache was built (a clip dropped by hand): the
    # cache no longer holds this data, and training says so instead of using it.
    project = tmp_path / "project"
    shutil.copytree(quick_project.root, project)
    monkeypatch.chdir(project)
    study = load_study("config/config.yaml", "quick")
    manifest, cache = study.manifest_path("synthetic"), study.cache_path("synthetic")
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:-1]))
    out = project / "run"
    assert run_main(train_args("linear", out)) == 1
    err = capsys.readouterr().err
    assert f"{cache}: built from another manifest than {manifest}" in err
    assert "audiopetl cache synthetic --force" in err
    assert not out.exists()


# -- real audio -------------------------------------------------------------------------------


@needs_fsdd
def test_real_audio_folder_dataset(
    quick_project: QuickProject,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    restore_torch_globals: None,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 3 speakers x digits 0-4 x 5 takes; labels and speakers (-> folds) from the file names.
    audio = tmp_path / "recordings"
    audio.mkdir()
    for speaker in ("george", "jackson", "lucas"):
        for digit in range(5):
            for take in range(5):
                name = f"{digit}_{speaker}_{take}.wav"
                (audio / name).symlink_to(FSDD / name)
    project = tmp_path / "project"
    project.mkdir()
    (project / "config").symlink_to(quick_project.root / "config", target_is_directory=True)
    monkeypatch.chdir(project)
    sets = [
        "--set",
        f"datasets.fsdd.folder.root={audio}",
        "--set",
        "datasets.fsdd.features.target_length=64",
    ]
    assert run_main(["fetch", "fsdd", *QUICK, *sets]) == 0, capsys.readouterr().err
    assert run_main(["cache", "fsdd", *QUICK, *sets]) == 0, capsys.readouterr().err
    (manifest_file,) = (project / "data" / "raw").glob("fsdd-*/manifest.csv")
    manifest = pd.read_csv(manifest_file, dtype=str)
    assert len(manifest) == 75
    assert sorted(manifest["label_name"].unique()) == ["0", "1", "2", "3", "4"]
    assert manifest.groupby("fold")["group"].nunique().tolist() == [1, 1, 1]

    out = tmp_path / "fsdd-run"
    pretrained = quick_project.root / "results/quick/pretrain/tiny-ast/pretrained"
    args = train_args("linear", out, fold=1, dataset="fsdd")
    args += [*sets, "--set", "training.epochs=2", "--pretrained", str(pretrained)]
    assert run_main(args) == 0, capsys.readouterr().err
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert (out / "model" / "trainable.safetensors").is_file()
    metrics = metrics_of(out)
    assert metrics["epochs_run"] == 2 and metrics["test"]["n"] == 25
    assert math.isfinite(metrics["test_loss"])
    history = history_of(out)
    assert np.isfinite(history[["train_loss", "val_loss", "val_accuracy"]].to_numpy()).all()
    assert np.array(metrics["test"]["confusion_matrix"]).shape == (5, 5)
    run = json.loads((out / "run.json").read_text())["run"]
    assert run["splits"] == {"train": [3], "val": [2], "test": [1]}
