"""The model kinds: each built tiny and from its real architecture's config (hyper-parameters
written here, no download), the module-name mapping the strategies rely on, loading a
pretrained folder without re-initialising anything, Whisper's input length, and every
applicable strategy on every kind. The non-slow tests also run in the legacy environment
(transformers 4.28), so the mapping is checked on both versions."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR
from settings_helpers import feature_settings, model_settings, strategy_settings

from audiopetl.core.config import ConfigError, load_config
from audiopetl.core.errors import TrainingError
from audiopetl.models.backbones import TARGETS, get_backbone, kinds, layout_of
from audiopetl.models.build import build_model
from audiopetl.models.strategies import count_parameters, get_strategy
from audiopetl.study import Study, load_study

WAVEFORM_KINDS = ("wav2vec2", "hubert", "wavlm")
TINY_WAVEFORM = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [8, 8],
    "conv_kernel": [10, 4],
    "conv_stride": [5, 4],
    "num_conv_pos_embeddings": 8,
    "num_conv_pos_embedding_groups": 2,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0,
}
# Two Swin stages of widths 16 and 32 (HTS-AT doubles the width per stage); 10 s of input.
TINY_CLAP = {
    "patch_embeds_hidden_size": 16,
    "depths": [1, 1],
    "num_attention_heads": [2, 2],
    "window_size": 8,
    "hidden_size": 32,
}
TINY_WHISPER = {
    "d_model": 32,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
}
# The real architectures (their configs' values on the hub), with all their layers.
WHISPER_BASE = {
    "d_model": 512,
    "encoder_layers": 6,
    "encoder_attention_heads": 8,
    "encoder_ffn_dim": 2048,
}
# wav2vec2-base, hubert-base-ls960 and wavlm-base-plus share these.
WAVEFORM_BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
}
WHISPER_FEATURES = {"front_end": "whisper", "num_mel_bins": 80, "target_length": 64}
CLAP_FEATURES = {"front_end": "clap", "num_mel_bins": 64, "target_length": 1001}
WAVE_FEATURES = {"front_end": "waveform", "target_length": 3200, "normalize": True}
CLASSES = 5


def model_cfg(kind: str, architecture: dict | None = None) -> dict:
    if architecture is None:
        architecture = {"whisper-encoder": TINY_WHISPER, "clap-audio": TINY_CLAP}.get(
            kind, TINY_WAVEFORM
        )
    attn = "eager" if kind in ("wavlm", "clap-audio") else "sdpa"
    return {
        "kind": kind,
        "pretrained": None,
        "attn_implementation": attn,
        "architecture": dict(architecture),
    }


def build(block: dict, values: dict, num_classes: int, pretrained: str | None = None):
    """build_model of a model block and a front end's values, as the tests write them."""
    return build_model(model_settings(block), feature_settings(values), num_classes, pretrained)


def features_of(kind: str) -> dict:
    return {"whisper-encoder": WHISPER_FEATURES, "clap-audio": CLAP_FEATURES}.get(
        kind, WAVE_FEATURES
    )


