"""Experiment trackers (config `tracking:`): what a run logs to DVCLive, TensorBoard, W&B and
MLflow, read back offline through each backend's own reader; that a tracker changes no result
and is no part of a run's identity; that a failing one warns once and the run goes on; that a
resumed run continues the same tracker run.

Every backend installed in this environment is exercised: all four in the modern one; the
legacy stack has no DVCLive (it needs DVC), which its tests assert instead of skipping.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import signal
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from training_helpers import (  # noqa: F401
    CONFIG_DIR,
    QuickProject,
    in_quick_project,
    quick_lora_run,
    quick_project,
    restore_torch_globals,
    resume_state_file,
    run_in,
    run_main,
    start_cli,
    train_args,
)

from audiopetl.core import provenance
from audiopetl.core.errors import ConfigError
from audiopetl.core.tracking import BACKENDS, missing_backends
from audiopetl.study import load_study
from audiopetl.training.checkpoint import load_state
from audiopetl.training.run_folder import read_sums, verify_run_folder
from audiopetl.training.tracking.tensorboard import TensorBoardTracker

LEGACY = provenance.environment_name() == "legacy"
INSTALLED = [name for name in BACKENDS if not missing_backends([name])]
RUN_NAME = "quick/synthetic/tiny-ast/lora/fold3/seed0"


def backends_list(names: list[str]) -> str:
    return f"tracking.backends=[{','.join(names)}]"


def test_this_environment_has_the_trackers_its_lock_file_pins() -> None:
    # A missing package would otherwise make the backend's tests below vanish quietly.
    expected = ["tensorboard", "wandb", "mlflow"] if LEGACY else list(BACKENDS)
    assert sorted(INSTALLED) == sorted(expected)


# -- the config ------------------------------------------------------------------------------


def test_a_tracker_that_is_not_installed_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name)
    )
    with pytest.raises(ConfigError) as err:
        load_study(CONFIG_DIR / "config.yaml", "quick", [backends_list(["tensorboard", "wandb"])])
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and "tracking.backends: wandb is not installed" in lines[1]
    assert "pip install wandb" in lines[1]
    # A report or a plan needs no tracker.
    load_study(CONFIG_DIR / "config.yaml", "quick", [backends_list(["wandb"])], training=False)


def test_dvclive_is_a_config_error_only_where_it_is_missing() -> None:
    request = [backends_list(["dvclive"])]
    if not LEGACY:
        load_study(CONFIG_DIR / "config.yaml", "quick", request)
        return
    with pytest.raises(ConfigError, match=r"dvclive is not installed .*DVCLive needs DVC"):
        load_study(CONFIG_DIR / "config.yaml", "quick", request)


def test_run_names_use_only_the_runs_fields() -> None:
    with pytest.raises(ConfigError, match=r"tracking\.run_name: field \{fold\} is not one of"):
        load_study(CONFIG_DIR / "config.yaml", "quick", ['tracking.run_name="{fold}"'])
    study = load_study(
        CONFIG_DIR / "config.yaml", "quick", ['tracking.run_name="{model}-{strategy}-s{seed}"']
    )
    run = study.run("synthetic", "tiny-ast", "lora", 3, 1, pretrained=None)
    assert run.tracking is not None and run.tracking.run_name == "tiny-ast-lora-s1"


def test_trackers_are_no_part_of_a_runs_identity() -> None:
    plain = load_study(CONFIG_DIR / "config.yaml", "quick")
    tracked = load_study(
        CONFIG_DIR / "config.yaml",
        "quick",
        [backends_list(["tensorboard"]), "tracking.wandb.mode=online"],
    )
    a, b = (s.run("synthetic", "tiny-ast", "lora", 3, 0, pretrained=None) for s in (plain, tracked))
    assert a.tracking != b.tracking
    assert a.identity() == b.identity()  # the resume identity
    assert a.params() == b.params()  # what reruns the job in the workflow
    assert plain.run_params("tiny-ast", "lora") == tracked.run_params("tiny-ast", "lora")


# -- one tracked run, read back ----------------------------------------------------------------


@dataclass
class Tracked:
    project: Path  # a copy of the quick project, a DVC repository with the pipeline's dvc.yaml
    run: Path
    dvc_yaml: bytes  # dvc.yaml before the run
    entries: set[str]  # the project's top-level entries before the run


@pytest.fixture(scope="module")
def tracked(quick_project: QuickProject, tmp_path_factory: pytest.TempPathFactory) -> Tracked:  # noqa: F811
    """The quick LoRA run (fold 3, seed 0) again, with every installed tracker on, in a copy of
    the quick project that is a DVC repository (MLflow at its default, results/mlruns)."""
    project = tmp_path_factory.mktemp("tracked") / "project"
    shutil.copytree(quick_project.root, project, symlinks=True)
    shutil.copy(CONFIG_DIR.parent / "dvc.yaml", project / "dvc.yaml")
    if not LEGACY:  # DVC is in the modern environment only
        from dvc.repo import Repo

        Repo.init(str(project), no_scm=True)
    before = (project / "dvc.yaml").read_bytes()
    entries = {p.name for p in project.iterdir()}
    out = project / "results/quick/runs/tracked"
    code, _, err = run_in(project, train_args("lora", out, backends_list(INSTALLED)))
    assert code == 0, err
    return Tracked(project, out, before, entries)


def test_a_tracked_run_has_the_results_of_an_untracked_one(
    tracked: Tracked,
    quick_lora_run: Path,  # noqa: F811
) -> None:
    ours, theirs = read_sums(tracked.run), read_sums(quick_lora_run)
    assert ours.keys() == theirs.keys()
    assert not any(name.startswith("tracking/") for name in ours)  # a view, not a result
    for name in ours.keys() - {"run.json"}:
        assert ours[name] == theirs[name], name
    # run.json differs only by the command line that started it (its --out and --set).
    a, b = (json.loads((r / "run.json").read_text()) for r in (tracked.run, quick_lora_run))
    assert "tracking" not in a["config"]
    assert {k: v for k, v in a.items() if k != "command"} == {
        k: v for k, v in b.items() if k != "command"
    }
    verify_run_folder(tracked.run)  # the tracking/ folder inside does not upset the check
    execution = json.loads((tracked.run / "execution.json").read_text())["tracking"]
    assert execution["failed"] == {}
    assert sorted(execution["ids"]) == sorted(INSTALLED)
    assert execution["run_name"] == RUN_NAME
    # Nothing left beside the run folder while it trained.
    assert not (tracked.run.parent / ".tracked.tracking").exists()
    assert sorted(p.name for p in (tracked.run / "tracking").iterdir()) == sorted(
        {"dvclive": "dvclive", "tensorboard": "tensorboard", "wandb": "wandb"}[n]
        for n in INSTALLED
        if n != "mlflow"
    )


def history(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "history.csv")


def metrics(run: Path) -> dict[str, Any]:
    return json.loads((run / "metrics.json").read_text())


def steps_of(run: Path) -> int:
    return int(history(run)["step"].iloc[-1])


def test_tensorboard_event_files_read_back(tracked: Tracked) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(
        str(tracked.run / "tracking/tensorboard"), size_guidance={"scalars": 0}
    )
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/grad_norm", "train/lr", "train/samples_per_s"} <= scalars
    assert {"val/loss", "val/accuracy", "epoch/train_loss", "host/max_rss_mb"} <= scalars
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, steps_of(tracked.run) + 1))  # every step
    rows = history(tracked.run)
    epoch_loss = [e.value for e in events.Scalars("epoch/train_loss")]
    assert epoch_loss == pytest.approx(rows["train_loss"].tolist(), rel=1e-6)
    val = [e.value for e in events.Scalars("val/accuracy")]
    assert val == pytest.approx(rows["val_accuracy"].tolist(), rel=1e-6)
    test = metrics(tracked.run)["test"]
    assert events.Scalars("test/accuracy")[0].value == pytest.approx(test["accuracy"], rel=1e-6)
    assert {"settings/text_summary", "provenance/text_summary"} <= set(events.Tags()["tensors"])


def test_mlflow_file_store_reads_back_through_its_client(
    tracked: Tracked, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = mlflow_client((tracked.project / "results/mlruns").as_uri(), monkeypatch)
    experiment = client.get_experiment_by_name("audiopetl")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == RUN_NAME and run.info.status == "FINISHED"
    recorded = json.loads((tracked.run / "execution.json").read_text())["tracking"]["ids"]
    assert run.info.run_id == recorded["mlflow"]
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in loss) == list(range(1, steps_of(tracked.run) + 1))
    test = metrics(tracked.run)["test"]
    assert run.data.metrics["test/accuracy"] == pytest.approx(test["accuracy"], rel=1e-6)
    assert run.data.metrics["params/trainable"] == metrics(tracked.run)["trainable_params"]
    # The resolved settings as parameters, the run folder's provenance as tags.
    assert run.data.params["training.epochs"] == str(history(tracked.run)["epoch"].iloc[-1])
    assert run.data.params["strategy.kind"] == "lora"
    assert run.data.tags["versions.torch"] == torch.__version__
    assert run.data.tags["environment.name"] == provenance.environment_name()


def mlflow_client(uri: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """MLflow's own client on a file store (which MLflow 3 opens only when told it may)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def wandb_records(folder: Path) -> list[Any]:
    """The records of W&B offline run files (run-ID.wandb): a 7-byte header, then LevelDB's
    log format (32 KiB blocks of records, each a 7-byte header of CRC, length and type: full,
    first, middle, last) around protobuf `Record`s, which wandb's own package defines."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for path in sorted(folder.glob("offline-run-*/run-*.wandb")):
        data, block, pos, pieces = path.read_bytes(), 32768, 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a header: padding
                pos += block - pos % block
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if length == 0 and kind == 0:
                pos += block - pos % block
                continue
            chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
            pieces = chunk if kind in (1, 2) else pieces + chunk
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pieces)
                records.append(record)
    return records


def wandb_items(items: Any) -> dict[str, Any]:
    """A history or summary record's items by name (W&B keeps `a/b` as a key or a path)."""
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def wandb_loss_steps(records: list[Any]) -> list[int]:
    kinds = [r.WhichOneof("record_type") for r in records]
    rows = [
        wandb_items(r.history.item) for r, k in zip(records, kinds, strict=True) if k == "history"
    ]
    return [row["_step"] for row in rows if "train/loss" in row]


