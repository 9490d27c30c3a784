"""An enhanced output scored against its full-band reference, both read a block at a time.

The output is mixed to mono and brought to the reference's rate (soxr VHQ, streamed), the reference
mixed to mono, both cut to the shorter; LSD (whole band and split) and SI-SDR are accumulated over the
blocks (`flashsr_tasks.quality.scores`), so a file of any length costs a few blocks of memory.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from flashsr_tasks.quality.blocks import audio_blocks, header, mono, paired, resampled
from flashsr_tasks.quality.scores import SiSdrStream, SpectralDistance, SpectralDistanceStream


@dataclass(frozen=True)
class Comparison:
    distance: SpectralDistance
    si_sdr_db: float


def compare_files(output: Path, reference: Path, split_hz: float) -> Comparison:
    """LSD split at `split_hz`, and SI-SDR, of `output` against `reference`, at the reference's rate."""
    output_rate, reference_rate = header(output).rate, header(reference).rate

    @contextlib.contextmanager
    def pairs() -> Iterator[Iterator[tuple[np.ndarray, np.ndarray]]]:
        estimate = audio_blocks(output)
        target = audio_blocks(reference)
        try:
            yield paired(resampled(mono(estimate), output_rate, reference_rate), mono(target))
        finally:  # the longer file is left unread: close both now, not when collected
            estimate.close()
            target.close()

    distance, si_sdr = SpectralDistanceStream(reference_rate, split_hz), SiSdrStream()
    with pairs() as blocks:
        for estimate_block, reference_block in blocks:
            distance.push(estimate_block, reference_block)
            si_sdr.push(estimate_block, reference_block)
    score = si_sdr.closed_form()
    if score is None:  # a near-perfect match: its distortion summed directly, over a second pass
        with pairs() as blocks:
            score = si_sdr.second_pass(blocks)
    return Comparison(distance.result(), score)
