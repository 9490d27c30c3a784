"""A complementary two-band crossover: one signal below a frequency, another above it.

The low-pass is a linear-phase FIR (Kaiser-windowed sinc) applied with its delay taken out,
and the high-pass is its exact complement (a unit impulse minus the low-pass), so the two
branches' gains add up to exactly 1 at every frequency with no phase difference between them:
a signal fed to both comes out unchanged, with no gap or bump in level at the crossover.
Written as `high + lowpass(low − high)`, one filtering does both branches.

Filtering is by FFT overlap-add in blocks, so memory stays a small multiple of the output.
"""
from __future__ import annotations

import functools

import numpy as np

ATTENUATION_DB = 90.0  # stop band of the low-pass; its pass band ripple is as small (≈3e-5)
_BLOCK = 1 << 16


def join_bands(low: np.ndarray, high: np.ndarray, pass_below_hz: float, stop_above_hz: float,
               rate: int) -> np.ndarray:
    """`low` below `pass_below_hz`, `high` above `stop_above_hz`, cross-faded in between.

    `low` and `high` are float `[frames, channels]` of the same shape at `rate`; the result is
    float32 of that shape. Below `pass_below_hz` it differs from `low` by under −90 dB of
    `high − low` (and likewise `high` above `stop_above_hz`).
    """
    if low.shape != high.shape:
        raise ValueError(f"the two bands differ in shape: {low.shape} and {high.shape}")
    taps = lowpass_taps(float(pass_below_hz), float(stop_above_hz), rate)
    filtered = _filtered(np.subtract(low, high, dtype=np.float32), taps)
    return np.add(filtered, high, out=filtered, dtype=np.float32)  # in place: no third full-size copy


@functools.lru_cache(maxsize=16)
def lowpass_taps(pass_below_hz: float, stop_above_hz: float, rate: int) -> np.ndarray:
    """A zero-phase (odd length, symmetric) low-pass: 1 below `pass_below_hz`, 0 above
    `stop_above_hz`, within the ripple of `ATTENUATION_DB`; half amplitude midway."""
    width = stop_above_hz - pass_below_hz
    if width <= 0 or stop_above_hz > rate / 2:
        raise ValueError(f"no crossover from {pass_below_hz:g} Hz to {stop_above_hz:g} Hz at {rate} Hz")
    # Kaiser's design formulas for the length and the window's shape at this attenuation
    beta = 0.1102 * (ATTENUATION_DB - 8.7)
    length = int(np.ceil((ATTENUATION_DB - 7.95) / (2.285 * 2 * np.pi * width / rate))) + 1
    length += 1 - length % 2  # odd: a whole-sample delay that can be taken out exactly
    cutoff = (pass_below_hz + stop_above_hz) / 2 / rate
    n = np.arange(length) - (length - 1) / 2
    taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(length, beta)
    taps /= taps.sum()  # exactly 1 at 0 Hz
    taps.setflags(write=False)
    return taps


def _filtered(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """`x` `[frames, channels]` convolved with the centred `taps`, same length, no delay."""
    frames = x.shape[0]
    half = (len(taps) - 1) // 2
    nfft = 1 << int(np.ceil(np.log2(_BLOCK + len(taps) - 1)))
    response = np.fft.rfft(taps, nfft)[:, None]
    full = np.zeros((frames + len(taps) - 1, x.shape[1]), dtype=np.float32)
    for start in range(0, frames, _BLOCK):
        block = x[start:start + _BLOCK]
        out = np.fft.irfft(np.fft.rfft(block, nfft, axis=0) * response, nfft, axis=0)
        end = start + len(block) + len(taps) - 1
        full[start:end] += out[:len(block) + len(taps) - 1].astype(np.float32)
    return full[half:half + frames]
