"""Every difference between the library versions we support, in one place.

Supported stacks: modern (torch 2.x, transformers 5.x or 4.x, recent peft) and legacy
(torch 1.13.1, transformers 4.28.1, the peft of that time). Each difference below names the
versions it concerns, so that dropping a version means deleting its branch here.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import Version
from torch import nn

log = logging.getLogger(__name__)

TORCH_VERSION = Version(torch.__version__)
TRANSFORMERS_VERSION = Version(transformers.__version__)


def transformers_5() -> bool:
    """transformers 5.x renamed AST's modules (``layers.N.attention.q_proj``, ``mlp.fc1``;
    4.x: ``encoder.layer.N.attention.attention.query``); old checkpoints convert on load, but
    peft target names do not (audiopetl.models.backbones.ast keeps both layouts)."""
    return Version("5") <= TRANSFORMERS_VERSION


def attention_implementation(requested: str) -> str:
    """The attention a model will really use.

    transformers < 4.36 (the legacy 4.28) has eager attention only. Eager and sdpa compute the
    same function (logits differ by < 1e-6), so sdpa falls back to eager there with a warning
    instead of making every config environment-specific; run.json records what ran.
    """
    if requested == "eager" or Version("4.36") <= TRANSFORMERS_VERSION:
        return requested
    log.warning(
        "attn_implementation %r needs transformers >= 4.36 (installed %s): using eager",
        requested,
        transformers.__version__,
    )
    return "eager"


def _attention_for(model_class: Any, requested: str) -> str:
    """sdpa where ``model_class`` has it; eager otherwise (WavLM's relative position bias has no
    sdpa path), with a warning: the two compute the same function."""
    attn = attention_implementation(requested)
    if attn == "sdpa" and not getattr(model_class, "_supports_sdpa", False):
        log.warning("%s has no sdpa attention: using eager", model_class.__name__)
        return "eager"
    return attn


def from_config(model_class: Any, config: Any, attn_implementation: str) -> nn.Module:
    """A randomly initialised ``model_class``; the attention is an argument only from 4.36."""
    attn = _attention_for(model_class, attn_implementation)
    if Version("4.36") <= TRANSFORMERS_VERSION:
        return model_class._from_config(config, attn_implementation=attn)
    return model_class(config)


def from_pretrained(model_class: Any, source: str, attn_implementation: str) -> nn.Module:
    attn = _attention_for(model_class, attn_implementation)
    kwargs: dict[str, Any] = {}
    if Version("4.36") <= TRANSFORMERS_VERSION:
        kwargs["attn_implementation"] = attn
    return model_class.from_pretrained(source, **kwargs)


def ast_from_config(config: Any, attn_implementation: str) -> nn.Module:
    """A randomly initialised ASTForAudioClassification."""
    from transformers import ASTForAudioClassification

    return from_config(ASTForAudioClassification, config, attn_implementation)


def ast_from_pretrained(source: str, attn_implementation: str) -> nn.Module:
    from transformers import ASTForAudioClassification

    return from_pretrained(ASTForAudioClassification, source, attn_implementation)


def checkpoint_config(source: str) -> dict[str, Any]:
    """A checkpoint's config.json as a plain dict (its model_type and architectures), without
    building a config class: transformers 4.28's AutoConfig does not know every model_type
    (CLAP's audio tower's `clap_audio_model`)."""
    from transformers import PretrainedConfig

    return PretrainedConfig.get_config_dict(str(source))[0]


def part_from_pretrained(
    part_class: Any, whole_class: Any, part: str, source: str, attn_implementation: str
) -> nn.Module:
    """A part of a model (Whisper's encoder, CLAP's audio tower) from a checkpoint of the part
    alone (what a pretraining of ours saves) or of the whole model (what the hub holds)."""
    architectures = checkpoint_config(source).get("architectures") or []
    if part_class.__name__ in architectures:
        return from_pretrained(part_class, source, attn_implementation)
    return getattr(from_pretrained(whole_class, source, attn_implementation), part)


def whisper_encoder_class() -> Any:
    """Whisper's encoder is not exported at the top of transformers in every version."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return WhisperEncoder


def save_pretrained(model: nn.Module, folder: Path | str) -> None:
    """Weights as safetensors: the default only from transformers 4.35 (before, a pickle)."""
    model.save_pretrained(str(folder), safe_serialization=True)


def safe_torch_load(path: Path | str) -> Any:
    """Load a torch file without executing pickled code.

    ``weights_only`` exists from torch 1.13 and is the default only from 2.6; we always pass it.
    """
    return torch.load(str(path), map_location="cpu", weights_only=True)


