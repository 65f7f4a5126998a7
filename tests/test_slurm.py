"""`snakemake --profile slurm` on a real SLURM: a private single-node cluster on 127.0.0.1
(tests/slurm/start_local_slurm.sh: Debian's slurmctld, slurmd, slurmdbd with MariaDB so that
sacct works, munge, two fake GPUs), the real executor plugin, real sbatch.

One Snakemake run of the quick preset, restricted to the LoRA strategy, asks for a GPU and
distinct CPU, memory and time figures for its training jobs; sacct must show each training
job's SLURM job (named in the run's own run.json) with exactly those. Beside it runs a longer
run whose model gets a short time limit and an early warning signal: it must stop, be
resubmitted by the profile's retries, resume where it stopped and end bitwise identical to the
same run trained locally without interruption.

Needs root (packages, SLURM's machine-wide ports and /etc/slurm). A lock file keeps two
sessions on one machine from starting two clusters at once; the cluster is stopped (exactly
what the start script started) whatever happens.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from project_copy import copy_workflow, deep_merge, edit_preset
from training_helpers import assert_bitwise_equal, load_weights

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "slurm"
# The workflow, its SLURM profile link and, when there is one, its workflow profile.
PROJECT_FILES = ["Snakefile", "rules", "config", "workflow", "envs", "slurm", "profiles"]
LOCK = Path("/tmp/audiopetl-slurm.lock")
EXPERIMENT = "quick"
BIN = Path(sys.executable).parent

# What the quick preset's jobs ask for here: a GPU and figures no default has, so sacct
# shows they came from the config. The long model overrides its time limit and memory.
RESOURCES = {
    "train": {"gpu": 1, "cpus_per_task": 1, "mem_mb": 1500, "runtime": 7, "signal_before_s": 60},
    "data": {"mem_mb": 700, "runtime": 1},
    "report": {"mem_mb": 600, "runtime": 2},
    "models": {
        "tiny-ast-long": {"mem_mb": 1200, "runtime": 3, "retry_runtime": 5, "signal_before_s": 100}
    },
}
# The interrupted run: a bigger tiny AST trained from scratch for about 110 s on an idle 2-core
# machine (400 epochs took 37 s there: a figure that once was 2 minutes under load, and a run
# that ended before the warning failed this test). SLURM's warning, 100 s before a first
# attempt's limit of 3 minutes (its evaluation runs in the same job and process) and up to 30 s
# earlier (SLURM checks its timers every 30 s), comes 50-80 s after the job starts: after the
# job's start-up, in the middle of its training on a machine up to about 1.5 times as fast. A
# resubmitted attempt gets 5 minutes: enough for the rest on a machine 3 times as slow.
LONG_MODEL, LONG_STRATEGY = "tiny-ast-long", "lora-long"
LONG = {
    "models": {
        LONG_MODEL: {
            "pretrained": None,
            "attn_implementation": "sdpa",
            "architecture": {
                "hidden_size": 128,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "intermediate_size": 256,
            },
        }
    },
    "strategies": {
        LONG_STRATEGY: {
            "kind": "lora",
            "lr": 5.0e-3,
            "rank": 8,
            "alpha": 16,
            "dropout": 0.0,
            "targets": ["q", "v"],
            "training": {"epochs": 1200, "batch_size": 4},
        }
    },
}
QUICK_RUNS = [("tiny-ast", "lora", 0, 1), ("tiny-ast", "lora", 0, 2)]
LONG_RUN = (LONG_MODEL, LONG_STRATEGY, 0, 1)
SNAKEMAKE_LIMIT_S = 900


def _why_no_cluster() -> str | None:
    if os.geteuid() != 0:
        return "needs root: installs Debian's SLURM and binds SLURM's machine-wide ports"
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        return "SLURM is not installed and there is no apt-get to install it"
    return None


needs_cluster = pytest.mark.skipif(_why_no_cluster() is not None, reason=str(_why_no_cluster()))
pytestmark = pytest.mark.slow


def copy_project(dest: Path, preset_changes: dict) -> Path:
    """The workflow's files (the `slurm` profile link included) in ``dest``, with changes to
    the quick preset."""
    dest.mkdir(parents=True)
    copy_workflow(dest, PROJECT_FILES)
    edit_preset(dest, EXPERIMENT, preset_changes)
    return dest


def command_env() -> dict[str, str]:
    env = dict(os.environ)
    # Rules call `audiopetl`, and SLURM jobs inherit this PATH (sbatch --export=ALL).
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


def run_dir(project: Path, model: str, strategy: str, seed: int, fold: int) -> Path:
    return (
        project
        / "results"
        / EXPERIMENT
        / "runs"
        / "synthetic"
        / model
        / strategy
        / f"seed{seed}"
        / (f"fold{fold}")
    )


# -- the cluster --------------------------------------------------------------------------------
@contextlib.contextmanager
def machine_lock(timeout_s: float = 1800) -> Iterator[None]:
    """One local cluster per machine: wait for another session's test to finish."""
    with LOCK.open("a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{LOCK}: another local SLURM test held it for {timeout_s:.0f} s")
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _script(name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / name)], capture_output=True, text=True, timeout=900, check=False
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    with machine_lock():
        try:
            started = _script("start_local_slurm.sh")
            if started.returncode != 0:
                pytest.fail(f"start_local_slurm.sh failed:\n{started.stdout}\n{started.stderr}")
            yield
        finally:
            stopped = _script("stop_local_slurm.sh")
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr


# -- one Snakemake run on it, and the uninterrupted reference -----------------------------------
@dataclass
class SlurmStudy:
    project: Path
    reference: Path  # the long run trained locally, never interrupted
    output: str  # Snakemake's
    jobs: dict[str, dict[str, str]]  # sacct rows by job id


def sacct_jobs(run_id: str) -> dict[str, dict[str, str]]:
    fields = ["JobID", "Comment", "State", "ExitCode", "Elapsed", "Timelimit", "AllocTRES"]
    fields.append("SubmitLine")  # last: it is free text
    done = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-S", "now-1days", "--name", run_id, "-o", ",".join(fields)],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [
        dict(zip(fields, line.split("|", len(fields) - 1), strict=True))
        for line in done.stdout.splitlines()
        if line.strip()
    ]
    return {row["JobID"]: row for row in rows}


def train_reference(project: Path, folder: Path) -> subprocess.Popen:
    """The long run trained locally in its own project folder, at low priority so that it
    takes CPU time the SLURM jobs leave."""
    shutil.copytree(project / "config", folder / "config")
    model, strategy, seed, fold = LONG_RUN
    script = " && ".join(
        [
            f"audiopetl fetch synthetic --experiment {EXPERIMENT} --quiet",
            f"audiopetl cache synthetic --experiment {EXPERIMENT} --quiet",
            f"audiopetl train --experiment {EXPERIMENT} --quiet --dataset synthetic "
            f"--model {model} --strategy {strategy} --seed {seed} --fold {fold} --out run",
        ]
    )
    return start_in_own_session(["nice", "-n", "19", "bash", "-c", script], folder)


def start_in_own_session(command: list[str], cwd: Path) -> subprocess.Popen:
    """Start ``command`` in a session of its own (so stop_group reaches all it starts), its
    output and errors together in one pipe."""
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stop_group(process: subprocess.Popen, sig: int = signal.SIGKILL, wait_s: float = 0) -> None:
    """Send ``sig`` to a process started in a session of its own, wait up to ``wait_s`` for it,
    then kill whatever is left of its session."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def study(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> SlurmStudy:
    work = tmp_path_factory.mktemp("slurm")
    # One decoding thread per cache job: the two caches then share the node's two CPUs.
    changes = deep_merge({"resources": RESOURCES, "cache": {"workers": 1}}, LONG)
    project = copy_project(work / "project", changes)
    reference = train_reference(project, work / "reference")
    targets = [
        str(run_dir(project, *run) / "evaluation.json").removeprefix(f"{project}/")
        for run in [*QUICK_RUNS, LONG_RUN]
    ]
    command = [
        "timeout", "-s", "INT", "-k", "60", str(SNAKEMAKE_LIMIT_S),
        str(BIN / "python"), "-m", "snakemake", "--profile", "slurm",
        "--config", f"experiment={EXPERIMENT}",
        # Test speed only: the first status check after 2 s instead of 40.
        "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-keep-successful-logs",
        *targets,
    ]  # fmt: skip
    snakemake = start_in_own_session(command, project)
    try:
        output, _ = snakemake.communicate()
        if snakemake.returncode != 0:
            pytest.fail(f"snakemake --profile slurm failed:\n{output[-6000:]}{job_logs(project)}")
        reference_output, _ = reference.communicate(timeout=600)
        assert reference.returncode == 0, f"local reference run failed:\n{reference_output}"
    finally:
        # Interrupted (Ctrl-C, a timeout): SIGINT makes Snakemake cancel its SLURM jobs.
        stop_group(snakemake, signal.SIGINT, wait_s=120)
        stop_group(reference)
    match = re.search(r"SLURM run ID: (\S+)", output)
    assert match, output[-4000:]
    return SlurmStudy(project, work / "reference" / "run", output, sacct_jobs(match.group(1)))


def job_logs(project: Path, lines: int = 40) -> str:
    """The ends of the SLURM jobs' logs, for a failure message."""
    parts = []
    for log in sorted((project / ".snakemake" / "slurm_logs").rglob("*.log")):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        parts.append(f"\n--- {log.relative_to(project)}\n{tail}")
    return "".join(parts)


