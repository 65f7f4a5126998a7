"""The reference protocol (PETL_AST), setting by setting: the values the presets take from it,
SpecAugment as it masks, LoRA at its scaling and in either orientation, the modules as its
pinned stack left them after loading, and the fold rotation it validates on.

docs/petl-ast-protocol.md traces each value to the reference's file and line; the tests here
pin what our code sets.
"""

from __future__ import annotations

import json
import math
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, LEGACY_PYTHON
from settings_helpers import feature_settings, model_settings, strategy_settings
from torch import nn
from training_helpers import (  # noqa: F401
    in_quick_project,
    quick_project,
    restore_torch_globals,
    run_main,
    train_args,
)

from audiopetl.core.errors import ConfigError
from audiopetl.data.splits.folds import split_folds
from audiopetl.models.build import build_model
from audiopetl.models.strategies import count_parameters, get_strategy
from audiopetl.study import load_study
from audiopetl.training.augment import band, spec_augment

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
BASE = CONFIG_DIR / "config.yaml"
PRESETS = ("esc50-petl-ast", "esc50-petl-ast-faithful")


# -- the presets' traced values -------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_the_presets_take_the_reference_training_settings(preset: str) -> None:
    study = load_study(BASE, preset)
    lora = study.strategy("lora")
    t = study.training("lora")
    assert (t.epochs, t.batch_size, t.betas, t.eps, t.weight_decay) == (
        50, 32, (0.9, 0.98), 1e-6, 0.1)  # fmt: skip
    assert (t.warmup_ratio, t.grad_clip, t.label_smoothing, t.mixup_alpha) == (0.0, None, 0, 0)
    assert (t.specaugment.freq_mask, t.specaugment.time_mask) == (24, 80)
    assert t.split == "train_val_test_before"
    features = study.features("esc50").values
    assert (features["target_length"], features["mean"], features["std"]) == (
        500, -4.2677393, 4.5689974)  # fmt: skip
    assert study.model("ast-audioset").pooling == "mean"
    assert study.config["study"]["seeds"] == [10]
    # LoRA: width round(768 / 64) = 12, update scaled by ALPHA / RR = 8 / 64.
    assert lora.options["rank"] == 12
    assert lora.options["alpha"] / lora.options["rank"] == pytest.approx(8 / 64)
    assert lora.options["dropout"] == 0.0 and lora.lr == 5e-3


def test_the_reference_learning_rates_per_method() -> None:
    study = load_study(BASE, "esc50-petl-ast")
    expected = {"full": 5e-5, "linear": 1e-3, "bitfit": 5e-3, "lora": 5e-3,
                "prompt-deep": 1e-2, "prefix": 1e-2, "adapter-pfeiffer-par": 5e-3,
                "conformer-pfeiffer-par": 5e-3}  # fmt: skip
    assert {name: study.strategy(name).lr for name in expected} == expected
    conformer = study.strategy("conformer-pfeiffer-par").options
    assert (conformer["reduction"], conformer["kernel"]) == (96, 31)
    assert study.strategy("prompt-deep").options["tokens"] == 25
    assert study.strategy("prefix").options["tokens"] == 24


def test_the_faithful_preset_runs_lora_in_the_reference_orientation() -> None:
    study = load_study(BASE, "esc50-petl-ast-faithful")
    assert study.strategy("lora").options.get("init", "peft") == "peft"
    assert study.strategy("lora-reference-init").options["init"] == "reference"
    as_run = study.strategy("lora-as-run")
    assert as_run.options["init"] == "reference-loaded"
    assert study.training("lora-as-run").test_epoch == "last"
    conformer = study.strategy("conformer-as-run").options
    assert (conformer["init"], conformer["input_norm"]) == ("reference-loaded", False)


# -- the fold rotation ------------------------------------------------------------------------
def test_validation_on_the_fold_before_the_test_fold_as_the_reference() -> None:
    """PETL_AST's lists: test [[5], [1], [2], [3], [4]], validation [[4], [5], [1], [2], [3]],
    training the other three."""
    for test, val in zip((5, 1, 2, 3, 4), (4, 5, 1, 2, 3), strict=True):
        splits = split_folds([1, 2, 3, 4, 5], test, "train_val_test_before")
        assert (splits.test, splits.val) == ([test], [val])
        assert splits.train == sorted({1, 2, 3, 4, 5} - {test, val})
    assert split_folds([1, 2, 3, 4, 5], 5, "train_val_test").val == [1]  # the default: after


