"""`training.gradient_checkpointing` (audiopetl.models.checkpointing): every model kind whose
transformers model supports it gets the gradients of an unchecked step with dropout on (the
recomputation draws the same masks), for full fine-tuning and for frozen backbones (LoRA with
the backbone in eval mode or in training mode, and AST's other PETL methods); checkpointing
really keeps less for backward; a kind that does not support it is a one-line error; the
setting is no part of a run's identity; `plan --measure` says what it saves.

Non-reentrant checkpointing (the modern environment) is bit-identical. The legacy
environment's transformers 4.28 only has the reentrant kind, under which the gradients of
Whisper's input convolutions (before its layers) differ in the last bits, ~1e-7 relative: there
the comparison allows 1e-6.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from packaging.version import Version
from settings_helpers import feature_settings, model_settings, strategy_settings
from torch import nn
from training_helpers import (  # noqa: F401
    CONFIG_DIR,
    assert_bitwise_equal,
    load_weights,
    quick_project,
    run_in,
    train_args,
)

from audiopetl.core import compat
from audiopetl.core.errors import ConfigError, TrainingError
from audiopetl.models import checkpointing
from audiopetl.models.build import build_model
from audiopetl.models.strategies import get_strategy
from audiopetl.study import load_study
from audiopetl.study.measure import measure_throughput
from audiopetl.study.plan import Estimate, checkpointing_lines, study_jobs

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

# transformers < 4.35 (the legacy 4.28) checkpoints reentrantly only.
REENTRANT = Version("4.35") > compat.TRANSFORMERS_VERSION
CLASSES = 5
DROPOUT = 0.3
# Tiny models of every kind, their dropout on (set per kind below).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "ast": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "patch_size": 16,
        "frequency_stride": 16,
        "time_stride": 16,
    },
    "whisper-encoder": {
        "d_model": 32,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
    },
    "wav2vec2": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": [8, 8],
        "conv_kernel": [10, 4],
        "conv_stride": [5, 4],
        "num_conv_pos_embeddings": 8,
        "num_conv_pos_embedding_groups": 2,
    },
    # Two Swin stages of widths 16 and 32; 10 s of input.
    "clap-audio": {
        "patch_embeds_hidden_size": 16,
        "depths": [1, 1],
        "num_attention_heads": [2, 2],
        "window_size": 8,
        "hidden_size": 32,
    },
}
ARCHITECTURES["hubert"] = ARCHITECTURES["wavlm"] = ARCHITECTURES["wav2vec2"]
DROPOUTS = {
    "ast": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "whisper-encoder": ("dropout", "attention_dropout", "activation_dropout"),
    "wav2vec2": ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout"),
    "clap-audio": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
}
DROPOUTS["hubert"] = DROPOUTS["wavlm"] = DROPOUTS["wav2vec2"]
FEATURES = {
    "ast": {"target_length": 64, "num_mel_bins": 64},
    "whisper-encoder": {"front_end": "whisper", "num_mel_bins": 80, "target_length": 64},
    "clap-audio": {"front_end": "clap", "num_mel_bins": 64, "target_length": 1001},
}
WAVEFORM = {"front_end": "waveform", "target_length": 3200, "normalize": True}
# Every kind but CLAP's audio tower, whose transformers model (ClapAudioModel) does not
# support checkpointing in either environment.
SUPPORTING = ("ast", "whisper-encoder", "wav2vec2", "hubert", "wavlm")

LORA = {"kind": "lora", "rank": 4, "alpha": 8, "dropout": DROPOUT, "targets": ["q", "v"]}
STRATEGIES = {
    "full": {"kind": "full"},
    # A PETL method's default: the frozen backbone in eval mode (frozen_eval).
    "lora": LORA,
    # The frozen backbone in training mode, its dropout on: the layers' input requires no grad.
    "lora-backbone-training": {**LORA, "frozen_eval": False},
}
# AST's other methods, each with its modules in another place: beside the layers' projections
# (adapters), in the token sequence (prompts), in the attention (prefixes), the biases.
AST_STRATEGIES = {
    "adapter": {"kind": "adapter", "placement": "houlsby", "mode": "parallel", "reduction": 8},
    "conformer": {"kind": "conformer", "placement": "pfeiffer", "mode": "sequential",
                  "reduction": 8, "kernel": 3},
    "prompt-deep": {"kind": "prompt", "tokens": 4, "deep": True},
    "prefix": {"kind": "prefix", "tokens": 4, "frozen_eval": False},
    "bitfit": {"kind": "bitfit"},
}  # fmt: skip


def tiny(kind: str, strategy: dict[str, Any], dropout: float = DROPOUT) -> tuple[nn.Module, Any]:
    """A tiny model of ``kind`` (seeded: every call builds the same) with ``strategy``
    applied, in the strategy's training mode."""
    architecture = {**ARCHITECTURES[kind], **dict.fromkeys(DROPOUTS[kind], dropout)}
    attn = "eager" if kind in ("wavlm", "clap-audio") else "sdpa"
    block = {"kind": kind, "pretrained": None, "attn_implementation": attn,
             "architecture": architecture}  # fmt: skip
    torch.manual_seed(0)
    features = feature_settings(FEATURES.get(kind, WAVEFORM))
    model = build_model(model_settings(block), features, CLASSES)
    method = get_strategy(strategy_settings(strategy))
    return method.apply(model), method


