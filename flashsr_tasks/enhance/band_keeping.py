"""FLASHSR_KEEP_INPUT_BAND: the input's own content below its band edge, the model's above.

Below `edge − CROSSOVER_HZ` the output is the source resampled to 48 kHz, time-aligned with the model's output;
a crossover joins the two. docs/quality.md, "`FLASHSR_KEEP_INPUT_BAND=1`: the input's own band", explains where
the edge lies and how the crossover hands over.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import numpy as np

from flashsr_tasks.audio.crossover import CrossoverStream, join_bands
from flashsr_tasks.audio.resample import OUTPUT_RATE, OutputRateStream, to_output_rate
from flashsr_tasks.audio.source_blocks import SourceBlocks
from flashsr_tasks.enhance.segment_gathering import SegmentGatherer
from flashsr_tasks.enhance.selection import band_edge_hz, band_edge_of_segments
from flashsr_tasks.enhance.streaming import BlockStream

CROSSOVER_HZ = 500
_NO_CLIFF_FRACTION = 0.9


def input_band_edge_hz(resampled: np.ndarray, rate: int) -> int:
    """The frequency up to which a source at `rate`, already resampled to 48 kHz, has its content."""
    measured = band_edge_hz(resampled, OUTPUT_RATE)
    if measured is not None:
        return int(measured)
    return int(_NO_CLIFF_FRACTION * min(rate, OUTPUT_RATE) / 2)


def keep_input_band(audio: np.ndarray, rate: int, enhanced: np.ndarray) -> tuple[np.ndarray, int]:
    """The model's 48 kHz `enhanced` output of source `audio` at `rate`, with the source's own
    content below its band edge; returns the joined output and the frequency below which the
    output is the source's alone (the record's `kept_input_band_hz`)."""
    resampled = to_output_rate(audio, rate)
    edge = input_band_edge_hz(resampled, rate)
    kept_below = max(edge - CROSSOVER_HZ, 0)
    if kept_below == 0:
        return enhanced, 0  # no band to keep
    return join_bands(resampled, enhanced, kept_below, edge, OUTPUT_RATE), kept_below


def kept_band_of(source: SourceBlocks) -> tuple[int, int]:
    """`keep_input_band`'s crossover for a source read block by block: (kept below, band edge) in Hz, from one
    pass that resamples it and gathers the edge's segments at 48 kHz (the whole file's segments to the bit,
    enhance.segment_gathering). A pass that counts fewer frames than the header said (MP3, Ogg) is done again."""
    while True:
        frames = source.frames
        resample = OutputRateStream(source.rate, source.channels, frames)
        gatherer = SegmentGatherer(resample.target)
        for block in source.blocks():
            for piece in resample.process(block):
                gatherer.add(piece)
        for piece in resample.finish():
            gatherer.add(piece)
        if source.frames == frames:
            break
    measured = band_edge_of_segments(gatherer.segments, OUTPUT_RATE)
    edge = int(measured) if measured is not None else int(_NO_CLIFF_FRACTION * min(source.rate, OUTPUT_RATE) / 2)
    return max(edge - CROSSOVER_HZ, 0), edge


Tap = Callable[[np.ndarray], None]


class KeptBandStream:
    """`keep_input_band` block by block: the model's stream (`make(tap)`, which hands each 48 kHz input piece to
    `tap`) joined with that input by a streamed crossover (audio.crossover.CrossoverStream), the same samples as
    the whole file's. The input waits only until the model's output has caught up with it: a few windows."""

    def __init__(self, make: Callable[[Tap], BlockStream], channels: int, kept_below: int, edge: int) -> None:
        self._low: list[np.ndarray] = []
        self._inner = make(self._low.append)
        self.target = self._inner.target
        self._crossover = CrossoverStream(kept_below, edge, OUTPUT_RATE, self.target, channels)

    def process(self, block: np.ndarray) -> Iterator[np.ndarray]:
        for high in self._inner.process(block):
            yield from self._join(high)

    def finish(self) -> Iterator[np.ndarray]:
        for high in self._inner.finish():
            yield from self._join(high)
        yield from self._crossover.finish()

    def close(self) -> None:
        close: Optional[Callable[[], None]] = getattr(self._inner, "close", None)
        if close is not None:
            close()

    def _join(self, high: np.ndarray) -> list[np.ndarray]:
        count = high.shape[0]
        low = np.concatenate(self._low) if len(self._low) != 1 else self._low[0]
        self._low[:] = [low[count:]] if low.shape[0] > count else []
        return self._crossover.push(low[:count], high)
