"""Warm start (audiopetl.process.warm): a command run in a fork of a server that imported everything
already gives the same run as a cold process, gets the signals sent to the command, dies with
it, and is not used where it must not be (a SLURM job, switched off)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from training_helpers import (  # noqa: F401
    QuickProject,
    assert_bitwise_equal,
    load_weights,
    quick_lora_run,
    quick_project,
    resume_state_file,
    train_args,
    wait_for_file,
)

from audiopetl.core import checksums
from audiopetl.process import warm

pytestmark = pytest.mark.slow


class Command:
    """`python -m audiopetl ARGS` as a workflow job starts it, with its timings recorded."""

    def __init__(self, root: Path, tmp: Path, args: list[str], **env: str) -> None:
        self.timings = tmp / f"timings-{time.monotonic_ns()}.jsonl"
        self.stderr = tmp / f"stderr-{time.monotonic_ns()}.txt"
        environment = {
            **os.environ,
            "AUDIOPETL_WARM": "1",
            "AUDIOPETL_TIMINGS": str(self.timings),
            "OMP_NUM_THREADS": "1",
            # No GPU for these jobs: warm start applies on a GPU machine's CPU jobs too.
            "CUDA_VISIBLE_DEVICES": "",
            **env,
        }
        with open(self.stderr, "wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "audiopetl", *args],
                cwd=root,
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def wait(self, timeout: float = 300) -> int:
        return self.popen.wait(timeout=timeout)

    @property
    def err(self) -> str:
        return self.stderr.read_text(errors="replace")

    def record(self) -> dict[str, Any]:
        (line,) = self.timings.read_text().splitlines()
        return json.loads(line)


def logits(run: Path) -> bytes:
    table = pq.read_table(run / "predictions.parquet")
    return np.stack(table.column("logits").to_numpy(zero_copy_only=False)).tobytes()


def test_warm_commands_give_the_cold_run(
    quick_project: QuickProject,  # noqa: F811
    quick_lora_run: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    servers = []
    for attempt in ("first", "second"):
        out = tmp_path / attempt
        command = Command(quick_project.root, tmp_path, train_args("lora", out))
        assert command.wait() == 0, command.err
        record = command.record()
        # Ran in a fork of a server, not in the process that was started.
        assert record["warm_server"] is not None
        assert record["pid"] != command.popen.pid
        servers.append(record["warm_server"])
        assert_bitwise_equal(load_weights(out), load_weights(quick_lora_run))
        assert logits(out) == logits(quick_lora_run)
        # Start-up counts from the command's own start, not from the fork.
        assert record["started"] <= record["first_step"] <= record["ended"]
    assert servers[0] == servers[1]  # the second found the first's server


def test_usage_errors_and_their_status_come_back(
    quick_project: QuickProject,  # noqa: F811
    tmp_path: Path,
) -> None:
    command = Command(quick_project.root, tmp_path, ["train", "--dataset", "synthetic"])
    assert command.wait() == 2
    assert "the following arguments are required: --model" in command.err


def long_run(root: Path, tmp_path: Path, **env: str) -> tuple[Command, Path]:
    out = tmp_path / "long"
    args = train_args("lora", out, "training.epochs=400")
    command = Command(root, tmp_path, args, **env)
    return command, out


def test_a_signal_to_the_command_reaches_its_warm_run(
    quick_project: QuickProject,  # noqa: F811
    tmp_path: Path,
) -> None:
    command, out = long_run(quick_project.root, tmp_path)
    wait_for_file(resume_state_file(out), command)
    command.popen.send_signal(signal.SIGTERM)
    assert command.wait() == 75, command.err
    assert "stopped on SIGTERM" in command.err
    assert resume_state_file(out).is_file()


def warm_children() -> set[int]:
    """Processes whose parent is a warm server."""
    servers, children = set(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue  # exited, not yet reaped
        if b"audiopetl.process.warm" in cmdline:
            servers.add(int(entry.name))
        children[int(entry.name)] = int(fields[1])
    return {pid for pid, parent in children.items() if parent in servers}


def test_killing_the_command_kills_its_warm_run(
    quick_project: QuickProject,  # noqa: F811
    tmp_path: Path,
) -> None:
    before = warm_children()
    command, out = long_run(quick_project.root, tmp_path)
    wait_for_file(resume_state_file(out), command)
    running = warm_children() - before
    assert len(running) == 1
    command.popen.kill()
    command.wait()
    deadline = time.monotonic() + 10
    while running & warm_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running & warm_children()


@pytest.mark.parametrize("env", [{"SLURM_JOB_ID": "1234"}, {"AUDIOPETL_WARM": "0"}])
def test_cold_where_warm_start_does_not_apply(
    env: dict[str, str],
    quick_project: QuickProject,  # noqa: F811
    tmp_path: Path,
) -> None:
    command = Command(quick_project.root, tmp_path, ["fetch", "synthetic", "--quiet"], **env)
    assert command.wait() == 0, command.err
    record = command.record()
    assert record["warm_server"] is None
    assert record["pid"] == command.popen.pid


def test_a_server_serves_one_code_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    key = warm.server_key()
    monkeypatch.setenv("PWD", "/elsewhere")  # differs between jobs; no import reads it
    assert warm.server_key() == key
    monkeypatch.setenv("AUDIOPETL_TEST_SETTING", "1")  # any other variable may change imports
    assert warm.server_key() != key
    monkeypatch.delenv("AUDIOPETL_TEST_SETTING")
    assert warm.server_key() == key
    monkeypatch.setattr(checksums, "code_fingerprint", lambda: "changed code")
    assert warm.server_key() != key


def test_never_where_a_gpu_is_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOPETL_WARM", "1")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: p == "/dev/nvidiactl" or real_exists(p))
    assert warm.gpu_visible() and not warm.wanted()  # an NVIDIA driver's device files
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # none of them for this job
    assert not warm.gpu_visible() and warm.wanted()