# -- SpecAugment ------------------------------------------------------------------------------
def test_a_mask_band_worked_by_hand() -> None:
    """torchaudio's mask_along_axis: width floor(u * F), start floor(v * (size - u * F))."""
    start, end = band(torch.tensor([0.5, 0.999, 0.0]), torch.tensor([0.25, 1.0, 0.7]), 24, 128)
    # 0.5: 12 bins from floor(0.25 * 116) = 29; 0.999: 23 bins from floor(1.0 * 104.024) = 104;
    # 0.0: none.
    assert start.tolist() == [29, 104, 89] and (end - start).tolist() == [12, 23, 0]


def test_spec_augment_masks_as_the_reference_in_distribution() -> None:
    """Over many clips: one frequency band of 0..23 bins and one time band of 0..79 frames per
    clip, each width uniform (mean (F - 1) / 2), within the clip, the masked values 0."""
    torch.manual_seed(0)
    clips, frames, bins = 20_000, 100, 128
    x = torch.rand(clips, frames, bins) + 1.0  # no zero anywhere before masking
    y = spec_augment(x, freq_mask=24, time_mask=80)
    zero = y == 0
    bins_masked = zero.all(dim=1).sum(dim=1)  # whole frequency bins
    frames_masked = zero.all(dim=2).sum(dim=1)
    for widths, widest in ((bins_masked, 24), (frames_masked, 80)):
        assert widths.max().item() == widest - 1  # never the parameter itself
        assert widths.float().mean().item() == pytest.approx((widest - 1) / 2, abs=0.25)
        counts = torch.bincount(widths, minlength=widest).float() / clips
        assert counts.max().item() < 1.25 / widest and counts.min().item() > 0.75 / widest
    # Zero exactly on the bands; the rest is the input.
    band_f = zero.all(dim=1, keepdim=True).expand_as(zero)
    band_t = zero.all(dim=2, keepdim=True).expand_as(zero)
    assert torch.equal(zero, band_f | band_t)
    assert torch.equal(y[~zero], x[~zero])


def test_spec_augment_draws_per_clip_and_per_call_and_repeats_from_a_seed() -> None:
    x = torch.ones(8, 64, 128)
    torch.manual_seed(3)
    first, second = spec_augment(x, 24, 30), spec_augment(x, 24, 30)
    torch.manual_seed(3)
    assert torch.equal(spec_augment(x, 24, 30), first)  # the run's seed decides
    assert not torch.equal(first, second)  # a new mask at every access (every epoch)
    assert len({tuple((c == 0).all(dim=0).nonzero().flatten().tolist()) for c in first}) > 1


