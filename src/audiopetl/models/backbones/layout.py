"""Where a backbone keeps what the strategies act on, as regexes over full module names.

Kept free of torch and transformers imports: the workflow reads the registry of model kinds
while it plans, long before any job imports a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# The logical targets every layout maps: a strategy names these, never a module name, so one
# strategy setting means the same projection in every backbone and transformers version.
TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class ModuleLayout:
    """Module names of one backbone kind (and, for AST, one transformers version).

    ``norm_before_attention``/``norm_before_ffn`` are the leaf names of each layer's
    LayerNorms that feed self-attention and the feed-forward block; None where a layer has none
    (the post-norm layers of wav2vec2-base have no LayerNorm before their self-attention).
    """

    name: str
    targets: dict[str, str]
    head: tuple[str, ...]
    final_norm: str
    layers: str  # the transformer layers, in order
    embeddings: str | None = None  # the module whose output is the token sequence (prompts)
    norm_before_attention: str | None = None
    norm_before_ffn: str | None = None

    def modules_for(self, model: Any, target: str) -> list[str]:
        pattern = re.compile(self.targets[target])
        return [n for n, _ in model.named_modules() if pattern.search(n)]

    def layer_modules(self, model: Any) -> list[Any]:
        pattern = re.compile(self.layers)
        return [m for n, m in model.named_modules() if pattern.search(n)]

    def target_modules(self, model: Any, target: str) -> list[Any]:
        """One module per layer for a logical target (q, k, v, o, ffn_in, ffn_out)."""
        names = set(self.modules_for(model, target))
        return [m for n, m in model.named_modules() if n in names]

    @classmethod
    def of_layers(cls, name: str, layer: str, leaves: dict[str, str], **rest: Any) -> ModuleLayout:
        """A layout whose layers match the regex ``layer`` and whose logical targets are the
        modules ``leaves[target]`` (dotted names) inside each layer."""
        targets = {t: layer + r"\." + re.escape(leaves[t]) + "$" for t in TARGETS}
        head = ("classifier.layernorm", "classifier.dense")  # the head of encoder.py
        return cls(name=name, targets=targets, head=head, layers=layer + "$", **rest)

    def per_layer_norm(self, which: str) -> str | None:
        return {
            "before_attention": self.norm_before_attention,
            "before_ffn": self.norm_before_ffn,
        }[which]
