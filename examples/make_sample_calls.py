"""Write a small stage folder to try flashsr on: narrow-band calls and one full-band file.

    python examples/make_sample_calls.py sample_calls
    flashsr-enhance --input sample_calls --device cpu
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


def voice(rate: int, seconds: float, pitch: float, seed: int) -> np.ndarray:
    """A buzzy vowel-like voice with syllable rhythm and a little breath noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0 = pitch * (1 + 0.08 * np.sin(2 * np.pi * 0.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 30) if k * pitch * 1.1 < rate / 2)
    syllables = np.clip(np.sin(2 * np.pi * 2.2 * t), 0, None) ** 0.6
    signal = harmonics * syllables + 0.02 * rng.standard_normal(t.shape[0])
    return (0.25 * signal / np.abs(signal).max()).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a sample stage folder for flashsr-enhance.")
    parser.add_argument("folder", type=Path, help="where to write the sample files (created)")
    folder: Path = parser.parse_args().folder
    (folder / "agent_b").mkdir(parents=True, exist_ok=True)
    sf.write(folder / "call_0001.wav", voice(8000, 6, 120, 1), 8000, subtype="PCM_16")
    sf.write(folder / "call_0002_ulaw.wav", voice(8000, 4, 210, 2), 8000, subtype="ULAW")
    stereo = np.stack([voice(16000, 5, 130, 3), voice(16000, 5, 190, 4)], axis=1)
    sf.write(folder / "agent_b" / "call_0003_stereo.wav", stereo, 16000, subtype="PCM_24")
    # telephone audio that an earlier stage stored at 44.1 kHz: selected for its bandwidth
    sf.write(folder / "agent_b" / "call_0004_phone_at_44k.wav",
             soxr.resample(voice(8000, 5, 150, 5), 8000, 44100, quality="VHQ"), 44100, subtype="PCM_16")
    # a full-band 48 kHz recording: left alone
    noise = np.random.default_rng(6).standard_normal(48000 * 3).astype(np.float32) * 0.02
    sf.write(folder / "studio_48k.wav", voice(48000, 3, 140, 6) + noise, 48000, subtype="PCM_24")
    print(f"wrote 5 sample files under {folder}/")


if __name__ == "__main__":
    main()
