"""Which sources are worth enhancing: low sample rates, and band-limited content at high rates."""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from flashsr_tasks import config

MIN_FULL_BAND_RATE = 32000
CLIFF_BELOW_HZ = 16000

SEGMENT = 4096         # FFT length of the long-term spectrum (~12 Hz bins at 48 kHz)
_MAX_SEGMENTS = 256    # enough to average a long file; spread over its whole length
_BAND_HZ = 250         # the spectrum is judged in bands this wide
# A cliff: everything above the edge is config.band_drop_db() below the kHz just under it,
# and _FLOOR_DB below the loudest band.
_FLOOR_DB = 50.0
_TRANSITION_HZ = 500   # room for an anti-alias filter's slope between pass band and stop band

class Judgement(NamedTuple):
    """What selection decided for one source: `reason` (the record's, None: full-band, left
    alone) and `band_edge_hz` (the measured edge; None below 32 kHz, or when none was found)."""

    reason: Optional[str]
    band_edge_hz: Optional[int]

def judge(audio: np.ndarray, rate: int, force: bool = False) -> Judgement:
    """Whether a source should be enhanced and why, with the band edge that was measured."""
    if rate < MIN_FULL_BAND_RATE:
        return Judgement(f"sample_rate<{MIN_FULL_BAND_RATE}", None)
    return judge_segments(_segments_of(audio), rate, force)

def judge_segments(segments: Optional[np.ndarray], rate: int, force: bool = False) -> Judgement:
    """`judge` from the mono segments at `segment_starts` (float64 `[count, SEGMENT]`), which the
    streamed path gathers block by block (enhance.segment_gathering); None below 32 kHz, where
    the rate alone decides."""
    if rate < MIN_FULL_BAND_RATE or segments is None:
        return Judgement(f"sample_rate<{MIN_FULL_BAND_RATE}", None)
    edge = band_edge_of_segments(segments, rate)
    if edge is not None and edge < CLIFF_BELOW_HZ:
        return Judgement(f"band_limited<{edge}Hz", edge)
    return Judgement("forced" if force else None, edge)

def selection_reason(audio: np.ndarray, rate: int, force: bool = False) -> Optional[str]:
    """Why a source should be enhanced (the record's `reason`), or None when it is full-band."""
    return judge(audio, rate, force).reason

def band_edge_hz(audio: np.ndarray, rate: int) -> Optional[int]:
    """The frequency where the long-term spectrum falls off a cliff, or None when its content
    reaches (nearly) Nyquist. Selection takes a source whose edge is below 16 kHz; above that
    the edge is only reported (an MP3 encoder's low-pass at 16-19 kHz, an anti-alias filter).

    Telephone audio that an earlier stage stored at 44.1/48 kHz keeps its narrow band: the
    spectrum stops dead at 3.4-8 kHz, tens of dB down in one step. Full-band recordings roll
    off gradually, so no single edge has everything above it far below everything under it.
    """
    return band_edge_of_segments(_segments_of(audio), rate)

def band_edge_of_segments(segments: np.ndarray, rate: int) -> Optional[int]:
    """`band_edge_hz` from the mono segments at `segment_starts`, gathered by whoever reads the audio."""
    return _edge_of(_levels_db(segments, rate), rate)

def segment_starts(frames: int) -> np.ndarray:
    """Where the long-term spectrum's segments start in a mono signal of `frames` samples (zero-padded
    to one segment when shorter): at most `_MAX_SEGMENTS`, spread evenly over the whole length."""
    frames = max(frames, SEGMENT)
    return np.linspace(0, frames - SEGMENT, num=min(_MAX_SEGMENTS, frames // SEGMENT + 1)).astype(int)

def mono_of(audio: np.ndarray) -> np.ndarray:
    """The channels' mean in float64, as the spectrum is judged (row by row, so a block gives the same values)."""
    return audio.mean(axis=1, dtype=np.float64) if audio.ndim == 2 else audio.astype(np.float64)

def _segments_of(audio: np.ndarray) -> np.ndarray:
    mono = mono_of(audio)
    if mono.shape[0] < SEGMENT:
        mono = np.pad(mono, (0, SEGMENT - mono.shape[0]))
    return mono[segment_starts(mono.shape[0])[:, None] + np.arange(SEGMENT)]

def _edge_of(bands: Optional[np.ndarray], rate: int) -> Optional[int]:
    if bands is None:
        return None
    drop_db = config.band_drop_db()
    loudest = bands.max()
    # highest_above[k] = the loudest band from k upwards
    highest_above = np.maximum.accumulate(bands[::-1])[::-1]
    skip = _TRANSITION_HZ // _BAND_HZ
    below_span = 1000 // _BAND_HZ
    last_edge = (rate // 2 - _TRANSITION_HZ - _BAND_HZ) // _BAND_HZ
    for edge in range(below_span, last_edge):
        above = highest_above[edge + skip] if edge + skip < len(bands) else -np.inf
        below = bands[edge - below_span:edge].mean()
        if below - above >= drop_db and loudest - above >= _FLOOR_DB:
            return edge * _BAND_HZ
    return None

def _levels_db(segments: np.ndarray, rate: int) -> Optional[np.ndarray]:
    """Long-term power per `_BAND_HZ` band in dB (Welch average of the Hann-windowed segments)."""
    power = (np.abs(np.fft.rfft(segments * np.hanning(SEGMENT), axis=1)) ** 2).mean(axis=0)
    if not power.any():
        return None  # digital silence: nothing to judge, nothing to enhance
    bin_hz = rate / SEGMENT
    band_of_bin = (np.arange(power.shape[0]) * bin_hz // _BAND_HZ).astype(int)
    levels = np.bincount(band_of_bin, weights=power)
    # 1e-30 relative keeps the log finite for digitally empty bands without inventing a noise floor
    return 10.0 * np.log10(levels + levels.max() * 1e-30)
