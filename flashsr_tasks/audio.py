"""Reading sources and writing outputs: subtype rule, full-scale peaks, atomic files."""
from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf

from flashsr_tasks.atomic import atomic_path

# Sample formats an output keeps from its source; anything else (μ-law, A-law, 8-bit, ADPCM…)
# becomes PCM_16, which holds all of their resolution.
KEPT_SUBTYPES = frozenset({"PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"})
FALLBACK_SUBTYPE = "PCM_16"
# A classic RIFF/WAV header cannot describe more than 4 GiB; RF64 can.
_RIFF_LIMIT = 0xFFFFFFFF - 1024
_BLOCK_FRAMES = 1 << 16  # converted and written this many frames at a time
_BYTES_PER_SAMPLE = {"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


class AudioError(Exception):
    """A source cannot be used; the message is one sentence about the file, without its path."""


@dataclass
class Source:
    audio: np.ndarray  # float32 [frames, channels]
    rate: int
    subtype: str


def sha256_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_source(path: Path) -> Source:
    """Decode a source into float32 `[frames, channels]`, refusing what cannot be enhanced."""
    _check_not_truncated(path)
    try:
        with sf.SoundFile(str(path)) as handle:
            subtype = handle.subtype
            rate = handle.samplerate
            audio = handle.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        raise AudioError(f"cannot be read as audio ({_sentence(exc.error_string)})") from None
    except (RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"cannot be read as audio ({_sentence(str(exc).rsplit(': ', 1)[-1])})") from None
    if audio.shape[0] == 0:
        raise AudioError("holds no audio samples")
    if not math.isfinite(peak_of(audio)):
        raise AudioError("contains non-finite samples (NaN or infinity)")
    return Source(audio=audio, rate=rate, subtype=subtype)


def output_subtype(source_subtype: str) -> str:
    return source_subtype if source_subtype in KEPT_SUBTYPES else FALLBACK_SUBTYPE


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


def write_output(path: Path, audio: np.ndarray, rate: int, subtype: str) -> None:
    """Write a WAV that appears whole or not at all."""
    size = audio.size * _BYTES_PER_SAMPLE.get(subtype, 4)
    container = "RF64" if size > _RIFF_LIMIT else "WAV"
    # Through a Python file object: soundfile's path API fsyncs every file on close, which on
    # these disks costs more than the resampling; a killed run still leaves nothing partial.
    with atomic_path(path) as tmp, open(tmp, "wb") as handle, sf.SoundFile(
        handle, "w", rate, audio.shape[1], subtype=subtype, format=container
    ) as out:
        if subtype == "PCM_16" and audio.dtype == np.float32:
            for start in range(0, audio.shape[0], _BLOCK_FRAMES):
                out.write(_pcm16(audio[start:start + _BLOCK_FRAMES]))
        else:
            out.write(audio)


def _pcm16(block: np.ndarray) -> np.ndarray:
    """float32 → int16, rounded to nearest and clipped, vectorised: libsndfile converts one
    sample at a time, which costs more than the resampling."""
    scaled = np.multiply(block, np.float32(32768))
    np.rint(scaled, out=scaled)
    np.clip(scaled, -32768, 32767, out=scaled)
    return scaled.astype(np.int16)


def output_is_whole(path: Path) -> bool:
    """Whether an existing output can be trusted by a re-run: a WAV header and all the audio it
    announces. Outputs are renamed into place but not fsynced (per file, that halves throughput);
    after a power cut an output can be empty or cut short while its record says ok, and it must
    then be redone rather than skipped."""
    try:
        _check_not_truncated(path, wav_only=True)
    except (OSError, AudioError):
        return False
    return True


def _sentence(text: str) -> str:
    return text.strip().rstrip(".").replace("\n", " ") or "unknown format"


def _check_not_truncated(path: Path, wav_only: bool = False) -> None:
    """libsndfile silently reads what is there when a WAV's data chunk is cut short; a cut
    recording should fail loudly instead of being enhanced as if it were whole. `wav_only`:
    anything but a RIFF or RF64 WAV fails too (our outputs are never anything else)."""
    with open(path, "rb") as handle:
        header = handle.read(12)
        if wav_only and (header[:4] not in (b"RIFF", b"RF64") or header[8:12] != b"WAVE"):
            raise AudioError("is not a WAV file")
        if len(header) < 12 or header[:4] not in (b"RIFF", b"RIFX") or header[8:12] != b"WAVE":
            return  # not a classic WAV: libsndfile judges it
        endian = "<" if header[:4] == b"RIFF" else ">"
        file_size = path.stat().st_size
        offset = 12
        while offset + 8 <= file_size:
            handle.seek(offset)
            chunk_id, chunk_size = struct.unpack(endian + "4sI", handle.read(8))
            if chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):
                    return  # a streaming writer's placeholder: size unknown
                present = file_size - offset - 8
                if chunk_size > present:
                    raise AudioError(
                        f"is truncated: its header announces {chunk_size} bytes of audio but only {present} are present"
                    )
                return
            offset += 8 + chunk_size + (chunk_size & 1)