def batch(kind: str, n: int = 3) -> torch.Tensor:
    values = FEATURES.get(kind, WAVEFORM)
    shape = (n, values["target_length"], values.get("num_mel_bins", 1))
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def one_step(kind: str, strategy: dict[str, Any], checkpointed: bool, dropout: float) -> Any:
    """One training step's loss and gradients, the RNG's next draw, and the activations its
    forward pass kept for backward."""
    model, method = tiny(kind, strategy, dropout)
    if checkpointed:
        checkpointing.enable(model, method)
    method.train_mode(model)
    x = batch(kind)
    state = [*model.parameters(), *model.buffers()]
    torch.manual_seed(7)
    kept = checkpointing.activation_bytes(lambda: model(input_values=x).logits, state)
    torch.manual_seed(7)
    with compat.backward_guard():
        loss = model(input_values=x).logits.logsumexp(dim=-1).mean()
        loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, torch.rand(3), kept


def assert_same_step(kind: str, strategy: dict[str, Any], dropout: float = DROPOUT) -> None:
    loss, grads, rng, kept = one_step(kind, strategy, False, dropout)
    c_loss, c_grads, c_rng, c_kept = one_step(kind, strategy, True, dropout)
    assert grads and c_grads.keys() == grads.keys()
    tolerance = {"rtol": 1e-6, "atol": 1e-9} if REENTRANT else {"rtol": 0.0, "atol": 0.0}
    torch.testing.assert_close(c_grads, grads, **tolerance)
    assert torch.equal(c_loss, loss)
    assert torch.equal(c_rng, rng)  # the recomputation left the RNG where it was
    assert 0 < c_kept < kept  # it really checkpointed


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("kind", SUPPORTING)
def test_checkpointed_step_has_the_same_gradients(kind: str, name: str) -> None:
    strategy = STRATEGIES[name]
    # Whisper's layers apply their dropout themselves: under frozen_eval it must be 0 (below).
    frozen_eval = strategy["kind"] != "full" and strategy.get("frozen_eval") is not False
    dropout = 0.0 if kind == "whisper-encoder" and frozen_eval else DROPOUT
    assert_same_step(kind, strategy, dropout)


@pytest.mark.parametrize("name", AST_STRATEGIES)
def test_every_ast_method_has_the_same_gradients(name: str) -> None:
    assert_same_step("ast", AST_STRATEGIES[name])


def test_a_frozen_backbones_layers_stay_frozen_in_eval_mode() -> None:
    """Under frozen_eval only the modules transformers reads the flag of train, not their
    dropout; evaluation (no grad) puts nothing in training mode."""
    model, method = tiny("ast", LORA)
    checkpointing.enable(model, method)
    method.train_mode(model)
    with torch.no_grad():
        model(input_values=batch("ast"))
    assert not any(m.training for m in checkpointing.checkpointing_modules(model))
    model(input_values=batch("ast"))
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.training]
    assert all(m.training for m in checkpointing.checkpointing_modules(model))
    assert all("lora_dropout" in name for name, m in model.named_modules() if m in dropouts)


def test_a_kind_without_checkpointing_is_a_one_line_error() -> None:
    from transformers import ClapAudioModel

    if ClapAudioModel.supports_gradient_checkpointing:  # a later transformers may add it
        pytest.fail("ClapAudioModel supports checkpointing now: move clap-audio to SUPPORTING")
    model, method = tiny("clap-audio", {"kind": "full"})
    with pytest.raises(TrainingError) as raised:
        checkpointing.enable(model, method)
    message = str(raised.value)
    assert "\n" not in message
    assert "model kind 'clap-audio' (ClapAudioModel) does not support" in message
    assert message.endswith("set training.gradient_checkpointing: false")
    assert not checkpointing.supported(model)


