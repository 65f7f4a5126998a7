"""The study as the edge sees it: the configuration resolved into each job's settings.

:class:`Study` (``study``) answers, for the names of a validated configuration, the typed
settings and paths of every dataset, cache, model, strategy and run; the configuration checks
that need the kinds behind the names (``checks``); what a probe's embeddings are computed
from (``embeddings``); what the study's jobs ask of a scheduler
(``resources``), how long they will take (``plan``, ``measure``).

Imports: every stage below it (``core``, ``process``, ``data``, ``features``, ``models``,
``training``, ``report``). Only the edge (``cli``, the workflow's rules, benchmarks) imports
it.
"""

from audiopetl.study.study import RESOLVE, Study, load_study, validated

__all__ = ["RESOLVE", "Study", "load_study", "validated"]
