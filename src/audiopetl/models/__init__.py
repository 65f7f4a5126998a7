"""What is trained: model kinds, transfer strategies, and building them.

Model kinds, one module each, found through a registry (``backbones``: AST, Whisper's encoder,
wav2vec2, HuBERT, WavLM, CLAP's audio tower, each with its layout); transfer strategies, one
module each, found through a registry (``strategies``: full, linear, BitFit, LoRA, prompt,
prefix, adapters, the Conformer adapter, peft's tuners); building a model from its settings
without silent re-initialisation (``build``) and initialising every new parameter
explicitly (``init``); local mirrors of hub checkpoints at a pinned commit (``hub``).

Imports: ``core`` only. The registries import no torch: the workflow consults them while it
plans the DAG.
"""
