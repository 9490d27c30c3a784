"""FlashSR's input low-pass, per window, with the library's results and less CPU.

The library's cutoff detector and Chebyshev filter, same arithmetic, without three of its costs; called from the
threads that prepare files, never from the model's thread. docs/gpu-worker.md, "The input low-pass", explains each
cost and how the results are checked against the library's.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
import torch
from scipy.signal import cheby1, firwin, resample_poly, sosfiltfilt

RATE = 48_000                 # FlashSR's rate; the low-pass works at it
_N_FFT, _HOP = 2048, 480      # upstream's cutoff detector
_PERCENTILE = 0.983
_MIN_CUTOFF_HZ = 1000         # below this upstream treats the window as full band
_ORDER, _RIPPLE_DB = 8, 0.1   # upstream's Chebyshev type I filter
# Added before filtering and taken away after: the filter's response dies away into this
# floor instead of into subnormal numbers (below 2.2e-308), which the CPU handles 20-100x
# slower. A short file's window is mostly zero padding, where upstream's filter spends ~95 %
# of its time on subnormals. The output moves by less than 1e-29.
_DENORMAL_GUARD = 1e-30


@functools.lru_cache(maxsize=4)
def _hann(n: int) -> torch.Tensor:
    return torch.hann_window(n)


def find_cutoff_freq(row: np.ndarray) -> float:
    """The cutoff (Hz) upstream's `UtilAudioSR.find_cutoff_freq` gives for one 48 kHz row."""
    x = torch.from_numpy(np.ascontiguousarray(row, dtype=np.float32))[None]
    spec = torch.stft(x, n_fft=_N_FFT, hop_length=_HOP, win_length=_N_FFT, window=_hann(_N_FFT),
                      center=False, normalized=False, onesided=True, return_complex=True)
    # upstream: spec[0].T.float() casts the complex values to real (dropping the imaginary part)
    # before taking the magnitude; the same here, without the warning.
    magnitude = spec[0].T.real.float().abs()
    energy = torch.cumsum(magnitude.sum(dim=0), dim=0)
    threshold = energy[-1] * _PERCENTILE
    # upstream's find_cutoff: the highest bin j in [1, n) with energy[j] < threshold, else 0
    below = torch.nonzero(energy[1:] < threshold)
    bin_index = int(below[-1]) + 1 if below.numel() else 0
    cutoff = bin_index / 1024 * 24000
    return float(RATE // 2) if cutoff < _MIN_CUTOFF_HZ else cutoff


@functools.lru_cache(maxsize=64)
def _sos(cutoff_hz: int) -> np.ndarray:
    return cheby1(_ORDER, _RIPPLE_DB, cutoff_hz / (0.5 * RATE), btype="low", output="sos")


@functools.lru_cache(maxsize=16)
def _resample_filter(up: int, down: int) -> np.ndarray:
    # what resample_poly designs itself for this reduced (up, down) pair
    max_rate = max(up, down)
    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def _resample(x: np.ndarray, up: int, down: int) -> np.ndarray:
    g = math.gcd(up, down)
    up, down = up // g, down // g
    if up == down == 1:
        return x.copy()
    # resample_poly scales the filter it is given in place: hand it a copy of the cached one
    return resample_poly(x, up, down, window=_resample_filter(up, down).copy())


def lowpass(row: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """Upstream's `UtilAudioLowPassFilter.lowpass(row, 48000, 'cheby', 8, cutoff)`, float64 out."""
    cutoff = int(cutoff_hz)
    if cutoff == RATE:
        cutoff -= 1
    x = np.asarray(row, dtype=np.float64) + _DENORMAL_GUARD
    y = sosfiltfilt(_sos(cutoff), x)
    down_rate = int(cutoff / (RATE // 2) * RATE)
    y = _resample(_resample(y, down_rate, RATE), RATE, down_rate)
    if len(y) < len(x):
        y = np.pad(y, (0, len(x) - len(y)), constant_values=_DENORMAL_GUARD)
    y = y[:len(x)]
    y -= _DENORMAL_GUARD
    return y


def lowpass_window(row: np.ndarray, cutoff_hz: Optional[float] = None) -> np.ndarray:
    """One window as FlashSR's `lowpass_input` would give it to the model: low-passed at its own
    detected cutoff; full band (or silence) is returned unchanged. float32."""
    cutoff = find_cutoff_freq(row) if cutoff_hz is None else cutoff_hz
    if cutoff >= RATE // 2:  # nothing to remove (and the filter would reject a cutoff at Nyquist)
        return np.asarray(row, dtype=np.float32)
    return lowpass(row, cutoff).astype(np.float32)


def lowpass_rows(rows: np.ndarray) -> np.ndarray:
    """`lowpass_window` on each row of `[rows, samples]`."""
    return np.stack([lowpass_window(row) for row in rows]) if len(rows) else rows
