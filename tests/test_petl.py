"""The PETL methods of the reference study and of peft, each provably the method it claims to
be: trainable-parameter counts on AST-base's architecture equal the reference's, zero-initialised
methods leave the model unchanged at step 0, the frozen backbone stays in eval mode, and every
method trains on the cached synthetic data, beats chance and is rebuilt from its files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from packaging.version import Version
from settings_helpers import feature_settings, model_settings, strategy_settings
from torch import nn
from training_helpers import (  # noqa: F401
    QUICK,
    in_quick_project,
    quick_project,
    restore_torch_globals,
    run_main,
    train_args,
)

from audiopetl.core import compat
from audiopetl.core.config import ConfigError
from audiopetl.models.build import build_model
from audiopetl.models.strategies import count_parameters, get_strategy

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

# AST-base as the AudioSet checkpoint's config has it, built with random weights (no
# download): 768 hidden, 12 layers, 12 heads, 3072 feed-forward, 16x16 patches, stride 10.
AST_BASE = {
    "pretrained": None,
    "attn_implementation": "sdpa",
    "architecture": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "patch_size": 16,
        "frequency_stride": 10,
        "time_stride": 10,
    },
}
TINY = {
    "pretrained": None,
    "attn_implementation": "sdpa",
    "architecture": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "hidden_dropout_prob": 0.5,  # so that eval mode is visible
        "attention_probs_dropout_prob": 0.5,
    },
}
FEATURES = {"target_length": 500, "num_mel_bins": 128}


CONFORMER = {"kind": "conformer", "lr": 1.0, "placement": "pfeiffer", "mode": "parallel"}
# Trainable parameters without the head, each with the LayerNorms the reference trains.
# The first five are the reference's own counts (PETL_AST, 12 layers of 768):
# - Conformer adapter, reduction 96 (bottleneck 8), kernel k, per layer: its LayerNorm 1,536,
#   pointwise 768->16 12,304, depthwise 8k+8, BatchNorm 16, pointwise 8->768 6,912; plus the
#   LayerNorm before the feed-forward block 1,536; and the final LayerNorm, 1,536.
# - Bottleneck adapter, reduction 96: 768->8 6,152 and 8->768 6,912 per layer, the two
#   LayerNorms as above.
# - LoRA rank 12 on Wq and Wv: 2 x (768x12 + 12x768) per layer, plus the final LayerNorm.
# The rest are derived the same way:
# - BitFit: every bias of the backbone (the patch embedding's 768; per layer q, k, v, o 4x768,
#   fc1 3,072, fc2 768, two LayerNorms 2x768 = 8,448) plus the final LayerNorm whole:
#   768 + 12 x 8,448 + 1,536 = 103,680.
# - Prompt tuning, 25 tokens of 768: 19,200 (shallow) or 12 x 19,200 (deep), + 1,536.
# - Prefix tuning, 24 tokens: 12 keys and 12 values of 768 per layer, 12 x 18,432, + 1,536.
PARITY = {
    "conformer r96 k31": ({**CONFORMER, "reduction": 96, "kernel": 31}, 272_256),
    "conformer r96 k8": ({**CONFORMER, "reduction": 96, "kernel": 8}, 270_048),
    "conformer r64 k31": ({**CONFORMER, "reduction": 64, "kernel": 31}, 384_576),
    "adapter pfeiffer r96": (
        {"kind": "adapter", "lr": 1.0, "placement": "pfeiffer", "mode": "parallel",
         "reduction": 96},
        176_736,
    ),
    "lora r12 q v": (
        {"kind": "lora", "lr": 1.0, "rank": 12, "alpha": 8, "dropout": 0.0, "targets": ["q", "v"]},
        443_904,
    ),
    "bitfit": ({"kind": "bitfit", "lr": 1.0}, 103_680),
    "prompt shallow 25": ({"kind": "prompt", "lr": 1.0, "tokens": 25, "deep": False}, 20_736),
    "prompt deep 25": ({"kind": "prompt", "lr": 1.0, "tokens": 25, "deep": True}, 231_936),
    "prefix 24": ({"kind": "prefix", "lr": 1.0, "tokens": 24}, 222_720),
}  # fmt: skip


@pytest.fixture(scope="module")
def ast_base() -> nn.Module:
    torch.manual_seed(0)
    return build_model(model_settings(AST_BASE), feature_settings(FEATURES), 50)


@pytest.mark.parametrize("case", list(PARITY))
def test_trainable_parameters_match_the_reference_on_ast_base(
    ast_base: nn.Module, case: str
) -> None:
    settings, expected = PARITY[case]
    model = get_strategy(strategy_settings(settings)).apply(copy.deepcopy(ast_base))
    assert count_parameters(model, exclude=("classifier.",)).trainable == expected
    # Every added parameter was initialised: finite, and not left at torch.empty's garbage.
    assert all(torch.isfinite(p).all() for p in model.parameters())


# The other methods on AST-base: full and linear exactly; peft's tuners by their own arithmetic
# where it is short (IA3 on k, v and fc2: a scale per output of k and v and per input of fc2,
# 768 + 768 + 3,072 per layer, plus the final LayerNorm), else only that they are small.
OTHERS_ON_AST_BASE = {
    "full": ({"kind": "full", "lr": 1.0}, "all"),
    "linear": ({"kind": "linear", "lr": 1.0}, 1_536),
    "IA3": ({"kind": "peft", "lr": 1.0, "tuner": "IA3", "targets": ["k", "v", "ffn_out"]},
            12 * (768 + 768 + 3072) + 1_536),
    "AdaLoRA": ({"kind": "peft", "lr": 1.0, "tuner": "AdaLoRA", "targets": ["q", "v"],
                 "options": {"init_r": 12, "target_r": 8, "lora_dropout": 0.1}}, "small"),
    "LoHa": ({"kind": "peft", "lr": 1.0, "tuner": "LoHa", "targets": ["q", "v"],
              "options": {"r": 8}}, "small"),
    "LoKr": ({"kind": "peft", "lr": 1.0, "tuner": "LoKr", "targets": ["q", "v"],
              "options": {"r": 8}}, "small"),
    "VeRA": ({"kind": "peft", "lr": 1.0, "tuner": "VeRA", "targets": ["q", "v"],
              "options": {"r": 64}}, "small"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OTHERS_ON_AST_BASE))
def test_the_other_methods_build_on_ast_base(ast_base: nn.Module, case: str) -> None:
    settings, expected = OTHERS_ON_AST_BASE[case]
    strategy = get_strategy(strategy_settings(settings))
    strategy.total_steps = 100
    tuner = settings.get("tuner")
    if tuner and compat.peft_config_class(tuner) is None:  # the legacy environment's peft 0.3
        with pytest.raises(ConfigError, match="is not in the installed peft"):
            strategy.apply(copy.deepcopy(ast_base))
        return
    model = strategy.apply(copy.deepcopy(ast_base))
    counts = count_parameters(model, exclude=("classifier.",))
    if expected == "all":
        # 85,708,032: AST-base without its head (LayerNorm and 768x50 dense layer).
        assert counts.trainable == counts.total == 85_708_032
    elif expected == "small":
        assert 0 < counts.trainable < 0.01 * counts.total
    else:
        assert counts.trainable == expected
    assert all(torch.isfinite(p).all() for p in model.parameters())


def tiny(num_classes: int = 4, **model: object) -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        model_settings({**TINY, **model}),
        feature_settings({"target_length": 64, "num_mel_bins": 128}),
        num_classes,
    )


ADAPTER = {"kind": "adapter", "reduction": 4}
ZERO_INIT = {
    "adapter pfeiffer seq": {**ADAPTER, "placement": "pfeiffer", "mode": "sequential"},
    "adapter pfeiffer par": {**ADAPTER, "placement": "pfeiffer", "mode": "parallel"},
    "adapter houlsby seq": {**ADAPTER, "placement": "houlsby", "mode": "sequential"},
    "adapter houlsby par": {**ADAPTER, "placement": "houlsby", "mode": "parallel"},
    "conformer pfeiffer seq": {**CONFORMER, "reduction": 4, "mode": "sequential", "kernel": 5},
    "conformer houlsby par": {**CONFORMER, "reduction": 4, "placement": "houlsby", "kernel": 4},
    "lora": {"kind": "lora", "rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q", "v"]},
}


@pytest.mark.parametrize("case", list(ZERO_INIT))
def test_zero_initialised_methods_leave_the_model_unchanged(case: str) -> None:
    settings = {"lr": 1.0, **ZERO_INIT[case]}
    x = torch.randn(3, 64, 128, generator=torch.Generator().manual_seed(1))
    frozen = tiny().eval()
    with torch.no_grad():
        expected = frozen(input_values=x).logits
        model = get_strategy(strategy_settings(settings)).apply(tiny()).eval()
        assert torch.equal(model(input_values=x).logits, expected)


PEFT_TUNERS = {
    "AdaLoRA": {"init_r": 4, "target_r": 2, "lora_dropout": 0.1},  # see the next test
    "IA3": {},
    "LoHa": {"r": 4},
    "LoKr": {"r": 4},
    "VeRA": {"r": 4},
}
# A parameter only each tuner adds: its presence shows the tuner itself is in place.
TUNER_PARAMETER = {"AdaLoRA": "lora_E", "IA3": "ia3_l", "LoHa": "hada_w1_a", "LoKr": "lokr_w1",
                   "VeRA": "vera_lambda_b"}  # fmt: skip


@pytest.mark.parametrize("tuner", list(PEFT_TUNERS))
def test_peft_tuners_by_name_or_a_config_error_naming_the_release(tuner: str) -> None:
    targets = ["k", "v", "ffn_out"] if tuner == "IA3" else ["q", "v"]
    settings = {"kind": "peft", "lr": 1.0, "tuner": tuner, "targets": targets,
                "options": PEFT_TUNERS[tuner]}  # fmt: skip
    strategy = get_strategy(strategy_settings(settings))
    strategy.total_steps = 10
    if compat.peft_config_class(tuner) is None:  # the legacy environment's peft 0.3
        with pytest.raises(ConfigError, match=f"{tuner!r} is not in the installed peft .*>= "):
            strategy.apply(tiny())
        return
    x = torch.randn(3, 64, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = tiny().eval()(input_values=x).logits
        model = strategy.apply(tiny()).eval()
        # Every one of these starts as the identity (a factor at zero, IA3's scales at one).
        assert torch.allclose(model(input_values=x).logits, expected, atol=1e-6)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(TUNER_PARAMETER[tuner] in n for n in trained), trained
    # Besides the tuner's own parameters only the head and the final LayerNorm train.
    backbone = [n for n in trained if "classifier" not in n and "layernorm." not in n]
    assert backbone and all(
        any(key in n for key in ("lora_", "ia3_", "hada_", "lokr_", "vera_")) for n in backbone
    ), backbone


def test_adalora_without_dropout_on_peft_0_3_is_a_config_error() -> None:
    settings = {"kind": "peft", "lr": 1.0, "tuner": "AdaLoRA", "targets": ["q", "v"],
                "options": {"init_r": 4, "target_r": 2}}  # fmt: skip
    strategy = get_strategy(strategy_settings(settings))
    strategy.total_steps = 10
    if compat.peft_version() >= Version("0.4"):
        assert strategy.apply(tiny()) is not None  # the bug is fixed there
        return
    with pytest.raises(ConfigError, match=r"AdaLoRA fails with lora_dropout 0 .*peft 0\.4"):
        strategy.apply(tiny())


def test_the_frozen_backbone_stays_in_eval_mode() -> None:
    settings = {"kind": "conformer", "lr": 1.0, "placement": "houlsby", "mode": "sequential",
                "reduction": 4, "kernel": 3}  # fmt: skip
    strategy = get_strategy(strategy_settings(settings))
    model = strategy.apply(tiny())
    strategy.train_mode(model)
    backbone = model.audio_spectrogram_transformer
    dropouts = [m for m in backbone.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and not any(m.training for m in dropouts)  # dropout off in the backbone
    assert all(m.training for m in model.petl.modules())  # its BatchNorm in training mode
    assert backbone.layernorm.training  # a LayerNorm that trains, in training mode
    # Configurable: frozen_eval false trains the whole model in training mode.
    other = get_strategy(strategy_settings({**settings, "frozen_eval": False}))
    model = other.apply(tiny())
    other.train_mode(model)
    assert all(m.training for m in model.modules())
    # Full fine-tuning trains everything, in training mode.
    full = get_strategy(strategy_settings({"kind": "full", "lr": 1.0}))
    model = full.apply(tiny())
    full.train_mode(model)
    assert all(m.training for m in model.modules())


def test_layernorms_that_train_are_configurable() -> None:
    def trained_norms(**settings: object) -> set[str]:
        base = {"kind": "adapter", "lr": 1.0, "placement": "pfeiffer", "mode": "parallel",
                "reduction": 4}  # fmt: skip
        model = get_strategy(strategy_settings({**base, **settings})).apply(tiny())
        return {
            n.rsplit(".", 2)[-2] if ".layers." in n or ".layer." in n else n.rsplit(".", 1)[0]
            for n, p in model.named_parameters()
            if p.requires_grad and "layernorm" in n and not n.startswith("classifier")
        }

    assert trained_norms() == {"layernorm_after", "audio_spectrogram_transformer.layernorm"}
    assert trained_norms(layernorms=[]) == set()
    assert trained_norms(layernorms=["before_attention"]) == {"layernorm_before"}


def test_mean_pooling_and_zeroed_position_embeddings() -> None:
    model = tiny(pooling="mean").eval()
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        hidden = model.audio_spectrogram_transformer(input_values=x).last_hidden_state
        expected = model.classifier(hidden.mean(dim=1))
        assert torch.allclose(model(input_values=x).logits, expected, atol=1e-6)
    zeroed = tiny(zero_position_embeddings=True)
    assert not zeroed.audio_spectrogram_transformer.embeddings.position_embeddings.any()
    assert tiny().audio_spectrogram_transformer.embeddings.position_embeddings.abs().sum() > 0


# Every method on the quick project's pretrained tiny AST and cached synthetic data.
TRAINED = {
    "bitfit": "{kind: bitfit, lr: 5.0e-3}",
    "prompt": "{kind: prompt, lr: 1.0e-2, tokens: 4, deep: false}",
    "prompt-deep": "{kind: prompt, lr: 1.0e-2, tokens: 4, deep: true}",
    "prefix": "{kind: prefix, lr: 1.0e-2, tokens: 4}",
    "adapter": "{kind: adapter, lr: 5.0e-3, placement: pfeiffer, mode: parallel, reduction: 4}",
    "adapter-houlsby": (
        "{kind: adapter, lr: 5.0e-3, placement: houlsby, mode: sequential, reduction: 4}"
    ),
    "conformer": (
        "{kind: conformer, lr: 5.0e-3, placement: pfeiffer, mode: parallel, reduction: 4,"
        " kernel: 5}"
    ),
    "adalora": (
        "{kind: peft, lr: 5.0e-3, tuner: AdaLoRA, targets: [q, v],"
        " options: {init_r: 4, target_r: 2, lora_dropout: 0.1}}"
    ),
    "ia3": "{kind: peft, lr: 5.0e-3, tuner: IA3, targets: [k, v, ffn_out]}",
}


@pytest.mark.parametrize("name", list(TRAINED))
def test_every_method_trains_beats_chance_and_is_rebuilt(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
    name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / name
    args = train_args(name, out, f"strategies.{name}={TRAINED[name]}", "training.epochs=6")
    tuner = {"adalora": "AdaLoRA", "ia3": "IA3"}.get(name)
    if tuner and compat.peft_config_class(tuner) is None:  # the legacy environment's peft 0.3
        assert run_main([*args, "--evaluate"]) == 2
        assert f"{tuner!r} is not in the installed peft" in capsys.readouterr().err
        assert not out.exists()
        return
    assert run_main([*args, "--evaluate"]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 1 / metrics["classes"]
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["matches_reported"] and evaluation["max_abs_logit_difference"] == 0.0
    if name == "adalora":  # the rank budget was reallocated, as peft requires every step
        config = json.loads((out / "model" / "adapter" / "adapter_config.json").read_text())
        assert config["rank_pattern"], config


def test_last_epoch_reporting_is_available_for_comparison(
    in_quick_project: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "last"
    assert run_main(train_args("linear", out, "training.test_epoch=last")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] == metrics["epochs_run"] == 3
    assert metrics["selected_by"].startswith("last epoch (training.test_epoch: last")
