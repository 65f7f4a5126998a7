"""A deterministic, ESC-50-shaped synthetic dataset.

Classes are recipes from a catalogue of sound families (tones, chirps, noise bursts, click
trains, AM and FM sounds, harmonic stacks, beeps), each family in several parameter variants.
``class_offset`` picks where in the catalogue a dataset starts, so a source task and a target
task share sound families but not classes: the setting in which transfer learning pays off.
Every clip varies (pitch, timing, level, background noise), so the task is not trivial.

Same settings, same bytes: each clip draws from its own generator seeded by (seed, class,
fold, index), and WAV files carry no timestamps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from audiopetl.core.atomic import atomic_dir, write_json
from audiopetl.core.errors import DataError
from audiopetl.core.settings import DatasetSettings
from audiopetl.data.datasets.base import RECORD, DatasetKind, prepare_manifest, register
from audiopetl.data.manifest import write_manifest

SoundFn = Callable[[np.random.Generator, np.ndarray, int, float], np.ndarray]

# Per-family parameter variants; variant v of every family comes before variant v + 1 in the
# catalogue, so consecutive classes cover different families first.
_TONE_HZ = [440.0, 1250.0, 700.0, 2600.0, 330.0]
_CHIRP_HZ = [(300.0, 2400.0), (3000.0, 600.0), (800.0, 1600.0), (2200.0, 1100.0), (500.0, 4200.0)]
_NOISE_BAND = [(1500.0, 0.5), (300.0, 0.8), (4500.0, 0.3), (800.0, 0.4), (2800.0, 0.6)]
_CLICK_HZ = [8.0, 23.0, 4.0, 15.0, 35.0]
_AM = [(1000.0, 6.0), (500.0, 14.0), (2000.0, 3.0), (1500.0, 10.0), (3500.0, 20.0)]
_FM = [
    (1200.0, 5.0, 300.0),
    (600.0, 9.0, 150.0),
    (2400.0, 3.0, 600.0),
    (900.0, 14.0, 250.0),
    (1800.0, 7.0, 700.0),
]
_HARMONIC_HZ = [(180.0, 6), (260.0, 3), (120.0, 10), (350.0, 4), (220.0, 8)]
_BEEP = [(1000.0, 3.0), (2000.0, 7.0), (600.0, 5.0), (3000.0, 2.0), (1500.0, 11.0)]


def _jitter(rng: np.random.Generator, value: float, rel: float = 0.04) -> float:
    return value * (1.0 + rng.uniform(-rel, rel))


def _envelope(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random onset and offset with short ramps, so events sit anywhere in the clip."""
    start = int(rng.uniform(0.0, 0.3) * n)
    stop = int(rng.uniform(0.7, 1.0) * n)
    ramp = max(1, n // 50)
    env = np.zeros(n)
    env[start:stop] = 1.0
    edge = np.linspace(0.0, 1.0, ramp)
    env[start : start + ramp] *= edge[: len(env[start : start + ramp])]
    tail = env[max(stop - ramp, 0) : stop]
    env[max(stop - ramp, 0) : stop] = tail * edge[::-1][-len(tail) :]
    return env


def _tone(params: float) -> SoundFn:
    def fn(rng, t, sr, dur):
        return np.sin(2 * np.pi * _jitter(rng, params) * t + rng.uniform(0, 2 * np.pi))

    return fn


def _chirp(params: tuple[float, float]) -> SoundFn:
    def fn(rng, t, sr, dur):
        f0, f1 = _jitter(rng, params[0]), _jitter(rng, params[1])
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * dur))
        return np.sin(phase)

    return fn


def _noise_band(params: tuple[float, float]) -> SoundFn:
    def fn(rng, t, sr, dur):
        centre, rel_width = _jitter(rng, params[0], 0.08), params[1]
        spec = np.fft.rfft(rng.standard_normal(len(t)))
        freqs = np.fft.rfftfreq(len(t), 1.0 / sr)
        spec *= np.exp(-0.5 * ((freqs - centre) / (rel_width * centre)) ** 2)
        sig = np.fft.irfft(spec, n=len(t))
        # Bursts: a few random on/off segments.
        gate = np.sin(2 * np.pi * rng.uniform(1.5, 3.0) * t + rng.uniform(0, 6.3)) > -0.2
        return sig * gate / (np.abs(sig).max() + 1e-9)

    return fn


