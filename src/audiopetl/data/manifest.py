"""The manifest: one row per clip, the common currency of every dataset kind."""

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


def check_manifest(df: pd.DataFrame, source: str, n_folds: int | None = None) -> pd.DataFrame:
    """Check a manifest's columns, ids, labels and folds; return it with canonical dtypes."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing manifest column(s): {', '.join(missing)}")
    df = df[COLUMNS].copy()
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
    if n_folds is not None:
        bad = df[(df["fold"] < 1) | (df["fold"] > n_folds)]
        if len(bad):
            first = bad.iloc[0]
            raise DataError(
                f"{source}: row {bad.index[0] + 2} ({first.clip_id}): fold {first.fold} is "
                f"outside the configured folds 1..{n_folds}"
            )
    return df.astype(DTYPES)


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    df = check_manifest(df, str(path))
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
        dtype={"clip_id": str, "path": str, "label_name": str, "group": str},
        keep_default_na=False,
    )
    df = check_manifest(df, str(path))
    base = path.parent if base is None else base
    df["path"] = [str(p if Path(p).is_absolute() else base / p) for p in df["path"]]
    return df


def class_names(df: pd.DataFrame) -> list[str]:
    """Label names indexed by label. A label absent from a partial dataset (a subset of
    ESC-50, say) keeps its index and gets a placeholder name, so outputs keep their meaning."""
    names = dict(zip(df["label"].astype(int), df["label_name"].astype(str), strict=True))
    return [names.get(i, f"class_{i}") for i in range(max(names) + 1)]
