"""Interrupted runs: killed (SIGKILL) or asked to stop (SIGTERM, SIGUSR1) part-way, then run
again with the same command, end bitwise identical to runs never interrupted. Resume states
from other settings, data or starting weights are set aside, never continued; a resume file
carrying pickled code is refused unexecuted."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from training_helpers import (  # noqa: F401
    QUICK,
    QUICK_BATCH,
    QUICK_CLIPS_PER_FOLD,
    QuickProject,
    SubprocessRuns,
    assert_bitwise_equal,
    in_quick_project,
    load_weights,
    quick_project,
    restore_torch_globals,
    resume_state_file,
    run_main,
    subprocess_runs,
    train_args,
)

from audiopetl.core.errors import Stopped, TrainingError
from audiopetl.study import Study, load_study
from audiopetl.training import checkpoint
from audiopetl.training.state import TrainState
from audiopetl.training.trainer import Trainer

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
]
STEPS_PER_EPOCH = -(-QUICK_CLIPS_PER_FOLD // QUICK_BATCH)


def assert_same_as_uninterrupted(run: Path, reference: Path) -> None:
    assert_bitwise_equal(load_weights(run), load_weights(reference))
    assert (run / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    assert (run / "predictions.parquet").is_file()


@pytest.mark.slow
def test_sigkill_then_rerun_equals_the_uninterrupted_run(
    subprocess_runs: SubprocessRuns,  # noqa: F811
) -> None:
    run = subprocess_runs.interrupted["SIGKILL"]
    assert run.first_code == -9  # killed: nothing could be saved at that moment
    assert run.state_after_stop and not run.run_dir_after_stop
    assert run.stopped_at is not None and run.stopped_at["epoch"] >= 1
    assert run.second_code == 0, run.second_err
    assert "resuming" in run.second_err
    assert_same_as_uninterrupted(run.out, subprocess_runs.reference[run.strategy])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGUSR1", "stream-SIGTERM"])
def test_signal_saves_exits_75_and_the_rerun_resumes(
    how: str,
    subprocess_runs: SubprocessRuns,  # noqa: F811
) -> None:
    run = subprocess_runs.interrupted[how]
    assert run.first_code == Stopped.code == 75
    assert run.state_after_stop, "no resume state saved"
    assert not run.run_dir_after_stop, "an interrupted run must not leave a run folder"
    # Saved at a step boundary inside an epoch after the first.
    stopped = run.stopped_at
    assert stopped is not None and 1 <= stopped["epoch"] < 8
    assert stopped["global_step"] == stopped["epoch"] * STEPS_PER_EPOCH + stopped["batch_pos"]
    assert run.second_code == 0, run.second_err
    assert "resuming" in run.second_err
    assert f"at epoch {stopped['epoch'] + 1}, batch {stopped['batch_pos']}" in run.second_err
    assert_same_as_uninterrupted(run.out, subprocess_runs.reference[run.strategy])
    streamed = json.loads((run.out / "run.json").read_text())["runtime"]["streamed"]
    assert streamed is how.startswith("stream")  # the reference held its features in memory


@pytest.mark.slow
def test_resume_folder_is_removed_after_success(
    subprocess_runs: SubprocessRuns,  # noqa: F811
) -> None:
    finished = [
        *subprocess_runs.reference.values(),
        subprocess_runs.lora_twin,
        *(run.out for run in subprocess_runs.interrupted.values()),
    ]
    for out in finished:
        assert (out / "metrics.json").is_file(), out
        assert not resume_state_file(out).parent.exists(), out
        history = json.loads((out / "metrics.json").read_text())
        assert history["epochs_run"] == 8


def save_stale_state(out: Path, study: Study, pretrained: str) -> None:
    """A resume state of the run three epochs in: were it continued, no epoch would train."""
    trainer = Trainer(
        study.run("synthetic", "tiny-ast", "lora", 3, 0, out=out, pretrained=pretrained)
    )
    trainer.load_data()
    trainer.build()
    trainer.save_resume(TrainState(epoch=3, global_step=9))
    assert resume_state_file(out).is_file()


def assert_set_aside_and_fresh(out: Path, what: str, caplog: pytest.LogCaptureFixture) -> None:
    stale = out.parent / f".{out.name}.resume.stale"
    assert f"was saved from other {what}; set aside as {stale}, starting afresh" in caplog.text
    assert "resuming" not in caplog.text
    assert (stale / checkpoint.STATE_FILE).is_file()  # kept for inspection, not continued
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3  # all three epochs trained, none skipped
    assert not resume_state_file(out).parent.exists()


PRETRAINED = "results/quick/pretrain/tiny-ast/pretrained"


def test_resume_state_of_other_settings_is_set_aside(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "run"
    save_stale_state(
        out, load_study("config/config.yaml", "quick", ["strategies.lora.lr=0.02"]), PRETRAINED
    )
    assert run_main(train_args("lora", out)) == 0
    assert_set_aside_and_fresh(out, "settings", caplog)


def test_resume_state_from_other_weights_is_set_aside(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The same folder name and settings, other starting weights: one value changed.
    weights = tmp_path / "pretrained"
    shutil.copytree(PRETRAINED, weights)
    state = load_file(weights / "model.safetensors")
    name = next(iter(state))
    state[name] = state[name] + 1e-3
    save_file(state, weights / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "run"
    save_stale_state(out, load_study("config/config.yaml", "quick"), PRETRAINED)
    assert run_main([*train_args("lora", out), "--pretrained", weights]) == 0
    assert_set_aside_and_fresh(out, "weights", caplog)


def test_resume_state_from_other_data_is_set_aside(
    quick_project: QuickProject,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    restore_torch_globals: None,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    project = tmp_path / "project"
    shutil.copytree(quick_project.root, project, symlinks=True)
    monkeypatch.chdir(project)
    study = load_study("config/config.yaml", "quick")
    out = tmp_path / "run"
    save_stale_state(out, study, PRETRAINED)
    # The same dataset settings, other data: a clip of a training fold dropped from the
    # manifest, and the cache rebuilt from it.
    manifest = study.manifest_path("synthetic")
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:2] + lines[3:]))
    assert run_main(["cache", "synthetic", *QUICK, "--force"]) == 0
    assert run_main(train_args("lora", out)) == 0
    assert_set_aside_and_fresh(out, "data", caplog)


class _Marker:
    """Unpickling this would create a file: the code a malicious checkpoint carries."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def _plant_pickle(state_file: Path, marker: Path) -> None:
    state_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": checkpoint.FORMAT, "identity": "x", "evil": _Marker(marker)}, state_file)