def lora_config(
    rank: int, alpha: float, dropout: float, targets: list[str], modules_to_save: list[str]
) -> Any:
    from peft import LoraConfig

    # An explicit module-name list, never a suffix, so nothing outside the backbone matches.
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=modules_to_save,
        bias="none",
    )


# torch 1.13's oneDNN (mkldnn) kernels give garbage gradients in some backward passes on the CPU,
# different from call to call: the gradients reaching Whisper's input convolutions (through a
# GELU and a permute) came out at 1e6 to 1e36 or inf where float64, and torch 1.13 itself with
# oneDNN off during the backward, give 0.0086 (every other parameter's gradient agreed). Which
# kernel runs is decided when the backward runs, so the backward runs with oneDNN off there.
# Fixed in torch 2.x, where nothing changes.
ONEDNN_BACKWARD_BROKEN = Version("2.0") > TORCH_VERSION


def backward_guard() -> Any:
    """The context every backward pass runs in (see ONEDNN_BACKWARD_BROKEN)."""
    import contextlib

    if ONEDNN_BACKWARD_BROKEN:
        return torch.backends.mkldnn.flags(enabled=False)
    return contextlib.nullcontext()


# torch.compile arrived in torch 2.0; the legacy 1.13 has none.
HAS_COMPILE = hasattr(torch, "compile")


def compile_module(model: nn.Module) -> nn.Module:
    return torch.compile(model)  # type: ignore[return-value]


def enable_gradient_checkpointing(model: nn.Module) -> bool:
    """Turn on a transformers model's gradient checkpointing, non-reentrant where the
    installed transformers lets us ask for it; True when it is the reentrant kind.

    Non-reentrant checkpointing gives a layer's parameters their gradients whether or not its
    input requires grad (a frozen backbone's does not). transformers 5.x names the method
    ``activation_checkpointing_enable`` (``gradient_checkpointing_enable`` is a deprecated
    alias there); 4.35 to 4.x take ``gradient_checkpointing_kwargs``; 4.28 (legacy) takes no
    arguments and calls torch's checkpoint with its default, reentrant (torch 1.13).
    """
    import inspect

    non_reentrant = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=non_reentrant)
        return False
    enable = model.gradient_checkpointing_enable
    if "gradient_checkpointing_kwargs" in inspect.signature(enable).parameters:
        enable(gradient_checkpointing_kwargs=non_reentrant)
        return False
    enable()
    return True


def disable_gradient_checkpointing(model: nn.Module) -> None:
    """The same switch off (5.x: ``activation_checkpointing_disable``)."""
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def model_attention(model: nn.Module) -> str:
    """The attention implementation a built model uses; transformers < 4.36 has eager only."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def save_peft_adapter(model: Any, folder: Path | str) -> None:
    """peft's own adapter format (adapter_config.json + adapter_model.safetensors).

    peft < 0.4 (the legacy 0.3) can only pickle the adapter; there we write the same
    safetensors file ourselves from peft's own state dict, so no environment stores a pickle.
    """
    import inspect

    folder = Path(folder)
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        model.save_pretrained(str(folder), safe_serialization=True)
    else:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}
        save_file(state, str(folder / "adapter_model.safetensors"))
        model.peft_config["default"].save_pretrained(str(folder))
    _stable_adapter_config(folder / "adapter_config.json")


def _stable_adapter_config(path: Path) -> None:
    """peft keeps target_modules (and other name lists) as a set and writes it in set order,
    which changes with PYTHONHASHSEED: identical runs would give different bytes (and DVC
    hashes). The lists are rewritten sorted, the keys in order."""
    import json

    config = json.loads(path.read_text())
    for key in ("target_modules", "modules_to_save", "exclude_modules"):
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def freeze_saved_module_originals(model: nn.Module) -> None:
    """peft 0.3 leaves the original of a ``modules_to_save`` module trainable beside its copy
    (later releases freeze it): it gets no gradient, but it would be counted as trained."""
    for name, param in model.named_parameters():
        if ".original_module." in name:
            param.requires_grad_(False)


# transformers 4.x parameter names of AST -> the 5.x names, which serve as canonical names.
_V4_TO_V5 = [
    (
        re.compile(r"\.encoder\.layer\.(\d+)\.attention\.attention\.query\."),
        r".layers.\1.attention.q_proj.",
    ),
    (
        re.compile(r"\.encoder\.layer\.(\d+)\.attention\.attention\.key\."),
        r".layers.\1.attention.k_proj.",
    ),
    (
        re.compile(r"\.encoder\.layer\.(\d+)\.attention\.attention\.value\."),
        r".layers.\1.attention.v_proj.",
    ),
    (
        re.compile(r"\.encoder\.layer\.(\d+)\.attention\.output\.dense\."),
        r".layers.\1.attention.o_proj.",
    ),
    (re.compile(r"\.encoder\.layer\.(\d+)\.intermediate\.dense\."), r".layers.\1.mlp.fc1."),
    (re.compile(r"\.encoder\.layer\.(\d+)\.output\.dense\."), r".layers.\1.mlp.fc2."),
    (re.compile(r"\.encoder\.layer\.(\d+)\."), r".layers.\1."),
    # Weight normalisation (wav2vec2's positional convolution): torch.nn.utils.weight_norm's
    # names under torch 1.13 / transformers 4.28, parametrizations under torch 2.x.
    (re.compile(r"\.weight_g$"), ".parametrizations.weight.original0"),
    (re.compile(r"\.weight_v$"), ".parametrizations.weight.original1"),
]


def canonical_parameter_name(name: str) -> str:
    """The same parameter's name whatever the transformers version (the 5.x spelling)."""
    for pattern, replacement in _V4_TO_V5:
        name = pattern.sub(replacement, name)
    return name