@pytest.mark.usefixtures("in_quick_project")
def test_only_training_clips_are_masked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A run masks each training batch once per epoch; validation, test and the re-evaluation
    never pass through augment (the quick run: 24 training clips, batches of 8, 3 epochs)."""
    import audiopetl.training.trainer as trainer_module

    seen: list[int] = []
    real = trainer_module.augment

    def recording(x, target, masks, mixup):
        seen.append(len(x))
        return real(x, target, masks, mixup)

    monkeypatch.setattr(trainer_module, "augment", recording)
    masks = ("training.specaugment.freq_mask=24", "training.specaugment.time_mask=20")
    args = train_args("linear", tmp_path / "run", *masks)
    assert run_main([*args, "--evaluate"]) == 0
    assert seen == [8] * 9


def test_masks_on_a_waveform_model_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="reads the waveform"):
        load_study(BASE, "models", ["training.specaugment.time_mask=8"])


# -- LoRA at the reference's scaling, in either orientation ----------------------------------
TINY = {
    "pretrained": None,
    "attn_implementation": "eager",
    "architecture": {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "intermediate_size": 64, "hidden_dropout_prob": 0.0,
                     "attention_probs_dropout_prob": 0.0},
}  # fmt: skip
FEATURES = {"target_length": 64, "num_mel_bins": 128}


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(model_settings(TINY), feature_settings(FEATURES), 5)


def lora(init: str, rank: int = 4, alpha: float = 0.5) -> tuple[nn.Module, list[nn.Module]]:
    settings = {"kind": "lora", "rank": rank, "alpha": alpha, "dropout": 0.0,
                "targets": ["q", "v"], "init": init}  # fmt: skip
    model = get_strategy(strategy_settings(settings)).apply(tiny_model())
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    return model, layers


@pytest.mark.parametrize("init", ["peft", "reference"])
def test_lora_starts_at_zero_either_way(init: str) -> None:
    x = torch.randn(2, 64, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = tiny_model().eval()(input_values=x).logits
        model, _ = lora(init)
        assert torch.equal(model.eval()(input_values=x).logits, expected)


def test_lora_computes_w_x_plus_s_up_down_x() -> None:
    """For given weights A (down) and B (up) and s = alpha / rank: W x + b + s * B A x."""
    _, layers = lora("peft", rank=4, alpha=0.5)
    layer = layers[0]
    generator = torch.Generator().manual_seed(2)
    down = torch.randn(layer.lora_A["default"].weight.shape, generator=generator)
    up = torch.randn(layer.lora_B["default"].weight.shape, generator=generator)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(down)
        layer.lora_B["default"].weight.copy_(up)
        x = torch.randn(3, layer.base_layer.in_features if hasattr(layer, "base_layer")
                        else layer.in_features, generator=generator)  # fmt: skip
        base = layer.base_layer if hasattr(layer, "base_layer") else None
        weight = base.weight if base is not None else layer.weight
        bias = base.bias if base is not None else layer.bias
        expected = x @ weight.T + bias + (0.5 / 4) * (x @ down.T @ up.T)
        assert torch.allclose(layer(x), expected, atol=1e-5)
    assert layer.scaling["default"] == pytest.approx(0.125)


def test_the_presets_lora_scale_is_the_references() -> None:
    """rank 12, alpha 1.5: peft's alpha / rank is ALPHA / RR = 8 / 64 = 0.125."""
    block = load_study(BASE, "esc50-petl-ast").config["strategies"]["lora"]
    _, layers = lora("peft", rank=block["rank"], alpha=block["alpha"])
    assert {layer.scaling["default"] for layer in layers} == {0.125}


@pytest.mark.parametrize(("init", "moves", "stays"), [("peft", "B", "A"), ("reference", "A", "B")])
def test_the_first_gradient_reaches_the_matrix_the_orientation_says(
    init: str, moves: str, stays: str
) -> None:
    """peft: B (up) is zero, so A's gradient is zero and B's is not; the reference: A (down)
    is zero, so only A's gradient is non-zero."""
    model, layers = lora(init)
    zero = {"peft": "B", "reference": "A"}[init]
    for layer in layers:
        assert not getattr(layer, f"lora_{zero}")["default"].weight.any()
    x = torch.randn(4, 64, 128, generator=torch.Generator().manual_seed(3))
    nn.functional.cross_entropy(model(input_values=x).logits, torch.tensor([0, 1, 2, 3])).backward()
    for layer in layers:
        assert getattr(layer, f"lora_{moves}")["default"].weight.grad.abs().sum() > 0
        assert not getattr(layer, f"lora_{stays}")["default"].weight.grad.any()


def test_lora_as_the_reference_stack_left_it_is_not_zero() -> None:
    _, layers = lora("reference-loaded", rank=8)
    for layer in layers:
        for matrix in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
            assert matrix.std().item() == pytest.approx(0.02, rel=0.25)  # initializer_range


