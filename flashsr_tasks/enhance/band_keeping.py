"""FLASHSR_KEEP_INPUT_BAND: the input's own content below its band edge, the model's above.

Below `edge − CROSSOVER_HZ` the output is the source resampled to 48 kHz, time-aligned with the model's output;
a crossover joins the two. docs/quality.md, "`FLASHSR_KEEP_INPUT_BAND=1`: the input's own band", explains where
the edge lies and how the crossover hands over.
"""
from __future__ import annotations

import numpy as np

from flashsr_tasks.audio.crossover import join_bands
from flashsr_tasks.audio.resample import OUTPUT_RATE, to_output_rate
from flashsr_tasks.enhance.selection import band_edge_hz

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
