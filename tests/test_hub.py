"""Hub checkpoints pinned to a revision: mirrored from a hub served on 127.0.0.1, recorded with
their commit and file hashes, verified whenever a run starts from them, and named with their
revision and hashes in every run.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import QUICK, BuiltProject
from fake_hub import Hub, Repo, serving_hub
from training_helpers import restore_torch_globals, run_main  # noqa: F401

from audiopetl.core import compat
from audiopetl.core.checksums import file_sha256
from audiopetl.core.config import load_config
from audiopetl.core.errors import TrainingError
from audiopetl.models.build import build_model
from audiopetl.models.hub import MIRROR_RECORD, resolve_pretrained
from audiopetl.study import Study

REPO_ID = "org/tiny-ast"
V1, V2 = "a1" * 20, "b2" * 20  # commits: the tag v1 and, later, main


def model_set(revision: str | None, repo_id: str = REPO_ID) -> list[str]:
    """--set defining model `hub-ast`: the repo at `revision`, shaped like the quick tiny AST."""
    pinned = "null" if revision is None else revision
    return [
        "--set",
        f"models.hub-ast={{pretrained: {repo_id}, revision: {pinned}, attn_implementation: sdpa}}",
    ]


def checkpoint_files(folder: Path, shift: float) -> dict[str, bytes]:
    study = Study(load_config(Path(__file__).parents[1] / "config" / "config.yaml", "quick"))
    torch.manual_seed(0)
    model = build_model(study.model("tiny-ast"), study.features("synthetic"), num_classes=4)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(shift)
    compat.save_pretrained(model, folder)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    base = tmp_path_factory.mktemp("hub-repo")
    repo = Repo(
        refs={"v1": V1, "main": V2},
        commits={
            V1: checkpoint_files(base / "v1", 0.0),
            V2: checkpoint_files(base / "v2", 0.01),
        },
    )
    with serving_hub({REPO_ID: repo}) as served:
        yield served


def fetch_model(project: Path, hub: Hub, *args: str) -> subprocess.CompletedProcess[str]:
    """`audiopetl fetch-model` in a subprocess whose hub client talks to `hub`."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE",)}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(project / ".hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    return subprocess.run(
        [sys.executable, "-m", "audiopetl", "fetch-model", "--model", "hub-ast", *QUICK, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def cfg_for(revision: str | None, repo_id: str = REPO_ID) -> dict:
    return load_config("config/config.yaml", "quick", [model_set(revision, repo_id)[1]])


def mirror_of(cfg: dict, model: str) -> Path:
    """The folder the configuration mirrors ``model``'s hub checkpoint in."""
    return Study(cfg).layout.mirror(model)


def resolved(cfg: dict, model: str) -> str | None:
    """Where ``model``'s weights come from by the configuration: its verified mirror."""
    study = Study(cfg)
    return resolve_pretrained(study.model(model), study.layout.mirror(model))


def test_mirror_pins_the_commit_and_hashes_every_file(
    synthetic_project: BuiltProject, hub: Hub
) -> None:
    result = fetch_model(synthetic_project.root, hub, *model_set("v1"))
    assert result.returncode == 0, result.stderr
    mirror = synthetic_project.root / mirror_of(cfg_for("v1"), "hub-ast")
    record = json.loads((mirror / MIRROR_RECORD).read_text())
    served = hub.repos[REPO_ID].commits[V1]
    assert record["repo_id"] == REPO_ID and record["revision"] == "v1" and record["commit"] == V1
    assert record["files"] == {name: file_sha256(mirror / name) for name in served}
    assert all((mirror / name).read_bytes() == data for name, data in served.items())
    # Mirrored is mirrored: a second call verifies and downloads nothing.
    before = len(hub.requests)
    assert fetch_model(synthetic_project.root, hub, *model_set("v1")).returncode == 0
    assert len(hub.requests) == before
    assert resolved(cfg_for("v1"), "hub-ast") == str(mirror_of(cfg_for("v1"), "hub-ast"))
    assert resolved(cfg_for(V1), "hub-ast")  # the commit it resolved to also fits


def test_a_mirror_of_another_revision_or_repo_is_refused(
    synthetic_project: BuiltProject, hub: Hub
) -> None:
    assert fetch_model(synthetic_project.root, hub, *model_set("v1")).returncode == 0
    fix = "run `audiopetl fetch-model --model hub-ast --force`"
    with pytest.raises(TrainingError) as err:
        resolved(cfg_for(V2), "hub-ast")
    assert f"mirrors {REPO_ID} at revision 'v1' (commit {V1})" in str(err.value)
    assert f"models.hub-ast.revision is {V2!r}" in str(err.value) and fix in str(err.value)
    with pytest.raises(TrainingError, match=r"mirrors 'org/tiny-ast', but models\.hub-ast"):
        resolved(cfg_for("v1", "org/other-ast"), "hub-ast")
    # fetch-model says the same, and replaces the mirror only when told to.
    result = fetch_model(synthetic_project.root, hub, *model_set(V2))
    assert result.returncode == 1 and fix in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = fetch_model(synthetic_project.root, hub, *model_set(V2), "--force")
    assert result.returncode == 0, result.stderr
    mirror = mirror_of(cfg_for(V2), "hub-ast")
    assert json.loads((mirror / MIRROR_RECORD).read_text())["commit"] == V2
    assert resolved(cfg_for(V2), "hub-ast") == str(mirror)


def test_a_changed_file_in_the_mirror_is_refused(synthetic_project: BuiltProject, hub: Hub) -> None:
    assert fetch_model(synthetic_project.root, hub, *model_set("v1")).returncode == 0
    weights = mirror_of(cfg_for("v1"), "hub-ast") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)
    weights.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match=r"differs from its record \(mirror.json\): changed"):
        resolved(cfg_for("v1"), "hub-ast")


def test_an_unpinned_mirror_says_which_commit_to_pin(
    synthetic_project: BuiltProject, hub: Hub
) -> None:
    result = fetch_model(synthetic_project.root, hub, *model_set(None))
    assert result.returncode == 0, result.stderr
    assert f"pin it with `revision: {V2}`" in result.stderr
    record = json.loads((mirror_of(cfg_for(None), "hub-ast") / MIRROR_RECORD).read_text())
    assert record["revision"] is None and record["commit"] == V2


def test_a_run_records_the_checkpoint_it_started_from(
    synthetic_project: BuiltProject,
    hub: Hub,
    monkeypatch: pytest.MonkeyPatch,
    restore_torch_globals: None,  # noqa: F811
) -> None:
    assert fetch_model(synthetic_project.root, hub, *model_set("v1")).returncode == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as the workflow's training jobs run
    out = synthetic_project.root / "run"
    args = ["train", *QUICK, *model_set("v1"), "--dataset", "synthetic", "--model", "hub-ast"]
    args += ["--strategy", "linear", "--fold", "1", "--seed", "0", "--out", str(out)]
    assert run_main([*args, "--set", "training.epochs=1"]) == 0
    weights = json.loads((out / "run.json").read_text())["weights"]
    mirror = mirror_of(cfg_for("v1"), "hub-ast")
    assert weights["kind"] == "mirror"
    assert (weights["repo_id"], weights["revision"], weights["commit"]) == (REPO_ID, "v1", V1)
    assert weights["files"]["model.safetensors"] == file_sha256(mirror / "model.safetensors")
