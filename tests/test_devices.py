"""Where a run computes: `training.device` (auto: CUDA, then Apple's MPS, then the CPU) and what
each device decides (precision, the features on the device, fused AdamW, determinism).

There is no Mac here: the MPS branches are checked with the hardware queries they make
(``torch.cuda.is_available``, ``torch.backends.mps.is_available`` and ``is_macos_or_newer``,
``torch.mps.recommended_max_memory``) answered as an Apple-silicon Mac would, the way
tests/test_runtime.py checks the CUDA path. What the answers imply differs by torch release
(MPS autocast and fused AdamW came in 2.5 and 2.4; the legacy 1.13 has neither), so each
expectation is stated for the version under test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from packaging.version import Version
from training_helpers import CONFIG_DIR, restore_torch_globals  # noqa: F401

from audiopetl.core import devices
from audiopetl.core.errors import ConfigError, TrainingError
from audiopetl.core.settings import TrainingSettings
from audiopetl.study import load_study
from audiopetl.training import checkpoint, runtime
from audiopetl.training.determinism import make_deterministic, select_device
from audiopetl.training.evaluate import precision_of

MPS = torch.device("mps")
TORCH = Version(torch.__version__.split("+")[0])
MPS_AUTOCAST = Version("2.5") <= TORCH
MPS_FUSED = Version("2.4") <= TORCH
MPS_BUDGET = Version("2.5") <= TORCH  # torch.mps.recommended_max_memory
MAC_MEMORY = 36 * 2**30  # what Metal recommends on a 48 GB M4 Pro


def settings(**changes: Any) -> TrainingSettings:
    base = {"precision": "auto", "data_on_device": "auto", "fused_optimizer": "auto"}
    study = load_study(CONFIG_DIR / "config.yaml", "quick")
    return study.training("lora").replace(**{**base, **changes})


@pytest.fixture
def mac(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Answer torch's hardware queries as an Apple-silicon Mac on macOS ``major`` would."""

    def as_mac(major: int = 15) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
        # torch 1.13 has no is_macos_or_newer: there nothing asks it.
        monkeypatch.setattr(
            torch.backends.mps,
            "is_macos_or_newer",
            lambda want_major, want_minor: (major, 0) >= (want_major, want_minor),
            raising=False,
        )
        if MPS_BUDGET:
            monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: MAC_MEMORY)

    return as_mac


