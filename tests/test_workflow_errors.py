"""What Snakemake shows when a study cannot start: the configuration's one-line error, never
a traceback through the workflow's files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from project_copy import copy_workflow


def test_a_config_error_under_snakemake_is_its_message_only(tmp_path: Path) -> None:
    project = copy_workflow(tmp_path)
    (project / "config/experiments/typo.yaml").write_text(
        "experiment: typo\ntraining:\n  epochz: 3\n"
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--config", "experiment=typo"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert (
        "config/experiments/typo.yaml: training.epochz: unknown key (did you mean 'epochs'?)"
        in output
    )
    assert "Traceback" not in output and 'File "' not in output and "common.smk" not in output


def test_bad_data_stops_the_study_before_any_training(tmp_path: Path) -> None:
    # A folder dataset of one's own with a corrupt clip, and a model pretrained on the
    # synthetic source task first: the fetch that fails runs before the pretraining (data jobs
    # go first), so the study stops within its first jobs. One core: one job at a time.
    import numpy as np
    import soundfile as sf
    import yaml

    (tmp_path / "project").mkdir()
    project = copy_workflow(tmp_path / "project")
    audio = tmp_path / "mine"
    audio.mkdir()
    rows = ["path,label,group"]
    for n in range(12):
        sf.write(audio / f"c{n}.wav", np.zeros(1600, np.float32) + 0.01 * n, 16000)
        rows.append(f"c{n}.wav,{'ab'[n % 2]},s{n % 3}")
    (audio / "c5.wav").write_bytes(b"not audio at all")
    (audio / "clips.csv").write_text("\n".join(rows) + "\n")
    preset = yaml.safe_load((project / "config/experiments/quick.yaml").read_text())
    preset["experiment"] = "mine"
    preset["datasets"]["mine"] = {"kind": "folder", "folder": {"root": str(audio)}}
    preset["study"]["datasets"] = ["mine"]
    (project / "config/experiments/mine.yaml").write_text(yaml.safe_dump(preset))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-c", "1", "--config", "experiment=mine"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert f"{audio / 'c5.wav'}: cannot read audio header" in result.stdout + result.stderr
    results = project / "results/mine"
    assert not (results / "pretrain").exists() or not any((results / "pretrain").iterdir())
    assert not (results / "logs/pretrain").exists()
