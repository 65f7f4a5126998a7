"""The front ends of the other model kinds, held to transformers' own feature extractors on the
real clips in ../shared: Whisper's log-mel (80 and 128 bins) to WhisperFeatureExtractor, the
waveform (normalised or not) to Wav2Vec2FeatureExtractor. Runs in both environments
(transformers 5.x computes Whisper's features in torch, 4.28 in numpy)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIG_DIR, ESC50_SUBSET, FSDD, needs_esc50, needs_fsdd

from audiopetl.core.config import load_config
from audiopetl.data.audio import read_audio
from audiopetl.features.cache import build_cache, read_folds
from audiopetl.features.frontends import (
    ClapLogMel,
    Waveform,
    WhisperLogMel,
    input_shape,
    make_extractor,
)
from audiopetl.study import Study

SR = 16000
# Agreement with the reference in the model's input units (Whisper: (log10 power + 4) / 4;
# waveform: amplitude, or standard deviations when normalised).
MAX_ABS = 1e-3


def whisper_settings(bins: int, frames: int) -> dict:
    return {
        "front_end": "whisper",
        "sample_rate": SR,
        "num_mel_bins": bins,
        "n_fft": 400,
        "hop_length": 160,
        "target_length": frames,
    }


def waveform_settings(samples: int, normalize: bool) -> dict:
    return {
        "front_end": "waveform",
        "sample_rate": SR,
        "target_length": samples,
        "normalize": normalize,
    }


def clap_settings() -> dict:
    return {
        "front_end": "clap",
        "sample_rate": 48000,
        "num_mel_bins": 64,
        "n_fft": 1024,
        "hop_length": 480,
        "seconds": 10,
        "target_length": 1001,
        "f_min": 0.0,
        "f_max": 14000.0,
    }


def clap_reference(waves: list[np.ndarray]) -> np.ndarray:
    from transformers import ClapFeatureExtractor

    # The unfused models' settings (clips <= 10 s: the truncation never draws at random).
    extractor = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
    out = [
        extractor(w, sampling_rate=48000, return_tensors="np")["input_features"][0][0]
        for w in waves
    ]
    return np.stack(out)


def esc50_paths() -> list[Path]:
    return sorted((ESC50_SUBSET / "audio").glob("*.wav"))


def fsdd_paths() -> list[Path]:
    everything = sorted(FSDD.glob("*.wav"))
    by_size = sorted(everything, key=lambda p: os.stat(p).st_size)
    # Every 60th clip, and the five longest (cut) and shortest (padded).
    return sorted({*everything[::60], *by_size[-5:], *by_size[:5]})


def whisper_reference(waves: list[np.ndarray], bins: int, frames: int) -> np.ndarray:
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=bins)
    # transformers pads each clip to 30 s; the first `frames` frames are the clip's.
    out = [
        extractor(w, sampling_rate=SR, return_tensors="np")["input_features"][0][:, :frames].T
        for w in waves
    ]
    return np.stack(out)


def waveform_reference(waves: list[np.ndarray], samples: int, normalize: bool) -> np.ndarray:
    from transformers import Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor(do_normalize=normalize, return_attention_mask=True)
    out = [
        extractor(
            w, sampling_rate=SR, padding="max_length", max_length=samples, return_tensors="np"
        )["input_values"][0]
        for w in waves
    ]
    return np.stack(out)[..., None]


def assert_agrees(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert np.isfinite(ours).all()
    diff = np.abs(ours.astype(np.float64) - reference.astype(np.float64))
    assert diff.max() <= MAX_ABS, f"max abs difference {diff.max():.3g}"


@needs_esc50
@pytest.mark.parametrize("bins", [80, 128])
def test_whisper_log_mel_agrees_on_esc50(bins):
    frames = 512  # ESC-50's 5 s clips and the esc50 preset's target_length
    extractor = WhisperLogMel(whisper_settings(bins, frames))
    paths = esc50_paths()
    waves = [read_audio(p, SR, extractor.max_samples) for p in paths]
    ours, n_frames = extractor(waves)
    assert ours.shape == (len(paths), frames, bins)
    assert set(n_frames) == {500}  # centred every 10 ms within 5 s, as 30 s give 3000
    assert_agrees(ours.numpy(), whisper_reference(waves, bins, frames))


@needs_fsdd
def test_whisper_log_mel_agrees_on_fsdd_cut_and_padded():
    frames = 128
    extractor = WhisperLogMel(whisper_settings(80, frames))
    waves = [read_audio(p, SR, extractor.max_samples) for p in fsdd_paths()]
    assert min(len(w) for w in waves) < extractor.max_samples == max(len(w) for w in waves)
    ours, _ = extractor(waves)
    assert_agrees(ours.numpy(), whisper_reference(waves, 80, frames))


@needs_esc50
@needs_fsdd
@pytest.mark.parametrize("normalize", [True, False])
def test_waveform_agrees_with_wav2vec2_feature_extractor(normalize):
    samples = 81920  # 5.12 s
    extractor = Waveform(waveform_settings(samples, normalize))
    paths = esc50_paths()[:20] + fsdd_paths()[:20]
    waves = [read_audio(p, SR, extractor.max_samples) for p in paths]
    ours, lengths = extractor(waves)
    assert ours.shape == (len(paths), samples, 1)
    assert lengths == [len(w) for w in waves]
    assert_agrees(ours.numpy(), waveform_reference(waves, samples, normalize))


@needs_esc50
@needs_fsdd
def test_clap_log_mel_agrees_on_esc50_and_repeated_fsdd():
    """5 s ESC-50 clips and short FSDD clips, each repeated to CLAP's 10 s at 48 kHz."""
    extractor = ClapLogMel(clap_settings())
    paths = esc50_paths()[:12] + fsdd_paths()[:12]
    waves = [read_audio(p, 48000, extractor.max_samples) for p in paths]
    ours, n_frames = extractor(waves)
    assert ours.shape == (len(paths), 1001, 64)
    assert n_frames[:12] == [500] * 12 and max(n_frames[12:]) < 500
    assert_agrees(ours.numpy(), clap_reference(waves))


