"""Shared pieces of the training tests: one prepared quick project, the CLI in-process and as a
subprocess, and tensor comparisons.

The quick project (the synthetic target and source datasets fetched and cached, the tiny AST
pretrained on the source task) is built once per test session in a temporary folder; tests
read it and write their runs under their own ``--out`` folders.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from audiopetl.cli.main import main

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "config"
QUICK = ("--experiment", "quick", "--quiet")
RUN_FILES = (
    "history.csv",
    "metrics.json",
    "predictions.parquet",
    "run.json",
    "SHA256SUMS",
    "execution.json",
)
HISTORY_COLUMNS = [
    "epoch",
    "step",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_metric",
    "lr",
]
# Quick preset: 4 classes x 3 folds x 6 clips; a train_val_test split trains on one fold.
QUICK_CLASSES = 4
QUICK_CLIPS_PER_FOLD = 24
QUICK_BATCH = 8

# Python code for `python -c`: the CLI with a pause before every optimizer step, so a test can
# interrupt a run part-way. The pause changes timing only, never a number.
SLOW_CLI = """
import sys, time
from audiopetl.training import trainer as train
from audiopetl.cli.main import main
_step = train.Trainer.train_step
def _slow(self, chunk, state):
    time.sleep(float(sys.argv[1]))
    return _step(self, chunk, state)
train.Trainer.train_step = _slow
raise SystemExit(main(sys.argv[2:]))
"""


@dataclass(frozen=True)
class QuickProject:
    root: Path  # a project folder: config/, data/, results/quick/pretrain/


_PROJECT: QuickProject | None = None


def run_main(args: Sequence[object]) -> int:
    """``audiopetl ARGS`` in-process, in the current directory; the exit status."""
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)


@contextlib.contextmanager
def torch_globals_restored() -> Iterator[None]:
    """Training sets torch's thread count and deterministic mode for the whole process."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.fixture
def restore_torch_globals() -> Iterator[None]:
    with torch_globals_restored():
        yield


def build_quick_project(root: Path) -> QuickProject:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(CONFIG_DIR, root / "config")
    sink = io.StringIO()
    with (
        contextlib.chdir(root),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
        torch_globals_restored(),
    ):
        for dataset in ("synthetic", "synthetic-source"):
            assert run_main(("fetch", dataset, *QUICK)) == 0, sink.getvalue()
            assert run_main(("cache", dataset, *QUICK)) == 0, sink.getvalue()
        assert run_main(("pretrain", "--model", "tiny-ast", *QUICK)) == 0, sink.getvalue()
    assert (root / "results/quick/pretrain/tiny-ast/pretrained/model.safetensors").is_file()
    return QuickProject(root)


@pytest.fixture(scope="session")
def quick_project(tmp_path_factory: pytest.TempPathFactory) -> QuickProject:
    """The prepared quick project, built once per session (shared by every module that
    imports this fixture: the cache is this module's global). Read-only for tests."""
    global _PROJECT
    if _PROJECT is None:
        _PROJECT = build_quick_project(tmp_path_factory.mktemp("quick-train") / "project")
    return _PROJECT


@pytest.fixture
def in_quick_project(
    quick_project: QuickProject, monkeypatch: pytest.MonkeyPatch, restore_torch_globals: None
) -> Path:
    """The prepared project as the current directory (torch globals restored afterwards)."""
    monkeypatch.chdir(quick_project.root)
    return quick_project.root


def run_in(root: Path, args: Sequence[object]) -> tuple[int, str, str]:
    """``audiopetl ARGS`` in-process in ``root`` for fixtures wider than a test: exit status,
    stdout, stderr (log records go to pytest's log capture)."""
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.chdir(root),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        torch_globals_restored(),
    ):
        code = run_main(args)
    return code, out.getvalue(), err.getvalue()


_LORA_RUN: Path | None = None


@pytest.fixture(scope="session")
def quick_lora_run(quick_project: QuickProject, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished LoRA run (quick defaults, test fold 3, seed 0); read-only for tests."""
    global _LORA_RUN
    if _LORA_RUN is None:
        out = tmp_path_factory.mktemp("lora-run") / "run"
        code, _, err = run_in(quick_project.root, train_args("lora", out))
        assert code == 0, err
        _LORA_RUN = out
    return _LORA_RUN


def train_args(
    strategy: str,
    out: Path,
    *sets: str,
    fold: int = 3,
    seed: int = 0,
    dataset: str = "synthetic",
) -> list[str]:
    args = [
        "train",
        *QUICK,
        "--dataset",
        dataset,
        "--model",
        "tiny-ast",
        "--strategy",
        strategy,
        "--fold",
        str(fold),
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    for item in sets:
        args += ["--set", item]
    return args


def resume_state_file(out: Path) -> Path:
    return out.parent / f".{out.name}.resume" / "state.pt"


@dataclass
class Proc:
    """A CLI subprocess whose output goes to files (no pipe can fill up and block it)."""

    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def wait(self, timeout: float = 300) -> int:
        return self.popen.wait(timeout=timeout)

    @property
    def err(self) -> str:
        return self.stderr.read_text(errors="replace")

    @property
    def out(self) -> str:
        return self.stdout.read_text(errors="replace")


def start_cli(
    args: Sequence[object], cwd: Path, logs: Path, name: str, delay: float | None = None
) -> Proc:
    """Start ``python -m audiopetl ARGS`` (or the slowed CLI when ``delay`` is given)."""
    logs.mkdir(parents=True, exist_ok=True)
    stdout, stderr = logs / f"{name}.out", logs / f"{name}.err"
    if delay is None:
        cmd = [sys.executable, "-m", "audiopetl", *map(str, args)]
    else:
        cmd = [sys.executable, "-c", SLOW_CLI, str(delay), *map(str, args)]
    # One OpenMP thread outside training too: several of these run side by side on few cores.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(stdout, "wb") as out_f, open(stderr, "wb") as err_f:
        popen = subprocess.Popen(cmd, cwd=cwd, stdout=out_f, stderr=err_f, env=env)
    return Proc(popen, stdout, stderr)


def wait_for_file(path: Path, proc: Proc, timeout: float = 120) -> None:
    """Poll until ``path`` exists; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.popen.poll() is not None:
            raise AssertionError(
                f"process ended (status {proc.popen.returncode}) before {path} appeared:\n"
                f"{proc.err[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.popen.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def load_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "trainable.safetensors"))


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        # Bytes, not values: -0.0 == 0.0 and NaN != NaN would hide or invent differences.
        assert a[name].numpy().tobytes() == b[name].numpy().tobytes(), name


def weights_differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[n], b[n]) for n in a)


