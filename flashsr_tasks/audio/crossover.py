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


class CrossoverStream:
    """`join_bands` of two signals that arrive piece by piece, in step: the same samples to the bit.

    The FIR runs over the same blocks of `_BLOCK` frames from the start, with the same FFTs, added into the same
    float32 sums in the same order; an output sample leaves once no later block reaches it (half the filter's
    length past it). Memory: a block of each signal and the filter's tail, whatever the length. `frames` is the
    signals' length, known from the start."""

    def __init__(self, pass_below_hz: float, stop_above_hz: float, rate: int, frames: int, channels: int) -> None:
        self._taps = lowpass_taps(float(pass_below_hz), float(stop_above_hz), rate)
        self._half = (len(self._taps) - 1) // 2
        self._nfft = 1 << int(np.ceil(np.log2(_BLOCK + len(self._taps) - 1)))
        self._response = np.fft.rfft(self._taps, self._nfft)[:, None]
        self._frames = frames
        self._channels = channels
        self._diff: list[np.ndarray] = []  # low − high, from `_block_start` on, not yet filtered
        self._diff_frames = 0
        self._block_start = 0
        self._high: list[np.ndarray] = []  # high, from `_emitted` on
        self._acc = np.zeros((0, channels), np.float32)  # the filter's sums, from full position `_acc_start`
        self._acc_start = 0
        self._emitted = 0

    def push(self, low: np.ndarray, high: np.ndarray) -> list[np.ndarray]:
        """Take the next frames of both signals (the same count); the output they complete."""
        if low.shape != high.shape:
            raise ValueError(f"the two bands differ in shape: {low.shape} and {high.shape}")
        if low.shape[0]:
            self._diff.append(np.subtract(low, high, dtype=np.float32))
            self._diff_frames += low.shape[0]
            self._high.append(high)
        out: list[np.ndarray] = []
        while self._diff_frames >= _BLOCK:
            self._filter_block(_BLOCK)
            out += self._emit(self._block_start - self._half)
        return out

    def finish(self) -> list[np.ndarray]:
        """The rest, once all `frames` frames have been pushed."""
        if self._diff_frames:
            self._filter_block(self._diff_frames)
        return self._emit(self._frames)

    def _filter_block(self, length: int) -> None:
        x = np.concatenate(self._diff) if len(self._diff) != 1 else self._diff[0]
        block, rest = x[:length], x[length:]
        self._diff, self._diff_frames = ([rest] if rest.shape[0] else []), rest.shape[0]
        reach = length + len(self._taps) - 1
        out = np.fft.irfft(np.fft.rfft(block, self._nfft, axis=0) * self._response, self._nfft, axis=0)
        start = self._block_start - self._acc_start
        if start + reach > self._acc.shape[0]:
            grown = np.zeros((start + reach, self._channels), np.float32)
            grown[:self._acc.shape[0]] = self._acc
            self._acc = grown
        self._acc[start:start + reach] += out[:reach].astype(np.float32)
        self._block_start += length

    def _emit(self, upto: int) -> list[np.ndarray]:
        """The output before `upto` (output positions; full position = output + half)."""
        upto = min(upto, self._frames)
        count = upto - self._emitted
        if count <= 0:
            return []
        begin = self._emitted + self._half - self._acc_start
        filtered = self._acc[begin:begin + count]
        high = np.concatenate(self._high) if len(self._high) != 1 else self._high[0]
        self._high = [high[count:]] if high.shape[0] > count else []
        joined = np.add(filtered, high[:count], dtype=np.float32)
        self._emitted = upto
        # the sums before the next output's full position are no longer needed
        drop = self._emitted + self._half - self._acc_start
        self._acc = self._acc[drop:].copy() if drop < self._acc.shape[0] else np.zeros((0, self._channels), np.float32)
        self._acc_start += drop
        return [joined]
