"""Spectrogram pictures of audio files for the report: linear frequency 0-24 kHz, a line at a
band edge.

A file of any length costs at most the same: each of the `COLUMNS` image columns is the mean power
of up to `FRAMES_PER_COLUMN` short frames spread over its stretch of the file (seeking, never
reading the whole file), so a long file's column shows that stretch's typical spectrum, not
one 43 ms instant; a short file's column is one frame. Memory holds one frame at a time. Every
picture shares the same axis (0 Hz at the bottom, 24 kHz at the top, whatever the file's
rate), so an input and its output can be compared at a glance: an 8 kHz input's picture is
empty above 4 kHz.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf

TOP_HZ = 24000
HEIGHT = 240          # rows: 100 Hz each
COLUMNS = 400
FRAMES_PER_COLUMN = 16  # at most: a long file's picture costs 16 frames a column, whatever its length
RANGE_DB = 100.0      # from the loudest cell down to the darkest colour
_N_FFT_48K = 2048     # frame length at 48 kHz (43 ms); the same duration at other rates
# dark blue → violet → red → orange → pale yellow: loudness reads as brightness
_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99],
                     [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float64)
EDGE_COLOUR = np.array([0, 255, 255], dtype=np.uint8)


def spectrogram_rgb(path: Path, edge_hz: Optional[float] = None) -> np.ndarray:
    """`[HEIGHT, columns, 3]` uint8: the file's spectrogram, with a dashed line at `edge_hz`."""
    levels_db = _levels_db(path)
    scaled = np.clip((levels_db - (levels_db.max() - RANGE_DB)) / RANGE_DB, 0.0, 1.0)
    position = scaled * (len(_ANCHORS) - 1)
    low = np.minimum(position.astype(int), len(_ANCHORS) - 2)
    fraction = (position - low)[..., None]
    rgb = (_ANCHORS[low] * (1 - fraction) + _ANCHORS[low + 1] * fraction).astype(np.uint8)
    rgb = rgb[::-1]  # row 0 is the top of the picture: the highest frequency
    if edge_hz is not None and 0 < edge_hz < TOP_HZ:
        row = HEIGHT - 1 - int(edge_hz / TOP_HZ * HEIGHT)
        dashes = (np.arange(rgb.shape[1]) // 6) % 2 == 0
        rgb[max(row - 1, 0):row + 1, dashes] = EDGE_COLOUR
    return rgb


def _levels_db(path: Path) -> np.ndarray:
    """`[HEIGHT, columns]` power in dB per 100 Hz row, columns spread over the file."""
    with sf.SoundFile(str(path)) as handle:
        rate, frames = handle.samplerate, handle.frames
        n_fft = max(256, _N_FFT_48K * rate // 48000)
        columns = COLUMNS
        last = max(frames - n_fft, 0)
        step = last / (columns - 1)  # samples from one column's centre frame to the next's
        # a long file's column averages frames spread over its own stretch of time, at least half a
        # frame apart; a short file's (stretches under a frame) is its one frame, as before
        per_column = int(min(max(step // (n_fft // 2), 1), FRAMES_PER_COLUMN))
        centres = np.linspace(0, last, columns)
        window = np.hanning(n_fft)
        spectra = np.zeros((columns, n_fft // 2 + 1))
        for column, centre in enumerate(centres):
            if per_column == 1:
                starts = [centre]
            else:  # evenly over the column's stretch: from half a step before its centre to half a step after
                low, high = max(centre - step / 2, 0), min(centre + step / 2, last)
                starts = low + (np.arange(per_column) + 0.5) * ((high - low) / per_column)
            for start in np.asarray(starts).astype(int):
                handle.seek(int(start))
                block = handle.read(n_fft, dtype="float64", always_2d=True).mean(axis=1)
                block = np.pad(block, (0, n_fft - len(block)))
                spectra[column] += np.abs(np.fft.rfft(block * window)) ** 2
            spectra[column] /= per_column
    freqs = np.fft.rfftfreq(n_fft, 1 / rate)
    row_of_bin = (freqs / TOP_HZ * HEIGHT).astype(int)
    inside = row_of_bin < HEIGHT
    levels = np.zeros((HEIGHT, columns))
    for column in range(columns):
        levels[:, column] = np.bincount(row_of_bin[inside], weights=spectra[column, inside], minlength=HEIGHT)
    # rows above the file's Nyquist hold no bins: they show as the floor
    return 10 * np.log10(levels + 1e-20)