def tiny(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(model_cfg(kind), features_of(kind), CLASSES)


def batch(kind: str, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    frames = features_of(kind)["target_length"]
    bins = features_of(kind).get("num_mel_bins", 1)
    return torch.randn(n, frames, bins, generator=g)


OTHER_KINDS = ("whisper-encoder", *WAVEFORM_KINDS, "clap-audio")


def test_the_registry_knows_every_kind():
    assert kinds() == ["ast", "clap-audio", "hubert", "wav2vec2", "wavlm", "whisper-encoder"]
    assert {k: get_backbone(k).front_end for k in kinds()} == {
        "ast": "fbank",
        "clap-audio": "clap",
        "hubert": "waveform",
        "wav2vec2": "waveform",
        "wavlm": "waveform",
        "whisper-encoder": "whisper",
    }
    with pytest.raises(ConfigError, match="model kind 'beats' is not registered"):
        get_backbone("beats")


@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_tiny_kind_classifies_and_maps_every_target(kind):
    model = tiny(kind)
    assert model.audiopetl_kind == kind
    logits = model(input_values=batch(kind)).logits
    assert logits.shape == (3, CLASSES) and torch.isfinite(logits).all()
    layout = layout_of(model)
    layers = layout.layer_modules(model)
    assert len(layers) == 2
    for target in TARGETS:
        names = layout.modules_for(model, target)
        assert len(names) == 2, (target, names)
        assert all(isinstance(m, torch.nn.Linear) for m in layout.target_modules(model, target))
    widths = [m.in_features for m in layout.target_modules(model, "q")]
    assert widths == ([16, 32] if kind == "clap-audio" else [32, 32])
    modules = dict(model.named_modules())
    for name in (*layout.head, layout.final_norm):
        assert name in modules
    for which in ("before_attention", "before_ffn"):
        leaf = layout.per_layer_norm(which)
        if leaf is not None:
            assert all(isinstance(getattr(layer, leaf), torch.nn.LayerNorm) for layer in layers)


@pytest.mark.parametrize(
    ("kind", "architecture", "layers", "hidden"),
    [
        ("whisper-encoder", {**WHISPER_BASE, "encoder_layers": 2}, 2, 512),
        *((k, {**WAVEFORM_BASE, "num_hidden_layers": 2}, 2, 768) for k in WAVEFORM_KINDS),
    ],
)
def test_real_architecture_maps_every_target(kind, architecture, layers, hidden):
    """The real widths, convolution stacks and module names (two layers, to stay quick and run
    in both environments; tests/test_backbones.py::test_real_size_* builds them whole)."""
    torch.manual_seed(0)
    features = {**features_of(kind), "target_length": 3000 if kind != "wavlm" else 16000}
    model = build(model_cfg(kind, architecture), features, CLASSES)
    layout = layout_of(model)
    for target in TARGETS:
        found = layout.target_modules(model, target)
        assert len(found) == layers
        width = {"ffn_in": (hidden, 4 * hidden), "ffn_out": (4 * hidden, hidden)}.get(
            target, (hidden, hidden)
        )
        assert all((m.in_features, m.out_features) == width for m in found), target


def lora(rank: int = 4, targets: tuple[str, ...] = ("q", "v")) -> dict:
    return {
        "kind": "lora",
        "lr": 1e-3,
        "rank": rank,
        "alpha": 2 * rank,
        "dropout": 0.0,
        "targets": list(targets),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "architecture", "lora_r8_qv"),
    [
        # 6 layers x 2 targets x (512 x 8 + 8 x 512)
        ("whisper-encoder", WHISPER_BASE, 98_304),
        # 12 layers x 2 targets x (768 x 8 + 8 x 768)
        *((k, WAVEFORM_BASE, 294_912) for k in WAVEFORM_KINDS),
    ],
)
def test_real_size_kind_builds_and_counts(kind, architecture, lora_r8_qv):
    """Each kind at its real size: LoRA r8 on q and v adds exactly the arithmetic's count, and
    the model is transformers' own encoder plus our head (nothing else added or dropped)."""
    torch.manual_seed(0)
    features = {**features_of(kind), "target_length": 3000 if kind != "wavlm" else 16000}
    cfg = model_cfg(kind, architecture)
    model = build(cfg, features, CLASSES)
    hidden = architecture.get("d_model") or architecture["hidden_size"]
    head = 2 * hidden + hidden * CLASSES + CLASSES
    encoder = sum(p.numel() for p in model.encoder.parameters())
    assert count_parameters(model).total == encoder + head
    base = count_parameters(model).total
    adapted = get_strategy(strategy_settings(lora(8))).apply(model)
    counts = count_parameters(adapted)
    final_norm = 2 * hidden
    # peft keeps a trainable copy of each module to save (the head, the final LayerNorm).
    assert counts.total - base == lora_r8_qv + head + final_norm
    assert counts.trainable == lora_r8_qv + head + final_norm


@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_same_seed_same_model_other_seed_other_model(kind):
    a, b, c = tiny(kind, 3), tiny(kind, 3), tiny(kind, 4)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert not all(torch.equal(p, r) for p, r in zip(a.parameters(), c.parameters(), strict=True))


@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_every_parameter_is_initialised_explicitly(kind):
    """No parameter keeps a library default: biases zero, norms one/zero, weights drawn."""
    model = tiny(kind)
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
        if name.endswith("embed_positions.weight"):
            continue  # Whisper's sinusoids, checked below
        if param.dim() > 1:
            assert param.std() > 0, name


def test_whisper_positions_are_sinusoids_and_fixed():
    from audiopetl.models.backbones.whisper import sinusoids

    model = tiny("whisper-encoder")
    table = model.encoder.embed_positions.weight
    assert table.shape == (32, 32)
    assert torch.equal(table, sinusoids(32, 32))
    assert not table.requires_grad


# clap-htsat-unfused's audio encoder: HTS-AT with stages of 96, 192, 384 and 768 channels.
CLAP_HTSAT = {
    "patch_embeds_hidden_size": 96,
    "depths": [2, 2, 6, 2],
    "num_attention_heads": [4, 8, 16, 32],
    "window_size": 8,
    "hidden_size": 768,
}


@pytest.mark.slow
def test_real_size_clap_audio_maps_every_stage():
    """LoRA r8 on q and v of every Swin block: 2 x (w x 8 + 8 x w) = 32 w per block, over
    2, 2, 6 and 2 blocks of widths 96, 192, 384 and 768."""
    torch.manual_seed(0)
    model = build(model_cfg("clap-audio", CLAP_HTSAT), CLAP_FEATURES, CLASSES)
    layout = layout_of(model)
    widths = [m.in_features for m in layout.target_modules(model, "q")]
    assert widths == [96] * 2 + [192] * 2 + [384] * 6 + [768] * 2
    assert model.classifier.dense.in_features == 768
    base = count_parameters(model).total
    adapted = get_strategy(strategy_settings(lora(8))).apply(model)
    copies = (2 * 768 + 768 * CLASSES + CLASSES) + 2 * 768  # head and final norm, saved by peft
    lora_qv = 32 * (2 * 96 + 2 * 192 + 6 * 384 + 2 * 768)
    assert count_parameters(adapted).total - base == lora_qv + copies


HF_MODELS = {
    "clap-audio": ("ClapAudioConfig", "ClapAudioModel"),
    "whisper-encoder": ("WhisperConfig", "WhisperModel"),
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
    "hubert": ("HubertConfig", "HubertModel"),
    "wavlm": ("WavLMConfig", "WavLMModel"),
}


def save_donor(kind: str, folder: Path) -> torch.nn.Module:
    """A pretrained checkpoint as the hub would hold it: transformers' own model, saved."""
    import transformers

    config_name, model_name = HF_MODELS[kind]
    arch = dict(model_cfg(kind)["architecture"])
    if kind == "whisper-encoder":
        arch.update(
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
            max_source_positions=1500,
            num_mel_bins=80,
        )
    torch.manual_seed(11)
    donor = getattr(transformers, model_name)(getattr(transformers, config_name)(**arch))
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(torch.randn(p.shape) * 0.01)  # no weight at a default value
    donor.save_pretrained(str(folder), safe_serialization=True)
    return donor


@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_pretrained_folder_loads_every_weight(kind, tmp_path):
    donor = save_donor(kind, tmp_path / "donor")
    encoder = donor.encoder if kind == "whisper-encoder" else donor
    torch.manual_seed(0)
    model = build(model_cfg(kind), features_of(kind), CLASSES, str(tmp_path / "donor"))
    theirs = encoder.state_dict()
    for name, value in model.encoder.state_dict().items():
        expected = theirs[name]
        if name == "embed_positions.weight":
            expected = expected[: value.shape[0]]  # the first positions of the 30 s table
        assert torch.equal(value, expected), name
    torch.manual_seed(0)
    again = build(model_cfg(kind), features_of(kind), CLASSES, str(tmp_path / "donor"))
    assert torch.equal(model.classifier.dense.weight, again.classifier.dense.weight)


def test_a_checkpoint_of_another_kind_is_one_clear_error(tmp_path):
    save_donor("hubert", tmp_path / "hubert")
    wrong = r"a hubert checkpoint, not a whisper-encoder one \(set the model.s kind to hubert\)"
    with pytest.raises(TrainingError, match=wrong):
        build(model_cfg("whisper-encoder"), WHISPER_FEATURES, CLASSES, str(tmp_path / "hubert"))


def test_whisper_mel_bins_must_match_the_checkpoint(tmp_path):
    save_donor("whisper-encoder", tmp_path / "donor")
    with pytest.raises(TrainingError, match=r"front_end\.num_mel_bins to 80"):
        build(
            model_cfg("whisper-encoder"),
            {**WHISPER_FEATURES, "num_mel_bins": 128},
            CLASSES,
            str(tmp_path / "donor"),
        )


def test_whisper_cut_changes_no_frame_before_it(tmp_path):
    """A 64-frame clip in the encoder built for 64 frames gets, before its first layer, exactly
    the embedding its frames get in the 30 s encoder of the checkpoint: the same convolution
    outputs and the same positions. Only the last position, whose convolution reaches past the
    cut, sees the padding in a 30 s window."""
    donor = save_donor("whisper-encoder", tmp_path / "donor").encoder.eval()
    torch.manual_seed(0)
    model = build(
        model_cfg("whisper-encoder"), WHISPER_FEATURES, CLASSES, str(tmp_path / "donor")
    ).eval()
    clip = batch("whisper-encoder", 2)  # (2, 64, 80)
    window = torch.full((2, 80, 3000), -0.5)
    window[:, :, :64] = clip.transpose(1, 2)

    def embedded(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        act = torch.nn.functional.gelu
        h = act(encoder.conv2(act(encoder.conv1(x)))).permute(0, 2, 1)
        return h + encoder.embed_positions.weight[: h.shape[1]]

    with torch.no_grad():
        ours = embedded(model.encoder, clip.transpose(1, 2))
        theirs = embedded(donor, window)[:, :32]
    assert ours.shape == (2, 32, 32)
    torch.testing.assert_close(ours[:, :31], theirs[:, :31], rtol=0, atol=1e-6)
    assert not torch.allclose(ours[:, 31], theirs[:, 31])


def test_whisper_refuses_clips_longer_than_its_table():
    features = {**WHISPER_FEATURES, "target_length": 3002}
    with pytest.raises(TrainingError, match="longer than the 30 s"):
        build(model_cfg("whisper-encoder"), features, CLASSES)


APPLICABLE = {
    "full": {"kind": "full", "lr": 1e-3},
    "linear": {"kind": "linear", "lr": 1e-2},
    "bitfit": {"kind": "bitfit", "lr": 1e-3},
    "lora": lora(),
    "adapter": {
        "kind": "adapter",
        "lr": 1e-3,
        "placement": "houlsby",
        "mode": "parallel",
        "reduction": 4,
    },
    "adapter-seq": {
        "kind": "adapter",
        "lr": 1e-3,
        "placement": "pfeiffer",
        "mode": "sequential",
        "reduction": 4,
    },
    "conformer": {
        "kind": "conformer",
        "lr": 1e-3,
        "placement": "pfeiffer",
        "mode": "parallel",
        "reduction": 4,
        "kernel": 3,
    },
    "ia3": {"kind": "peft", "lr": 1e-3, "tuner": "IA3", "targets": ["k", "v", "ffn_out"]},
}


@pytest.mark.parametrize("kind", OTHER_KINDS)
@pytest.mark.parametrize("name", sorted(APPLICABLE))
def test_every_applicable_strategy_applies_and_starts_at_the_backbone(kind, name):
    settings = APPLICABLE[name]
    if settings["kind"] == "peft":
        from audiopetl.core import compat

        if compat.peft_config_class(settings["tuner"]) is None:
            pytest.skip(f"the installed peft has no {settings['tuner']}")  # the legacy 0.3
    base = tiny(kind).eval()
    x = batch(kind)
    with torch.no_grad():
        expected = base(input_values=x).logits
    strategy = get_strategy(strategy_settings(settings))
    model = strategy.apply(copy.deepcopy(base)).eval()
    counts = strategy.check(model, 1.0 if name == "full" else 0.9)
    assert 0 < counts.trainable <= counts.total
    with torch.no_grad():
        got = model(input_values=x).logits
    if name != "ia3":  # IA3 scales by learned vectors that start at one: also the identity
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # The head always trains; the backbone's LayerNorms only where the strategy says.
    trainable = {
        n.removeprefix("base_model.model.") for n, p in model.named_parameters() if p.requires_grad
    }
    assert any(n.startswith("classifier.") or ".classifier." in n for n in trainable), name


@pytest.mark.parametrize("kind", OTHER_KINDS)
@pytest.mark.parametrize("strategy", ["prompt", "prefix"])
def test_a_strategy_that_cannot_apply_is_a_config_error_before_any_job(kind, strategy):
    model = {"whisper-encoder": "tiny-whisper", "clap-audio": "tiny-clap"}.get(
        kind, "tiny-wav2vec2"
    )
    overrides = [
        *([f"models.tiny-wav2vec2.kind={kind}"] if kind in WAVEFORM_KINDS else []),
        f"study.models=[{model}]",
        f"study.strategies=[lora,{strategy}]",
        f"strategies.{strategy}.kind={strategy}",
        f"strategies.{strategy}.lr=0.01",
        f"strategies.{strategy}.tokens=4",
    ]
    with pytest.raises(ConfigError) as err:
        load_study(CONFIG_DIR / "config.yaml", "models", overrides)
    message = str(err.value)
    assert re.search(rf"strategy '{strategy}' \({strategy}\) cannot apply to model", message)
    assert f"({kind})" in message
    with pytest.raises(TrainingError, match=f"cannot apply to a {kind} model"):
        get_strategy(
            strategy_settings(
                {"kind": strategy, "lr": 1e-3, "tokens": 4}
                | ({"deep": False} if strategy == "prompt" else {})
            )
        ).apply(tiny(kind))


def test_houlsby_adapter_on_post_norm_layers_trains_the_norms_they_have():
    strategy = get_strategy(strategy_settings(APPLICABLE["adapter"]))
    model = strategy.apply(tiny("wav2vec2"))
    trained = [n for n, p in model.named_parameters() if p.requires_grad and "layer_norm" in n]
    assert sorted({n.split(".")[-2] for n in trained}) == ["layer_norm"]
    assert any(n.startswith("encoder.encoder.layer_norm.") for n in trained)  # the final one
    with pytest.raises(TrainingError, match="have no such LayerNorm"):
        get_strategy(
            strategy_settings({**APPLICABLE["adapter"], "layernorms": ["before_attention"]})
        ).apply(tiny("wav2vec2"))


def test_models_preset_resolves_front_ends_and_shares_caches():
    study = Study(load_config(CONFIG_DIR / "config.yaml", "models"))

    caches = study.feature_caches("synthetic")
    readers = set(caches.values())
    assert None in readers and "tiny-whisper" in readers and "tiny-wav2vec2" in readers
    # HuBERT and WavLM read the same unnormalised waveform: one cache.
    assert (
        study.features("synthetic", "tiny-hubert").record()
        == study.features("synthetic", "tiny-wavlm").record()
    )
    assert len(caches) == 5  # fbank, whisper, two waveforms, clap


def test_waveform_normalisation_must_match_the_checkpoint(tmp_path):
    import json

    save_donor("wav2vec2", tmp_path / "donor")
    (tmp_path / "donor" / "preprocessor_config.json").write_text(
        json.dumps({"do_normalize": False, "sampling_rate": 16000})
    )
    with pytest.raises(TrainingError, match=r"front_end\.normalize is true: set it to false"):
        build(model_cfg("wav2vec2"), WAVE_FEATURES, CLASSES, str(tmp_path / "donor"))
    features = {**WAVE_FEATURES, "normalize": False}
    build(model_cfg("wav2vec2"), features, CLASSES, str(tmp_path / "donor"))


def test_clap_refuses_a_checkpoint_that_expects_other_input(tmp_path):
    import json

    save_donor("clap-audio", tmp_path / "donor")
    preprocessor = tmp_path / "donor" / "preprocessor_config.json"
    preprocessor.write_text(json.dumps({"truncation": "fusion", "padding": "repeatpad"}))
    with pytest.raises(TrainingError, match=r"expects \{'truncation': 'fusion'\}"):
        build(model_cfg("clap-audio"), CLAP_FEATURES, CLASSES, str(tmp_path / "donor"))
    preprocessor.write_text(json.dumps({"truncation": "rand_trunc", "padding": "repeatpad"}))
    build(model_cfg("clap-audio"), CLAP_FEATURES, CLASSES, str(tmp_path / "donor"))


@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_gradients_agree_with_float64(kind):
    """Every parameter's gradient in float32 (under the backward guard the trainer uses) agrees
    with float64's. torch 1.13's oneDNN backward gave Whisper's input convolutions gradients of
    1e6 to inf instead of 1e-2 (compat.ONEDNN_BACKWARD_BROKEN)."""
    from audiopetl.core import compat

    grads = {}
    for dtype in (torch.float32, torch.float64):
        model = tiny(kind).to(dtype).train()
        x = batch(kind, 4).to(dtype)
        loss = torch.nn.functional.cross_entropy(
            model(input_values=x).logits, torch.arange(4) % CLASSES
        )
        with compat.backward_guard():
            loss.backward()
        grads[dtype] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for name, exact in grads[torch.float64].items():
        got = grads[torch.float32][name].double()
        scale = exact.abs().max().item() + 1e-6
        assert (got - exact).abs().max().item() <= 1e-3 * scale, name