def _clicks(params: float) -> SoundFn:
    def fn(rng, t, sr, dur):
        sig = np.zeros(len(t))
        period = int(sr / _jitter(rng, params, 0.06))
        click = np.hanning(max(8, sr // 800)) * np.sign(rng.standard_normal(max(8, sr // 800)))
        for start in range(int(rng.uniform(0, period)), len(t) - len(click), period):
            sig[start : start + len(click)] += click
        return sig

    return fn


def _am(params: tuple[float, float]) -> SoundFn:
    def fn(rng, t, sr, dur):
        carrier, rate = _jitter(rng, params[0]), _jitter(rng, params[1], 0.08)
        return (0.5 + 0.5 * np.sin(2 * np.pi * rate * t)) * np.sin(2 * np.pi * carrier * t)

    return fn


def _fm(params: tuple[float, float, float]) -> SoundFn:
    def fn(rng, t, sr, dur):
        carrier, rate, depth = _jitter(rng, params[0]), _jitter(rng, params[1], 0.08), params[2]
        return np.sin(2 * np.pi * carrier * t + depth / rate * np.sin(2 * np.pi * rate * t))

    return fn


def _harmonic(params: tuple[float, int]) -> SoundFn:
    def fn(rng, t, sr, dur):
        f0 = _jitter(rng, params[0])
        sig = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, params[1] + 1))
        return sig / np.abs(sig).max()

    return fn


def _beeps(params: tuple[float, float]) -> SoundFn:
    def fn(rng, t, sr, dur):
        freq, rate = _jitter(rng, params[0]), _jitter(rng, params[1], 0.08)
        gate = np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.3)) > 0.3
        return gate * np.sin(2 * np.pi * freq * t)

    return fn


_FAMILIES: list[tuple[str, Callable[[Any], SoundFn], list[Any]]] = [
    ("tone", _tone, _TONE_HZ),
    ("chirp", _chirp, _CHIRP_HZ),
    ("noise_burst", _noise_band, _NOISE_BAND),
    ("click_train", _clicks, _CLICK_HZ),
    ("am", _am, _AM),
    ("fm", _fm, _FM),
    ("harmonic", _harmonic, _HARMONIC_HZ),
    ("beeps", _beeps, _BEEP),
]
CATALOGUE_SIZE = len(_FAMILIES) * len(_TONE_HZ)


def recipe(index: int) -> tuple[str, SoundFn]:
    """The class recipe at ``index`` of the catalogue: its name and its generator."""
    if not 0 <= index < CATALOGUE_SIZE:
        raise ValueError(
            f"synthetic class index {index} outside the catalogue (0..{CATALOGUE_SIZE - 1})"
        )
    family, make, variants = _FAMILIES[index % len(_FAMILIES)]
    variant = index // len(_FAMILIES)
    return f"{family}_{variant}", make(variants[variant])


def render_clip(
    class_index: int, seed: int, fold: int, take: int, settings: Mapping[str, Any]
) -> np.ndarray:
    sr = int(settings["sample_rate"])
    n = round(float(settings["duration_s"]) * sr)
    rng = np.random.default_rng([seed, class_index, fold, take])
    t = np.arange(n) / sr
    _, fn = recipe(class_index)
    event = fn(rng, t, sr, n / sr) * _envelope(rng, n)
    event /= np.sqrt(np.mean(event**2)) + 1e-9
    snr_low, snr_high = settings["snr_db"]
    snr = rng.uniform(snr_low, snr_high)
    # Pink-ish background: white noise through a gentle low-pass, scaled to the drawn SNR.
    noise = np.cumsum(rng.standard_normal(n)) * 0.02 + rng.standard_normal(n)
    noise -= noise.mean()
    noise *= 10 ** (-snr / 20) / (np.sqrt(np.mean(noise**2)) + 1e-9)
    clip = event + noise
    clip *= rng.uniform(0.05, 0.5) / (np.abs(clip).max() + 1e-9)
    return clip.astype(np.float32)


def second_class(settings: Mapping[str, Any], target: int, fold: int, take: int) -> int | None:
    """The class mixed into a clip of ``target`` (``mix``: the share of clips that get one),
    another class drawn from the clip's own generator; None for a single-class clip."""
    mix = float(settings.get("mix", 0.0))
    if mix <= 0:
        return None
    rng = np.random.default_rng([int(settings["seed"]), target, fold, take, 1])
    if rng.random() >= mix:
        return None
    other = int(rng.integers(int(settings["classes"]) - 1))
    return other + (other >= target)


