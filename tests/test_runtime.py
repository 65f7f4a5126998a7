"""How a run computes (audiopetl.training.runtime): precision, features on the device, the fused
optimizer, torch.compile, deferred reading of losses. What ran is recorded in run.json, and none
of these choices changes what is learned beyond the tolerance stated here.

There is no GPU on the test machines: the CUDA branches of `resolve` are checked with the two
hardware queries they make replaced; the CUDA path itself is what `benchmarks/gpu_study.py`
exercises on a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from training_helpers import (  # noqa: F401
    CONFIG_DIR,
    assert_bitwise_equal,
    in_quick_project,
    load_weights,
    quick_lora_run,
    quick_project,
    restore_torch_globals,
    run_main,
    train_args,
)

from audiopetl.core import compat, devices
from audiopetl.core.errors import TrainingError
from audiopetl.core.settings import TrainingSettings
from audiopetl.study import Study, load_study
from audiopetl.training import runtime
from audiopetl.training.evaluate import precision_of

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
# bf16 keeps 8 significant bits: 2^-8 ~ 3.9e-3 relative per rounding. Averaged over a batch and
# an epoch the losses of a bf16 run stay within one such rounding of the fp32 run's on the quick
# preset (measured: at most 4e-4 with torch 2.x over full, LoRA, the Conformer adapter and
# linear probing; 2.0e-3 with torch 1.13 on an AMD EPYC, whose CPU autocast rounds more to bf16).
BF16_LOSS_RTOL = 2.0**-8


def quick_study() -> Study:
    return load_study(CONFIG_DIR / "config.yaml", "quick")


def settings(**changes: Any) -> TrainingSettings:
    base = {
        "precision": "auto",
        "tf32": True,
        "data_on_device": "auto",
        "fused_optimizer": "auto",
        "compile": False,
        "log_every_steps": 50,
    }
    return quick_study().training("lora").replace(**{**base, **changes})


def run_json(run: Path) -> dict[str, Any]:
    return json.loads((run / "run.json").read_text())


def logits_of(run: Path) -> np.ndarray:
    table = pq.read_table(run / "predictions.parquet")
    return np.stack(table.column("logits").to_numpy(zero_copy_only=False))


# -- resolving the config on a machine --------------------------------------------------------


def test_auto_on_the_cpu_is_plain_fp32() -> None:
    chosen = runtime.resolve(settings(), CPU, "sdpa", feature_bytes=10**6)
    assert chosen.record() == {
        "precision": "fp32",
        "precision_requested": "auto",
        "grad_scaler": False,
        "tf32": False,  # a CUDA setting: not claimed on the CPU
        "attention": "sdpa",
        "data_on_device": False,
        "fused_optimizer": False,
        "compile": False,
        "log_every_steps": 50,
        "streamed": False,  # the features in memory unless the loader streamed them
        "gradient_checkpointing": False,  # set by the trainer once the model is built
    }
    assert chosen.amp_dtype is None
    assert runtime.resolve(settings(precision="bf16"), CPU, "eager", 0).amp_dtype is torch.bfloat16


def test_impossible_requests_are_errors() -> None:
    with pytest.raises(TrainingError, match=r"training\.precision fp16 needs a CUDA device"):
        runtime.resolve(settings(precision="fp16"), CPU, "sdpa", 0)
    if devices.fused_adamw_supported(CPU):
        assert runtime.resolve(settings(fused_optimizer=True), CPU, "sdpa", 0).fused_optimizer
    else:  # torch 1.13 (legacy)
        with pytest.raises(TrainingError, match="has no fused AdamW on cpu"):
            runtime.resolve(settings(fused_optimizer=True), CPU, "sdpa", 0)
    if compat.HAS_COMPILE:
        assert runtime.resolve(settings(compile=True), CPU, "sdpa", 0).compile
    else:
        with pytest.raises(TrainingError, match=r"training.compile needs torch >= 2.0"):
            runtime.resolve(settings(compile=True), CPU, "sdpa", 0)


class _Properties:
    total_memory = 12 * 2**30  # a 12 GB card


@pytest.mark.parametrize(
    ("bf16", "feature_bytes", "precision", "on_device"),
    [
        (True, 262 * 2**20, "bf16", True),  # an ESC-50 fold set in float16 on an Ampere card
        (False, 262 * 2**20, "fp16", True),  # a V100: fp16 with loss scaling
        (True, 4 * 2**30, "bf16", False),  # more than a quarter of the card: stays on the host
    ],
)
def test_auto_on_cuda(
    bf16: bool,
    feature_bytes: int,
    precision: str,
    on_device: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The two hardware queries `resolve` makes, answered as a GPU would.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: _Properties())
    chosen = runtime.resolve(settings(), CUDA, "sdpa", feature_bytes)
    assert chosen.precision == precision
    assert chosen.grad_scaler is (precision == "fp16")
    assert chosen.tf32 is True
    assert chosen.data_on_device is on_device
    assert chosen.fused_optimizer is devices.fused_adamw_supported(CUDA)


def test_evaluation_scores_in_the_precision_the_run_used() -> None:
    def info(used: str | None) -> dict[str, Any]:
        return {"runtime": None if used is None else {"precision": used}, "run": {"strategy": "s"}}

    run = (
        quick_study()
        .run("synthetic", "tiny-ast", "lora", 3, 0, out=Path("run"), pretrained=None)
        .with_training(device="cpu")
    )
    assert precision_of(info("bf16"), run) == "bf16"
    # A fp16 GPU run scored again on a CPU: fp16 autocast does not exist there.
    assert precision_of(info("fp16"), run) == "fp32"
    assert precision_of(info(None), run) is None  # a run from before run.json said


# -- real runs of the quick preset --------------------------------------------------------------


def test_run_json_records_how_the_run_computed(quick_lora_run: Path) -> None:  # noqa: F811
    recorded = run_json(quick_lora_run)["runtime"]
    assert recorded == {
        "precision": "fp32",
        "precision_requested": "auto",
        "grad_scaler": False,
        "tf32": False,
        "attention": compat.attention_implementation("sdpa"),  # eager on transformers 4.28
        "data_on_device": False,
        "fused_optimizer": False,
        "compile": False,
        "log_every_steps": 50,
        "streamed": False,
        "gradient_checkpointing": False,
    }


def test_device_path_and_per_step_reading_give_the_same_run(
    quick_lora_run: Path,  # noqa: F811
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Features indexed where they were moved once, and losses read every step instead of
    every 50: the same weights, predictions and history, bit for bit."""
    out = tmp_path / "run"
    sets = ("training.data_on_device=true", "training.log_every_steps=1")
    assert run_main(train_args("lora", out, *sets)) == 0
    assert run_json(out)["runtime"]["data_on_device"] is True
    assert_bitwise_equal(load_weights(out), load_weights(quick_lora_run))
    assert logits_of(out).tobytes() == logits_of(quick_lora_run).tobytes()
    # history.csv also holds each epoch's seconds: everything else must match.
    columns = ["epoch", "step", "train_loss", "val_loss", "val_accuracy", "val_metric", "lr"]
    ours, theirs = (pd.read_csv(run / "history.csv")[columns] for run in (out, quick_lora_run))
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True)


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_bf16_agrees_with_fp32_on_the_cpu(
    strategy: str,
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = tmp_path / precision
        args = train_args(strategy, runs[precision], f"training.precision={precision}")
        assert run_main(args) == 0
        assert run_json(runs[precision])["runtime"]["precision"] == precision
    fp32, bf16 = (pd.read_csv(runs[p] / "history.csv") for p in ("fp32", "bf16"))
    for column in ("train_loss", "val_loss"):
        np.testing.assert_allclose(bf16[column], fp32[column], rtol=BF16_LOSS_RTOL)
    # Not equal either: autocast really ran in bf16.
    assert not np.array_equal(bf16["train_loss"], fp32["train_loss"])
    test = {p: json.loads((runs[p] / "metrics.json").read_text())["test_loss"] for p in runs}
    assert test["bf16"] == pytest.approx(test["fp32"], rel=BF16_LOSS_RTOL)


def trains_with(setting: str, supported: bool, refusal: str, out: Path, err: Any) -> bool:
    """Train LoRA with a setting the installed torch may lack. Where it lacks it (torch 1.13):
    a clean one-line error, nothing written, and False."""
    code = run_main(train_args("lora", out, setting))
    if not supported:
        assert code == 1
        assert refusal in err.readouterr().err
        assert not out.exists()
        return False
    assert code == 0
    return True


def test_fused_optimizer_where_torch_has_it(
    quick_lora_run: Path,  # noqa: F811
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    supported = devices.fused_adamw_supported(CPU)
    refusal = "training.fused_optimizer: torch 1.13"
    if not trains_with("training.fused_optimizer=true", supported, refusal, out, capsys):
        return
    assert run_json(out)["runtime"]["fused_optimizer"] is True
    fused = pd.read_csv(out / "history.csv")
    plain = pd.read_csv(quick_lora_run / "history.csv")
    np.testing.assert_allclose(fused["train_loss"], plain["train_loss"], rtol=1e-5)


@pytest.mark.slow
def test_compiled_forward_agrees_with_eager(
    quick_lora_run: Path,  # noqa: F811
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    refusal = "training.compile needs torch >= 2.0"
    if not trains_with("training.compile=true", compat.HAS_COMPILE, refusal, out, capsys):
        return
    assert run_json(out)["runtime"]["compile"] is True
    compiled = pd.read_csv(out / "history.csv")
    eager = pd.read_csv(quick_lora_run / "history.csv")
    # Inductor fuses and reorders float operations: close, not bitwise (measured 3e-8).
    np.testing.assert_allclose(compiled["train_loss"], eager["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(logits_of(out), logits_of(quick_lora_run), atol=1e-4)