def test_auto_picks_cuda_then_mps_then_the_cpu(
    mac: Callable[[int], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert select_device("auto") == torch.device("cpu")  # this machine: no GPU of either kind
    with pytest.raises(TrainingError, match=r"training\.device is mps but torch sees no Apple"):
        select_device("mps")
    mac(15)
    assert select_device("auto") == MPS
    assert select_device("mps") == MPS
    assert select_device("cpu") == torch.device("cpu")  # asked for by name: the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a Mac would not, a PC
    assert select_device("auto") == torch.device("cuda")  # with both: CUDA first


def test_mps_is_a_valid_device_in_the_config() -> None:
    study = load_study(CONFIG_DIR / "config.yaml", "quick", ["training.device=mps"])
    assert study.training("lora").device == "mps"
    with pytest.raises(ConfigError, match=r"training\.device: 'metal' is not one of"):
        load_study(CONFIG_DIR / "config.yaml", "quick", ["training.device=metal"])


@pytest.mark.parametrize("macos", [15, 13])
def test_auto_on_a_mac(mac: Callable[[int], None], macos: int) -> None:
    mac(macos)
    small = 262 * 2**20  # an ESC-50 fold set in float16
    chosen = runtime.resolve(settings(), select_device("auto"), "sdpa", small)
    # bf16 where torch autocasts in it on MPS (torch >= 2.5 on macOS 14+), else fp32; fp16's
    # loss scaling is CUDA's, so auto never picks it here.
    assert chosen.precision == ("bf16" if MPS_AUTOCAST and macos >= 14 else "fp32")
    assert chosen.grad_scaler is False
    assert chosen.tf32 is False  # a CUDA setting
    assert chosen.fused_optimizer is MPS_FUSED
    # The features go to the GPU when they take at most a quarter of what Metal recommends.
    assert chosen.data_on_device is MPS_BUDGET
    large = runtime.resolve(settings(), MPS, "sdpa", MAC_MEMORY // 2)
    assert large.data_on_device is False


def test_impossible_requests_on_a_mac_are_errors(mac: Callable[[int], None]) -> None:
    mac(13)
    with pytest.raises(TrainingError, match=r"training\.precision fp16 needs a CUDA device"):
        runtime.resolve(settings(precision="fp16"), MPS, "sdpa", 0)
    with pytest.raises(TrainingError, match=r"bf16 on MPS needs torch >= 2\.5 on macOS 14"):
        runtime.resolve(settings(precision="bf16"), MPS, "sdpa", 0)
    if MPS_FUSED:
        assert runtime.resolve(settings(fused_optimizer=True), MPS, "sdpa", 0).fused_optimizer
    else:
        with pytest.raises(TrainingError, match="has no fused AdamW on mps"):
            runtime.resolve(settings(fused_optimizer=True), MPS, "sdpa", 0)
    # Asked for explicitly, the features go to the device whatever the budget says.
    assert runtime.resolve(settings(data_on_device=True), MPS, "sdpa", 2**40).data_on_device


def test_a_run_is_scored_in_a_precision_the_mac_has(mac: Callable[[int], None]) -> None:
    mac(13)  # no bf16 autocast on MPS here
    run = type("Run", (), {"training": settings(device="mps")})()
    assert precision_of({"runtime": {"precision": "bf16"}}, run) == "fp32"  # type: ignore[arg-type]
    assert precision_of({"runtime": {"precision": "fp16"}}, run) == "fp32"  # type: ignore[arg-type]
    assert precision_of({"runtime": {"precision": "fp32"}}, run) == "fp32"  # type: ignore[arg-type]
    mac(15)
    expected = "bf16" if MPS_AUTOCAST else "fp32"
    assert precision_of({"runtime": {"precision": "bf16"}}, run) == expected  # type: ignore[arg-type]


def test_determinism_on_mps_is_where_kernels_allow(
    mac: Callable[[int], None],
    restore_torch_globals: None,  # noqa: F811
) -> None:
    mac(15)
    record = make_deterministic(0, 1, True, MPS)
    assert record["bitwise"] is False  # some MPS kernels only warn
    assert "on MPS some kernels have no deterministic variant" in record["enforced"]
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    cpu = make_deterministic(0, 1, True, torch.device("cpu"))
    assert cpu["bitwise"] is True
    assert not torch.is_deterministic_algorithms_warn_only_enabled()


def test_a_resume_state_carries_the_mps_generator(
    mac: Callable[[int], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    mac(15)
    if not devices.MPS_GENERATOR:  # torch 1.13: no torch.mps, nothing to save
        assert "mps" not in checkpoint.rng_state()
        return
    generator = {"state": torch.arange(4, dtype=torch.uint8)}
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: generator["state"].clone())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda s: generator.update(state=s))
    state = checkpoint.rng_state()
    assert torch.equal(state["mps"], torch.arange(4, dtype=torch.uint8))
    generator["state"] = torch.zeros(4, dtype=torch.uint8)
    checkpoint.set_rng_state(state)
    assert torch.equal(generator["state"], torch.arange(4, dtype=torch.uint8))


def test_device_memory_is_what_torch_holds_there(mac: Callable[[int], None]) -> None:
    assert devices.device_memory_bytes(torch.device("cpu")) is None
    mac(15)
    if hasattr(torch, "mps") and hasattr(torch.mps, "current_allocated_memory"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.mps, "current_allocated_memory", lambda: 123)
            assert devices.device_memory_bytes(MPS) == 123
    else:
        assert devices.device_memory_bytes(MPS) is None
