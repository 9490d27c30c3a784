"""`apply_windowed_async` over a source that arrives block by block: the model's path in bounded memory.

A `BlockStream` (enhance.streaming): source blocks are resampled to 48 kHz (`OutputRateStream`, the one-shot
samples to the bit), windows are cut as soon as their samples have arrived (their layout depends only on the
output's length, known from the start), their rows are submitted in batches of `batch_size` with at most `ahead`
batches waiting, and each result is cross-faded with the window before it exactly as `apply_windowed_async`
does (same float32 arithmetic on the same values). Output samples before the next window's start are final and
leave as they are blended. Memory: the input from the next window's start, the output from the oldest unfinished
window's start, and `ahead + 1` batches of rows, whatever the file's length. numpy only.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator, Optional

import numpy as np

from flashsr_tasks.audio.resample import OutputRateStream
from flashsr_tasks.model.windows import DEFAULT_OVERLAP, WINDOW, SubmitBatch, fade_in, window_starts


class WindowStream:
    """The model's windows over a source of `frames` frames at `rate`, block by block; `target` output frames."""

    def __init__(self, submit_batch: SubmitBatch, rate: int, channels: int, frames: int, *, window: int = WINDOW,
                 overlap: int = DEFAULT_OVERLAP, batch_size: int = 1, ahead: int = 1,
                 check: Optional[Callable[[np.ndarray], None]] = None,
                 tap: Optional[Callable[[np.ndarray], None]] = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._resample = OutputRateStream(rate, channels, frames)
        self.target = self._resample.target
        self._submit = submit_batch
        self._channels = channels
        self._window = window
        self._batch_size = batch_size
        self._ahead = ahead
        self._check = check
        self._tap = tap  # sees each 48 kHz input piece (enhance.band_keeping keeps the input's band with it)
        self._starts = window_starts(self.target, window, overlap) if self.target and channels else []
        self._ends = [min(s + window, self.target) for s in self._starts]
        self._pieces: list[np.ndarray] = []  # 48 kHz input from `_in_start` on
        self._in_start = 0
        self._received = 0
        self._cut = 0           # windows cut so far
        self._batch: list[tuple[int, int, np.ndarray]] = []
        self._in_flight: deque[tuple[list[tuple[int, int]], tuple[int, ...], Any]] = deque()
        self._out = np.zeros((0, channels), dtype=np.float32)  # output from `_out_start` on
        self._out_start = 0
        self._blended_rows = 0
        self._ready: list[np.ndarray] = []

    def process(self, block: np.ndarray) -> Iterator[np.ndarray]:
        for piece in self._resample.process(block):
            self._take(piece)
            yield from self._leave()

    def finish(self) -> Iterator[np.ndarray]:
        for piece in self._resample.finish():
            self._take(piece)
            yield from self._leave()
        if self._batch:
            self._flush()
        while self._in_flight:
            self._collect()
        self._emit(self.target)
        yield from self._leave()

    def close(self) -> None:
        """Cancel what is still queued (a pass that failed or stopped midway); the stream is not used again."""
        while self._in_flight:
            cancel = getattr(self._in_flight.popleft()[2], "cancel", None)
            if cancel is not None:
                cancel()

    def _leave(self) -> Iterator[np.ndarray]:
        while self._ready:
            yield self._ready.pop(0)

    def _take(self, piece: np.ndarray) -> None:
        if self._tap is not None and piece.shape[0]:
            self._tap(piece)
        if piece.shape[0]:
            self._pieces.append(piece)
            self._received += piece.shape[0]
        while self._cut < len(self._starts) and self._received >= self._ends[self._cut]:
            self._cut_window(self._cut)
            self._cut += 1

    def _cut_window(self, k: int) -> None:
        held = np.concatenate(self._pieces) if len(self._pieces) != 1 else self._pieces[0]
        start, end = self._starts[k], self._ends[k]
        piece = held[start - self._in_start:end - self._in_start]
        for c in range(self._channels):  # as windows._rows: one zero-padded row per channel
            row = np.zeros(self._window, dtype=np.float32)
            row[:piece.shape[0]] = piece[:, c]
            self._batch.append((k, c, row))
            if len(self._batch) == self._batch_size:
                self._flush()
        keep_from = self._starts[k + 1] if k + 1 < len(self._starts) else self._received
        self._pieces = [held[keep_from - self._in_start:]]
        self._in_start = keep_from

    def _flush(self) -> None:
        x = np.stack([row for _, _, row in self._batch])
        self._in_flight.append(([(k, c) for k, c, _ in self._batch], x.shape, self._submit(x)))
        self._batch.clear()
        while len(self._in_flight) > self._ahead:
            self._collect()

    def _collect(self) -> None:
        keys, shape, future = self._in_flight.popleft()
        y = np.asarray(future.result())
        if y.shape != shape:
            raise ValueError(f"the model returned shape {y.shape} for input {shape}")
        for (k, c), y_row in zip(keys, y.astype(np.float32, copy=False)):
            self._blend(k, c, y_row)
        done = self._blended_rows // self._channels
        self._emit(self._starts[done] if done < len(self._starts) else self.target)

    def _blend(self, k: int, c: int, y: np.ndarray) -> None:
        start, end = self._starts[k], self._ends[k]
        if end - self._out_start > self._out.shape[0]:
            grown = np.zeros((end - self._out_start, self._channels), dtype=np.float32)
            grown[:self._out.shape[0]] = self._out
            self._out = grown
        out = self._out[start - self._out_start:end - self._out_start, c]
        # as apply_windowed_async: cross-fade into what earlier windows wrote; the rest is new
        shared = self._ends[k - 1] - start if k > 0 else 0
        if shared > 0:
            old = out[:shared]
            old += fade_in(shared) * (y[:shared] - old)
        out[shared:] = y[shared:end - start]
        self._blended_rows += 1

    def _emit(self, upto: int) -> None:
        """The output before `upto`, final once every window over it is blended, leaves as a fresh array."""
        if upto <= self._out_start:
            return
        final = self._out[:upto - self._out_start].copy()
        self._out = self._out[upto - self._out_start:]
        self._out_start = upto
        if self._check is not None:
            self._check(final)
        self._ready.append(final)
