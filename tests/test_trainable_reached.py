"""Every parameter a strategy trains is reached by the backward pass, on every model kind: a
method whose modules the model's forward pass skips would otherwise train nothing and report
a result, silently (transformers' WavLM attention reads its projections' weights directly,
which left LoRA, peft's tuners and the Houlsby adapter there without a gradient until
models/backbones/wavlm.py routed it through the modules)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from settings_helpers import feature_settings, model_settings, strategy_settings
from test_gradient_checkpointing import ARCHITECTURES, CLASSES, FEATURES, WAVEFORM, batch

from audiopetl.core import compat
from audiopetl.core.errors import ConfigError, TrainingError
from audiopetl.models.build import build_model
from audiopetl.models.strategies import get_strategy

KINDS = ("ast", "whisper-encoder", "wav2vec2", "hubert", "wavlm", "clap-audio")
TARGETS = ["q", "k", "v", "o"]
STRATEGIES: dict[str, dict[str, Any]] = {
    "full": {"kind": "full"},
    "linear": {"kind": "linear"},
    "lora": {"kind": "lora", "rank": 4, "alpha": 8, "dropout": 0.0, "targets": TARGETS},
    "houlsby": {"kind": "adapter", "placement": "houlsby", "mode": "parallel", "reduction": 8},
    "conformer": {"kind": "conformer", "placement": "pfeiffer", "mode": "sequential",
                  "reduction": 8, "kernel": 3},
    "prompt": {"kind": "prompt", "tokens": 4, "deep": True},
    "prefix": {"kind": "prefix", "tokens": 4},
    "bitfit": {"kind": "bitfit"},
    "loha": {"kind": "peft", "tuner": "loha", "targets": TARGETS, "options": {}},
}  # fmt: skip


def tiny(kind: str, strategy: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    attn = "eager" if kind in ("wavlm", "clap-audio") else "sdpa"
    block = {"kind": kind, "pretrained": None, "attn_implementation": attn,
             "architecture": dict(ARCHITECTURES[kind])}  # fmt: skip
    torch.manual_seed(0)
    model = build_model(
        model_settings(block), feature_settings(FEATURES.get(kind, WAVEFORM)), CLASSES
    )
    method = get_strategy(strategy_settings(strategy))
    return method.apply(model), method


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_trained_parameter_gets_a_gradient(kind: str, name: str) -> None:
    strategy = STRATEGIES[name]
    try:
        model, method = tiny(kind, strategy)
    except (ConfigError, TrainingError) as err:
        # A method a kind cannot take is refused in one line, naming both; a tuner the
        # installed peft lacks (LoHa in the legacy peft 0.3) too.
        refused = "cannot apply to a" in str(err) and kind in str(err)
        missing = f"tuner {strategy.get('tuner')!r} is not in the installed peft 0.3"
        assert refused or missing in str(err), err
        return
    method.train_mode(model)
    with compat.backward_guard():
        model(input_values=batch(kind)).logits.logsumexp(dim=-1).mean().backward()
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained
    unreached = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unreached == [], f"{kind}/{name}: no gradient reaches {unreached[:4]}"


@pytest.mark.parametrize("padded", [False, True])
def test_wavlm_attention_through_its_modules_is_transformers_own(padded: bool) -> None:
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    model, _ = tiny("wavlm", {"kind": "full"})
    model.eval()
    x = batch("wavlm")
    mask = torch.ones(x.shape[:2], dtype=torch.long)
    if padded:
        mask[0, x.shape[1] // 2 :] = 0
    kwargs = {"attention_mask": mask} if padded else {}
    encoder = model.encoder
    with torch.no_grad():
        ours = encoder(x[..., 0], **kwargs).last_hidden_state
        patched = [m for m in model.modules() if isinstance(m, WavLMAttention)]
        assert patched and all("torch_multi_head_self_attention" in vars(m) for m in patched)
        for module in patched:  # back to transformers' own
            del module.torch_multi_head_self_attention
        theirs = encoder(x[..., 0], **kwargs).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
