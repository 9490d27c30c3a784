"""What selection takes and leaves, on material made here: espeak-ng speech, sox low-passes of
several orders, telephone channels, MP3s at low bit rates (lame), and full-band controls
(noise, synthetic music and speech with content up to Nyquist).

    python benchmarks/selection_table.py [--drop-db 40 30 20]

Needs sox, espeak-ng and lame on PATH (Debian: apt-get install sox espeak-ng lame); rows whose
tool is missing are left out. Prints one row per file: what it is, whether it must be selected,
and for each threshold (FLASHSR_BAND_DROP_DB) the measured band edge or "full-band".
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flashsr_tasks.enhance.selection import CLIFF_BELOW_HZ, band_edge_hz  # noqa: E402
from tests.signals import music_like, speech_like, write  # noqa: E402

SENTENCE = ("The quick brown fox jumps over the lazy dog. Please call me back about the invoice, "
            "my number is five five five, one two three four. Thanks, and have a good afternoon.")


def sox(*args: str) -> None:
    subprocess.run(["sox", *args], check=True, capture_output=True)


def material(work: Path) -> list[tuple[str, Optional[bool], Path]]:
    """(what it is, must it be selected (None: either is fine), the file) for every row whose
    tools are present."""
    rows: list[tuple[str, Optional[bool], Path]] = []
    write(work / "music48.wav", music_like(48000, 8.0), 48000)
    write(work / "speechlike48.wav", speech_like(48000, 8.0), 48000)
    write(work / "music44.wav", music_like(44100, 8.0), 44100)
    rows += [("synthetic music, 48 kHz (full-band)", False, work / "music48.wav"),
             ("synthetic speech with fricatives to Nyquist, 48 kHz", False, work / "speechlike48.wav")]
    if shutil.which("sox"):
        sox("-n", "-r", "48000", "-b", "16", str(work / "white.wav"), "synth", "8", "whitenoise", "vol", "0.3")
        sox("-n", "-r", "44100", "-b", "16", str(work / "pink.wav"), "synth", "8", "pinknoise", "vol", "0.3")
        rows += [("white noise, 48 kHz", False, work / "white.wav"), ("pink noise, 44.1 kHz", False, work / "pink.wav")]
        # Gentle filters on full-band music leave content up to Nyquist (12-24 dB per octave
        # down): no band edge, so either answer is acceptable (None); a steep one must be taken.
        for order, effect, wanted in (("2-pole", ["lowpass", "3400"], None), ("1-pole", ["lowpass", "-1", "3400"], None),
                                      ("4-pole", ["lowpass", "3400", "lowpass", "3400"], None),
                                      ("sinc, steep", ["sinc", "-3400"], True), ("sinc, steep", ["sinc", "-8000"], True)):
            out = work / f"music44_{'_'.join(effect)}.wav"
            sox(str(work / "music44.wav"), str(out), *effect)
            rows.append((f"synthetic music 44.1 kHz, sox {' '.join(effect)} ({order})", wanted, out))
        sox(str(work / "speechlike48.wav"), str(work / "phone.wav"), "sinc", "300-3400", "rate", "8000", "rate", "48000")
        rows.append(("telephone channel (300-3400 Hz, 8 kHz) stored at 48 kHz", True, work / "phone.wav"))
    if shutil.which("espeak-ng") and shutil.which("sox"):
        subprocess.run(["espeak-ng", "-w", str(work / "espeak22.wav"), SENTENCE], check=True, capture_output=True)
        sox(str(work / "espeak22.wav"), "-r", "44100", str(work / "espeak44.wav"))
        rows.append(("espeak-ng speech (22.05 kHz) stored at 44.1 kHz", True, work / "espeak44.wav"))
        for effect in (["lowpass", "3400"], ["lowpass", "-1", "3400"], ["sinc", "-3400"], ["lowpass", "5000"]):
            out = work / f"espeak44_{'_'.join(effect)}.wav"
            sox(str(work / "espeak44.wav"), str(out), *effect)
            rows.append((f"espeak-ng speech 44.1 kHz, sox {' '.join(effect)}", True, out))
    if shutil.which("lame"):
        # lame low-passes by bit rate; the rule takes edges below 16 kHz only
        for kbps in (24, 32, 48, 64, 128):
            mp3 = work / f"music44_{kbps}.mp3"
            subprocess.run(["lame", "--quiet", "-b", str(kbps), str(work / "music44.wav"), str(mp3)], check=True)
            rows.append((f"synthetic music 44.1 kHz as MP3 at {kbps} kbit/s (lame)", kbps <= 48, mp3))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drop-db", type=float, nargs="+", default=[40.0, 30.0, 20.0])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = material(Path(tmp))
        print("| material | should be selected | " + " | ".join(f"drop {d:g} dB" for d in args.drop_db)
              + " | selected up to |")
        print("| --- | --- | " + " | ".join("---" for _ in args.drop_db) + " | --- |")
        for what, wanted, path in rows:
            audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
            cells = []
            for drop in args.drop_db:
                os.environ["FLASHSR_BAND_DROP_DB"] = str(drop)
                edge = band_edge_hz(audio, rate)
                cells.append("full-band" if edge is None else f"{edge} Hz" if edge < CLIFF_BELOW_HZ
                             else f"full-band (edge {edge} Hz)")
            strongest = next((d for d in range(80, 0, -1) if _selected_at(audio, rate, d)), None)
            print(f"| {what} | {_wanted(wanted)} | " + " | ".join(cells)
                  + f" | {'never' if strongest is None else f'{strongest} dB'} |")


def _selected_at(audio, rate: int, drop_db: float) -> bool:
    os.environ["FLASHSR_BAND_DROP_DB"] = str(drop_db)
    edge = band_edge_hz(audio, rate)
    return edge is not None and edge < CLIFF_BELOW_HZ


def _wanted(wanted: Optional[bool]) -> str:
    return "either" if wanted is None else "yes" if wanted else "no"


if __name__ == "__main__":
    main()
