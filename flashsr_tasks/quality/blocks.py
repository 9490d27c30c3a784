"""Audio files as streams of blocks for the quality tools, so a file of any length costs a block of memory.

`audio_blocks` decodes a file a block at a time and refuses, with one sentence, what
`flashsr_tasks.audio.reading.read_source` refuses (unreadable, empty, cut short, non-finite samples);
`mono` mixes blocks down as `ssr_eval` reads files; `resampled` runs soxr's streaming resampler over
blocks (its output equals `soxr.resample` of the whole signal, sample for sample); `paired` lines two
streams up block for block, up to the shorter one's end.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Generator, Iterable, Iterator, NamedTuple

import numpy as np
import soundfile as sf
import soxr

from flashsr_tasks.audio.containers import AudioError, check_not_truncated

BLOCK_FRAMES = 1 << 16  # 1.4 s at 48 kHz: a few MB per block however long the file

# Formats whose header states the exact length: decoding fewer frames means a cut file (as read_source).
_EXACT_LENGTH_FORMATS = frozenset({"FLAC", "WAV", "WAVEX", "RF64", "W64", "AIFF", "CAF", "AU", "NIST"})


class Header(NamedTuple):
    rate: int
    channels: int
    frames: int  # as the header announces it (lossy formats estimate it)
    format: str


def header(path: Path) -> Header:
    """What the file's header says; AudioError (one sentence) when it cannot be opened as audio."""
    check_not_truncated(path)
    try:
        with sf.SoundFile(str(path)) as handle:
            return Header(handle.samplerate, handle.channels, handle.frames, handle.format)
    except sf.LibsndfileError as exc:
        raise AudioError(f"cannot be read as audio ({_sentence(exc.error_string)})") from None
    except (RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"cannot be read as audio ({_sentence(str(exc).rsplit(': ', 1)[-1])})") from None


def audio_blocks(path: Path, block_frames: int = BLOCK_FRAMES) -> Generator[np.ndarray, None, None]:
    """float32 `[frames, channels]` blocks of the whole file, in order. Raises AudioError (one
    sentence) where the file cannot be opened, and, as the blocks reach them, where it holds no
    audio, is shorter than its header announces, or holds a non-finite sample."""
    announced = header(path)
    decoded = 0
    with sf.SoundFile(str(path)) as handle:
        while True:
            try:
                block = handle.read(block_frames, dtype="float32", always_2d=True)
            except sf.LibsndfileError as exc:
                raise AudioError(f"cannot be read as audio ({_sentence(exc.error_string)})") from None
            if block.shape[0] == 0:
                break
            if not math.isfinite(max(float(block.max()), -float(block.min()))):
                raise AudioError("contains non-finite samples (NaN or infinity)")
            decoded += block.shape[0]
            yield block
    if decoded == 0:
        raise AudioError("holds no audio samples")
    if announced.format in _EXACT_LENGTH_FORMATS and decoded < announced.frames:
        raise AudioError(f"is truncated: its header announces {announced.frames} frames but only {decoded} "
                         "could be decoded")


def mono(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Each `[frames, channels]` block as the mean of its channels (float32, 1-D)."""
    for block in blocks:
        yield block.mean(axis=1)


def resampled(blocks: Iterable[np.ndarray], rate: int, to_rate: int, channels: int = 1) -> Iterator[np.ndarray]:
    """float32 blocks (1-D when `channels` is 1, else `[frames, channels]`) at `rate` → at `to_rate`,
    soxr VHQ: one linear-phase filter, the same samples as `soxr.resample` of the whole signal."""
    if rate == to_rate:
        yield from blocks
        return
    stream = soxr.ResampleStream(rate, to_rate, channels, dtype="float32", quality="VHQ")
    for block in blocks:
        out = stream.resample_chunk(block, last=False)
        if len(out):
            yield out
    tail = stream.resample_chunk(np.zeros((0,) if channels == 1 else (0, channels), np.float32), last=True)
    if len(tail):
        yield tail


def paired(first: Iterable[np.ndarray], second: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """1-D blocks of two streams as pairs of equal length, until the shorter stream ends (the longer's
    rest is never read): how both signals are cut to the shorter length, a block at a time."""
    streams = (iter(first), iter(second))
    held = [np.zeros(0, np.float32), np.zeros(0, np.float32)]
    while True:
        for side, stream in enumerate(streams):
            while len(held[side]) == 0:
                block = next(stream, None)
                if block is None:
                    return
                held[side] = block
        n = min(len(held[0]), len(held[1]))
        yield held[0][:n], held[1][:n]
        held = [held[0][n:], held[1][n:]]


def _sentence(text: str) -> str:
    return text.strip().rstrip(".").replace("\n", " ") or "unknown format"