@pytest.mark.parametrize(
    "settings",
    [whisper_settings(80, 64), waveform_settings(12000, True), clap_settings()],
    ids=["whisper", "wave", "clap"],
)
def test_a_clip_does_not_depend_on_its_batch(settings):
    rng = np.random.default_rng(0)
    extractor = make_extractor(settings)
    short = rng.standard_normal(3000).astype(np.float32) * 0.1
    long = rng.standard_normal(20000).astype(np.float32) * 0.5
    alone, _ = extractor([short])
    together, _ = extractor([long, short])
    assert np.array_equal(alone[0].numpy(), together[1].numpy())


def test_whisper_frames_past_the_cut_are_ignored():
    """Audio after the cut changes no kept frame: a clip cut at the configured length gives the
    same features as the longer recording."""
    rng = np.random.default_rng(1)
    extractor = WhisperLogMel(whisper_settings(80, 64))
    wave = rng.standard_normal(extractor.max_samples + 5000).astype(np.float32)
    cut, _ = extractor([wave[: extractor.max_samples]])
    full, _ = extractor([wave])
    assert np.array_equal(cut.numpy(), full.numpy())


def test_front_end_settings_follow_the_dataset_length():
    study = Study(load_config(CONFIG_DIR / "config.yaml", "models"))
    fbank = study.features("synthetic").record()
    whisper = study.features("synthetic", "tiny-whisper").record()
    wave = study.features("synthetic", "tiny-wav2vec2").record()
    assert study.features("synthetic", "tiny-ast").record() == fbank  # AST caches keep their names
    seconds = fbank["target_length"] * fbank["frame_shift_ms"] / 1000
    assert whisper["target_length"] * 0.01 == pytest.approx(seconds)
    assert wave["target_length"] == round(seconds * SR)
    assert input_shape(whisper) == (whisper["target_length"], 80)
    assert input_shape(wave) == (wave["target_length"], 1)
    esc50 = study.features("esc50", "tiny-whisper").record()
    assert esc50["target_length"] == 512  # even: the encoder's convolution halves it


def cache_rows(cfg: dict, dataset: str, model: str, paths: list[Path], tmp_path: Path):
    """A real cache of ``paths`` for ``model``'s front end; its rows in the paths' order."""
    import pandas as pd
    import soundfile as sf
    import torch

    from audiopetl.data.manifest import read_manifest, write_manifest

    manifest = pd.DataFrame(
        {
            "clip_id": [p.stem for p in paths],
            "path": [str(p) for p in paths],
            "label": 0,
            "label_name": "any",
            "fold": [1 + i % 2 for i in range(len(paths))],
            "group": [p.stem for p in paths],
            "duration": [sf.info(p).duration for p in paths],
            "sample_rate": [sf.info(p).samplerate for p in paths],
        }
    )
    manifest_file = tmp_path / "manifest.csv"
    write_manifest(manifest, manifest_file)
    out = tmp_path / "features.parquet"
    study = Study(cfg)
    result = build_cache(
        study.features(dataset, model),
        read_manifest(manifest_file),
        manifest_file,
        out,
        cache=study.cache,
        clips=study.clips,
        progress=False,
    )
    assert result.rows == len(paths)
    features = read_folds(out)
    assert features.features.dtype == torch.float16
    order = {cid: i for i, cid in enumerate(features.clip_ids)}
    return features.features.float().numpy()[[order[p.stem] for p in paths]]


@needs_fsdd
@pytest.mark.parametrize("model", ["tiny-whisper", "tiny-wav2vec2", "tiny-clap"])
def test_front_end_agrees_after_float16_cache(model, tmp_path):
    """The cache stores float16: values keep 2**-11 relative precision on top of the
    computation's bound (relative, as normalised waveform peaks reach tens of standard
    deviations, where float16's absolute step is above 1e-3)."""
    cfg = load_config(CONFIG_DIR / "config.yaml", "models")
    settings = Study(cfg).features("fsdd", model).record()
    paths = fsdd_paths()[:30]
    extractor = make_extractor(settings)
    waves = [read_audio(p, extractor.sample_rate, extractor.max_samples) for p in paths]
    frames = input_shape(settings)[0]
    if model == "tiny-whisper":
        reference = whisper_reference(waves, settings["num_mel_bins"], frames)
    elif model == "tiny-clap":
        reference = clap_reference(waves)
    else:
        reference = waveform_reference(waves, frames, settings["normalize"])
    cached = cache_rows(cfg, "fsdd", model, paths, tmp_path)
    assert cached.shape == (len(paths), *input_shape(settings))
    diff = np.abs(cached.astype(np.float64) - reference)
    bound = MAX_ABS + 2.0**-11 * (np.abs(reference) + MAX_ABS) + 2.0**-24
    assert (diff <= bound).all(), f"max {diff.max():.3g}"
