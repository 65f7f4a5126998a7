"""`audiopetl plan` and the resources behind every job: the study's training jobs with a runtime
estimate each, warnings where one will not fit a SLURM attempt, and the mapping of the config's
`resources` to what the SLURM executor plugin asks for. Also: a training job on a compute node
without network fails at once when its checkpoint was never mirrored."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from audiopetl.core.config import ConfigError, load_config
from audiopetl.study.resources import job_resources, snakemake_resources

QUICK = ("--experiment", "quick")
PROFILE = Path(__file__).resolve().parents[1] / "workflow" / "profiles" / "slurm" / "config.yaml"
# Quick preset: 4 classes x 3 folds x 6 clips (24 per fold); the source task 4 x 3 x 8.
QUICK_ROWS = {
    "pretrain tiny-ast (synthetic-source)": ("64/0/32", 4),
    **{
        f"train synthetic/tiny-ast/{s}/seed0/fold{f}": ("24/24/24", 3)
        for s in ("full", "linear", "lora")
        for f in (1, 2)
    },
}


def plan_rows(out: str) -> dict[str, tuple[str, int, str, str]]:
    rows = {}
    for line in out.splitlines():
        match = re.match(r"^((?:pre)?train .+?)\s+(\d+/\d+/\d+)\s+(\d+)\s+(.+?)\s+(\S+)$", line)
        if match:
            name, clips, epochs, estimate, attempts = match.groups()
            rows[name] = (clips, int(epochs), estimate, attempts)
    return rows


def test_plan_lists_every_training_job_with_its_estimate(project, cli) -> None:
    result = cli("plan", *QUICK, "--samples-per-s", "100")
    assert result.code == 0, result.err
    rows = plan_rows(result.out)
    assert {name: (r[0], r[1]) for name, r in rows.items()} == QUICK_ROWS
    # 3 epochs x (24 clips / 100 + 24 validation clips / 300) + 24 test clips / 300 = 1.04 s
    assert rows["train synthetic/tiny-ast/lora/seed0/fold1"][2:] == ("1 s", "1")
    assert "1 cpu, 4000 MB, 60 min" in result.out
    assert "WARNING" not in result.err


def test_plan_warns_where_a_run_outlasts_one_attempt(project, cli, tmp_path: Path) -> None:
    profile = tmp_path / "config.yaml"
    profile.write_text("executor: slurm\nretries: 1\n")
    # 3 x (24 / 0.01 + 24 / 0.03) + 24 / 0.03 = 10400 s; an hour's attempt trains 3180 s of it.
    result = cli("plan", *QUICK, "--samples-per-s", "0.01", "--profile", profile)
    assert result.code == 0, result.err
    assert plan_rows(result.out)["train synthetic/tiny-ast/full/seed0/fold1"][2:] == ("2.9 h", "4")
    warning = next(line for line in result.err.splitlines() if "about 2.9 h" in line)
    assert "resources.train.runtime: 60 min" in warning
    assert "stopped and resumed 3 time(s)" in warning
    assert f"more than the 1 retries of {profile}" in warning

    # A model's own time limit, and the project's profile (3 retries): 90-min attempts train
    # 4980 s each.
    per_model = cli(
        "plan", *QUICK, "--samples-per-s", "0.01", "--set", "resources.models.tiny-ast.runtime=90",
        "--profile", PROFILE,
    )  # fmt: skip
    assert "resources.models.tiny-ast.runtime: 90 min" in per_model.err
    assert "stopped and resumed 2 time(s) (the profile allows 3 retries)" in per_model.err
    # Longer resubmitted attempts (4 h: 13980 s of training each) finish it in one retry.
    longer = cli(
        "plan", *QUICK, "--samples-per-s", "0.01", "--set", "resources.train.retry_runtime=240"
    )
    assert "60 min (240 min a retry)" in longer.out
    assert "full/seed0/fold1" in longer.err and "resumed 1 time(s)" in longer.err
    # The six identical runs share one line, which names them, instead of six lines.
    lines = [line for line in longer.err.splitlines() if "about 2.9 h" in line]
    assert len(lines) == 1 and lines[0].startswith("WARNING: 6 jobs (train synthetic/"), lines
    assert "and 3 more" in lines[0]


def test_plan_throughput_must_be_positive(project, cli) -> None:
    for value in ("0", "-3", "nan", "fast"):
        result = cli("plan", *QUICK, "--samples-per-s", value)
        assert result.code == 2, value
        assert "is not a positive number of samples per second" in result.err, result.err


def test_plan_without_a_warning_before_the_limit(project, cli) -> None:
    # A 2-minute attempt with a 300 s warning: SLURM gives none, the job trains until it is
    # killed at the limit (about 60 s after start-up) and the next attempt resumes.
    sets = ["--set", "resources.train.runtime=2", "--set", "resources.train.signal_before_s=300"]
    result = cli("plan", *QUICK, "--samples-per-s", "1", *sets)
    assert result.code == 0, result.err
    assert "leaves no training time" not in result.err
    assert "killed at its limit (signal_before_s is not shorter than the limit" in result.err


@pytest.mark.slow
def test_plan_measures_the_configured_model(project, cli) -> None:
    result = cli("plan", *QUICK, "--measure")
    assert result.code == 0, result.err
    measured = re.findall(r"measured on cpu: ([\d.]+) training, ([\d.]+) evaluation", result.out)
    # One figure per model x strategy x input shape: three strategies, and the source task.
    assert len(measured) == 4
    assert all(float(train) > 0 and float(evaluate) > 0 for train, evaluate in measured)
    assert all(row[2] != "-" for row in plan_rows(result.out).values())


def test_resources_map_to_what_the_slurm_plugin_reads(project) -> None:
    cfg = load_config(
        "config/config.yaml",
        "quick",
        [
            "resources.train.gpu=2",
            "resources.train.gpu_model=a100",
            "resources.models.tiny-ast={mem_mb: 9000, gres: 'gpu:h100:1'}",
        ],
    )["resources"]
    default = snakemake_resources(job_resources(cfg, "train"), threads=4)
    assert default == {
        "mem_mb": 4000,
        "runtime": 60,
        "cpus_per_task": 4,  # null: the job's threads
        "gres": None,
        "gpu": 2,
        "gpu_model": "a100",
        "slurm_extra": "--signal=TERM@300",
    }
    assert snakemake_resources(job_resources(cfg, "train"), 4, attempt=3)["runtime"] == 60
    retried = load_config("config/config.yaml", "quick", ["resources.train.retry_runtime=600"])[
        "resources"
    ]
    assert snakemake_resources(job_resources(retried, "train"), 1, attempt=1)["runtime"] == 60
    assert snakemake_resources(job_resources(retried, "train"), 1, attempt=2)["runtime"] == 600
    tiny = snakemake_resources(job_resources(cfg, "train", "tiny-ast"), threads=1)
    # The model's gres replaces gpu and gpu_model; the rest comes from resources.train.
    assert tiny["mem_mb"] == 9000 and tiny["gres"] == "gpu:h100:1"
    assert tiny["gpu"] is None and tiny["gpu_model"] is None and tiny["runtime"] == 60
    data = snakemake_resources(job_resources(cfg, "data", "tiny-ast"), threads=2)
    assert data["gpu"] is data["gres"] is data["slurm_extra"] is None
    assert data["cpus_per_task"] == 2


def test_resource_mistakes_are_config_errors(project) -> None:
    with pytest.raises(ConfigError, match=r"resources\.models\.tiny-asst.*did you mean 'tiny-ast'"):
        load_config("config/config.yaml", "quick", ["resources.models.tiny-asst.gpu=1"])
    # Data jobs are CPU-only.
    with pytest.raises(ConfigError, match=r"resources\.data\.gpu: unknown key"):
        load_config("config/config.yaml", "quick", ["resources.data.gpu=1"])
    with pytest.raises(ConfigError, match=r"resources\.train\.gres"):
        load_config("config/config.yaml", "quick", ["resources.train.gres='gpu a100'"])


def test_an_offline_job_without_a_mirrored_checkpoint_fails_at_once(
    project, cli, monkeypatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what the workflow's training jobs run with
    hub_model = "models.hub-ast={pretrained: MIT/ast-finetuned-audioset-10-10-0.4593, " + (
        "attn_implementation: sdpa}"
    )
    result = cli(
        "train", *QUICK, "--set", hub_model, "--dataset", "synthetic", "--model", "hub-ast",
        "--strategy", "lora", "--fold", "1", "--seed", "0",
    )  # fmt: skip
    assert result.code == 1
    assert "is a hub id with no local mirror in data/models/hub-ast" in result.err
    assert "without network access" in result.err
    assert "audiopetl fetch-model --model hub-ast" in result.err
