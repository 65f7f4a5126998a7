"""Where every artefact lives; the Snakefile, DVC and the CLI all ask here.

:class:`Layout` is the project's folders (the `paths` block and the experiment's name); its
methods name a file from the names and ids that decide it. The ids (hashes of a dataset's and
a cache's settings) are computed from the resolved settings (:mod:`audiopetl.study`); every
path is formed here. Each method also builds the Snakemake pattern of its path when given
wildcards as its arguments (``layout.run_dir("{dataset}", ...)``), so the rules and the code
cannot disagree on a path. Paths are normalised (``./data`` and ``data`` are the same folder)
because Snakemake matches outputs as strings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The run folders of a study live in two fixed folders whatever its datasets and models, so
# dvc.yaml can name them as the training stage's outputs (DVC cannot derive outputs from the
# study's settings).
RUNS = "runs"
PRETRAIN = "pretrain"
MANIFEST = "manifest.csv"
# The folder of a pretraining's run that holds the model in save_pretrained form.
PRETRAINED = "pretrained"


@dataclass(frozen=True)
class Layout:
    data: Path  # raw datasets, feature caches, data reports, hub mirrors
    results: Path  # one folder per experiment
    experiment: str

    @classmethod
    def of(cls, cfg: Mapping[str, Any]) -> Layout:
        """The layout of a validated configuration (its `paths` and `experiment`)."""
        return cls(
            Path(os.path.normpath(cfg["paths"]["data"])),
            Path(os.path.normpath(cfg["paths"]["results"])),
            str(cfg["experiment"]),
        )

    # -- data ---------------------------------------------------------------------------------
    def raw_dir(self, dataset: str, did: str) -> Path:
        # The folder name carries a hash of the dataset's settings (DatasetSettings.data_id):
        # presets that define a dataset differently keep separate copies.
        return self.data / "raw" / f"{dataset}-{did}"

    def manifest(self, dataset: str, did: str) -> Path:
        return self.raw_dir(dataset, did) / MANIFEST

    def downloads(self) -> Path:
        """Downloads being resumed; shared by every copy of a dataset."""
        return self.data / "raw" / ".downloads"

    def cache(self, dataset: str, fid: str) -> Path:
        # The name carries a hash of the data and the feature settings (FeatureSettings.
        # feature_id), so changing either builds a new cache beside the old one.
        return self.data / "features" / f"{dataset}-{fid}.parquet"

    def data_report(self, dataset: str, fid: str) -> Path:
        """The report describes a dataset's raw folder and its cache: named like the cache."""
        return self.data / "reports" / f"{dataset}-{fid}.json"

    def embeddings(self, dataset: str, model: str, eid: str) -> Path:
        """A probe's cache of a frozen backbone's embeddings of a dataset; ``eid`` hashes its
        feature cache, the model and where its weights come from (Study.embedding)."""
        return self.data / "embeddings" / dataset / model / f"{eid}.parquet"

    def models(self) -> Path:
        """Local mirrors of hub checkpoints (audiopetl fetch-model)."""
        return self.data / "models"

    def mirror(self, model: str) -> Path:
        return self.models() / model

    # -- results ------------------------------------------------------------------------------
    def experiment_dir(self, experiment: str | None = None) -> Path:
        return self.results / (self.experiment if experiment is None else experiment)

    def logs(self) -> Path:
        return self.experiment_dir() / "logs"

    def runs(self) -> Path:
        return self.experiment_dir() / RUNS

    def run_dir(
        self, dataset: str, model: str, strategy: str, split: int | str, seed: int | str
    ) -> Path:
        """A run's folder: ``split`` names it (fold3, official, or a wildcard); a fold number
        is fold{N}."""
        return self.runs() / dataset / model / strategy / f"seed{seed}" / split_name(split)

    @property
    def mlflow_store(self) -> Path:
        """MLflow's file store when the config names no tracking URI: every experiment's runs,
        beside them (`mlflow ui --backend-store-uri results/mlruns`)."""
        return self.results / "mlruns"

    def pretrain_dir(self, model: str) -> Path:
        return self.experiment_dir() / PRETRAIN / model

    def sweep_selection(self, dataset: str, model: str, method: str) -> Path:
        """Which variant of a swept strategy (its method) won on validation, and on what."""
        return self.experiment_dir() / "sweeps" / dataset / model / f"{method}.json"

    def split_sizes(self, dataset: str) -> Path:
        """The sets of every run the study makes of a dataset, checked before they train."""
        return self.experiment_dir() / "splits" / f"{dataset}.json"

    def versioned_dirs(self) -> list[Path]:
        """The folders dvc.yaml names as stage outputs that a study may leave empty (no hub
        checkpoint, no pretraining). The workflow creates them whenever it is loaded, because
        DVC fails on an output that does not exist and has no optional outputs."""
        return [
            self.data / "raw",
            self.data / "embeddings",
            self.models(),
            self.experiment_dir() / PRETRAIN,
            self.runs(),
        ]


def run_log(dataset: str, model: str, strategy: str, split: int | str, seed: int | str) -> Path:
    """A run's log, relative to the folder of its rule's logs."""
    return Path(dataset) / model / strategy / f"seed{seed}" / f"{split_name(split)}.log"


def split_name(split: int | str) -> str:
    """A run's split by name: a fold number N is fold{N}; a name (official, fold3, a
    Snakemake wildcard) stays."""
    return f"fold{split}" if isinstance(split, int) or str(split).isdigit() else str(split)


def stream_rows(cache: Path) -> Path:
    """The fixed-size row copy of a cache that streaming runs read (audiopetl.features.rows),
    hidden beside it and left out of DVC's hash of the features folder (.dvcignore)."""
    return cache.with_name(f".{cache.stem}.rows")


def recorded_checksums(raw: Path, kind: str, root: Path) -> Path:
    """The sha256 list a local-copy dataset's files got at their first use (a dataset with no
    published checksums: Fluent Speech Commands, IEMOCAP), kept under the raw data folder by
    the copy's resolved path, so a later fetch of the same copy is checked against it."""
    import hashlib

    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return raw / ".checksums" / f"{kind}-{key}.SHA256SUMS"