def tres(row: dict[str, str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in row["AllocTRES"].split(",") if "=" in item)


def minutes(limit: str) -> int:
    """sacct's [D-]HH:MM:SS as minutes."""
    days, _, clock = limit.rpartition("-")
    hours, mins, secs = (int(x) for x in clock.split(":"))
    return (int(days or 0) * 24 + hours) * 60 + mins + (secs > 0)


def slurm_job_of(run: Path) -> str:
    job = json.loads((run / "execution.json").read_text())["slurm_job_id"]
    assert job, f"{run}: not trained inside a SLURM job"
    return job


# -- the tests ----------------------------------------------------------------------------------
@needs_cluster
def test_every_training_job_ran_in_slurm_with_the_configured_resources(study: SlurmStudy) -> None:
    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    # A run's evaluation runs inside its training job: no group whose time limits would add up.
    assert "groups" not in profile
    data = RESOURCES["data"]
    training = [
        (study.project / "results" / EXPERIMENT / "pretrain" / "tiny-ast", "tiny-ast", False),
        *[(run_dir(study.project, *run), run[0], True) for run in [*QUICK_RUNS, LONG_RUN]],
    ]
    for run, model, is_run in training:
        asked = {**RESOURCES["train"], **RESOURCES["models"].get(model, {})}
        info = json.loads((run / "run.json").read_text())
        attempt = 1 + len(info["interruptions"])
        job = study.jobs[slurm_job_of(run)]
        assert job["State"] == "COMPLETED", job
        # The plugin's comment names the rule and the run (its wildcards): squeue and sacct
        # tell the runs apart.
        if is_run:
            dataset = run.parts[-5]
            # The split wildcard is the run folder's name: fold1, fold2, ... (or official).
            model_, strategy, seed, split = (
                run.parts[-4],
                run.parts[-3],
                run.parts[-2][4:],
                run.parts[-1],
            )
            wildcards = "_".join([dataset, model_, strategy, seed, split])
            assert job["Comment"] == f"rule_train_wildcards_{wildcards}", job
        else:
            assert job["Comment"] == "rule_pretrain_wildcards_tiny-ast", job
        granted = tres(job)
        assert granted["cpu"] == str(asked["cpus_per_task"]), job
        assert granted["mem"] == f"{asked['mem_mb']}M", job
        assert granted["gres/gpu"] == str(asked["gpu"]), job
        # What README's table and `audiopetl plan` say: the configured runtime, nothing added.
        runtime = asked["retry_runtime"] if attempt > 1 else asked["runtime"]
        assert minutes(job["Timelimit"]) == runtime, job
        assert f"--signal=TERM@{asked['signal_before_s']}" in job["SubmitLine"], job
        if is_run:
            assert json.loads((run / "evaluation.json").read_text())["matches_reported"]
    # Data jobs are CPU-only SLURM jobs; the downloads are local rules, never SLURM jobs.
    caches = [j for j in study.jobs.values() if j["Comment"].startswith("rule_cache")]
    assert len(caches) == 2
    for job in caches:
        assert "gres/gpu" not in tres(job), job
        assert tres(job)["cpu"] == "1"  # cpus_per_task null: the job's threads (cache.workers)
        assert tres(job)["mem"] == f"{data['mem_mb']}M"
        assert minutes(job["Timelimit"]) == data["runtime"]
    assert not [j for j in study.jobs.values() if "fetch" in j["Comment"]]
    # Every SLURM job is accounted for: the caches, the pretraining, one job per quick run,
    # and the attempts of the long run.
    attempts = json.loads((run_dir(study.project, *LONG_RUN) / "run.json").read_text())
    expected = 2 + 1 + len(QUICK_RUNS) + 1 + len(attempts["interruptions"])
    assert len(study.jobs) == expected, study.jobs


@needs_cluster
def test_a_run_past_its_time_limit_is_resubmitted_and_resumes(study: SlurmStudy) -> None:
    run = run_dir(study.project, *LONG_RUN)
    info = json.loads((run / "run.json").read_text())
    stops = info["interruptions"]
    assert stops, "the long run was never stopped: its training ended before SLURM's warning"
    final_job = study.jobs[slurm_job_of(run)]
    assert final_job["State"] == "COMPLETED"
    for stop in stops:
        # SIGTERM from SLURM before the limit: saved at a step boundary, exited, so the job
        # failed (exit 1 from Snakemake) instead of being killed at its limit (TIMEOUT).
        assert stop["signal"] == "SIGTERM"
        job = study.jobs[stop["slurm_job_id"]]
        assert job["State"] == "FAILED" and job["ExitCode"] == "1:0", job
        assert minutes(job["Elapsed"]) <= minutes(job["Timelimit"]), job
        first = stop is stops[0]
        runtime = RESOURCES["models"][LONG_MODEL]["runtime" if first else "retry_runtime"]
        assert minutes(job["Timelimit"]) == runtime, job
        assert stop["slurm_job_id"] != slurm_job_of(run)
    # The last attempt resumed from the last stop instead of starting afresh.
    last = stops[-1]
    log = study.project / "results" / EXPERIMENT / "logs" / "train" / "synthetic"
    log = log.joinpath(*LONG_RUN[:2], f"seed{LONG_RUN[2]}", f"fold{LONG_RUN[3]}.log")
    text = log.read_text()
    assert f"at epoch {last['epoch']}, batch {last['batch']}" in text
    # The log keeps every attempt, each headed by its number and SLURM job; a planned stop
    # says so, and is not a failure.
    headers = re.findall(r"^==== audiopetl train: attempt (\d+), SLURM job (\d+)", text, re.M)
    assert [int(n) for n, _ in headers] == list(range(1, len(stops) + 2)), headers
    assert [job for _, job in headers[:-1]] == [stop["slurm_job_id"] for stop in stops]
    assert text.count("(a time limit's warning)") == len(stops)
    assert "not a failure" in text and "error:" not in text
    assert not (run.parent / f".{run.name}.resume").exists(), "resume state left behind"
    # And it ends exactly where the uninterrupted run ends.
    reference = study.reference
    assert (run / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    assert_bitwise_equal(load_weights(run), load_weights(reference))
    ours, theirs = (pq.read_table(p / "predictions.parquet") for p in (run, reference))
    assert ours.equals(theirs)
    assert json.loads((run / "evaluation.json").read_text())["matches_reported"]


def test_a_large_study_submits_one_job_per_run(tmp_path: Path) -> None:
    """5 folds x 8 strategies x 3 seeds: each run's training and evaluation are one job, so
    the 120 runs submit 120 SLURM jobs, not 240. A dry run needs no cluster."""
    ranks = (1, 2, 4, 16, 32)
    lora = {"kind": "lora", "lr": 5.0e-3, "alpha": 16, "dropout": 0.0, "targets": ["q", "v"]}
    strategies = {f"lora-r{r}": {**lora, "rank": r} for r in ranks}
    study = {
        "datasets": {"synthetic": {"synthetic": {"folds": 5}}},
        "strategies": strategies,
        "study": {
            "strategies": ["full", "linear", "lora", *strategies],
            "folds": [1, 2, 3, 4, 5],
            "seeds": [0, 1, 2],
        },
    }
    project = copy_project(tmp_path / "project", study)
    command = [str(BIN / "python"), "-m", "snakemake", "--profile", "slurm", "--dry-run"]
    done = subprocess.run(
        [*command, "--config", f"experiment={EXPERIMENT}"],
        cwd=project,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stats = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal", done.stdout, re.S)
    assert stats, done.stdout[-3000:]
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stats.group(1), re.M)}
    assert counts["train"] == 5 * 8 * 3 and "evaluate" not in counts
    # SLURM jobs: one per run, plus the caches, the pretraining, the data report and the
    # report; the downloads (fetch), the split check and the target rule run on the
    # submitting machine.
    local = counts["fetch"] + counts["splits"] + counts["all"]
    assert sum(counts.values()) - local == 120 + 2 + 1 + 1 + 1
