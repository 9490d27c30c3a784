"""How close an enhanced output is to its full-band reference: log-spectral distance and SI-SDR.

LSD (and `lsd_hf`, `lsd_lf`) as `ssr_eval` defines it, lower is better; SI-SDR sees phase and timing, higher is
better. Both stream a block of frames at a time. docs/quality.md, "The measures", defines them and how to read them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-12           # ssr_eval's ε, inside and outside the log
_FRAMES_PER_BLOCK = 512


@dataclass(frozen=True)
class SpectralDistance:
    lsd: float     # over every bin
    lsd_hf: float  # over bins at or above the split (NaN when there are none)
    lsd_lf: float  # over bins below the split (NaN when there are none)


def stft_params(rate: int) -> tuple[int, int]:
    """ssr_eval's `(n_fft, hop)` at `rate`: 2048 at 44.1 kHz scaled with the rate, 10 ms hops."""
    return int(2048 / (44100 / rate)), int(rate / 100)


def log_spectral_distance(estimate: np.ndarray, reference: np.ndarray, rate: int, split_hz: float) -> SpectralDistance:
    """LSD of mono `estimate` against mono `reference` at `rate`, whole band and split at `split_hz`.

    Both are cut to the shorter length first, as ssr_eval does.
    """
    length = min(len(estimate), len(reference))
    n_fft, hop = stft_params(rate)
    split_bin = int(np.ceil(split_hz * n_fft / rate))  # bin k sits at k·rate/n_fft Hz
    bins = n_fft // 2 + 1
    split_bin = min(max(split_bin, 0), bins)
    sums = np.zeros(3)  # per-frame RMS values summed: all, hf, lf
    frames = 0
    for est_mag, ref_mag in zip(_magnitude_blocks(estimate[:length], n_fft, hop),
                                _magnitude_blocks(reference[:length], n_fft, hop)):
        squared = np.log10(ref_mag ** 2 / (est_mag + EPS) ** 2 + EPS) ** 2
        sums[0] += np.sqrt(squared.mean(axis=1)).sum()
        if split_bin < bins:
            sums[1] += np.sqrt(squared[:, split_bin:].mean(axis=1)).sum()
        if split_bin > 0:
            sums[2] += np.sqrt(squared[:, :split_bin].mean(axis=1)).sum()
        frames += squared.shape[0]
    mean = sums / frames
    return SpectralDistance(
        lsd=float(mean[0]),
        lsd_hf=float(mean[1]) if split_bin < bins else float("nan"),
        lsd_lf=float(mean[2]) if split_bin > 0 else float("nan"),
    )


def _magnitude_blocks(signal: np.ndarray, n_fft: int, hop: int):
    """|STFT| as librosa computes it (centred frames, zero padding, periodic Hann), in blocks
    of frames `[frames, bins]`."""
    x = np.asarray(signal, dtype=np.float64)
    padded = np.pad(x, (n_fft // 2, n_fft // 2))
    total = 1 + (len(padded) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    offsets = np.arange(n_fft)
    for first in range(0, total, _FRAMES_PER_BLOCK):
        starts = np.arange(first, min(first + _FRAMES_PER_BLOCK, total)) * hop
        yield np.abs(np.fft.rfft(padded[starts[:, None] + offsets] * window, axis=1))


def si_sdr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio of mono `estimate` against `reference`, in dB."""
    length = min(len(estimate), len(reference))
    est = np.asarray(estimate[:length], dtype=np.float64)
    ref = np.asarray(reference[:length], dtype=np.float64)
    ref_energy = float(ref @ ref)
    if ref_energy == 0.0:
        return float("nan")  # a silent reference has no distortion ratio
    target = (float(est @ ref) / ref_energy) * ref
    noise = est - target
    return float(10 * np.log10((target @ target + EPS) / (noise @ noise + EPS)))