def test_wandb_offline_run_reads_back(tracked: Tracked) -> None:
    records = wandb_records(tracked.run / "tracking/wandb")
    kinds = [r.WhichOneof("record_type") for r in records]
    runs = [r.run for r, k in zip(records, kinds, strict=True) if k == "run"]
    recorded = json.loads((tracked.run / "execution.json").read_text())["tracking"]["ids"]
    assert {r.run_id for r in runs} == {recorded["wandb"]}
    assert runs[0].display_name == RUN_NAME and runs[0].project == "audiopetl"
    config = {item.key: json.loads(item.value_json) for item in runs[0].config.update}
    assert config["training.epochs"] == str(history(tracked.run)["epoch"].iloc[-1])
    assert f"torch:{torch.__version__}" in runs[-1].tags
    loss_steps = wandb_loss_steps(records)
    assert loss_steps == list(range(1, steps_of(tracked.run) + 1))
    summary: dict[str, Any] = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(wandb_items(r.summary.update))
    test = metrics(tracked.run)["test"]
    assert summary["test/accuracy"] == pytest.approx(test["accuracy"], rel=1e-6)


def test_dvclive_files_read_back_and_leave_the_projects_dvc_yaml_alone(tracked: Tracked) -> None:
    if LEGACY:
        assert "dvclive" not in INSTALLED  # and a request for it is a config error (above)
        return
    from dvc.repo import Repo

    live = tracked.run / "tracking/dvclive"
    summary = json.loads((live / "metrics.json").read_text())
    test = metrics(tracked.run)["test"]
    assert summary["test"]["accuracy"] == pytest.approx(test["accuracy"], rel=1e-6)
    loss = pd.read_csv(live / "plots/metrics/train/loss.tsv", sep="\t")
    assert loss["step"].tolist() == list(range(1, steps_of(tracked.run) + 1))
    params = yaml.safe_load((live / "params.yaml").read_text())
    assert params["strategy.kind"] == "lora"
    # Not a byte of the project's dvc.yaml changed, nothing new beside it, and DVC's own
    # reader of metrics files finds DVCLive's summary where it lies.
    assert (tracked.project / "dvc.yaml").read_bytes() == tracked.dvc_yaml
    assert {p.name for p in tracked.project.iterdir()} == tracked.entries
    shown = Repo(str(tracked.project)).metrics.show(targets=[str(live / "metrics.json")])
    assert json.dumps(shown).count("accuracy") >= 1


