"""The judge's segments gathered block by block: selection's long-term spectrum of a file that is never whole
in memory.

`selection.segment_starts` places the segments by the file's total length, so the gatherer is told that length
before the first block; it keeps the mono samples that fall inside a segment (at most 256 × 4096 float64, 8 MiB)
and nothing else. The matrix it fills is exactly the one `selection.judge` cuts from a whole file, so the
decision and the band edge are the same to the bit.
"""
from __future__ import annotations

import numpy as np

from flashsr_tasks.enhance.selection import SEGMENT, mono_of, segment_starts


class SegmentGatherer:
    """Collects the segments of a file of `frames` frames from its blocks, given in order."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self._starts = segment_starts(frames)
        # Zeros: a file shorter than one segment is judged zero-padded, as selection pads it.
        self.segments = np.zeros((len(self._starts), SEGMENT), np.float64)
        self._position = 0
        self._first = 0  # the first segment that can still take samples (starts only grow)

    def add(self, block: np.ndarray) -> None:
        """Take the next block (`[frames, channels]`, any float dtype)."""
        begin, end = self._position, self._position + block.shape[0]
        self._position = end
        mono = None
        starts = self._starts
        while self._first < len(starts) and starts[self._first] + SEGMENT <= begin:
            self._first += 1
        for index in range(self._first, len(starts)):
            start = int(starts[index])
            if start >= end:
                break
            low, high = max(start, begin), min(start + SEGMENT, end)
            if mono is None:
                mono = mono_of(block)
            self.segments[index, low - start:high - start] = mono[low - begin:high - begin]

    @property
    def seen(self) -> int:
        """How many frames have been added."""
        return self._position