# -- uninterrupted and interrupted runs in subprocesses, shared by the determinism and resume
# tests. Eight epochs so an interrupted run has time to be interrupted; SpecAugment and mixup
# so the random number generators' states matter.
LONG_RUN = (
    "training.epochs=8",
    "training.specaugment.freq_mask=8",
    "training.specaugment.time_mask=8",
    "training.mixup_alpha=0.4",
)
STEP_DELAY = 0.1  # seconds before each step of an interrupted run (3 steps an epoch)


@dataclass
class Interrupted:
    """A run stopped part-way (``how``), then run again with the same command."""

    how: str
    strategy: str
    out: Path
    first_code: int  # exit status of the interrupted process
    state_after_stop: bool  # the resume state existed after it ended
    run_dir_after_stop: bool  # a run folder existed after it ended
    stopped_at: dict[str, int] | None  # epoch/batch_pos/global_step in the saved state
    second_code: int
    second_err: str


@dataclass
class SubprocessRuns:
    reference: dict[str, Path]  # strategy -> an uninterrupted run (seed 0)
    lora_twin: Path  # a second uninterrupted lora run, same seed, another process
    # "SIGKILL" | "SIGTERM" | "SIGUSR1" | "stream-SIGTERM" (a streamed run's SIGTERM)
    interrupted: dict[str, Interrupted]


_RUNS: SubprocessRuns | None = None


def _stopped_at(state_file: Path) -> dict[str, int] | None:
    from audiopetl.training.checkpoint import load_state

    if not state_file.is_file():
        return None
    train = load_state(state_file)["train"]
    return {k: int(train[k]) for k in ("epoch", "batch_pos", "global_step")}


def make_subprocess_runs(root: Path, work: Path) -> SubprocessRuns:
    import signal

    logs = work / "logs"
    plain = {
        "lora": ("lora", work / "lora-a"),
        "lora-twin": ("lora", work / "lora-b"),
        "full": ("full", work / "full-a"),
    }
    stops = {"SIGKILL": "lora", "SIGTERM": "lora", "SIGUSR1": "full", "stream-SIGTERM": "lora"}
    # The streamed one reads its features from the cache's row file, before and after the
    # stop, and must still end as the in-memory reference.
    extra = {how: ("training.stream=true",) if how.startswith("stream") else () for how in stops}
    procs = {
        name: start_cli(train_args(strategy, out, *LONG_RUN), root, logs, name)
        for name, (strategy, out) in plain.items()
    }
    slow = {
        how: start_cli(
            train_args(strategy, work / f"stop-{how}", *LONG_RUN, *extra[how]),
            root,
            logs,
            f"stop-{how}",
            delay=STEP_DELAY,
        )
        for how, strategy in stops.items()
    }
    # Interrupt each slow run once its first epoch's resume state exists.
    pending = dict(slow)
    while pending:
        for how, proc in list(pending.items()):
            out = work / f"stop-{how}"
            if resume_state_file(out).exists():
                proc.popen.send_signal(getattr(signal, how.split("-")[-1]))
                del pending[how]
            elif proc.popen.poll() is not None:
                raise AssertionError(f"{how}: ended before it could be interrupted:\n{proc.err}")
        time.sleep(0.02)
    first: dict[str, tuple[int, bool, bool, dict[str, int] | None]] = {}
    for how, proc in slow.items():
        code = proc.wait()
        out = work / f"stop-{how}"
        state = resume_state_file(out)
        first[how] = (code, state.is_file(), out.exists(), _stopped_at(state))
    again = {
        how: start_cli(
            train_args(stops[how], work / f"stop-{how}", *LONG_RUN, *extra[how]),
            root,
            logs,
            f"again-{how}",
        )
        for how in stops
    }
    for name, proc in procs.items():
        assert proc.wait() == 0, f"{name}: {proc.err}"
    interrupted = {}
    for how, proc in again.items():
        code = proc.wait()
        interrupted[how] = Interrupted(
            how, stops[how], work / f"stop-{how}", *first[how], code, proc.err
        )
    return SubprocessRuns(
        reference={"lora": plain["lora"][1], "full": plain["full"][1]},
        lora_twin=plain["lora-twin"][1],
        interrupted=interrupted,
    )


@pytest.fixture(scope="session")
def subprocess_runs(
    quick_project: QuickProject, tmp_path_factory: pytest.TempPathFactory
) -> SubprocessRuns:
    """Three uninterrupted runs and three interrupted-and-resumed ones, each in its own
    process, started side by side; built once per session."""
    global _RUNS
    if _RUNS is None:
        _RUNS = make_subprocess_runs(quick_project.root, tmp_path_factory.mktemp("procs"))
    return _RUNS