def generate(settings: Mapping[str, Any], root: Path, progress: bool = True) -> None:
    """Write ``root/audio/*.wav`` and ``root/meta/esc50.csv`` in ESC-50's layout; with ``mix``
    some clips hold a second class too (``targets`` lists both)."""
    classes, offset = int(settings["classes"]), int(settings["class_offset"])
    if offset + classes > CATALOGUE_SIZE:
        raise ValueError(
            f"synthetic: classes + class_offset = {offset + classes} exceeds the catalogue of "
            f"{CATALOGUE_SIZE} sound recipes"
        )
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    seed = int(settings["seed"])
    rows = []
    jobs = [
        (target, fold, take)
        for fold in range(1, int(settings["folds"]) + 1)
        for target in range(classes)
        for take in range(int(settings["clips_per_class_per_fold"]))
    ]
    for target, fold, take in tqdm(jobs, desc="synthetic", unit="clip", disable=not progress):
        name, _ = recipe(offset + target)
        src = f"{offset + target:02d}{fold:02d}{take:03d}"
        filename = f"{fold}-{src}-A-{target}.wav"
        audio = render_clip(offset + target, seed, fold, take, settings)
        targets = [target]
        other = second_class(settings, target, fold, take)
        if other is not None:
            # The second sound as loud as the first: both are there to be heard.
            audio = audio + render_clip(offset + other, seed + 1, fold, take, settings)
            audio *= 0.5
            targets = sorted([target, other])
        sf.write(root / "audio" / filename, audio, int(settings["sample_rate"]), subtype="PCM_16")
        rows.append((filename, fold, target, name, False, src, "A", "|".join(map(str, targets))))
    columns = ["filename", "fold", "target", "category", "esc10", "src_file", "take", "targets"]
    meta = pd.DataFrame(rows, columns=columns)
    if float(settings.get("mix", 0.0)) <= 0:
        meta = meta.drop(columns="targets")  # ESC-50's own columns, as before mixing existed
    meta.to_csv(root / "meta" / "esc50.csv", index=False)


@register("synthetic")
class Synthetic(DatasetKind):
    """The embedded synthetic sounds, written in ESC-50's layout (every setting shapes them)."""

    identity_keys = None
    tasks = ("multiclass", "multilabel")
    schemes = ("folds", "official")

    def folds(self, options: Mapping[str, Any]) -> int | None:
        return int(options["folds"])

    def planned_sizes(self, options: Mapping[str, Any]) -> tuple[dict[int, int], int]:
        per_fold = int(options["classes"]) * int(options["clips_per_class_per_fold"])
        return {f: per_fold for f in range(1, int(options["folds"]) + 1)}, int(options["classes"])

    def make(
        self,
        dataset: DatasetSettings,
        dest: Path,
        record: Mapping[str, Any],
        *,
        downloads: Path,
        skip_bad: bool,
        progress: bool,
    ) -> None:
        from audiopetl.data.datasets.esc50 import esc50_manifest

        options = dataset.options
        if float(options.get("mix", 0.0)) > 0 and not dataset.multilabel:
            raise DataError(f"datasets.{dataset.name}.synthetic.mix: needs task: multilabel")
        with atomic_dir(dest) as tmp:
            generate(options, tmp, progress=progress)
            manifest = esc50_manifest(tmp, dataset.folds)
            if dataset.multilabel:
                manifest = with_label_sets(manifest, tmp, options)
            if dataset.scheme == "official":
                # The last fold is the test set, the one before it validation, as the
                # publisher of a fixed split would give them.
                last = int(options["folds"])
                part = {last: "test", last - 1: "validation"}
                manifest["split"] = [part.get(int(f), "train") for f in manifest["fold"]]
                manifest["fold"] = 0
            manifest = prepare_manifest(dataset, manifest, str(tmp / "manifest.csv"))
            write_manifest(manifest, tmp / "manifest.csv")
            write_json(tmp / RECORD, {**record, "clips": len(manifest), "skipped": []})


def with_label_sets(manifest: pd.DataFrame, root: Path, options: Mapping[str, Any]) -> pd.DataFrame:
    """The manifest of a multi-label synthetic dataset: every clip's classes from the meta's
    ``targets`` (its one ``target`` where nothing was mixed), names from the catalogue."""
    meta = pd.read_csv(root / "meta" / "esc50.csv", dtype=str, keep_default_na=False)
    column = "targets" if "targets" in meta.columns else "target"
    by_clip = dict(zip(meta["filename"].map(lambda f: Path(f).stem), meta[column], strict=True))
    offset = int(options["class_offset"])
    out = manifest.copy()
    out["labels"] = [by_clip[c] for c in out["clip_id"]]
    out["label_name"] = [
        "|".join(recipe(offset + int(i))[0] for i in labels.split("|")) for labels in out["labels"]
    ]
    out["label"] = -1
    return out
