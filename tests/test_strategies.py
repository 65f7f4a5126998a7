"""Which parameters each strategy trains, on the installed transformers' module names, and the
guards that keep a misconfigured PETL method from running."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from settings_helpers import strategy_settings
from torch import nn
from training_helpers import (  # noqa: F401
    in_quick_project,
    quick_project,
    restore_torch_globals,
    run_main,
    train_args,
)

from audiopetl.core import compat
from audiopetl.core.config import load_config
from audiopetl.core.errors import TrainingError
from audiopetl.core.settings import FeatureSettings, Frozen, ModelSettings
from audiopetl.models.backbones import ast as ast_backbone
from audiopetl.models.backbones.layout import ModuleLayout
from audiopetl.models.build import build_model
from audiopetl.models.strategies import count_parameters, get_strategy
from audiopetl.models.strategies.linear import LinearProbe
from audiopetl.study import Study

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

LAYERS = 3
ARCH = {
    "hidden_size": 32,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 16,
    "frequency_stride": 16,
    "time_stride": 16,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out")
LORA = {"kind": "lora", "lr": 5e-3, "rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q", "v"]}


def fresh_model(seed: int = 0, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    settings = ModelSettings(
        name="test-ast",
        kind="ast",
        pretrained=None,
        revision=None,
        attn_implementation="sdpa",
        pooling="cls-dist",
        zero_position_embeddings=False,
        architecture=Frozen(ARCH),
        front_end=Frozen({}),
        pretrain=None,
        block=Frozen({"pretrained": None, "attn_implementation": "sdpa", "architecture": ARCH}),
    )
    features = FeatureSettings(
        "test", "fbank", Frozen({"target_length": 64, "num_mel_bins": 128}), "test"
    )
    return build_model(settings, features, classes)


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def assert_sane(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
        assert param.abs().max() < 10, name


def test_logical_targets_map_to_one_module_per_layer() -> None:
    model = fresh_model()
    layout = ast_backbone.module_layout()
    expected = ast_backbone.LAYOUT_V5 if compat.transformers_5() else ast_backbone.LAYOUT_V4
    assert layout is expected
    seen: set[str] = set()
    for target in TARGETS:
        found = layout.modules_for(model, target)
        assert len(found) == LAYERS, (target, found)
        assert all(isinstance(model.get_submodule(n), nn.Linear) for n in found)
        assert not seen & set(found), f"{target} overlaps another target"
        seen |= set(found)
    for name in (*layout.head, layout.final_norm):
        model.get_submodule(name)  # exists


def other_layout() -> ModuleLayout:
    """The module names of the transformers generation that is not installed."""
    return (
        ast_backbone.LAYOUT_V4
        if ast_backbone.module_layout() is ast_backbone.LAYOUT_V5
        else ast_backbone.LAYOUT_V5
    )


def test_other_generations_names_match_nothing() -> None:
    model = fresh_model()
    for target in TARGETS:
        assert other_layout().modules_for(model, target) == [], target


def test_lora_with_the_wrong_layout_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from audiopetl.models.backbones.ast import AST

    # The AST kind answering with the other transformers generation's names.
    monkeypatch.setattr(AST, "layout", lambda self: other_layout())
    strategy = get_strategy(strategy_settings(LORA))
    with pytest.raises(TrainingError, match="matches no module"):
        strategy.apply(fresh_model())


def test_full_trains_everything() -> None:
    strategy = get_strategy(strategy_settings({"kind": "full", "lr": 1e-3}))
    model = strategy.apply(fresh_model())
    counts = strategy.check(model, max_fraction=0.001)  # not a PETL method: no limit
    assert counts.trainable == counts.total == sum(p.numel() for p in model.parameters())
    assert counts.fraction == 1.0
    assert_sane(model)


def test_linear_trains_the_head_and_the_final_norm_only() -> None:
    strategy = get_strategy(strategy_settings({"kind": "linear", "lr": 1e-2}))
    model = strategy.apply(fresh_model())
    names = trainable_names(model)
    assert sorted(names) == sorted(
        [
            "audio_spectrogram_transformer.layernorm.weight",
            "audio_spectrogram_transformer.layernorm.bias",
            "classifier.layernorm.weight",
            "classifier.layernorm.bias",
            "classifier.dense.weight",
            "classifier.dense.bias",
        ]
    )
    counts = strategy.check(model, max_fraction=0.2)
    assert counts.trainable == sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert counts.total == count_parameters(model).total
    assert 0 < counts.fraction < 0.2
    assert_sane(model)


def test_lora_trains_adapters_and_head_and_starts_as_the_base_model() -> None:
    base = fresh_model(seed=7).eval()
    x = torch.randn(3, 64, 128)
    with torch.no_grad():
        base_logits = base(input_values=x).logits.clone()
    base_total = count_parameters(base).total
    strategy = get_strategy(strategy_settings(LORA))
    torch.manual_seed(11)
    model = strategy.apply(base).eval()
    names = trainable_names(model)
    adapters = [n for n in names if ".lora_A." in n or ".lora_B." in n]
    head = [n for n in names if ".modules_to_save." in n]
    assert sorted(adapters + head) == sorted(names)
    # q and v of every layer, an A and a B each.
    assert len(adapters) == 2 * 2 * LAYERS
    # The head and, as the reference trains it with every PETL method, the final LayerNorm.
    assert {n.split(".modules_to_save.")[0].removeprefix("base_model.model.") for n in head} == {
        "classifier.layernorm",
        "classifier.dense",
        "audio_spectrogram_transformer.layernorm",
    }
    for name, param in model.named_parameters():
        if ".lora_B." in name:
            assert torch.equal(param, torch.zeros_like(param)), name
        if ".lora_A." in name:
            assert param.abs().max() > 0, name  # Kaiming, not zero
    assert_sane(model)
    with torch.no_grad():
        logits = model(input_values=x).logits
    assert torch.equal(logits, base_logits)  # B = 0: the update is exactly zero
    counts = strategy.check(model, max_fraction=0.2)
    rank, hidden = LORA["rank"], ARCH["hidden_size"]
    head_params = 2 * hidden + hidden * 4 + 4
    final_layernorm = 2 * hidden
    assert counts.trainable == 2 * LAYERS * 2 * rank * hidden + head_params + final_layernorm
    # The total counts the frozen backbone, the adapters and both copies of the head and of
    # the final LayerNorm.
    assert counts.total == base_total + counts.trainable


def test_petl_guard_refuses_a_petl_method_that_trains_everything() -> None:
    class EverythingProbe(LinearProbe):  # a PETL method gone wrong
        def apply(self, model: nn.Module) -> nn.Module:
            for param in model.parameters():
                param.requires_grad_(True)
            return model

    strategy = EverythingProbe(strategy_settings({"kind": "linear", "lr": 1e-2}))
    model = strategy.apply(fresh_model())
    with pytest.raises(TrainingError, match="max_trainable_fraction") as err:
        strategy.check(model, max_fraction=0.2)
    assert "100.0%" in str(err.value)


def test_guard_refuses_non_finite_parameters() -> None:
    strategy = get_strategy(strategy_settings({"kind": "full", "lr": 1e-3}))
    model = strategy.apply(fresh_model())
    with torch.no_grad():
        model.classifier.dense.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"classifier\.dense\.weight is not finite"):
        strategy.check(model, max_fraction=1.0)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(TrainingError, match=r"'houlsby' is not registered \(adapter, bitfit"):
        get_strategy(strategy_settings({"kind": "houlsby"}))


def test_configured_strategies_of_the_quick_project(
    in_quick_project: Path,  # noqa: F811
) -> None:
    cfg = load_config("config/config.yaml", "quick")
    study = Study(cfg)
    for name in ("full", "linear", "lora"):
        strategy = get_strategy(study.strategy(name))
        model = strategy.apply(fresh_model())
        strategy.check(model, float(cfg["training"]["max_trainable_fraction"]))
        assert_sane(model)


def test_tiny_max_trainable_fraction_stops_lora_via_the_cli(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "lora"
    code = run_main(train_args("lora", out, "training.max_trainable_fraction=0.001"))
    err = capsys.readouterr().err
    assert code == 1
    assert "max_trainable_fraction" in err and "strategy 'lora'" in err
    assert not out.exists()


@pytest.mark.parametrize("strategy", ["full", "linear", "lora"])
def test_reported_parameter_counts(
    strategy: str,
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / strategy
    assert run_main(train_args(strategy, out, "training.epochs=1")) == 0
    metrics: Mapping[str, Any] = json.loads((out / "metrics.json").read_text())
    run = json.loads((out / "run.json").read_text())
    trainable, total = metrics["trainable_params"], metrics["total_params"]
    assert run["parameters"] == {"trainable": trainable, "total": total}
    assert metrics["trainable_percent"] == pytest.approx(100 * trainable / total)
    from safetensors.torch import load_file

    saved = load_file(str(out / "model" / "trainable.safetensors"))
    assert sum(t.numel() for t in saved.values()) == trainable
    for name, tensor in saved.items():
        assert torch.isfinite(tensor).all() and tensor.abs().max() < 10, name
    if strategy == "full":
        assert trainable == total
    else:
        assert trainable < 0.2 * total
    assert f"{trainable:,} of {total:,} parameters" in capsys.readouterr().out
