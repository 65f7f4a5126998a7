"""What every stage uses, and nothing that knows a stage.

The configuration read, merged and validated (``config``) and turned into typed, frozen
settings (``settings``: what each stage receives instead of the configuration); where every
artefact lives (``paths``); the error types and their one-line messages (``errors``,
``failures``); atomic writes (``atomic``); content hashes (``checksums``); every difference
between the library versions we support (``compat``); provenance of a result (``provenance``).

Imports: nothing of audiopetl outside ``core``. Importing the package imports nothing heavy
(``compat`` and ``provenance`` import torch when they are imported themselves).
"""