def snapshot_local_dir_args(folder: Path | str) -> dict[str, Any]:
    """Arguments that make ``snapshot_download`` write real files into ``folder``.

    huggingface_hub < 0.23 (the legacy 0.16) symlinks large files into its own cache unless
    told not to; a mirror shared through DVC or copied to a cluster must hold the files
    themselves. Later releases always copy and deprecate (2.x: removed) the switch.
    """
    import inspect

    from huggingface_hub import snapshot_download

    args: dict[str, Any] = {"local_dir": str(folder)}
    if "local_dir_use_symlinks" in inspect.signature(snapshot_download).parameters:
        args["local_dir_use_symlinks"] = False
    return args


def load_peft_adapter(base: nn.Module, folder: Path | str) -> nn.Module:
    """A model rebuilt from peft's own adapter format, as a user of peft would load it.

    peft >= 0.4 reads adapter_model.safetensors itself (PeftModel.from_pretrained); peft 0.3
    (legacy) reads only a pickled adapter_model.bin, so there the safetensors file we wrote is
    loaded into the model peft builds from adapter_config.json.
    """
    from peft import PeftConfig, PeftModel

    folder = Path(folder)
    if Version(_peft_version()) >= Version("0.4"):
        return PeftModel.from_pretrained(base, str(folder))
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    # peft 0.3's PeftConfig.from_pretrained gives the base class: the tuner's own reads it all.
    kind = PeftConfig.from_pretrained(str(folder)).peft_type
    config = PEFT_TYPE_TO_CONFIG_MAPPING[kind].from_pretrained(str(folder))
    model = get_peft_model(base, config)
    set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    return model


def _peft_version() -> str:
    import peft

    return peft.__version__


def is_peft_layer(module: nn.Module) -> bool:
    """A layer a peft tuner added (LoRA, IA3, LoHa, ...): BaseTunerLayer from peft 0.6 on;
    peft 0.3 (legacy) knows LoRA's layer only."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        from peft.tuners.lora import LoraLayer as BaseTunerLayer
    return isinstance(module, BaseTunerLayer)


# The first peft release that has each tuner: a tuner the installed peft lacks is a config error
# naming the version that has it (the legacy environment's peft 0.3 has LoRA and AdaLoRA).
PEFT_TUNERS = {
    "LoRA": "0.1",
    "AdaLoRA": "0.3",
    "IA3": "0.4",
    "LoHa": "0.6",
    "LoKr": "0.7",
    "OFT": "0.7",
    "BOFT": "0.10",
    "VeRA": "0.10",
    "FourierFT": "0.12",
    "LNTuning": "0.8",
    "HRA": "0.12",
}


def peft_version() -> Version:
    import peft

    return Version(peft.__version__)


def peft_config_class(tuner: str) -> Any:
    """peft's config class of a tuner (``LoHa`` -> ``LoHaConfig``); None when the installed
    peft has none."""
    import peft

    # peft spells some names its own way (VeRA's class is VeraConfig): match case-insensitively.
    wanted = f"{tuner}config".lower()
    return next((getattr(peft, n) for n in dir(peft) if n.lower() == wanted), None)


# Defaults that later peft releases give the LoRA family's configs and peft 0.3 leaves None,
# which its AdaLoRA then compares with numbers (TypeError): filled in where the class has None.
PEFT_MISSING_DEFAULTS = {"lora_alpha": 8, "lora_dropout": 0.0}


def peft_config_defaults(config_class: Any) -> dict[str, Any]:
    """The keyword arguments ``config_class`` needs besides the user's: today's defaults for
    fields an old peft leaves None (nothing on peft >= 0.4)."""
    import dataclasses

    fields = {f.name: f.default for f in dataclasses.fields(config_class)}
    return {
        name: value
        for name, value in PEFT_MISSING_DEFAULTS.items()
        if name in fields and fields[name] is None
    }


def peft_tuner_problem(tuner: str, kwargs: dict[str, Any]) -> str | None:
    """Why the installed peft cannot build ``tuner`` with ``kwargs`` although it has it, or
    None. peft 0.3's AdaLoRA puts a plain function into a ModuleDict when its dropout is 0."""
    if tuner == "AdaLoRA" and peft_version() < Version("0.4") and not kwargs.get("lora_dropout"):
        return (
            f"peft {peft_version()}'s AdaLoRA fails with lora_dropout 0 (fixed in peft 0.4): set "
            "options.lora_dropout above 0 or use the modern environment"
        )
    return None


