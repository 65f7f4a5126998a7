"""The probe: a head trained on the frozen backbone's cached embeddings. The cache is computed
once per dataset and model, byte-identical across reruns, checked against the weights a run
starts from; an epoch runs no backbone; the whole model reproduces the probe's logits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from project_copy import copy_workflow
from test_workflow import job_counts, snakemake

from audiopetl.core.errors import ConfigError, TrainingError
from audiopetl.study import embeddings, load_study

EXPERIMENT = "quick-probe"
CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
PROBES = ("probe", "probe-mlp")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["strategies.probe.training.specaugment={freq_mask: 8, time_mask: 0}"],
            "strategies.probe.training.specaugment: strategy 'probe' is a probe, trained on "
            "embeddings",
        ),
        (
            [
                "models.plain={pretrained: null, attn_implementation: sdpa, pooling: mean, "
                "architecture: {hidden_size: 32, patch_size: 16, frequency_stride: 16, "
                "time_stride: 16, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0, "
                "num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}}",
                "study.models=[plain]",
            ],
            "models.plain.pretrained: strategy 'probe', 'probe-mlp' probes the embeddings of model "
            "'plain', which starts at random",
        ),
        (["strategies.probe.head=deep"], "strategies.probe.head"),
    ],
)
def test_a_probe_that_cannot_work_is_a_config_error(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_study(CONFIG, EXPERIMENT, overrides)
    # One problem, on one line under the heading.
    assert message in str(err.value) and str(err.value).count("\n") == 1


def test_probe_runs_read_one_embedding_cache_per_dataset_and_model() -> None:
    study = load_study(CONFIG, EXPERIMENT)
    probe = study.run("synthetic", "tiny-ast", "probe", 1, 0, pretrained=None)
    mlp = study.run("synthetic", "tiny-ast", "probe-mlp", 2, 0, pretrained=None)
    assert probe.embeddings == mlp.embeddings == embeddings.path(study, "synthetic", "tiny-ast")
    assert study.run("synthetic", "tiny-ast", "linear", 1, 0, pretrained=None).embeddings is None
    # Its name changes with what decides the embeddings (the pretraining's settings here),
    # not with a probe's own settings.
    other = load_study(CONFIG, EXPERIMENT, ["models.tiny-ast.pretrain.epochs=5"])
    assert embeddings.path(other, "synthetic", "tiny-ast") != probe.embeddings
    lr = load_study(CONFIG, EXPERIMENT, ["strategies.probe.lr=0.1"])
    assert embeddings.path(lr, "synthetic", "tiny-ast") == probe.embeddings


def test_a_probe_cannot_train_layernorms() -> None:
    from audiopetl.models.build import build_model
    from audiopetl.models.strategies import get_strategy

    study = load_study(CONFIG, EXPERIMENT, ["strategies.probe.layernorms=[final]"])
    model = build_model(study.model("tiny-ast"), study.features("synthetic", "tiny-ast"), 4)
    with pytest.raises(TrainingError, match="cannot train; use kind `linear`"):
        get_strategy(study.strategy("probe")).apply(model)


def test_stale_embeddings_are_refused() -> None:
    from audiopetl.training.embeddings import check_embeddings

    metadata = {"dataset": "synthetic", "embedding": {"weights": {"kind": "folder", "files": {}}}}
    check_embeddings(metadata, {"kind": "folder", "files": {}})
    with pytest.raises(TrainingError, match="computed from other weights than the run starts"):
        check_embeddings(metadata, {"kind": "folder", "files": {"model.safetensors": "ab"}})
    with pytest.raises(TrainingError, match="a feature cache, not an embedding cache"):
        check_embeddings({"dataset": "synthetic"}, {"kind": "random"})


def test_a_missing_embedding_cache_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiopetl.training.data import load_run_data

    monkeypatch.chdir(tmp_path)
    run = load_study(CONFIG, EXPERIMENT).run(
        "synthetic", "tiny-ast", "probe", 1, 0, pretrained=None
    )
    with pytest.raises(TrainingError) as err:
        load_run_data(run, embeddings=True)
    assert "`audiopetl embed --dataset synthetic --model tiny-ast` first" in str(err.value)


def test_the_plan_counts_one_embed_job_per_dataset_and_model() -> None:
    from audiopetl.study.plan import make_plan

    estimates = make_plan(load_study(CONFIG, EXPERIMENT), samples_per_s=10.0)
    embeds = [e for e in estimates if e.job.rule == "embed"]
    assert [e.job.name for e in embeds] == ["embed synthetic/tiny-ast"]
    # Every clip of the quick synthetic data (4 classes x 3 folds x 6), one evaluation pass.
    (embed,) = embeds
    assert embed.job.clips == (0, 0, 72)
    assert embed.throughput is not None
    assert embed.seconds == pytest.approx(72 / embed.throughput.evaluate)
    names = [e.job.name for e in estimates]
    assert names.index("embed synthetic/tiny-ast") < names.index(
        "train synthetic/tiny-ast/probe/seed0/fold1"
    )


# -- a study with probes ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = copy_workflow(tmp_path_factory.mktemp("probe"))
    snakemake(project, "--cores", "2", experiment=EXPERIMENT)
    return project


def _runs(project: Path, strategy: str) -> list[Path]:
    root = project / "results" / EXPERIMENT / "runs" / "synthetic" / "tiny-ast" / strategy
    return sorted(p.parent for p in root.glob("seed*/fold*/metrics.json"))


@pytest.mark.slow
def test_probes_learn_and_the_whole_model_gives_their_logits(probed: Path) -> None:
    caches = sorted((probed / "data" / "embeddings").rglob("*.parquet"))
    assert len(caches) == 1, caches  # one cache for both probes and both folds
    for strategy in PROBES:
        runs = _runs(probed, strategy)
        assert len(runs) == 2
        accuracy = [json.loads((r / "metrics.json").read_text())["test"]["accuracy"] for r in runs]
        # 4 classes: chance is 0.25.
        assert sum(accuracy) / len(accuracy) > 0.25 + 0.1, (strategy, accuracy)
        for run in runs:
            evaluation = json.loads((run / "evaluation.json").read_text())
            assert evaluation["matches_reported"] and evaluation["max_abs_logit_difference"] == 0
            # The backbone and the trained head on the features, as predict and export use it.
            assert evaluation["full_model_max_abs_logit_difference"] <= 1e-4
            record = json.loads((run / "run.json").read_text())["data"]
            assert record["embeddings"] == str(caches[0].relative_to(probed))
            assert record["embeddings_sha256"] == sha256(caches[0])
    table = (probed / "results" / EXPERIMENT / "table.md").read_text()
    assert "| probe |" in table and "| probe-mlp |" in table


@pytest.mark.slow
def test_embeddings_are_identical_across_reruns_and_described(probed: Path) -> None:
    (cache,) = (probed / "data" / "embeddings").rglob("*.parquet")
    before = sha256(cache)
    cache.unlink()
    target = str(cache.relative_to(probed))
    dry = snakemake(probed, "-n", "--cores", "1", target, experiment=EXPERIMENT)
    assert job_counts(dry.stdout) == {"embed": 1, "total": 1}
    snakemake(probed, "--cores", "1", target, experiment=EXPERIMENT)
    assert sha256(cache) == before
    from audiopetl.features.cachefile import read_metadata, verify

    metadata = verify(cache)
    assert metadata == read_metadata(cache)
    assert metadata["dtype"] == "float32" and metadata["shape"] == [1, 32]  # hidden_size
    embedding = metadata["embedding"]
    assert embedding["weights"]["kind"] == "folder" and embedding["weights"]["files"]
    assert embedding["identity"]["pretrain"]["experiment"] == EXPERIMENT
    features = probed / embedding["cache"]
    assert embedding["cache_sha256"] == sha256(features)
    # One row per clip of the feature cache, in its order.
    ids = pq.read_table(cache, columns=["clip_id"]).column("clip_id").to_pylist()
    assert ids == pq.read_table(features, columns=["clip_id"]).column("clip_id").to_pylist()


@pytest.mark.slow
def test_a_probe_epoch_runs_no_backbone(probed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audiopetl.study import load_study as load
    from audiopetl.training.trainer import Trainer

    monkeypatch.chdir(probed)
    study = load(CONFIG, EXPERIMENT)
    trainer = Trainer(study.run("synthetic", "tiny-ast", "probe-mlp", 1, 0, out=probed / "x"))
    trainer.load_data()
    trainer.build()
    calls = []
    backbone = trainer.model.audio_spectrogram_transformer
    backbone.register_forward_hook(lambda *args: calls.append(1))
    assert trainer.train.features.shape[1:] == (1, 32)
    state = trainer.try_resume()
    for chunk in trainer.batch_iter(state):
        trainer.train_step(chunk, state)
    trainer.flush(state)
    assert state.global_step > 0 and not calls
    # The same head on the backbone's output, by the model's own forward, agrees.
    from audiopetl.features.frontends import input_shape

    x = torch.randn(2, *input_shape(study.features("synthetic", "tiny-ast").values))
    trainer.model.eval()
    with torch.no_grad():
        whole = trainer.model(input_values=x).logits
    assert calls
    from audiopetl.training.embeddings import Embedder

    embedder = Embedder(trainer.model, trainer.device)
    with torch.no_grad():
        head = trainer.strategy.head_logits(trainer.model, embedder(x).unsqueeze(1))
    embedder.remove()
    assert torch.allclose(whole, head, atol=1e-6)
