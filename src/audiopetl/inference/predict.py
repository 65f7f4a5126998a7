"""Scoring new recordings: files, folders and CSV lists of paths, clips of any length.

A clip is decoded at the model's sample rate (audiopetl.data.audio) and cut into windows of
the training length, ``hop`` samples apart, the last one ending at the clip's end so no audio
is left out; a clip no longer than one window is one window, padded as in training. The
windows' probabilities are aggregated per clip: their mean (one label per clip) or their
maximum (multi-label: a sound present in one window is present in the clip). Windows of
several clips share batches; a window's scores never depend on its batch (the front ends and
the models in eval mode compute each clip on its own).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from audiopetl.core.errors import DataError
from audiopetl.data.audio import read_audio
from audiopetl.inference.model import Trained

AGGREGATIONS = ("mean", "max")
# Clips decoded ahead of the model, on a few threads (decoding and resampling release the GIL).
DECODE_AHEAD = 16
DECODE_THREADS = 4


@functools.cache
def audio_suffixes() -> frozenset[str]:
    """The file suffixes the data layer decodes: libsndfile's formats (soundfile)."""
    import soundfile

    suffixes = {f".{name.lower()}" for name in soundfile.available_formats()}
    # Other names of the same containers.
    aliases = {".aiff": {".aif"}, ".ogg": {".oga", ".opus"}}
    for name, more in aliases.items():
        if name in suffixes:
            suffixes |= more
    suffixes.discard(".raw")  # headerless: not a clip one can decode without being told more
    return frozenset(suffixes)


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Audio files named, found under folders (recursively, sorted) or listed in a CSV's
    ``path`` column (relative paths are the CSV's folder's), in the order given."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(
                p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in audio_suffixes()
            )
            if not files:
                looked = ", ".join(sorted(audio_suffixes()))
                raise DataError(f"{item}: no audio file in it (looked for {looked})")
            found += files
        elif item.suffix.lower() == ".csv" and item.is_file():
            found += _listed(item)
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return found


def _listed(csv: Path) -> list[Path]:
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (ValueError, OSError) as err:
        raise DataError(f"{csv}: cannot read the list of paths: {err}") from err
    if "path" not in table.columns:
        raise DataError(
            f"{csv}: no `path` column (columns: {', '.join(map(str, table.columns))}); a list "
            "of clips to predict names them in a column called path"
        )
    paths = [Path(p) for p in table["path"]]
    return [p if p.is_absolute() else csv.parent / p for p in paths]


def window_starts(n_samples: int, width: int, hop: int) -> list[int]:
    """Window starts over a clip: every ``hop`` samples, the last window ending at the end."""
    if n_samples <= width:
        return [0]
    starts = list(range(0, n_samples - width + 1, hop))
    if starts[-1] != n_samples - width:
        starts.append(n_samples - width)
    return starts


@dataclass
class ClipScores:
    path: Path
    seconds: float
    starts: list[int]  # window starts, in samples at the model's rate
    windows: np.ndarray  # (windows, classes)
    scores: np.ndarray  # (classes,) aggregated


@dataclass
class Predictions:
    clips: list[ClipScores] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # with --skip-bad


def _decoded(paths: Sequence[Path], rate: int) -> Iterator[tuple[Path, np.ndarray | DataError]]:
    def load(path: Path) -> np.ndarray | DataError:
        try:
            return read_audio(path, rate)
        except DataError as err:
            return err

    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        for start in range(0, len(paths), DECODE_AHEAD):
            chunk = paths[start : start + DECODE_AHEAD]
            yield from zip(chunk, pool.map(load, chunk), strict=True)


