"""audiopetl: reproducible parameter-efficient transfer learning for pretrained audio models.

One package per stage of the DAG (verified data -> feature cache -> training -> report), a small
core every stage uses, and the edge that resolves the configuration and runs the stages:

    cli -> inference -> study -> training, report -> models, features -> data -> process -> core

Imports run that way only (tests/test_layout.py holds them to it): a package imports the ones
to its right, never one to its left or beside it.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_model(folder: Any, overrides: Any = ()) -> Any:
    """A model trained with audiopetl (an export or a run folder) in one call:
    audiopetl.inference.model.load_model. Imported only when called: it needs torch."""
    from audiopetl.inference.model import load_model as load

    return load(folder, overrides)
