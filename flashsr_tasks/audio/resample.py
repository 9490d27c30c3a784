"""Sinc resampling to the output rate (soxr, very-high quality)."""
from __future__ import annotations

import numpy as np
import soxr

OUTPUT_RATE = 48000


def output_frames(frames: int, rate: int) -> int:
    """Length of `frames` samples at `rate` once resampled to 48 kHz, to the nearest sample."""
    return (frames * OUTPUT_RATE + rate // 2) // rate


def to_output_rate(audio: np.ndarray, rate: int) -> np.ndarray:
    """Resample float32 `[frames, channels]` audio to 48 kHz.

    soxr's one-shot call is linear-phase and delay-compensated, so the result is aligned
    with the source; its length can differ from the exact duration by a sample, which is
    trimmed or zero-padded here so every caller gets the same length rule.
    """
    target = output_frames(audio.shape[0], rate)
    if rate == OUTPUT_RATE:
        return np.ascontiguousarray(audio, dtype=np.float32)
    out = soxr.resample(audio, rate, OUTPUT_RATE, quality="VHQ")
    if out.shape[0] > target:
        out = out[:target]
    elif out.shape[0] < target:
        out = np.concatenate([out, np.zeros((target - out.shape[0], out.shape[1]), out.dtype)])
    return out
