"""The second stage of the DAG: a dataset's features computed once, into a parquet cache.

The front ends a model kind reads (``frontends``: AST's Kaldi fbank in ``fbank``, Whisper's
log-mel, the waveform, CLAP's log-mel), building a cache with bounded memory and reading its
folds (``cache``), and its file format with page checksums and a sealed metadata hash
(``cachefile``).

Imports: ``core`` and ``data``.
"""

# Bump when a front end's computation changes in a way that alters cached values: every cache's
# file name changes with it (it is part of the feature id).
FEATURE_VERSION = 2  # 2: the cache format with page checksums (audiopetl.features.cachefile)
