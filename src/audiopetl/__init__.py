"""audiopetl: reproducible parameter-efficient transfer learning for pretrained audio models.

One package per stage of the DAG (verified data -> feature cache -> training -> report), a small
core every stage uses, and the edge that resolves the configuration and runs the stages:

    cli -> study -> training, report -> models, features -> data -> process -> core

Imports run that way only (tests/test_layout.py holds them to it): a package imports the ones
to its right, never one to its left or beside it.
"""

__version__ = "0.1.0"
