"""The third stage of the DAG: one training job, from the feature cache to a run folder.

The loop (``trainer``), the job around it (``run``: resume or start, train, write, the failure
marker; the source-task pretraining), and the pieces a step is made of, each named for what it
does: the run's data and batches (``data``), augmentation (``augment``), the optimiser and its
schedule (``optim``), seeds and determinism (``determinism``), the device choices
(``runtime``), the resume state (``state``, ``resume``, ``checkpoint``), stopping on a
scheduler's signal (``signals``), the outputs and the run folder (``outputs``,
``run_folder``), scoring a finished run again from its files (``evaluate``), metrics
(``metrics``).

Imports: ``core``, ``process``, ``data``, ``features`` and ``models``. A run receives its
settings (``core.settings.RunSettings``) and never reads the configuration.
"""
