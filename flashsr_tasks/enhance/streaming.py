"""The per-file path block by block, for any length in bounded memory: the judgement from the blocks, then the
output written from them through a block stream (the resampler's; the model's windows can take the same road).

Passes over the source, each decoding it block by block from the start:

- the judgement: at 32 kHz and above, one pass gathers the judge's segments (enhance.segment_gathering), placed by
  the header's length; below, the rate alone decides and nothing is read. That pass also finds any damage, so a
  full-band file with a cut or a NaN is refused as `read_source` refuses it, and nothing is written;
- the output: one pass writes it with gain 1 while tracking its peak. A peak above full scale calls for the one
  gain per file that `writing.fit_full_scale` applies, known only at the end: the pass stops writing at the
  first block that overshoots, reads on for the peak, and a second pass writes the file scaled. Every pass is
  deterministic, so the result is the one-shot result to the bit.

MP3 and Ogg headers only estimate the length, and segment positions and the output's length depend on it: a pass
that finds another count (soundfile reads no further than the estimate, so only fewer) is done again with the
count it found. All of it happens inside one temporary file, renamed only when whole (files.atomic).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

import numpy as np

from flashsr_tasks.audio.containers import AudioError, output_format_of
from flashsr_tasks.audio.resample import OUTPUT_RATE, OutputRateStream
from flashsr_tasks.audio.source_blocks import SourceBlocks
from flashsr_tasks.audio.writing import BlockWriter, peak_of
from flashsr_tasks.enhance.segment_gathering import SegmentGatherer
from flashsr_tasks.enhance.selection import MIN_FULL_BAND_RATE, Judgement, judge_segments
from flashsr_tasks.files.atomic import atomic_path


class BlockStream(Protocol):
    """Source blocks in, output pieces out (fresh arrays), with the output's length known from the start."""

    target: int  # the output's frames

    def process(self, block: np.ndarray) -> Iterator[np.ndarray]: ...

    def finish(self) -> Iterator[np.ndarray]: ...


@dataclass(frozen=True)
class Written:
    """What a streamed output came to: its length, the gain applied to keep it inside full scale, its hash."""

    frames: int
    gain: float
    sha256: str


def judge_blocks(source: SourceBlocks, force: bool = False) -> Judgement:
    """`selection.judge` of the whole source, from its blocks."""
    if source.rate < MIN_FULL_BAND_RATE:
        return judge_segments(None, source.rate, force)
    while True:
        gatherer = SegmentGatherer(source.frames)
        for block in source.blocks():
            gatherer.add(block)
        if gatherer.frames == source.frames:
            return judge_segments(gatherer.segments, source.rate, force)


def resample_streamed(source: SourceBlocks, output_path: Path, subtype: str) -> Written:
    """The source resampled to 48 kHz into `output_path` (atomically), as `to_output_rate`, `fit_full_scale` and
    `write_output` would make it."""
    return write_streamed(source, output_path, subtype,
                          lambda frames: OutputRateStream(source.rate, source.channels, frames), "resample")


def write_streamed(source: SourceBlocks, output_path: Path, subtype: str,
                   stream_for: Callable[[int], BlockStream], method: str) -> Written:
    """The source through the stream `stream_for(frames)` makes, written into `output_path`: whole, scaled inside
    full scale by one gain when its peak overshoots, or not at all. `method` names the stream in a failure."""
    with atomic_path(output_path) as tmp:
        gain = 1.0
        while True:
            frames = source.frames
            written = _one_pass(source, stream_for(frames), tmp, output_format_of(output_path), subtype, gain,
                                method)
            if source.frames != frames:
                continue  # MP3/Ogg: the header's estimate was off; again with the frames counted
            if isinstance(written, float):  # the peak, above full scale
                gain = 1.0 / written
                continue
            return written


def _one_pass(source: SourceBlocks, stream: BlockStream, tmp: Path, container: str, subtype: str,
              gain: float, method: str) -> "Written | float":
    """One pass writing `tmp`: what it wrote, or the output's peak when that overshoots full scale at gain 1
    (then what was written is to be redone)."""
    writer: Optional[BlockWriter] = BlockWriter(tmp, stream.target, source.channels, OUTPUT_RATE, subtype, container)
    peak = 0.0
    try:
        for block in source.blocks():
            for out in stream.process(block):
                peak, writer = _put(out, peak, gain, writer)
        for out in stream.finish():
            peak, writer = _put(out, peak, gain, writer)
        if not math.isfinite(peak):
            raise AudioError(f"gave non-finite samples after {method}")
        if writer is None:
            return peak
        return Written(stream.target, gain, writer.close())
    finally:
        if writer is not None:
            writer.abandon()
        close = getattr(stream, "close", None)  # the model's: windows still queued are not wanted
        if close is not None:
            close()


def _put(out: np.ndarray, peak: float, gain: float, writer: Optional[BlockWriter]
         ) -> tuple[float, Optional[BlockWriter]]:
    """Write one output block at `gain`; the peak so far, and the writer (None once a pass at gain 1 overshoots)."""
    if not out.shape[0]:
        return peak, writer
    peak = max(peak, peak_of(out))
    if gain != 1.0:
        out *= np.float32(gain)
        # float32 rounding can leave a sample a hair above 1.0 (as in writing.fit_full_scale)
        np.clip(out, -1.0, 1.0, out=out)
    elif peak > 1.0 and writer is not None:
        writer.abandon()
        writer = None
    if writer is not None:
        writer.write(out)
    return peak, writer