# -- failures and resumes --------------------------------------------------------------------


def test_a_failing_tracker_warns_once_and_changes_nothing(
    in_quick_project: Path,  # noqa: F811
    quick_lora_run: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def disk_full(self: Any, values: Any, step: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoardTracker, "metrics", disk_full)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # MLflow's store cannot be made here
    out = tmp_path / "run"
    args = train_args(
        "lora",
        out,
        backends_list(["tensorboard", "mlflow"]),
        f"tracking.mlflow.tracking_uri={blocked.as_uri()}/mlruns",
    )
    with caplog.at_level(logging.WARNING, logger="audiopetl.training.tracking"):
        assert run_main(args) == 0
    warned = [r.getMessage() for r in caplog.records if r.name == "audiopetl.training.tracking"]
    assert len(warned) == 2, warned  # once per backend, however many steps followed
    assert any("tensorboard failed (OSError: [Errno 28] No space left" in w for w in warned)
    assert any(w.startswith("tracking: mlflow failed") for w in warned)
    ours, theirs = read_sums(out), read_sums(quick_lora_run)
    assert {k: v for k, v in ours.items() if k != "run.json"} == {
        k: v for k, v in theirs.items() if k != "run.json"
    }
    failed = json.loads((out / "execution.json").read_text())["tracking"]["failed"]
    assert sorted(failed) == ["mlflow", "tensorboard"]


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_tracker_runs(
    quick_project: QuickProject,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri = (tmp_path / "mlruns").as_uri()
    out = tmp_path / "run"
    args = train_args(
        "lora",
        out,
        "training.epochs=4",
        backends_list(INSTALLED),
        f"tracking.mlflow.tracking_uri={uri}",
    )
    slow = start_cli(args, quick_project.root, tmp_path / "logs", "first", delay=0.1)
    state_file = resume_state_file(out)
    while not state_file.exists():  # the first epoch's state: stop the run part-way
        assert slow.popen.poll() is None, slow.err
    slow.popen.send_signal(signal.SIGTERM)
    assert slow.wait() == 75, slow.err
    ids = load_state(state_file)["train"]["tracking"]
    assert sorted(ids) == sorted(INSTALLED)
    second = start_cli(args, quick_project.root, tmp_path / "logs", "second")
    assert second.wait() == 0, second.err
    recorded = json.loads((out / "execution.json").read_text())["tracking"]["ids"]
    assert recorded == ids  # the same tracker runs, continued
    steps = list(range(1, steps_of(out) + 1))
    client = mlflow_client(uri, monkeypatch)
    (run,) = client.search_runs([client.get_experiment_by_name("audiopetl").experiment_id])
    assert run.info.run_id == ids["mlflow"] and run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(ids["mlflow"], "train/loss")) == steps
    # W&B: one offline folder per process, both of the one run id (`wandb sync` joins them).
    folders = sorted((out / "tracking/wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(ids["wandb"]) for f in folders)
    records = wandb_records(out / "tracking/wandb")
    logged = sorted(wandb_loss_steps(records))
    assert logged == steps
    # TensorBoard: one folder, an event file per process, every step once.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((out / "tracking/tensorboard").glob("events.out.tfevents.*"))) == 2
    events = EventAccumulator(str(out / "tracking/tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == steps
    if not LEGACY:
        loss = pd.read_csv(out / "tracking/dvclive/plots/metrics/train/loss.tsv", sep="\t")
        assert loss["step"].tolist() == steps
