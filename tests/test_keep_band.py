"""FLASHSR_KEEP_INPUT_BAND: the crossover is flat, the input's band is kept whatever the model
does (the real model with random weights), and the record says so."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from flashsr_tasks import config
from flashsr_tasks.audio.crossover import join_bands
from flashsr_tasks.audio.resample import OUTPUT_RATE, to_output_rate
from flashsr_tasks.enhance.band_keeping import CROSSOVER_HZ, keep_input_band
from flashsr_tasks.enhance.enhancers import Resampler
from flashsr_tasks.enhance.per_file import process_file
from flashsr_tasks.manifest.records import ENHANCED
from flashsr_tasks.runs.job import Job
from tests.services import REPO
from tests.signals import speech_like, write

RATES = (8000, 12000, 16000, 24000)
_FRAME = 4096


def band_power(x: np.ndarray, edges_hz: np.ndarray) -> np.ndarray:
    """Welch power of mono `x` at 48 kHz in the bands between `edges_hz` (Hann frames that lie
    wholly inside the signal, so the file's ends leak nothing into the measure)."""
    starts = np.arange(0, len(x) - _FRAME + 1, _FRAME // 4)
    frames = x[starts[:, None] + np.arange(_FRAME)] * np.hanning(_FRAME)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).sum(axis=0)
    freqs = np.fft.rfftfreq(_FRAME, 1 / OUTPUT_RATE)
    return np.array([power[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in zip(edges_hz[:-1], edges_hz[1:])])


def narrow_band(x: np.ndarray, rate: int) -> np.ndarray:
    """A 48 kHz signal as a recording at `rate` holds it."""
    return soxr.resample(x, OUTPUT_RATE, rate, quality="VHQ").astype(np.float32)


@pytest.mark.parametrize("rate", RATES)
def test_crossover_is_flat_on_white_noise(rate: int) -> None:
    """An ideal model (the full-band original) joined to the narrow-band input: the level stays
    the original's in every 50 Hz band through the crossover — no gap, no bump."""
    x = (0.1 * np.random.default_rng(rate).standard_normal((4 * OUTPUT_RATE, 1))).astype(np.float32)
    low = narrow_band(x, rate)
    joined, kept_below = keep_input_band(low, rate, x)
    assert kept_below > 0.8 * rate / 2 - CROSSOVER_HZ
    edges = np.arange(0, 20001, 50)
    deviation_db = 10 * np.log10(band_power(joined[:, 0], edges) / band_power(x[:, 0], edges))
    assert np.abs(deviation_db).max() < 0.05, edges[np.abs(deviation_db).argmax()]


@pytest.mark.parametrize("rate", RATES)
def test_crossover_is_flat_on_a_sweep(rate: int) -> None:
    """A log sweep 50 Hz → 22 kHz passes the crossover in time: its envelope (10 ms RMS) stays the
    original's all the way."""
    seconds = 4.0
    t = np.arange(int(seconds * OUTPUT_RATE)) / OUTPUT_RATE
    f0, f1 = 50.0, 22000.0
    k = np.log(f1 / f0) / seconds
    x = (0.5 * np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k))[:, None].astype(np.float32)
    joined, _ = keep_input_band(narrow_band(x, rate), rate, x)
    hop = OUTPUT_RATE // 100
    rms = lambda y: np.sqrt((y[: len(y) // hop * hop, 0].reshape(-1, hop) ** 2).mean(axis=1))  # noqa: E731
    ratio_db = 20 * np.log10(rms(joined)[5:-5] / rms(x)[5:-5])
    assert np.abs(ratio_db).max() < 0.05


def test_join_bands_takes_each_band_from_its_own_branch() -> None:
    """Two unrelated signals: below the pass edge the result is the first, above the stop edge the
    second, each to −60 dB; both branches are full level in the middle of the crossover (halves)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((3 * OUTPUT_RATE, 2)).astype(np.float32) for _ in range(2))
    joined = join_bands(a, b, 4000, 4500, OUTPUT_RATE)
    assert joined.shape == a.shape and joined.dtype == np.float32
    low, high = np.array([0, 4000]), np.array([4500, 24000])
    for ch in range(2):
        assert band_power(joined[:, ch] - a[:, ch], low)[0] < 1e-6 * band_power(a[:, ch], low)[0]
        assert band_power(joined[:, ch] - b[:, ch], high)[0] < 1e-6 * band_power(b[:, ch], high)[0]
    with pytest.raises(ValueError, match="differ in shape"):
        join_bands(a, b[:-1], 4000, 4500, OUTPUT_RATE)


def test_keep_input_band_is_off_by_default_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLASHSR_KEEP_INPUT_BAND", raising=False)
    assert config.keep_input_band() is False
    monkeypatch.setenv("FLASHSR_KEEP_INPUT_BAND", "1")
    assert config.keep_input_band() is True
    monkeypatch.setenv("FLASHSR_KEEP_INPUT_BAND", "maybe")
    with pytest.raises(ValueError, match="FLASHSR_KEEP_INPUT_BAND must be 1 or 0"):
        config.keep_input_band()


@pytest.mark.parametrize("keep", ["0", "1"])
def test_resample_record_says_no_band_was_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: str) -> None:
    """The resampler's output is the input already: nothing is joined, the record holds null."""
    monkeypatch.setenv("FLASHSR_KEEP_INPUT_BAND", keep)
    write(tmp_path / "a.wav", speech_like(8000, 0.5), 8000)
    outcome = process_file(tmp_path.resolve(), "a.wav", Job(root=str(tmp_path), device="cpu"), Resampler)
    assert outcome["outcome"] == ENHANCED
    assert "kept_input_band_hz" in outcome["record"] and outcome["record"]["kept_input_band_hz"] is None


@pytest.mark.model
def test_random_weight_model_keeps_the_input_band_within_30_db(random_model_dir: Path, tmp_path: Path) -> None:
    """flashsr-eval with the real FlashSR code and random weights (its output is noise-like, nothing
    like the input): with FLASHSR_KEEP_INPUT_BAND=1 the output below the kept edge is the resampled
    input to −30 dB of error energy over signal energy; the eval scores the flashsr method."""
    refs, work, rate = tmp_path / "refs", tmp_path / "work", 16000
    write(refs / "speech.wav", speech_like(48000, 1.0, seed=11), 48000, "FLOAT")
    env = {**os.environ, "FLASHSR_KEEP_INPUT_BAND": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator_hooks.cli.eval", "--references", str(refs), "--rates", str(rate),
         "--work_dir", str(work), "--device", "cpu", "--model_dir", str(random_model_dir), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=900, env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = json.loads(run.stdout)["results"]
    assert (result["rate"], result["method"]) == (rate, "flashsr")
    (scores,) = result["files"]
    kept_below = scores["kept_input_band_hz"]
    assert 0.8 * rate / 2 - CROSSOVER_HZ < kept_below < rate / 2
    given, given_rate = sf.read(str(work / scores["input"]), dtype="float32", always_2d=True)
    output, _ = sf.read(str(work / scores["output"]), dtype="float32", always_2d=True)
    expected = to_output_rate(given, given_rate)[:, 0] * 10 ** (scores["gain_db"] / 20)
    band = np.array([0, kept_below])
    error_db = 10 * np.log10(band_power(output[:, 0] - expected, band)[0] / band_power(expected, band)[0])
    print(f"kept band below {kept_below} Hz: error {error_db:.1f} dB; scores {scores}")
    assert error_db < -30, error_db
    # Above the input's Nyquist the output is the model's: random weights put plenty there.
    above = np.array([rate / 2 + CROSSOVER_HZ, 20000])
    assert band_power(output[:, 0], above)[0] > 1e3 * band_power(expected, above)[0]
    assert np.isfinite(scores["lsd"]) and np.isfinite(scores["si_sdr_db"])