def predict_files(
    trained: Trained,
    paths: Sequence[Path],
    *,
    hop_s: float | None = None,
    aggregate: str | None = None,
    skip_bad: bool = False,
) -> Predictions:
    """Every clip's window and aggregated scores; an unreadable clip is a DataError naming
    it, or (``skip_bad``) left out and listed."""
    rate, width = trained.sample_rate, trained.window_samples
    hop = width // 2 if hop_s is None else round(hop_s * rate)
    if hop < 1:
        raise DataError(f"--hop-s {hop_s}: less than one sample at {rate} Hz; give a positive hop")
    how = aggregate or ("max" if trained.multilabel else "mean")
    if how not in AGGREGATIONS:
        raise DataError(f"--aggregate {how!r}: one of {', '.join(AGGREGATIONS)}")
    result = Predictions()
    pending: list[tuple[ClipScores, list[np.ndarray]]] = []
    queued = 0
    batch = trained.run.training.eval_batch_size

    def flush() -> None:
        nonlocal queued
        if not pending:
            return
        windows = [w for _, ws in pending for w in ws]
        scores = trained.predict_waves(windows)
        at = 0
        for clip, ws in pending:
            clip.windows = scores[at : at + len(ws)]
            at += len(ws)
            reduce = np.mean if how == "mean" else np.max
            clip.scores = reduce(clip.windows, axis=0).astype(np.float32)
            result.clips.append(clip)
        pending.clear()
        queued = 0

    for path, wave in _decoded(list(paths), rate):
        if isinstance(wave, DataError):
            if not skip_bad:
                raise wave
            result.skipped.append((path, str(wave)))
            continue
        starts = window_starts(len(wave), width, hop)
        clip = ClipScores(path, len(wave) / rate, starts, np.empty(0), np.empty(0))
        pending.append((clip, [wave[s : s + width] for s in starts]))
        queued += len(starts)
        if queued >= batch:
            flush()
    flush()
    return result


def tables(
    trained: Trained, predictions: Predictions, top_k: int = 5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per clip (path, length, windows, the top-k labels with their scores, for a
    multi-label task the labels at the run's threshold, every class's probability) and one
    row per window."""
    classes = trained.classes
    k = max(1, min(top_k, len(classes)))
    rows, window_rows = [], []
    rate = trained.sample_rate
    width = trained.window_samples
    for clip in predictions.clips:
        order = np.argsort(-clip.scores, kind="stable")[:k]
        row: dict[str, object] = {
            "path": str(clip.path),
            "seconds": clip.seconds,
            "windows": len(clip.starts),
        }
        for rank, index in enumerate(order, start=1):
            row[f"label_{rank}"] = classes[index]
            row[f"score_{rank}"] = float(clip.scores[index])
        if trained.multilabel:
            chosen = np.flatnonzero(clip.scores >= trained.threshold)
            row["labels"] = ";".join(classes[i] for i in chosen)
        row.update({f"p_{name}": float(v) for name, v in zip(classes, clip.scores, strict=True)})
        rows.append(row)
        for i, (start, scores) in enumerate(zip(clip.starts, clip.windows, strict=True)):
            window = {
                "path": str(clip.path),
                "window": i,
                "start_s": start / rate,
                "end_s": min(start + width, round(clip.seconds * rate)) / rate,
            }
            window.update({f"p_{name}": float(v) for name, v in zip(classes, scores, strict=True)})
            window_rows.append(window)
    return pd.DataFrame(rows), pd.DataFrame(window_rows)


def check_out(out: Path) -> str:
    """The output's format by its suffix, checked before anything is scored."""
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise DataError(f"{out}: write predictions to a .csv or .parquet file")
    return suffix


def write_table(table: pd.DataFrame, out: Path) -> None:
    """CSV or parquet by the suffix, written whole or not at all."""
    from audiopetl.core.atomic import atomic_path

    suffix = check_out(out)
    with atomic_path(out, suffix) as tmp:
        if suffix == ".csv":
            table.to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False)


def windows_path(out: Path) -> Path:
    """Where ``--windows`` writes the per-window rows: beside ``out``."""
    return out.with_name(f"{out.stem}.windows{out.suffix}")
