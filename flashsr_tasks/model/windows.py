"""Run a fixed-length model over audio of any length: overlapping windows, cross-faded.

numpy only, so testable without the model. The cross-fade's weights sum to one, so an identity model reconstructs
its input bit for bit. docs/model.md, "Windows", explains the layout, the cross-fade and the memory held.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator, Protocol

import numpy as np

WINDOW = 245_760          # FlashSR's fixed input: 5.12 s at 48 kHz
DEFAULT_OVERLAP = WINDOW // 4  # demucs' default overlap (a quarter window, 1.28 s here)

ProcessBatch = Callable[[np.ndarray], np.ndarray]


class BatchFuture(Protocol):
    def result(self) -> np.ndarray: ...


SubmitBatch = Callable[[np.ndarray], BatchFuture]


def window_starts(frames: int, window: int = WINDOW, overlap: int = DEFAULT_OVERLAP) -> list[int]:
    """Start offsets covering `frames` samples: regular steps, the last window flush with the end."""
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window): got overlap={overlap}, window={window}")
    if frames <= window:
        return [0]
    stride = window - overlap
    return list(range(0, frames - window, stride)) + [frames - window]


def fade_in(length: int) -> np.ndarray:
    """Half a raised cosine over `length` samples, strictly inside (0, 1), symmetric: w[i] + w[-1-i] == 1."""
    t = (np.arange(length, dtype=np.float64) + 0.5) / length
    return (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)


def _rows(audio: np.ndarray, starts: list[int], window: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(window index, channel, one zero-padded window of that channel), window by window."""
    frames, channels = audio.shape
    for k, start in enumerate(starts):
        piece = audio[start:start + window]
        for c in range(channels):
            row = np.zeros(window, dtype=np.float32)
            row[:piece.shape[0]] = piece[:, c]
            yield k, c, row


class _Done:
    """A result already computed, with a Future's `result()`."""

    def __init__(self, value: np.ndarray) -> None:
        self._value = value

    def result(self) -> np.ndarray:
        return self._value


def apply_windowed(
    process_batch: ProcessBatch,
    audio: np.ndarray,
    window: int = WINDOW,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 1,
) -> np.ndarray:
    """Apply `process_batch` (float32 `[rows, window]` → same shape) to `audio` `[frames, channels]`.

    Returns float32 `[frames, channels]`. `process_batch` never gets more than `batch_size` rows;
    rows are (window, channel) pairs in time order, so a batch mixes channels and windows.
    """
    return apply_windowed_async(lambda x: _Done(process_batch(x)), audio, window, overlap, batch_size, ahead=0)


def apply_windowed_async(
    submit_batch: SubmitBatch,
    audio: np.ndarray,
    window: int = WINDOW,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 1,
    ahead: int = 1,
) -> np.ndarray:
    """`apply_windowed` with a model that answers later: `submit_batch` takes `[rows, window]`
    and returns a future of the same shape. Up to `ahead` batches stay submitted while the
    next one is cut (and prepared by `submit_batch`), so the caller's CPU work overlaps the
    model; results are blended in order. Memory: the input, the output, `ahead + 1` batches.
    """
    if audio.ndim != 2:
        raise ValueError(f"audio must be [frames, channels], got shape {audio.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    frames, channels = audio.shape
    out = np.zeros((frames, channels), dtype=np.float32)
    if frames == 0 or channels == 0:
        return out
    starts = window_starts(frames, window, overlap)
    ends = [min(s + window, frames) for s in starts]

    def blend(k: int, c: int, y: np.ndarray) -> None:
        start, end = starts[k], ends[k]
        # Samples already written by earlier windows: cross-fade into them; the rest is new.
        shared = ends[k - 1] - start if k > 0 else 0
        if shared > 0:
            old = out[start:start + shared, c]
            old += fade_in(shared) * (y[:shared] - old)
        out[start + shared:end, c] = y[shared:end - start]

    batch: list[tuple[int, int, np.ndarray]] = []
    in_flight: deque[tuple[list[tuple[int, int]], tuple[int, ...], Any]] = deque()

    def collect() -> None:
        keys, shape, future = in_flight.popleft()
        y = np.asarray(future.result())
        if y.shape != shape:
            raise ValueError(f"the model returned shape {y.shape} for input {shape}")
        for (k, c), y_row in zip(keys, y.astype(np.float32, copy=False)):
            blend(k, c, y_row)

    def flush() -> None:
        x = np.stack([row for _, _, row in batch])
        in_flight.append(([(k, c) for k, c, _ in batch], x.shape, submit_batch(x)))
        batch.clear()
        while len(in_flight) > ahead:
            collect()

    try:
        for item in _rows(audio, starts, window):
            batch.append(item)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        while in_flight:
            collect()
    finally:
        for _, _, future in in_flight:  # a failure midway: rows still queued are not wanted
            cancel = getattr(future, "cancel", None)
            if cancel is not None:
                cancel()
    return out
