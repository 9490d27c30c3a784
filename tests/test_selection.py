"""Which files are selected: low rates always, high rates only when band-limited."""
import numpy as np
import pytest

from flashsr_tasks.enhance.selection import band_edge_hz, selection_reason
from tests.signals import music_like, speech_like, stack, telephone


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 24000])
def test_low_sample_rates_are_selected(rate):
    assert selection_reason(speech_like(rate, 1.0)[:, None], rate) == "sample_rate<32000"


@pytest.mark.parametrize("rate", [44100, 48000])
@pytest.mark.parametrize("make", [speech_like, music_like], ids=["speech", "music"])
def test_full_band_content_is_not_selected(rate, make):
    audio = make(rate, 3.0)[:, None]
    assert band_edge_hz(audio, rate) is None
    assert selection_reason(audio, rate) is None


@pytest.mark.parametrize("rate", [44100, 48000])
def test_full_band_noise_and_stereo_are_not_selected(rate):
    noise = np.random.default_rng(3).standard_normal((rate * 2, 2)).astype(np.float32) * 0.1
    assert selection_reason(noise, rate) is None
    assert selection_reason(stack(speech_like(rate, 2.0, seed=4), music_like(rate, 2.0)), rate) is None


@pytest.mark.parametrize("rate", [44100, 48000])
@pytest.mark.parametrize("band_hz", [3400, 3900])
def test_telephone_audio_stored_at_a_high_rate_is_selected(rate, band_hz):
    audio = telephone(rate, 3.0, band_hz=band_hz)[:, None]
    cutoff = band_edge_hz(audio, rate)
    assert cutoff is not None and 3000 <= cutoff <= 4500
    assert selection_reason(audio, rate) == f"band_limited<{cutoff}Hz"


def test_wideband_speech_at_16k_stored_at_48k_is_selected():
    import soxr

    wide = soxr.resample(speech_like(16000, 3.0), 16000, 48000, quality="VHQ")[:, None]
    cutoff = band_edge_hz(wide, 48000)
    assert cutoff is not None and 7000 <= cutoff <= 8500


def test_band_limited_content_with_a_noise_floor_is_still_selected():
    """A telephone call stored as PCM_16 at 48 kHz with dither-level noise across the band."""
    audio = telephone(48000, 3.0) + np.random.default_rng(5).standard_normal(144000).astype(np.float32) * 1e-4
    assert band_edge_hz(audio[:, None], 48000) is not None


def test_silence_is_not_selected_but_force_selects_anything():
    silence = np.zeros((48000, 1), np.float32)
    assert selection_reason(silence, 48000) is None
    assert selection_reason(silence, 48000, force=True) == "forced"
    full = speech_like(48000, 1.0)[:, None]
    assert selection_reason(full, 48000, force=True) == "forced"
    # a file that qualifies anyway keeps its real reason under --force
    assert selection_reason(full[:, :1], 8000, force=True) == "sample_rate<32000"


def test_short_files_are_judged_like_long_ones():
    assert band_edge_hz(telephone(48000, 0.2)[:, None], 48000) is not None
    assert band_edge_hz(speech_like(48000, 0.2)[:, None], 48000) is None


def _gently_low_passed_speech() -> np.ndarray:
    """Speech at 22.05 kHz stored at 44.1 kHz through a 2-pole low-pass at 3400 Hz (sox's
    `lowpass 3400`, a Butterworth biquad), quiet (peaks near -20 dBFS) in 16-bit samples:
    about 9 dB down at 4-5 kHz, nothing above 11 kHz but quantisation noise. A 40 dB cliff
    rule misses it."""
    import soxr
    from scipy.signal import butter, sosfilt

    stored = soxr.resample(speech_like(22050, 4.0, seed=5, level=0.03), 22050, 44100, quality="VHQ")
    filtered = sosfilt(butter(2, 3400, fs=44100, output="sos"), stored)
    return (np.round(filtered * 32767) / 32767)[:, None]


def test_gently_low_passed_speech_is_selected_and_the_threshold_is_a_setting(monkeypatch):
    audio = _gently_low_passed_speech()
    edge = band_edge_hz(audio, 44100)
    assert edge is not None and 9000 <= edge <= 11025
    assert selection_reason(audio, 44100) == f"band_limited<{edge}Hz"
    monkeypatch.setenv("FLASHSR_BAND_DROP_DB", "40")  # a stricter rule leaves it alone
    assert band_edge_hz(audio, 44100) is None
    monkeypatch.setenv("FLASHSR_BAND_DROP_DB", "loud")
    with pytest.raises(ValueError, match="FLASHSR_BAND_DROP_DB"):
        band_edge_hz(audio, 44100)


def test_an_edge_above_16k_is_measured_and_left_alone():
    """An encoder's low-pass at 17 kHz: reported as the band edge, not selected."""
    from flashsr_tasks.enhance.selection import judge

    music = music_like(48000, 3.0)
    spectrum = np.fft.rfft(music)
    spectrum[int(17000 * len(music) / 48000):] = 0
    audio = np.fft.irfft(spectrum, n=len(music))[:, None].astype(np.float32)
    reason, edge = judge(audio, 48000)
    assert reason is None and 16500 <= edge <= 17250
    assert judge(audio, 48000, force=True) == ("forced", edge)
