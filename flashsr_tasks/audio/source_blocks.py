"""Reading a source block by block, as many passes as the caller needs, refused with the same sentences as
`reading.read_source` (a cut, empty, undecodable or non-finite file), wherever in the file the damage sits.

One handle serves every pass (rewound between them), so a file replaced while it is read is still read from
the same bytes. Decoding is soundfile's, block by block, and gives `read_source`'s samples to the bit; for Ogg,
whose header only estimates the length, it stops where `read_source` stops (soundfile reads no further than the
header's count).

MP3 is read whole (`streams_in_blocks`): libsndfile 1.2.2 decodes an MP3 read in pieces wrongly where a read starts
near the stream's end (zeros, or other samples, in the last few thousand frames) and by a float32 ulp elsewhere,
depending on how the handle was read before.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType
from typing import Iterator, Optional

import numpy as np
import soundfile as sf

from flashsr_tasks.audio.containers import AudioError, check_not_truncated
from flashsr_tasks.audio.reading import DECODE_ERRORS, NON_FINITE, check_length, decode_failure, exact_length
from flashsr_tasks.audio.writing import peak_of

# libsndfile's MPEG decoders (mpg123): read whole, see above.
WHOLE_READ_SUBTYPES = frozenset({"MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III"})
# Frames decoded at a time: 8 s at 8 kHz, 1.4 s at 48 kHz; with its resampled output a few MiB per channel.
BLOCK_FRAMES = 1 << 16


def streams_in_blocks(subtype: str) -> bool:
    """Whether a source of this subtype (libsndfile's, from its header) is read in blocks; MP3 is not."""
    return subtype not in WHOLE_READ_SUBTYPES


class SourceBlocks:
    """An open source. `frames` is what the header states until a whole pass has counted the frames; for an
    exact-length format the two can only differ by a cut, which a pass refuses."""

    def __init__(self, path: Path) -> None:
        check_not_truncated(path)
        try:
            self._handle = sf.SoundFile(str(path))
        except DECODE_ERRORS as exc:
            raise decode_failure(exc) from None
        handle = self._handle
        self.rate: int = handle.samplerate
        self.channels: int = handle.channels
        self.subtype: str = handle.subtype
        self.format: str = handle.format
        self.announced: int = handle.frames
        self.frames: int = handle.frames
        self.counted = False  # whether `frames` comes from a whole pass rather than the header
        self._read = False  # whether a pass has moved the handle (else it is at the start)

    @property
    def exact(self) -> bool:
        """Whether the header's length is exact (else a pass may find fewer frames: MP3, Ogg)."""
        return exact_length(self.format)

    def blocks(self) -> Iterator[np.ndarray]:
        """One pass from the start: float32 `[≤ BLOCK_FRAMES, channels]` blocks. Raises `AudioError` for a block
        that cannot be decoded or holds a NaN or an infinity, and at the end for an empty or cut file; a whole
        pass sets `frames` to the count it decoded."""
        if self._read:  # rewind for another pass (a fresh handle is at the start already)
            try:
                self._handle.seek(0)
            except DECODE_ERRORS as exc:
                raise decode_failure(exc) from None
        self._read = True
        decoded = 0
        # An exact-length file is read no further than its header says (soundfile would not either).
        while not (self.exact and decoded == self.announced):
            try:
                block = self._handle.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
            except DECODE_ERRORS as exc:
                raise decode_failure(exc) from None
            if block.shape[0] == 0:
                break
            if not math.isfinite(peak_of(block)):
                raise AudioError(NON_FINITE)
            decoded += block.shape[0]
            yield block
        check_length(decoded, self.announced, self.format)
        self.frames, self.counted = decoded, True

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "SourceBlocks":
        return self

    def __exit__(self, kind: Optional[type[BaseException]], value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self.close()
