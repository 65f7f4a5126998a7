"""The first stage of the DAG: a verified dataset with a checked manifest.

Dataset kinds, one module each, found through a registry (``datasets``: download or generate,
verify, write the raw folder); reading audio (``audio``); resumable downloads (``download``);
the manifest every later stage reads (``manifest``); what is in a dataset and what is wrong
with it (``report``).

Imports: ``core`` only.
"""
