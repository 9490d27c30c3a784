"""How close an enhanced output is to its full-band reference: log-spectral distance and SI-SDR.

LSD (and `lsd_hf`, `lsd_lf`) as `ssr_eval` defines it, lower is better; SI-SDR sees phase and timing, higher is
better. Each comes for whole arrays and as a stream of blocks (`SpectralDistanceStream`, `SiSdrStream`), whose
memory is a block's whatever the length. docs/quality.md, "The measures", defines them and how to read them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

EPS = 1e-12           # ssr_eval's ε, inside and outside the log
_FRAMES_PER_BLOCK = 512


@dataclass(frozen=True)
class SpectralDistance:
    lsd: float     # over every bin
    lsd_hf: float  # over bins at or above the split (NaN when there are none)
    lsd_lf: float  # over bins below the split (NaN when there are none)


def stft_params(rate: int) -> tuple[int, int]:
    """ssr_eval's `(n_fft, hop)` at `rate`: 2048 at 44.1 kHz scaled with the rate, 10 ms hops."""
    return int(2048 / (44100 / rate)), int(rate / 100)


def log_spectral_distance(estimate: np.ndarray, reference: np.ndarray, rate: int, split_hz: float) -> SpectralDistance:
    """LSD of mono `estimate` against mono `reference` at `rate`, whole band and split at `split_hz`.

    Both are cut to the shorter length first, as ssr_eval does.
    """
    length = min(len(estimate), len(reference))
    stream = SpectralDistanceStream(rate, split_hz)
    stream.push(estimate[:length], reference[:length])
    return stream.result()


class SpectralDistanceStream:
    """LSD over a signal pair that arrives a block at a time (`push` equal-length mono blocks of both,
    in order, then `result`): the same frames and the same values as `log_spectral_distance` on the
    whole pair, in the memory of a block."""

    def __init__(self, rate: int, split_hz: float) -> None:
        n_fft, hop = stft_params(rate)
        self._bins = n_fft // 2 + 1
        split_bin = int(np.ceil(split_hz * n_fft / rate))  # bin k sits at k·rate/n_fft Hz
        self._split_bin = min(max(split_bin, 0), self._bins)
        self._estimate, self._reference = _Framer(n_fft, hop), _Framer(n_fft, hop)
        self._sums = np.zeros(3)  # per-frame RMS values summed: all, hf, lf
        self._frames = 0

    def push(self, estimate: np.ndarray, reference: np.ndarray) -> None:
        if len(estimate) != len(reference):
            raise ValueError("push blocks of equal length")
        self._add(self._estimate.push(estimate), self._reference.push(reference))

    def result(self) -> SpectralDistance:
        self._add(self._estimate.finish(), self._reference.finish())
        split_bin, bins = self._split_bin, self._bins
        mean = self._sums / self._frames if self._frames else np.full(3, np.nan)
        return SpectralDistance(
            lsd=float(mean[0]),
            lsd_hf=float(mean[1]) if split_bin < bins else float("nan"),
            lsd_lf=float(mean[2]) if split_bin > 0 else float("nan"),
        )

    def _add(self, estimate: list[np.ndarray], reference: list[np.ndarray]) -> None:
        split_bin, bins = self._split_bin, self._bins
        for est_mag, ref_mag in zip(estimate, reference):
            squared = np.log10(ref_mag ** 2 / (est_mag + EPS) ** 2 + EPS) ** 2
            self._sums[0] += np.sqrt(squared.mean(axis=1)).sum()
            if split_bin < bins:
                self._sums[1] += np.sqrt(squared[:, split_bin:].mean(axis=1)).sum()
            if split_bin > 0:
                self._sums[2] += np.sqrt(squared[:, :split_bin].mean(axis=1)).sum()
            self._frames += squared.shape[0]


class _Framer:
    """|STFT| as librosa computes it (centred frames, zero padding, periodic Hann) of a signal that
    arrives in blocks: each `push` returns the frames its samples complete, as blocks `[frames, bins]`;
    `finish` adds the end's padding and returns the rest. Holds less than a frame between pushes."""

    def __init__(self, n_fft: int, hop: int) -> None:
        self._n_fft, self._hop = n_fft, hop
        self._window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
        self._held = np.zeros(n_fft // 2)  # the first frame is centred on the first sample
        self._next = 0  # frames taken so far

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        self._held = np.concatenate([self._held, np.asarray(samples, dtype=np.float64)])
        return self._take()

    def finish(self) -> list[np.ndarray]:
        self._held = np.concatenate([self._held, np.zeros(self._n_fft // 2)])
        return self._take()

    def _take(self) -> list[np.ndarray]:
        n_fft, hop, held = self._n_fft, self._hop, self._held
        total = 1 + (len(held) - n_fft) // hop if len(held) >= n_fft else 0
        offsets = np.arange(n_fft)
        blocks = []
        for first in range(0, total, _FRAMES_PER_BLOCK):
            starts = np.arange(first, min(first + _FRAMES_PER_BLOCK, total)) * hop
            blocks.append(np.abs(np.fft.rfft(held[starts[:, None] + offsets] * self._window, axis=1)))
        self._held = held[total * hop:]
        return blocks


def si_sdr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio of mono `estimate` against `reference`, in dB."""
    length = min(len(estimate), len(reference))
    est = np.asarray(estimate[:length], dtype=np.float64)
    ref = np.asarray(reference[:length], dtype=np.float64)
    ref_energy = float(ref @ ref)
    if ref_energy == 0.0:
        return float("nan")  # a silent reference has no distortion ratio
    target = (float(est @ ref) / ref_energy) * ref
    noise = est - target
    return float(10 * np.log10((target @ target + EPS) / (noise @ noise + EPS)))


class SiSdrStream:
    """SI-SDR over a signal pair that arrives a block at a time. The first pass (`push`) sums the
    energies and the cross term; the distortion's energy follows from them (`closed_form`) unless it is
    below 1e-8 of the estimate's, where that subtraction would lose its digits to rounding: then a
    second pass over the same blocks (`second_pass`) sums it directly, as `si_sdr_db` does."""

    _CANCELLATION = 1e-8

    def __init__(self) -> None:
        self._cross = self._reference = self._estimate = 0.0

    def push(self, estimate: np.ndarray, reference: np.ndarray) -> None:
        est = np.asarray(estimate, dtype=np.float64)
        ref = np.asarray(reference, dtype=np.float64)
        self._cross += float(est @ ref)
        self._reference += float(ref @ ref)
        self._estimate += float(est @ est)

    @property
    def _scale(self) -> float:
        return self._cross / self._reference

    def closed_form(self) -> Optional[float]:
        """The SI-SDR in dB, or None when a second pass is needed for it."""
        if self._reference == 0.0:
            return float("nan")  # a silent reference has no distortion ratio
        noise = self._estimate - self._scale * self._cross  # |e|² − (e·r)²/|r|²
        if noise < self._CANCELLATION * self._estimate:
            return None
        return self._ratio_db(noise)

    def second_pass(self, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
        """The SI-SDR in dB from the distortion summed over the same blocks again."""
        if self._reference == 0.0:
            return float("nan")
        scale, noise = self._scale, 0.0
        for estimate, reference in pairs:
            residual = np.asarray(estimate, dtype=np.float64) - scale * np.asarray(reference, dtype=np.float64)
            noise += float(residual @ residual)
        return self._ratio_db(noise)

    def _ratio_db(self, noise: float) -> float:
        target = self._scale * self._scale * self._reference
        return float(10 * np.log10((target + EPS) / (noise + EPS)))
