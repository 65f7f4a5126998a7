"""Reading audio: soundfile for decoding, soxr for resampling.

soxr (libsoxr) is a well-kept, high-quality resampler that is about as fast as a cached-kernel
torch resampler and needs no torchaudio, which the CPU install must do without.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from audiopetl.core.errors import DataError


# What to do about a bad file, said with every error about one.
SKIP_HINT = "; fix or remove it, or leave bad files out with --skip-bad (data.skip_bad: true)"


def _empty(path: str | Path) -> bool:
    try:
        return Path(path).stat().st_size == 0
    except OSError:
        return False


def read_audio(path: str | Path, sample_rate: int, max_samples: int | None = None) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate``, at most ``max_samples`` long.

    Raises DataError naming the file for anything unreadable, empty or non-finite.
    """
    if _empty(path):
        raise DataError(f"{path}: empty file (0 bytes){SKIP_HINT}")
    try:
        with sf.SoundFile(str(path)) as f:
            native_sr = f.samplerate
            frames = -1
            if max_samples is not None:
                # Read only what the features will use; a little extra feeds the resampler's
                # filter at the cut. The margin is 256 samples at the target rate: soxr's HQ
                # filter at 44.1 -> 16 kHz needs ~250 native samples (64 left a 2e-3 error).
                frames = int(np.ceil((max_samples + 256) * native_sr / sample_rate))
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise DataError(f"{path}: cannot decode audio: {err}{SKIP_HINT}") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read audio: {err}{SKIP_HINT}") from err
    if data.shape[0] == 0:
        raise DataError(f"{path}: audio file holds no samples{SKIP_HINT}")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise DataError(f"{path}: audio holds NaN or Inf samples{SKIP_HINT}")
    if native_sr != sample_rate:
        mono = soxr.resample(mono, native_sr, sample_rate, quality="HQ").astype(np.float32)
    if max_samples is not None:
        mono = mono[:max_samples]
    return np.ascontiguousarray(mono, dtype=np.float32)


def audio_info(path: str | Path) -> tuple[float, int]:
    """Return (duration in seconds, sample rate) without decoding the samples."""
    if _empty(path):
        raise DataError(f"{path}: empty file (0 bytes){SKIP_HINT}")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise DataError(f"{path}: cannot read audio header: {err}{SKIP_HINT}") from err
    if info.frames <= 0:
        raise DataError(f"{path}: audio file holds no samples{SKIP_HINT}")
    return info.frames / info.samplerate, int(info.samplerate)
