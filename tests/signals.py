"""Test signals that look like what the stage sees: speech, music, noise, telephone audio."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf
import soxr
from scipy.signal import fftconvolve, lfilter


def _resonate(x: np.ndarray, rate: int, freq: float, bandwidth: float) -> np.ndarray:
    """A two-pole resonator (a formant)."""
    r = np.exp(-np.pi * bandwidth / rate)
    return lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * freq / rate), r * r], x)


def speech_like(rate: int, seconds: float, seed: int = 0, level: float = 0.3) -> np.ndarray:
    """Voiced syllables (a gliding glottal pulse train through three formants) and fricative
    noise bursts that reach the Nyquist frequency, over a quiet microphone noise floor."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = np.cumsum(f0 / rate)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    voiced = np.zeros(n)
    for formant, bw in ((700, 130), (1220, 70), (2600, 160)):
        if formant < rate / 2:
            voiced += _resonate(pulses, rate, formant, bw)
    syllables = np.clip(np.sin(2 * np.pi * 2.5 * t + rng.uniform(0, 6)), 0, None) ** 0.5
    fricative_env = (np.sin(2 * np.pi * 1.3 * t + rng.uniform(0, 6)) > 0.85).astype(float)
    fricative_env = fftconvolve(fricative_env, np.hanning(max(3, rate // 100)), mode="same")
    fricative_env /= max(fricative_env.max(), 1e-9)
    hiss = np.diff(rng.standard_normal(n + 1))  # rising spectrum, like /s/
    signal = voiced / (np.abs(voiced).max() + 1e-12) * syllables + 0.25 * hiss * fricative_env
    signal += 10 ** (-65 / 20) * rng.standard_normal(n)  # microphone and room noise
    return (level * signal / np.abs(signal).max()).astype(np.float32)


def music_like(rate: int, seconds: float, seed: int = 1, level: float = 0.3) -> np.ndarray:
    """Chords with decaying harmonics and cymbal-like noise hits."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    out = np.zeros(n)
    for root in (110.0, 138.6, 164.8):
        for h in range(1, 40):
            if root * h < rate / 2:
                out += np.sin(2 * np.pi * root * h * t + rng.uniform(0, 6)) / h
    hits = np.zeros(n)
    hits[:: max(1, rate // 2)] = 1.0
    decay = np.exp(-np.arange(rate // 4) / (rate * 0.05))
    cymbal = fftconvolve(hits, decay)[:n] * np.diff(rng.standard_normal(n + 1))
    out = out / np.abs(out).max() + 0.3 * cymbal
    return (level * out / np.abs(out).max()).astype(np.float32)


def telephone(rate: int, seconds: float, seed: int = 2, band_hz: float = 3400.0) -> np.ndarray:
    """Speech through a telephone channel (8 kHz, 300-`band_hz` Hz), stored at `rate`."""
    narrow = speech_like(8000, seconds, seed)
    spectrum = np.fft.rfft(narrow)
    freqs = np.fft.rfftfreq(narrow.shape[0], 1 / 8000)
    spectrum[(freqs < 300) | (freqs > band_hz)] = 0
    narrow = np.fft.irfft(spectrum, narrow.shape[0]).astype(np.float32)
    return soxr.resample(narrow, 8000, rate, quality="VHQ").astype(np.float32)


def stack(*channels: np.ndarray) -> np.ndarray:
    n = min(c.shape[0] for c in channels)
    return np.stack([c[:n] for c in channels], axis=1)


def write(path: Path, audio: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: Optional[str] = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, rate, subtype=subtype, format=fmt or "WAV")
    return path


def inband_snr_db(reference: np.ndarray, reference_rate: int, output: np.ndarray, output_rate: int = 48000) -> float:
    """SNR of `output` against `reference` inside the reference's band (up to 90 % of its
    Nyquist frequency, where any resampler's anti-alias filter has not started), after
    bringing the output back to the reference's rate, so that a time shift counts as noise."""
    back = soxr.resample(output.astype(np.float64), output_rate, reference_rate, quality="VHQ")
    n = min(back.shape[0], reference.shape[0])
    edge = reference_rate // 20  # the filters' edges at the very start and end
    ref, back = reference[edge:n - edge].astype(np.float64), back[edge:n - edge]
    keep = np.fft.rfftfreq(ref.shape[0], 1 / reference_rate) < 0.45 * reference_rate
    # a window, or the content the resampler rightly drops near Nyquist leaks into the band
    window = np.hanning(ref.shape[0])
    ref_spectrum, back_spectrum = np.fft.rfft(ref * window)[keep], np.fft.rfft(back * window)[keep]
    noise = np.sum(np.abs(ref_spectrum - back_spectrum) ** 2)
    return float(10 * np.log10(np.sum(np.abs(ref_spectrum) ** 2) / max(noise, 1e-30)))


def lag_samples(reference: np.ndarray, output: np.ndarray) -> int:
    """The lag (in samples) that best aligns `output` with `reference`, both at one rate."""
    n = min(reference.shape[0], output.shape[0])
    a, b = reference[:n].astype(np.float64), output[:n].astype(np.float64)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lag = int(np.argmax(corr))
    return lag if lag < size // 2 else lag - size
