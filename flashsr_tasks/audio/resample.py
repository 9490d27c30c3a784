"""Sinc resampling to the output rate (soxr, very-high quality)."""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import soxr

OUTPUT_RATE = 48000
# soxr's stream is given this many input frames a call: with larger calls its working set leaves the
# CPU's cache (65,536 frames at a time took 3x the one-shot call's time; 4,096, within 6 % of it).
_STREAM_CHUNK = 4096


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


class OutputRateStream:
    """`to_output_rate` block by block, for a source of `frames` frames: the same samples to the bit.

    soxr's stream drops its filter's delay itself (its output starts aligned with the input, as the one-shot
    call's does), and its pieces concatenate to exactly the one-shot output whatever the sizes of the calls; here
    the output is cut at, or zero-padded to, `output_frames(frames, rate)` as `to_output_rate` does. At 48 kHz the
    blocks pass through. The output comes in pieces of at most 6 × 4,096 frames, each a fresh array the caller
    may scale in place: small enough to be allocated from the heap rather than mapped and faulted in anew.
    """

    def __init__(self, rate: int, channels: int, frames: int) -> None:
        self.target = output_frames(frames, rate)
        self._rate = rate
        self._frames = frames
        self._channels = channels
        self._emitted = 0
        self._whole = False  # whether the whole source came as the first block (then resampled in one call)
        self._stream: Optional[soxr.ResampleStream] = None  # made at the first block, unless it is the whole source

    def process(self, block: np.ndarray) -> Iterator[np.ndarray]:
        """The output that float32 `[frames, channels]` `block` completes (often not all of it yet)."""
        if self._rate == OUTPUT_RATE:
            yield self._cut(np.ascontiguousarray(block, dtype=np.float32))
            return
        if self._whole:
            return  # a block past the whole source (a header that undercounted): its pass is redone, counted
        if self._stream is None:
            if block.shape[0] == self._frames:
                # The whole source in one block (a short file): soxr's one-shot call gives the same samples, for
                # less CPU than a stream (whose pieces cost 12 % more on 3-s calls) and one filter design, not two.
                self._whole = True
                yield self._cut(to_output_rate(block, self._rate))
                return
            self._stream = soxr.ResampleStream(self._rate, OUTPUT_RATE, self._channels, dtype="float32", quality="VHQ")
        for start in range(0, block.shape[0], _STREAM_CHUNK):
            yield self._cut(self._stream.resample_chunk(block[start:start + _STREAM_CHUNK]))

    def finish(self) -> Iterator[np.ndarray]:
        """The rest of the output, once the last block has been given."""
        if self._stream is not None:
            yield self._cut(self._stream.resample_chunk(np.zeros((0, self._channels), np.float32), last=True))
        missing = self.target - self._emitted
        if missing > 0:
            self._emitted += missing
            yield np.zeros((missing, self._channels), np.float32)

    def _cut(self, out: np.ndarray) -> np.ndarray:
        out = out[:max(0, self.target - self._emitted)]
        self._emitted += out.shape[0]
        return out