def test_pickled_code_in_a_resume_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    state_file = tmp_path / "resume" / checkpoint.STATE_FILE
    _plant_pickle(state_file, marker)
    with pytest.raises(TrainingError, match="refused to load") as err:
        checkpoint.load_state(state_file)
    assert str(state_file) in str(err.value)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(state_file, weights_only=True)
    assert not marker.exists()
    # The planted file is real: an unrestricted load runs its code (here: harmless).
    torch.load(state_file, weights_only=False)
    assert marker.exists()


def test_pickled_code_in_a_resume_file_fails_the_cli(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    marker = tmp_path / "pwned"
    _plant_pickle(resume_state_file(out), marker)
    assert run_main(train_args("lora", out)) == 1
    err = capsys.readouterr().err
    assert str(resume_state_file(out)) in err and "refused to load" in err
    assert not marker.exists()
    assert not out.exists()


def test_unreadable_resume_file_is_a_training_error(tmp_path: Path) -> None:
    state_file = tmp_path / checkpoint.STATE_FILE
    state_file.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match=str(state_file)):
        checkpoint.load_state(state_file)
    torch.save({"format": 999}, state_file)
    with pytest.raises(TrainingError, match="not an audiopetl resume checkpoint"):
        checkpoint.load_state(state_file)


def test_rng_state_round_trips(tmp_path: Path) -> None:
    import random

    import numpy as np

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = checkpoint.rng_state()
    checkpoint.save_state(tmp_path, {"rng": state})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    checkpoint.set_rng_state(checkpoint.load_state(tmp_path / checkpoint.STATE_FILE)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert (np.random.rand(3) == expected[1]).all()
    assert random.random() == expected[2]
