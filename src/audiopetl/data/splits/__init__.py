"""Split schemes, one module each (``folds``, ``official``, ``session_speaker``), found through a
registry (:mod:`audiopetl.data.splits.base`): how a dataset's clips become the training,
validation and test sets of its runs. A dataset declares its scheme (``datasets.NAME.split``);
the scheme checks the manifest when the dataset is fetched and when a run reads it, names the
runs a study makes of it, and gives each run its three sets of clips."""

from audiopetl.data.splits.base import (
    RULES,
    SELECTS_ON_TEST,
    SCHEMES,
    Splits,
    SplitScheme,
    get_scheme,
    register,
)

__all__ = ["RULES", "SCHEMES", "SELECTS_ON_TEST", "SplitScheme", "Splits", "get_scheme", "register"]