@pytest.mark.parametrize("kind", ["adapter", "conformer"])
def test_adapters_as_the_reference_stack_left_them_change_the_model_at_once(kind: str) -> None:
    settings = {"kind": kind, "placement": "pfeiffer", "mode": "parallel", "reduction": 4,
                "init": "reference-loaded"}  # fmt: skip
    settings |= {"kernel": 3} if kind == "conformer" else {}
    x = torch.randn(2, 64, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        frozen = tiny_model().eval()(input_values=x).logits
        model = get_strategy(strategy_settings(settings)).apply(tiny_model()).eval()
        assert not torch.allclose(model(input_values=x).logits, frozen)


def test_the_conformer_input_norm_unused_as_in_the_reference() -> None:
    """input_norm false: the LayerNorm stays (its parameters count, as the reference's) but its
    weights change nothing."""
    settings = {"kind": "conformer", "placement": "pfeiffer", "mode": "parallel",
                "reduction": 4, "kernel": 3, "init": "reference-loaded"}  # fmt: skip
    x = torch.randn(2, 64, 128, generator=torch.Generator().manual_seed(5))
    for input_norm, changes in ((False, False), (True, True)):
        model = get_strategy(strategy_settings({**settings, "input_norm": input_norm})).apply(
            tiny_model()
        )
        model.eval()
        with torch.no_grad():
            before = model(input_values=x).logits
            for block in model.petl["ffn"]:
                block.norm.weight.mul_(3.0)
                block.norm.bias.add_(1.0)
            after = model(input_values=x).logits
        assert (not torch.allclose(before, after)) is changes


def test_bitfit_on_the_linear_and_layernorm_biases_as_the_reference() -> None:
    """On AST-base (random weights, no download): every Linear and LayerNorm bias of the 12
    layers (q, k, v, o 4 x 768; 3,072 + 768 in the feed-forward block; two LayerNorms 2 x 768)
    and the final LayerNorm's bias: 12 x 8,448 + 768 = 102,144; not the patch embedding's."""
    arch = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "patch_size": 16, "frequency_stride": 10,
            "time_stride": 10}  # fmt: skip
    torch.manual_seed(0)
    model = build_model(
        model_settings({"pretrained": None, "attn_implementation": "sdpa", "architecture": arch}),
        feature_settings({"target_length": 500, "num_mel_bins": 128}),
        50,
    )
    settings = {"kind": "bitfit", "biases": "linear_and_norm", "layernorms": []}
    model = get_strategy(strategy_settings(settings)).apply(model)
    assert count_parameters(model, exclude=("classifier.",)).trainable == 102_144
    patch = dict(model.named_parameters())
    assert not next(
        p for n, p in patch.items() if "patch_embeddings" in n and "bias" in n
    ).requires_grad


# -- what the reference's pinned stack does to modules it adds --------------------------------
LOADED = textwrap.dedent(
    """
    import json, sys, tempfile, torch
    from torch import nn
    from transformers import ASTConfig, ASTModel

    class WithAdded(ASTModel):
        # A module created in the model's __init__, given a zero weight there, as the
        # reference builds its adapters and LoRA.
        def __init__(self, config):
            super().__init__(config)
            self.added = nn.Linear(config.hidden_size, 8, bias=False)
            nn.init.zeros_(self.added.weight)

    config = ASTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_length=1024)
    with tempfile.TemporaryDirectory() as folder:
        ASTModel(config).save_pretrained(folder)
        loaded = WithAdded.from_pretrained(folder, max_length=500, ignore_mismatched_sizes=True)
    print(json.dumps({
        "transformers": __import__("transformers").__version__,
        "added_std": float(loaded.added.weight.std()),
        "position_abs_sum": float(loaded.embeddings.position_embeddings.abs().sum()),
    }))
    """
)


@pytest.mark.legacy_env
def test_the_reference_stack_reinitialises_modules_it_adds_and_zeroes_positions() -> None:
    """Measured in the legacy environment (transformers 4.28.1, the reference's pin): a module
    added in the model's __init__ and zero-initialised there comes out of from_pretrained
    normal with std initializer_range (0.02): transformers initialises every module it found
    no weights for. And at another length than the checkpoint's, every position embedding is
    zero (the reference's first defect)."""
    out = subprocess.run([str(LEGACY_PYTHON), "-c", LOADED], check=True, capture_output=True)
    found = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert found["transformers"] == "4.28.1"
    assert found["added_std"] == pytest.approx(0.02, rel=0.2)
    assert found["position_abs_sum"] == 0.0
    assert math.isfinite(found["added_std"])
