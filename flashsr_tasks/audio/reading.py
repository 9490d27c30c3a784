"""Reading sources: decoded whole into float32, refused with one sentence when they cannot be enhanced."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from flashsr_tasks.audio.containers import AudioError, check_not_truncated
from flashsr_tasks.audio.writing import peak_of

# Formats whose header states the exact length: decoding fewer frames means a cut file.
# (Lossy formats only estimate it, and Ogg has no length field at all.)
_EXACT_LENGTH_FORMATS = frozenset({"FLAC", "WAV", "WAVEX", "RF64", "W64", "AIFF", "CAF", "AU", "NIST"})


@dataclass
class Source:
    audio: np.ndarray  # float32 [frames, channels]
    rate: int
    subtype: str
    format: str = "WAV"  # libsndfile's container name: WAV, FLAC, OGG, MP3, AIFF…


def read_source(path: Path) -> Source:
    """Decode a source into float32 `[frames, channels]`, refusing what cannot be enhanced."""
    check_not_truncated(path)
    try:
        with sf.SoundFile(str(path)) as handle:
            subtype, rate, container, announced = handle.subtype, handle.samplerate, handle.format, handle.frames
            audio = handle.read(dtype="float32", always_2d=True)
    except DECODE_ERRORS as exc:
        raise decode_failure(exc) from None
    check_length(audio.shape[0], announced, container)
    if not math.isfinite(peak_of(audio)):
        raise AudioError(NON_FINITE)
    return Source(audio=audio, rate=rate, subtype=subtype, format=container)


# What libsndfile and soundfile raise for a file they cannot decode.
DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)
NON_FINITE = "contains non-finite samples (NaN or infinity)"


def decode_failure(exc: Exception) -> AudioError:
    """The sentence for a file libsndfile cannot open or decode (one of `DECODE_ERRORS`)."""
    if isinstance(exc, sf.LibsndfileError):
        return AudioError(f"cannot be read as audio ({_sentence(exc.error_string)})")
    return AudioError(f"cannot be read as audio ({_sentence(str(exc).rsplit(': ', 1)[-1])})")


def exact_length(container: str) -> bool:
    """Whether the container's header states its exact length (else an estimate: MP3, Ogg)."""
    return container in _EXACT_LENGTH_FORMATS


def check_length(decoded: int, announced: int, container: str) -> None:
    """Refuse an empty source, and one that decodes to fewer frames than its exact-length header announces."""
    if decoded == 0:
        raise AudioError("holds no audio samples")
    if exact_length(container) and decoded < announced:
        raise AudioError(f"is truncated: its header announces {announced} frames but only {decoded} could be decoded")


def describe(path: Path) -> dict[str, Any]:
    """What the header of a source says (for a failed record), `{}` when it cannot be opened."""
    try:
        info = sf.info(str(path))
    except Exception:  # not audio at all, unreadable: nothing known
        return {}
    return {"input_format": info.format, "input_subtype": info.subtype,
            "input_sample_rate": int(info.samplerate), "channels": int(info.channels)}


def _sentence(text: str) -> str:
    return text.strip().rstrip(".").replace("\n", " ") or "unknown format"
