"""Audio decoding and AST's log-mel features, held to transformers' ASTFeatureExtractor (and to
torchaudio's Kaldi fbank where torchaudio imports) on real clips."""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import CONFIG_DIR, ESC50_SUBSET, FSDD, needs_esc50, needs_fsdd

from audiopetl.core.config import load_config
from audiopetl.core.errors import DataError
from audiopetl.data.audio import audio_info, read_audio
from audiopetl.data.manifest import read_manifest, write_manifest
from audiopetl.features.cache import build_cache, read_folds
from audiopetl.features.fbank import LogMelExtractor
from audiopetl.study import Study

SR = 16000
# Agreement with the reference, in normalised units ((x - mean) / (2 std)).
MAX_ABS = 1e-3
MEAN_ABS = 1e-5
# float16 storage rounds to nearest: at most half a unit in the last place, 2**-11 relative
# (plus the subnormal spacing 2**-24 near zero).
FP16_REL = 2.0**-11
FP16_ABS = 2.0**-24


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load_config(CONFIG_DIR / "config.yaml")


def sine(freq: float, sr: int, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(round(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / sr)[np.argmax(spectrum)])


def feature_settings(cfg: dict, dataset: str) -> dict:
    """The AST fbank settings of ``dataset``'s cache, as the cache records them."""
    return Study(cfg).features(dataset).record()


# ---------------------------------------------------------------------------------------------
# audio


@pytest.mark.parametrize(
    ("suffix", "subtype", "lossless"),
    [(".wav", "PCM_16", True), (".flac", "PCM_16", True), (".ogg", "VORBIS", False)],
)
def test_read_formats(tmp_path, suffix, subtype, lossless):
    x = sine(440.0, SR, 1.0)
    path = tmp_path / f"tone{suffix}"
    sf.write(path, x, SR, subtype=subtype)
    y = read_audio(path, SR)
    assert y.dtype == np.float32 and y.ndim == 1 and y.flags["C_CONTIGUOUS"]
    assert len(y) == len(x)
    if lossless:
        assert np.abs(y - x).max() <= 1.0 / 32768
    else:
        assert np.corrcoef(x, y)[0, 1] > 0.99
    assert peak_hz(y, SR) == pytest.approx(440.0, abs=1.0)
    assert audio_info(path) == (pytest.approx(1.0), SR)


def test_stereo_is_mixed_to_mono_by_mean(tmp_path):
    left, right = sine(300.0, SR, 0.5), sine(1700.0, SR, 0.5, amp=0.6)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    y = read_audio(path, SR)
    assert y.shape == left.shape
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)


def test_resample_44k1_to_16k_keeps_frequency_and_length(tmp_path):
    x = sine(1000.0, 44100, 2.0)
    path = tmp_path / "tone44k.wav"
    sf.write(path, x, 44100, subtype="FLOAT")
    y = read_audio(path, SR)
    assert len(y) == pytest.approx(len(x) * SR / 44100, abs=1)
    assert peak_hz(y, SR) == pytest.approx(1000.0, abs=0.5)
    # No loss of level in the pass band (away from the edges).
    core = y[1000:-1000]
    assert np.sqrt(np.mean(core**2)) == pytest.approx(0.3 / np.sqrt(2), rel=1e-2)


def test_max_samples_cut(tmp_path):
    x = sine(440.0, 8000, 1.0)
    path = tmp_path / "tone8k.wav"
    sf.write(path, x, 8000, subtype="FLOAT")
    full = read_audio(path, SR)
    cut = read_audio(path, SR, max_samples=5000)
    assert len(full) == 16000 and len(cut) == 5000
    np.testing.assert_allclose(cut, full[:5000], atol=1e-6)
    assert len(read_audio(path, SR, max_samples=10**6)) == 16000


@needs_esc50
def test_max_samples_cut_matches_full_read_at_44k1():
    # The cut read feeds the resampler a margin past the cut; it must be wide enough that the
    # kept samples equal those of the whole clip resampled (64 native samples left 2e-3 here).
    path = sorted((ESC50_SUBSET / "audio").glob("*.wav"))[0]
    full = read_audio(path, SR)
    for n in (20720, 40000):
        cut = read_audio(path, SR, max_samples=n)
        assert len(cut) == n
        assert np.abs(cut - full[:n]).max() <= 1e-5


@pytest.mark.parametrize("kind", ["random", "empty", "no_frames", "nan", "inf"])
def test_bad_audio_raises_data_error_naming_file(tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "no_frames":
        sf.write(path, np.zeros(0, np.float32), SR, subtype="PCM_16")
    else:
        x = sine(440.0, SR, 0.5)
        x[100] = np.nan if kind == "nan" else np.inf
        sf.write(path, x, SR, subtype="FLOAT")
    with pytest.raises(DataError, match=re.escape(str(path))):
        read_audio(path, SR)


# ---------------------------------------------------------------------------------------------
# features against transformers' ASTFeatureExtractor


def ast_reference(waves: list[np.ndarray], settings: dict) -> np.ndarray:
    from transformers import ASTFeatureExtractor

    with warnings.catch_warnings():
        # The numpy fallback's mel banks: "At least one mel filter has all zero values".
        warnings.simplefilter("ignore", UserWarning)
        try:
            extractor = ASTFeatureExtractor(
                sampling_rate=settings["sample_rate"],
                num_mel_bins=settings["num_mel_bins"],
                max_length=settings["target_length"],
                mean=settings["mean"],
                std=settings["std"],
            )
        except ImportError as err:
            # transformers 4.28 has no numpy fallback: without torchaudio (no cp311 wheel of
            # torchaudio 0.13.1 for the legacy venv) the reference cannot be computed there.
            pytest.skip(f"ASTFeatureExtractor unavailable here: {str(err).strip()[:120]}")
        return extractor(waves, sampling_rate=settings["sample_rate"], return_tensors="np")[
            "input_values"
        ]


@dataclass
class Clips:
    paths: list[Path]
    waves: list[np.ndarray]
    settings: dict
    ours: np.ndarray
    n_frames: list[int]
    reference: np.ndarray


def compute_clips(paths: list[Path], settings: dict) -> Clips:
    waves = [read_audio(p, settings["sample_rate"]) for p in paths]
    ours, n_frames = LogMelExtractor(settings)(waves)
    return Clips(paths, waves, settings, ours.numpy(), n_frames, ast_reference(waves, settings))


@pytest.fixture(scope="module")
def esc50_clips(cfg) -> Clips:
    settings = feature_settings(cfg, "esc50")
    assert settings["target_length"] == 512
    return compute_clips(sorted((ESC50_SUBSET / "audio").glob("*.wav")), settings)


@pytest.fixture(scope="module")
def fsdd_clips(cfg) -> Clips:
    everything = sorted(FSDD.glob("*.wav"))
    # Every 30th clip, plus the five longest (cut at target_length) and five shortest (padded).
    by_size = sorted(everything, key=lambda p: os.stat(p).st_size)
    paths = sorted({*everything[::30], *by_size[-5:], *by_size[:5]})
    return compute_clips(paths, feature_settings(cfg, "fsdd"))


def assert_agrees(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    diff = np.abs(ours.astype(np.float64) - reference.astype(np.float64))
    assert np.isfinite(ours).all()
    assert diff.max() <= MAX_ABS, f"max abs difference {diff.max():.3g}"
    assert diff.mean() <= MEAN_ABS, f"mean abs difference {diff.mean():.3g}"


@needs_esc50
def test_esc50_agrees_with_ast_feature_extractor(esc50_clips):
    assert len(esc50_clips.paths) == 83
    assert esc50_clips.ours.shape == (83, 512, 128)
    assert_agrees(esc50_clips.ours, esc50_clips.reference)


@needs_esc50
def test_five_second_clip_gives_498_frames(esc50_clips):
    extractor = LogMelExtractor(esc50_clips.settings)
    assert extractor.num_frames(5 * SR) == 498
    assert {len(w) for w in esc50_clips.waves} == {5 * SR}
    assert set(esc50_clips.n_frames) == {498}
    # Frames 498.. are padding, in both.
    pad = (0.0 - esc50_clips.settings["mean"]) / (2 * esc50_clips.settings["std"])
    np.testing.assert_allclose(esc50_clips.ours[:, 498:], pad, atol=1e-6)
    np.testing.assert_allclose(esc50_clips.reference[:, 498:], pad, atol=1e-6)
    assert np.abs(esc50_clips.ours[:, 497] - pad).max() > 0.1


@needs_fsdd
def test_fsdd_agrees_with_ast_feature_extractor(fsdd_clips):
    assert len(fsdd_clips.paths) >= 100
    target = fsdd_clips.settings["target_length"]
    # The set covers clips shorter and longer than target_length.
    extractor = LogMelExtractor(fsdd_clips.settings)
    assert min(fsdd_clips.n_frames) < target == max(fsdd_clips.n_frames)
    assert max(len(w) for w in fsdd_clips.waves) > extractor.max_samples
    assert_agrees(fsdd_clips.ours, fsdd_clips.reference)


def fp16_bound(reference: np.ndarray) -> np.ndarray:
    """MAX_ABS for the computation plus float16 rounding of the stored value."""
    return MAX_ABS + FP16_REL * (np.abs(reference) + MAX_ABS) + FP16_ABS


def cache_clips(clips: Clips, cfg: dict, dataset: str, tmp_path: Path) -> np.ndarray:
    """Build a real cache from ``clips`` and return its rows in the clips' order."""
    manifest = pd.DataFrame(
        {
            "clip_id": [p.stem for p in clips.paths],
            "path": [str(p) for p in clips.paths],
            "label": 0,
            "label_name": "any",
            "fold": [1 + i % 2 for i in range(len(clips.paths))],
            "group": [p.stem for p in clips.paths],
            "duration": [len(w) / SR for w in clips.waves],
            "sample_rate": [sf.info(p).samplerate for p in clips.paths],
        }
    )
    manifest_file = tmp_path / "manifest.csv"
    write_manifest(manifest, manifest_file)
    out = tmp_path / "features.parquet"
    study = Study(cfg)
    result = build_cache(
        study.features(dataset),
        read_manifest(manifest_file),
        manifest_file,
        out,
        cache=study.cache,
        clips=study.clips,
        progress=False,
    )
    assert result.rows == len(clips.paths) and not result.skipped
    features = read_folds(out)
    assert features.features.dtype == torch.float16
    order = {cid: i for i, cid in enumerate(features.clip_ids)}
    assert sorted(features.n_frames.tolist()) == sorted(clips.n_frames)
    return features.features.float().numpy()[[order[p.stem] for p in clips.paths]]


@needs_esc50
def test_esc50_agrees_after_float16_cache(esc50_clips, cfg, tmp_path):
    cached = cache_clips(esc50_clips, cfg, "esc50", tmp_path)
    diff = np.abs(cached.astype(np.float64) - esc50_clips.reference)
    assert (diff <= fp16_bound(esc50_clips.reference)).all(), f"max {diff.max():.3g}"
    # float16 rounding is unbiased: the mean error stays far below one rounding step.
    assert diff.mean() <= 2e-4


@needs_fsdd
def test_fsdd_agrees_after_float16_cache(fsdd_clips, cfg, tmp_path):
    # The cache reads only max_samples of the long clips: the cut must not show.
    cached = cache_clips(fsdd_clips, cfg, "fsdd", tmp_path)
    diff = np.abs(cached.astype(np.float64) - fsdd_clips.reference)
    assert (diff <= fp16_bound(fsdd_clips.reference)).all(), f"max {diff.max():.3g}"
    assert diff.mean() <= 2e-4


def _torchaudio():
    try:
        import torchaudio.compliance.kaldi as kaldi
    except (ImportError, OSError) as err:
        pytest.skip(
            "torchaudio is not importable here (deliberately not installed next to the CPU "
            f"torch; see notes/ml-stack.md): {type(err).__name__}: {err}"
        )
    return kaldi


@needs_esc50
def test_agrees_with_torchaudio_kaldi_fbank(esc50_clips):
    kaldi = _torchaudio()
    extractor = LogMelExtractor(esc50_clips.settings)
    for wave in esc50_clips.waves[::8]:
        reference = kaldi.fbank(
            torch.from_numpy(wave)[None],
            sample_frequency=SR,
            window_type="hanning",
            num_mel_bins=128,
            dither=0.0,
        )
        ours = extractor.log_mel(torch.from_numpy(wave)[None])[0]
        assert ours.shape == reference.shape
        # Unnormalised log-mel: 1e-3 normalised is 2 std x 1e-3 here.
        assert (ours - reference).abs().max() <= 2 * extractor.std * MAX_ABS


# ---------------------------------------------------------------------------------------------
# padding and batching


def test_padding_value_for_short_clip(cfg):
    settings = feature_settings(cfg, "fsdd")
    extractor = LogMelExtractor(settings)
    wave = np.random.default_rng(1).standard_normal(SR // 2).astype(np.float32) * 0.1
    feats, n_frames = extractor([wave])
    assert n_frames == [extractor.num_frames(SR // 2)] == [48]
    pad = (0.0 - settings["mean"]) / (2 * settings["std"])
    assert float(feats[0, 48:].sub(pad).abs().max()) <= 1e-6
    assert float(feats[0, :48].sub(pad).abs().mean()) > 0.1
    # A clip shorter than one window gives padding only.
    tiny, n_tiny = extractor([wave[:100]])
    assert n_tiny == [0]
    assert float(tiny.sub(pad).abs().max()) <= 1e-6


def test_batching_does_not_change_a_clip(cfg):
    extractor = LogMelExtractor(feature_settings(cfg, "esc50"))
    rng = np.random.default_rng(2)
    short = (rng.standard_normal(SR // 3) * 0.2).astype(np.float32)
    longer = [(rng.standard_normal(n) * 0.2).astype(np.float32) for n in (3 * SR, 6 * SR)]
    alone, n_alone = extractor([short])
    batched, n_batched = extractor([longer[0], short, longer[1]])
    assert n_batched[1] == n_alone[0]
    assert float((batched[1] - alone[0]).abs().max()) <= 1e-6
    # And the clip is computed alike in the other position of the batch.
    first, _ = extractor([short, *longer])
    assert float((first[0] - alone[0]).abs().max()) <= 1e-6


def test_audio_past_target_length_is_ignored(cfg):
    settings = {**feature_settings(cfg, "esc50"), "target_length": 32}
    extractor = LogMelExtractor(settings)
    rng = np.random.default_rng(3)
    wave = (rng.standard_normal(2 * SR) * 0.2).astype(np.float32)
    other = wave.copy()
    other[extractor.max_samples :] = 0.0
    a, n_a = extractor([wave])
    b, _ = extractor([other])
    assert a.shape == (1, 32, 128)
    assert n_a == [extractor.num_frames(extractor.max_samples)] == [32]
    assert torch.equal(a, b)
