"""Reading a source block by block, as many passes as the caller needs, refused with the same sentences as
`reading.read_source` (a cut, empty, undecodable or non-finite file), wherever in the file the damage sits.

Decoding is soundfile's (libsndfile's), block by block, and gives `read_source`'s samples to the bit; a file whose
header only estimates its length (MP3, Ogg) is read no further than that estimate, where `read_source` stops too
(soundfile reads no further than the header's count).

Most formats keep one handle for every pass, rewound between them, so a file replaced while it is read is still
read from the same bytes. MP3 (libsndfile's MPEG subtypes, decoded by mpg123) is read differently, because mpg123
decodes differently after a seek: `SoundFile.read` seeks after every read (to keep its position), and a read that
follows such a seek can give other samples near the stream's end and differ by a float32 ulp elsewhere. An MPEG
pass therefore calls libsndfile's `sf_readf_float` in a loop and never seeks, and a second pass opens the path
again instead of rewinding; each opening checks that the path is still the file first opened (device, inode, size,
modification time) and refuses one that was replaced or changed in between.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from types import TracebackType
from typing import Iterator, Optional

import numpy as np
import soundfile as sf

from flashsr_tasks.audio.containers import AudioError, check_not_truncated
from flashsr_tasks.audio.reading import DECODE_ERRORS, NON_FINITE, check_length, decode_failure, exact_length
from flashsr_tasks.audio.writing import peak_of

# libsndfile's MPEG decoders (mpg123): read without a seek, opened again for each pass (see above).
MPEG_SUBTYPES = frozenset({"MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III"})
# Frames decoded at a time: 8 s at 8 kHz, 1.4 s at 48 kHz; with its resampled output a few MiB per channel.
BLOCK_FRAMES = 1 << 16
REPLACED = "was replaced or changed while it was read; run again"


class SourceBlocks:
    """An open source. `frames` is what the header states until a whole pass has counted the frames; for an
    exact-length format the two can only differ by a cut, which a pass refuses."""

    def __init__(self, path: Path) -> None:
        check_not_truncated(path)
        self._path = path
        self._identity: Optional[tuple[int, int, int, int]] = None  # the file first opened (MPEG: checked again)
        self._handle = self._open()
        handle = self._handle
        self.rate: int = handle.samplerate
        self.channels: int = handle.channels
        self.subtype: str = handle.subtype
        self.format: str = handle.format
        self.announced: int = handle.frames
        self.frames: int = handle.frames
        self.counted = False  # whether `frames` comes from a whole pass rather than the header
        self._read = False  # whether a pass has moved the handle (else it is at the start)
        self._mpeg = handle.subtype in MPEG_SUBTYPES

    def _open(self) -> sf.SoundFile:
        """A handle on the path, refused when the path is no longer the file first opened (its identity is taken
        on both sides of the opening, so a file swapped in while it is opened is seen too)."""
        before = _identity_of(self._path)
        try:
            handle = sf.SoundFile(str(self._path))
        except DECODE_ERRORS as exc:
            raise decode_failure(exc) from None
        after = _identity_of(self._path)
        if before != after or (self._identity is not None and after != self._identity):
            handle.close()
            raise AudioError(REPLACED)
        self._identity = after
        return handle

    @property
    def exact(self) -> bool:
        """Whether the header's length is exact (else a pass may find fewer frames: MP3, Ogg)."""
        return exact_length(self.format)

    def blocks(self) -> Iterator[np.ndarray]:
        """One pass from the start: float32 `[≤ BLOCK_FRAMES, channels]` blocks. Raises `AudioError` for a block
        that cannot be decoded or holds a NaN or an infinity, and at the end for an empty or cut file; a whole
        pass sets `frames` to the count it decoded."""
        if self._read:  # another pass (a fresh handle is at the start already)
            self._rewind()
        self._read = True
        decoded = 0
        read = self._read_mpeg if self._mpeg else self._read_block
        # No further than the header says: soundfile's whole read stops there (for an estimate, MP3 and Ogg, too).
        while decoded < self.announced:
            try:
                block = read(min(BLOCK_FRAMES, self.announced - decoded))
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

    def _rewind(self) -> None:
        """Back to the start: a seek, or for MPEG the path opened again (a seek would change mpg123's decoding)."""
        if self._mpeg:
            self._handle.close()
            self._handle = self._open()
            return
        try:
            self._handle.seek(0)
        except DECODE_ERRORS as exc:
            raise decode_failure(exc) from None

    def _read_block(self, frames: int) -> np.ndarray:
        return self._handle.read(frames, dtype="float32", always_2d=True)

    def _read_mpeg(self, frames: int) -> np.ndarray:
        """Up to `frames` decoded by libsndfile directly: what `SoundFile.read` does less its seeks (above)."""
        block = np.empty((frames, self.channels), np.float32)
        got = sf._snd.sf_readf_float(self._handle._file, sf._ffi.cast("float *", block.ctypes.data), frames)
        sf._error_check(sf._snd.sf_error(self._handle._file))
        return block[:got]

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "SourceBlocks":
        return self

    def __exit__(self, kind: Optional[type[BaseException]], value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self.close()


def _identity_of(path: Path) -> tuple[int, int, int, int]:
    """What tells one file from another at a path: device, inode, size and modification time."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns
