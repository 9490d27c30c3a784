"""Writing outputs: the sample-format rule, peaks kept inside full scale, whole files or none."""
from __future__ import annotations

import hashlib
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import soundfile as sf

from flashsr_tasks.audio.containers import output_format_of
from flashsr_tasks.files.atomic import atomic_path, signals_held
from flashsr_tasks.files.hashing import sha256_of

# Sample formats an output keeps from its source; anything else (μ-law, A-law, 8-bit, ADPCM…)
# becomes PCM_16, which holds all of their resolution.
# Lossy sources (MP3, Vorbis, Opus) hold no more than 16 bits' worth either.
KEPT_SUBTYPES = frozenset({"PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"})
FALLBACK_SUBTYPE = "PCM_16"
# FLAC holds integers of up to 24 bits only.
FLAC_SUBTYPES = frozenset({"PCM_16", "PCM_24"})
# A classic RIFF/WAV header cannot describe more than 4 GiB; RF64 can.
_RIFF_LIMIT = 0xFFFFFFFF - 1024
_BLOCK_FRAMES = 1 << 16  # converted and written this many frames at a time
_BYTES_PER_SAMPLE = {"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


def output_subtype(source_subtype: str, output_format: str = "WAV") -> str:
    """The sample format of an output: the source's when a PCM/float format the output can hold,
    else PCM_16 (lossy, μ-law, 8-bit…); a FLAC output takes 24 bits for anything wider."""
    subtype = source_subtype if source_subtype in KEPT_SUBTYPES else FALLBACK_SUBTYPE
    if output_format == "FLAC" and subtype not in FLAC_SUBTYPES:
        return "PCM_24"
    return subtype


def peak_of(audio: np.ndarray) -> float:
    """The largest |sample|, NaN or infinite when any sample is; max and min rather than abs()
    so no full-size temporary is made (its page faults cost more than the two passes)."""
    return max(float(audio.max()), -float(audio.min())) if audio.size else 0.0


def fit_full_scale(audio: np.ndarray, peak: Optional[float] = None) -> float:
    """Scale `audio` in place so its peak stays inside full scale; returns the gain applied (1.0 = none).

    Resampling and the model can overshoot a source that peaks near 0 dBFS; one gain for the
    whole file keeps the waveform intact where clipping (or integer wrap-around) would not.
    """
    peak = peak_of(audio) if peak is None else peak
    if peak <= 1.0:
        return 1.0
    gain = 1.0 / peak
    audio *= np.float32(gain)
    # float32 rounding can leave a sample a hair above 1.0
    np.clip(audio, -1.0, 1.0, out=audio)
    return gain


def write_output(path: Path, audio: np.ndarray, rate: int, subtype: str) -> str:
    """Write a WAV (or, for a `.flac` path, a FLAC) that appears whole or not at all; returns
    the written file's sha256."""
    with atomic_path(path) as tmp:
        writer = BlockWriter(tmp, audio.shape[0], audio.shape[1], rate, subtype, output_format_of(path),
                             float32=audio.dtype == np.float32)
        try:
            if writer.converts:
                for start in range(0, audio.shape[0], _BLOCK_FRAMES):
                    writer.write(audio[start:start + _BLOCK_FRAMES])
            else:
                writer.write(audio)
            return writer.close()
        finally:
            writer.abandon()


class BlockWriter:
    """An output written block by block into `tmp` (atomic_path's temporary, which the caller renames once
    `close` returns); `frames` is the whole output's length, which a WAV header states before the audio.

    The commonest output, a mono or stereo 16-bit WAV, is written here: the same bytes as libsndfile writes
    (its 44-byte header; a test compares them), without its per-call costs through a Python file object, and
    hashed as it is written instead of read back. Anything else goes through libsndfile, each call with
    Ctrl-C and SIGTERM held (files.atomic.signals_held), hashed once closed. `float32`: the blocks are float32
    (converted to 16 bits here, vectorised); others are libsndfile's to convert.
    """

    def __init__(self, tmp: Path, frames: int, channels: int, rate: int, subtype: str, container: str = "WAV",
                 float32: bool = True) -> None:
        if container == "WAV" and frames * channels * _BYTES_PER_SAMPLE.get(subtype, 4) > _RIFF_LIMIT:
            container = "RF64"
        self._tmp = tmp
        self._frames = frames
        self._written = 0
        self._pcm16 = subtype == "PCM_16" and float32
        self._sink: Optional[_ErrorKeepingFile] = None
        self._out: Optional[sf.SoundFile] = None
        self._digest: Optional[Any] = None
        # Through a Python file object: soundfile's path API fsyncs every file on close, which on
        # these disks costs more than the resampling; a killed run still leaves nothing partial.
        self._raw = open(tmp, "wb")
        try:
            if container == "WAV" and self._pcm16 and channels <= 2:
                data_size = frames * channels * 2
                header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data_size, b"WAVE", b"fmt ", 16, 1,
                                     channels, rate, rate * channels * 2, channels * 2, 16, b"data", data_size)
                self._digest = hashlib.sha256(header)
                self._raw.write(header)
            else:
                self._sink = _ErrorKeepingFile(self._raw)
                with self._kept_errors():
                    self._out = sf.SoundFile(self._sink, "w", rate, channels, subtype=subtype, format=container)
        except BaseException:
            self.abandon()
            raise

    @property
    def converts(self) -> bool:
        """Whether blocks are converted here (so a caller with a whole array writes it in blocks)."""
        return self._pcm16

    def write(self, block: np.ndarray) -> None:
        """Append `block` (`[frames, channels]`, inside full scale)."""
        self._written += block.shape[0]
        data = _pcm16(block) if self._pcm16 else block
        if self._out is None:
            raw = data.astype("<i2", copy=False).tobytes()
            assert self._digest is not None
            self._digest.update(raw)
            self._raw.write(raw)
            return
        with self._kept_errors():
            self._out.write(data)

    def close(self) -> str:
        """Finish the file; returns its sha256."""
        if self._written != self._frames:
            raise RuntimeError(f"{self._written} frames were written where the header states {self._frames}")
        if self._out is not None:
            with self._kept_errors():
                self._out.close()
        self._raw.close()
        if self._digest is not None:
            return str(self._digest.hexdigest())
        return sha256_of(self._tmp)

    def abandon(self) -> None:
        """Let go of the file without finishing it (its temporary is removed by atomic_path)."""
        if self._out is not None and not self._out.closed:
            try:
                with signals_held():
                    self._out.close()
            except Exception:  # a full disk, already reported by the write that failed
                pass
        self._raw.close()

    @contextmanager
    def _kept_errors(self) -> Iterator[None]:
        """A libsndfile call with signals held; the cause of its failure (a full disk) raised rather than
        libsndfile's consequence of it."""
        with signals_held():
            try:
                yield
            except Exception:
                if self._sink is not None:
                    self._sink.raise_kept()
                raise
            if self._sink is not None:
                self._sink.raise_kept()


class _ErrorKeepingFile:
    """A file for libsndfile's callbacks whose failed write returns a short count instead of
    raising: an exception inside a cffi callback is only printed (`Exception ignored from cffi
    callback … vio_write`) and libsndfile reports an empty error. The first OSError (ENOSPC,
    EDQUOT, EIO) is kept and raised by `raise_kept` once libsndfile has given up."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.error: Optional[OSError] = None

    def write(self, data: bytes) -> int:
        if self.error is not None:
            return 0
        try:
            written = self._raw.write(data)
        except OSError as exc:
            self.error = exc
            return 0
        return len(data) if written is None else written

    def seek(self, offset: int, whence: int = 0) -> int:
        try:
            return self._raw.seek(offset, whence)
        except OSError as exc:  # seeking flushes the buffer: the same full disk
            self.error = self.error or exc
            return 0

    def raise_kept(self) -> None:
        if self.error is not None:
            raise self.error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _pcm16(block: np.ndarray) -> np.ndarray:
    """float32 → int16, rounded to nearest and clipped, vectorised: libsndfile converts one
    sample at a time, which costs more than the resampling."""
    scaled = np.multiply(block, np.float32(32768))
    np.rint(scaled, out=scaled)
    np.clip(scaled, -32768, 32767, out=scaled)
    return scaled.astype(np.int16)
