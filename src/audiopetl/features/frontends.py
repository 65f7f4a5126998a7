"""Front ends: what a model kind reads, each a feature-cache kind.

``fbank`` is AST's Kaldi fbank (audiopetl.features.fbank). ``whisper`` is Whisper's log-mel (80 or
128 bins; log10, floored 8 decades under the clip's peak, scaled to about [-1, 1]); ``waveform``
is the 16 kHz signal itself, optionally normalised per clip, for wav2vec2-style models; ``clap``
is CLAP's log-mel of the clip repeated to 10 s at 48 kHz. Every
extractor takes a list of waveforms (mono float32 at its sample rate) and gives
(batch, target_length, bins) plus each clip's frame count before padding, and a clip's result
never depends on the other clips of its batch. tests/test_frontends.py holds each to its
transformers feature extractor on real clips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from audiopetl.features.fbank import LogMelExtractor

FRONT_ENDS = ("fbank", "whisper", "waveform", "clap")


def front_end_of(settings: Mapping[str, Any]) -> str:
    """AST's fbank settings carry no `front_end` key (their caches keep their names)."""
    return str(settings.get("front_end", "fbank"))


def mel_power(
    batch: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor, filters: torch.Tensor
) -> torch.Tensor:
    """Mel power spectra (batch, bins, frames) of waveforms (batch, samples): a centred STFT
    (reflected at the edges, as transformers' extractors) and ``filters`` (freq, bins)."""
    spectrum = torch.stft(
        batch, n_fft, hop, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    return torch.matmul(filters.T, spectrum.abs().square())


class WhisperLogMel:
    """Whisper's log-mel, batched in torch, for clips cut to ``target_length`` frames.

    transformers pads every clip to 30 s before its STFT; here a clip is padded with zeros to
    its cut length plus one FFT window, which gives the same frames (the STFT's centring
    reflects zeros at the end either way) and the same peak (zero frames only add -10).
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        from audiopetl.core import compat

        self.settings = dict(settings)
        self.sample_rate = int(settings["sample_rate"])
        self.num_mel_bins = int(settings["num_mel_bins"])
        self.n_fft = int(settings["n_fft"])
        self.hop = int(settings["hop_length"])
        self.target_length = int(settings["target_length"])
        filters = compat.whisper_mel_filters(self.num_mel_bins, self.n_fft, self.sample_rate)
        self._filters = torch.from_numpy(filters.astype(np.float32))  # (freq, bins)
        self._window = torch.hann_window(self.n_fft)  # periodic, as transformers' "hann"

    @property
    def max_samples(self) -> int:
        return self.target_length * self.hop

    def num_frames(self, num_samples: int) -> int:
        """Frames whose centre lies within the clip."""
        return 0 if num_samples == 0 else 1 + (num_samples - 1) // self.hop

    def unnormalised(self, feats: torch.Tensor) -> torch.Tensor:
        return feats * 4.0 - 4.0  # log10 power, for the cache's statistics

    def __call__(self, waveforms: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
        width = self.max_samples + self.n_fft  # the same for every batch
        batch = torch.zeros(len(waveforms), width, dtype=torch.float32)
        lengths = []
        for i, wave in enumerate(waveforms):
            n = min(len(wave), self.max_samples)
            batch[i, :n] = torch.from_numpy(np.asarray(wave[:n], dtype=np.float32))
            lengths.append(n)
        mel = mel_power(batch, self.n_fft, self.hop, self._window, self._filters)
        log_spec = mel.clamp_min(1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        feats = ((log_spec + 4.0) / 4.0)[:, :, : self.target_length]
        return feats.transpose(1, 2).contiguous(), [self.num_frames(n) for n in lengths]


class Waveform:
    """The signal itself, cut or zero-padded to ``target_length`` samples, as (B, samples, 1);
    with ``normalize``, zero mean and unit variance over the clip's own samples (padding
    stays 0), as transformers' Wav2Vec2FeatureExtractor does."""

    num_mel_bins = 1  # one value per "frame" (sample)

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self.sample_rate = int(settings["sample_rate"])
        self.target_length = int(settings["target_length"])
        self.normalize = bool(settings["normalize"])

    @property
    def max_samples(self) -> int:
        return self.target_length

    def num_frames(self, num_samples: int) -> int:
        return num_samples

    def unnormalised(self, feats: torch.Tensor) -> torch.Tensor:
        return feats

    def __call__(self, waveforms: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
        out = torch.zeros(len(waveforms), self.target_length, 1, dtype=torch.float32)
        lengths = []
        for i, wave in enumerate(waveforms):
            clip = np.asarray(wave[: self.target_length], dtype=np.float32)
            if self.normalize and len(clip):
                # float64 statistics, as numpy gives transformers' extractor.
                mean, var = clip.mean(dtype=np.float64), clip.var(dtype=np.float64)
                clip = ((clip - mean) / np.sqrt(var + 1e-7)).astype(np.float32)
            out[i, : len(clip), 0] = torch.from_numpy(clip)
            lengths.append(len(clip))
        return out, lengths


class ClapLogMel:
    """CLAP's log-mel (unfused models): the clip at 48 kHz repeated until it fills 10 s and
    zero-padded to exactly 10 s (CLAP's ``repeatpad``), a 1024-point STFT every 10 ms, slaney
    mel filters, power in dB (floored at -100 dB). A clip longer than 10 s is cut at 10 s
    (transformers' ``rand_trunc`` would pick a random 10 s: not reproducible)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        from audiopetl.core import compat

        self.settings = dict(settings)
        self.sample_rate = int(settings["sample_rate"])
        self.num_mel_bins = int(settings["num_mel_bins"])
        self.n_fft = int(settings["n_fft"])
        self.hop = int(settings["hop_length"])
        self.samples = int(settings["seconds"]) * self.sample_rate
        self.target_length = self.samples // self.hop + 1
        filters = compat.clap_mel_filters(
            self.num_mel_bins,
            self.n_fft,
            self.sample_rate,
            float(settings["f_min"]),
            float(settings["f_max"]),
        )
        # float64 throughout, as transformers' numpy extractor: CLAP's dB scale has no floor
        # relative to the clip's peak (Whisper's has), so the energies of near-silent frames
        # (a short clip's zero padding, 100 dB down) would carry float32's rounding into the
        # dB values (1e-2 dB measured); in float64 they agree to 1e-3.
        self._filters = torch.from_numpy(filters)
        self._window = torch.hann_window(self.n_fft, dtype=torch.float64)

    @property
    def max_samples(self) -> int:
        return self.samples

    def num_frames(self, num_samples: int) -> int:
        """Frames of the clip's own audio, before it is repeated."""
        return 0 if num_samples == 0 else min(self.target_length, 1 + (num_samples - 1) // self.hop)

    def unnormalised(self, feats: torch.Tensor) -> torch.Tensor:
        return feats  # dB

    def __call__(self, waveforms: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
        batch = torch.zeros(len(waveforms), self.samples, dtype=torch.float64)
        lengths = []
        for i, wave in enumerate(waveforms):
            clip = np.asarray(wave[: self.samples], dtype=np.float64)
            if len(clip):
                repeated = np.tile(clip, self.samples // len(clip))
                batch[i, : len(repeated)] = torch.from_numpy(repeated)
            lengths.append(len(clip))
        mel = mel_power(batch, self.n_fft, self.hop, self._window, self._filters)
        feats = 10.0 * mel.clamp_min(1e-10).log10()
        out = feats.transpose(1, 2).to(torch.float32).contiguous()
        return out, [self.num_frames(n) for n in lengths]


class Fbank(LogMelExtractor):
    def unnormalised(self, feats: torch.Tensor) -> torch.Tensor:
        return feats * (2.0 * self.std) + self.mean


def input_shape(settings: Mapping[str, Any]) -> tuple[int, int]:
    """(frames, bins) of one clip's cached features."""
    return int(settings["target_length"]), int(settings.get("num_mel_bins", 1))


def make_extractor(settings: Mapping[str, Any]) -> Any:
    kind = front_end_of(settings)
    if kind == "whisper":
        return WhisperLogMel(settings)
    if kind == "waveform":
        return Waveform(settings)
    if kind == "clap":
        return ClapLogMel(settings)
    return Fbank(settings)
