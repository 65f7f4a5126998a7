"""Every split a study runs of a dataset, with how many clips each set holds, checked before any
training job runs: the workflow's `splits` job (which every training job of the dataset waits
for) and `audiopetl splits DATASET`."""

from __future__ import annotations

from audiopetl.core.errors import DataError
from audiopetl.data.manifest import check_manifest, class_names, read_manifest
from audiopetl.data.splits import get_scheme
from audiopetl.data.splits.sizes import SplitSizes, size_problems, split_sizes
from audiopetl.study.study import Study


def study_split_sizes(study: Study, dataset: str) -> list[SplitSizes]:
    """The sets of each run the study makes of ``dataset``: one entry per split and per split
    rule its strategies use (train_val_test, train_test, ...)."""
    path = study.manifest_path(dataset)
    if not path.is_file():
        raise DataError(f"{path}: not found; run `audiopetl fetch {dataset}` first")
    settings = study.dataset(dataset)
    manifest = check_manifest(read_manifest(path), str(path), task=settings.task)
    names = class_names(manifest)
    scheme = get_scheme(settings.scheme)
    scheme.check(manifest, str(path), settings.split)
    strategies = study.config["study"]["strategies"]
    rules = list(dict.fromkeys(study.training(s).split for s in strategies))
    return [
        split_sizes(manifest, names, scheme.splits(manifest, split, rule), split, rule)
        for split in study.split_names(dataset)
        for rule in rules
    ]


def check_study_splits(study: Study, dataset: str) -> list[SplitSizes]:
    """The sizes, or a DataError naming the first split too small to learn or judge on (and
    how many more there are)."""
    sizes = study_split_sizes(study, dataset)
    minimums = dict(study.clips.min_split_clips)
    problems = [p for s in sizes for p in size_problems(s, minimums, f"dataset {dataset}")]
    if problems:
        more = f" ({len(problems) - 1} more problem(s): `audiopetl splits {dataset}`)"
        raise DataError(problems[0] + (more if len(problems) > 1 else ""))
    return sizes