def attention_with_prefix(
    attention: nn.Module, key_tokens: nn.Parameter, value_tokens: nn.Parameter
) -> None:
    """Make a self-attention module attend to learned key and value tokens besides the
    sequence's own (prefix tuning), inserted after the first ([CLS]) position as the reference
    study does. The attention arithmetic is written here because neither transformers version
    lets extra keys in: 5.x reshapes keys to the queries' length, 4.28 has no hook between
    projection and scores. It is the same scaled dot-product attention, eager."""
    import types

    def heads(x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, -1).transpose(1, 2)

    def attend(module: nn.Module, q_lin, k_lin, v_lin, n_heads, drop_p, hidden):
        b = hidden.shape[0]
        keys, values = k_lin(hidden), v_lin(hidden)
        keys = torch.cat([keys[:, :1], key_tokens.expand(b, -1, -1), keys[:, 1:]], dim=1)
        values = torch.cat([values[:, :1], value_tokens.expand(b, -1, -1), values[:, 1:]], dim=1)
        q, k, v = heads(q_lin(hidden), n_heads), heads(keys, n_heads), heads(values, n_heads)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        probs = nn.functional.dropout(probs, p=drop_p, training=module.training)
        context = torch.matmul(probs, v).transpose(1, 2).contiguous()
        return context.reshape(b, hidden.shape[1], -1)

    if Version("5") <= TRANSFORMERS_VERSION:

        def forward_v5(self, hidden_states, attention_mask=None, **kwargs):
            context = attend(
                self, self.q_proj, self.k_proj, self.v_proj, self.num_attention_heads,
                self.attention_dropout, hidden_states,
            )  # fmt: skip
            return self.o_proj(context), None

        attention.forward = types.MethodType(forward_v5, attention)
        return

    # transformers 4.x: the self-attention module (attention.attention) has the projections.
    inner = attention.attention

    def forward_v4(self, hidden_states, head_mask=None, output_attentions=False):
        context = attend(
            self, self.query, self.key, self.value, self.num_attention_heads,
            self.dropout.p, hidden_states,
        )  # fmt: skip
        return (context,)

    inner.forward = types.MethodType(forward_v4, inner)


def clap_mel_filters(
    num_mel_bins: int, n_fft: int, sample_rate: int, f_min: float, f_max: float
) -> Any:
    """CLAP's slaney mel filters (those of its unfused models) from transformers' extractor,
    as (freq, bins) float64, whatever orientation the installed version keeps."""
    import numpy as np
    from transformers import ClapFeatureExtractor

    extractor = ClapFeatureExtractor(
        feature_size=num_mel_bins,
        sampling_rate=sample_rate,
        fft_window_size=n_fft,
        frequency_min=f_min,
        frequency_max=f_max,
    )
    filters = np.asarray(extractor.mel_filters_slaney, dtype=np.float64)
    return filters if filters.shape[0] == n_fft // 2 + 1 else filters.T


def whisper_mel_filters(num_mel_bins: int, n_fft: int, sample_rate: int) -> Any:
    """Whisper's slaney mel filters from transformers' own extractor, as (freq, bins) float64.

    transformers 4.28 keeps them as (bins, freq) float32, 5.x as (freq, bins) float64; the same
    filters otherwise.
    """
    import numpy as np
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(
        feature_size=num_mel_bins, sampling_rate=sample_rate, n_fft=n_fft
    )
    filters = np.asarray(extractor.mel_filters, dtype=np.float64)
    return filters if filters.shape[0] == n_fft // 2 + 1 else filters.T
