"""The manifest: one row per clip, the common currency of every dataset kind.

Every manifest has the columns of COLUMNS. Two more appear where a dataset has them: `split`
(train, validation or test: an official split; `fold` is then 0) and, for a multi-label task,
`labels` (the clip's label indices joined by ``|``, with `label` -1 and `label_name` the names
joined the same way).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from audiopetl.core.atomic import atomic_path
from audiopetl.core.errors import DataError

COLUMNS = ["clip_id", "path", "label", "label_name", "fold", "group", "duration", "sample_rate"]
DTYPES = {
    "clip_id": "string",
    "path": "string",
    "label": "int64",
    "label_name": "string",
    "fold": "int64",
    "group": "string",
    "duration": "float64",
    "sample_rate": "int64",
}


OPTIONAL = {"split": "string", "labels": "string"}
# Joins several labels of one clip in a multi-label manifest; a class name may not hold it.
SEPARATOR = "|"


def check_manifest(
    df: pd.DataFrame, source: str, n_folds: int | None = None, task: str = "multiclass"
) -> pd.DataFrame:
    """Check a manifest's columns, ids, labels and folds; return it with canonical dtypes."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if task == "multilabel" and "labels" not in df.columns:
        missing.append("labels (a multi-label task)")
    if missing:
        raise DataError(f"{source}: missing manifest column(s): {', '.join(missing)}")
    extra = [c for c in OPTIONAL if c in df.columns]
    df = df[COLUMNS + extra].copy()
    if task == "multilabel":
        return _check_multilabel(df, source).astype({**DTYPES, **{c: OPTIONAL[c] for c in extra}})
    dup = df["clip_id"][df["clip_id"].duplicated()]
    if len(dup):
        rows = ", ".join(f"row {i + 2} ({cid})" for i, cid in dup.head(10).items())
        raise DataError(f"{source}: duplicate clip id(s): {rows}")
    pairs = df[["label", "label_name"]].drop_duplicates()
    clash = pairs[
        pairs["label"].duplicated(keep=False) | pairs["label_name"].duplicated(keep=False)
    ]
    if len(clash):
        raise DataError(
            f"{source}: labels and label names do not map one-to-one: "
            + ", ".join(f"{r.label}={r.label_name}" for r in clash.itertuples())
        )
    if n_folds is not None and "split" not in df.columns:
        bad = df[(df["fold"] < 1) | (df["fold"] > n_folds)]
        if len(bad):
            first = bad.iloc[0]
            raise DataError(
                f"{source}: row {bad.index[0] + 2} ({first.clip_id}): fold {first.fold} is "
                f"outside the configured folds 1..{n_folds}"
            )
    return df.astype({**DTYPES, **{c: OPTIONAL[c] for c in extra}})


def _check_multilabel(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Every row's label indices and names, joined alike, map one-to-one across the manifest."""
    dup = df["clip_id"][df["clip_id"].duplicated()]
    if len(dup):
        raise DataError(f"{source}: duplicate clip id(s): row {dup.index[0] + 2} ({dup.iloc[0]})")
    names: dict[int, str] = {}
    for row, (indices, labels) in enumerate(zip(df["labels"], df["label_name"], strict=True)):
        index_list, name_list = str(indices).split(SEPARATOR), str(labels).split(SEPARATOR)
        if not str(indices) or len(index_list) != len(name_list):
            raise DataError(
                f"{source}: row {row + 2}: labels {indices!r} and names {labels!r} differ"
            )
        pairs = list(zip(index_list, name_list, strict=True))
        for index, name in pairs:
            if names.setdefault(int(index), name) != name:
                raise DataError(
                    f"{source}: row {row + 2}: label {index} is {name!r} here and "
                    f"{names[int(index)]!r} elsewhere"
                )
    return df


def label_sets(df: pd.DataFrame) -> list[list[int]]:
    """Each clip's label indices: its `labels` (multi-label) or its one `label`."""
    if "labels" in df.columns:
        return [[int(i) for i in str(v).split(SEPARATOR)] for v in df["labels"]]
    return [[int(v)] for v in df["label"]]


def task_of(df: pd.DataFrame) -> str:
    """A manifest's task, from its columns: `labels` makes it multi-label."""
    return "multilabel" if "labels" in df.columns else "multiclass"


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    df = check_manifest(df, str(path), task=task_of(df))
    with atomic_path(path, ".csv") as tmp:
        df.sort_values(["fold", "clip_id"]).to_csv(tmp, index=False)


def read_manifest(path: Path, base: Path | None = None) -> pd.DataFrame:
    """The manifest with each clip's path resolved against ``base``: the manifest's folder by
    default (a dataset copied into data/raw moves as a whole), a user's audio folder for a
    folder dataset (it stays where it is)."""
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; run `audiopetl fetch` for this dataset")
    df = pd.read_csv(
        path,
        dtype={"clip_id": str, "path": str, "label_name": str, "group": str, "split": str,
               "labels": str},
        keep_default_na=False,
    )  # fmt: skip
    df = check_manifest(
        df, str(path), task="multilabel" if "labels" in df.columns else "multiclass"
    )
    base = path.parent if base is None else base
    df["path"] = [str(p if Path(p).is_absolute() else base / p) for p in df["path"]]
    return df


def class_names(df: pd.DataFrame) -> list[str]:
    """Label names indexed by label. A label absent from a partial dataset (a subset of
    ESC-50, say) keeps its index and gets a placeholder name, so outputs keep their meaning."""
    if "labels" in df.columns:
        pairs = (
            (int(i), n)
            for indices, labels in zip(df["labels"], df["label_name"], strict=True)
            for i, n in zip(
                str(indices).split(SEPARATOR), str(labels).split(SEPARATOR), strict=True
            )
        )
        names = dict(pairs)
    else:
        names = dict(zip(df["label"].astype(int), df["label_name"].astype(str), strict=True))
    return [names.get(i, f"class_{i}") for i in range(max(names) + 1)]