def test_a_study_of_such_a_kind_is_a_config_error_before_any_job() -> None:
    sets = ["study.models=[tiny-clap, tiny-ast]", "training.gradient_checkpointing=true"]
    with pytest.raises(ConfigError) as raised:
        load_study(CONFIG_DIR / "config.yaml", "models", sets)
    (line,) = str(raised.value).splitlines()[1:]  # one line, for the one model
    assert "model 'tiny-clap' (clap-audio, strategies full, linear, lora)" in line
    assert "ClapAudioModel does not support gradient checkpointing; set it to false" in line
    load_study(CONFIG_DIR / "config.yaml", "models", ["study.models=[tiny-ast]", sets[1]])


def test_the_error_comes_from_transformers_own_flag() -> None:
    model, method = tiny("ast", {"kind": "full"})
    model.supports_gradient_checkpointing = False  # the instance's answer, not the class's
    with pytest.raises(TrainingError, match=r"model kind 'ast' \(ASTForAudioClassification\)"):
        checkpointing.enable(model, method)


def test_frozen_eval_refuses_what_would_turn_dropout_on() -> None:
    model, method = tiny("whisper-encoder", LORA)
    with pytest.raises(TrainingError) as raised:
        checkpointing.enable(model, method)
    message = str(raised.value)
    assert "\n" not in message and "keeps the frozen whisper-encoder backbone in eval" in message
    assert "dropout 0.3" in message and "strategies.test.frozen_eval: false" in message


def test_the_setting_is_no_part_of_a_runs_identity() -> None:
    plain = load_study(CONFIG_DIR / "config.yaml", "quick")
    checkpointed = load_study(
        CONFIG_DIR / "config.yaml", "quick", ["training.gradient_checkpointing=true"]
    )
    a, b = (
        s.run("synthetic", "tiny-ast", "lora", 3, 0, pretrained=None) for s in (plain, checkpointed)
    )
    assert not a.training.gradient_checkpointing and b.training.gradient_checkpointing
    assert a.identity() == b.identity()  # the resume identity
    assert a.params() == b.params()  # what reruns the job in the workflow
    assert a.computes() == b.computes()  # who may score whose runs
    assert plain.run_params("tiny-ast", "lora") == checkpointed.run_params("tiny-ast", "lora")
    assert plain.pretrain_params("tiny-ast") == checkpointed.pretrain_params("tiny-ast")


def test_saving_a_checkpointed_model_writes_the_same_config() -> None:
    """The pretrained folder a pretraining saves (and the hashes downstream of it) must not
    depend on the setting."""
    model, method = tiny("ast", {"kind": "full"})
    before = model.config.to_json_string()
    checkpointing.enable(model, method)
    assert model.config.to_json_string() == before


def test_plan_measure_says_what_checkpointing_saves() -> None:
    study = load_study(
        CONFIG_DIR / "config.yaml", "quick", ["training.gradient_checkpointing=true"]
    )
    job = next(j for j in study_jobs(study) if j.rule == "train" and j.strategy == "lora")
    throughput = measure_throughput(study, job, num_classes=4, steps=1, warmup=0)
    assert throughput.activations is not None
    plain, checkpointed = throughput.activations
    assert plain > checkpointed > 0
    [line] = checkpointing_lines([Estimate(job, {}, None, None, throughput)])
    assert line.startswith("gradient checkpointing of tiny-ast/lora, on: activations kept for ")
    assert f"per batch of {job.settings.batch_size} (saves " in line
    # Off, it is a hint; a linear probe's frozen layers keep nothing to save.
    off = dataclasses.replace(job, settings=job.settings.replace(gradient_checkpointing=False))
    [hint] = checkpointing_lines([Estimate(off, {}, None, None, throughput)])
    assert ", off (training.gradient_checkpointing: true): " in hint and "(would save " in hint
    linear = next(j for j in study_jobs(study) if j.rule == "train" and j.strategy == "linear")
    probe = measure_throughput(study, linear, num_classes=4, steps=1, warmup=0)
    [nothing] = checkpointing_lines([Estimate(linear, {}, None, None, probe)])
    assert nothing.endswith("(saves nothing)")


@pytest.mark.slow
def test_a_checkpointed_run_trains_the_same_weights(quick_project, tmp_path: Path) -> None:  # noqa: F811
    runs = {}
    for on in (False, True):
        out = tmp_path / f"lora-{on}"
        code, _, err = run_in(
            quick_project.root,
            train_args("lora", out, f"training.gradient_checkpointing={str(on).lower()}"),
        )
        assert code == 0, err
        runs[on] = out
        assert json.loads((out / "run.json").read_text())["runtime"]["gradient_checkpointing"] is on
    assert_bitwise_equal(load_weights(runs[False]), load_weights(runs[True]))
