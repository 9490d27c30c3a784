"""docs/quality.md's table: flashsr-eval on a reproducible set of synthetic full-band references.

    python benchmarks/quality_figures.py --work /tmp/quality [--rates 8000,12000,16000,24000]
        [--seconds 5] [--count 4] [-- any further flashsr-eval options, e.g. --model_dir M]

writes the references into WORK/refs (tests/signals.py: `count` speech-like files at 48 kHz
— gliding glottal pulses through three formants, fricative noise up to 24 kHz, a -65 dB
noise floor — and `count` music-like files at 44.1 kHz — harmonic tones, cymbal-like noise to
22 kHz), runs flashsr-eval on them with --device cpu, and prints its table as Markdown.
Needs the test extra (scipy) for the signals.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.signals import music_like, speech_like, write  # noqa: E402


def write_references(folder: Path, seconds: float, count: int) -> None:
    for i in range(count):
        write(folder / f"speech_{i}.wav", speech_like(48000, seconds, seed=100 + i), 48000, "FLOAT")
        write(folder / f"music_{i}.wav", music_like(44100, seconds, seed=200 + i), 44100, "FLOAT")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--rates", default="8000,12000,16000,24000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--count", type=int, default=4)
    args, extra = parser.parse_known_args()
    refs = args.work / "refs"
    write_references(refs, args.seconds, args.count)
    run = subprocess.run([sys.executable, "-m", "orchestrator_hooks.cli.eval", "--references", str(refs),
                          "--rates", args.rates, "--work_dir", str(args.work / "eval"), "--device", "cpu", "--json",
                          *[a for a in extra if a != "--"]], cwd=REPO, capture_output=True, text=True, timeout=3600)
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        return run.returncode
    print(f"references: {args.count} speech-like at 48 kHz + {args.count} music-like at 44.1 kHz, "
          f"{args.seconds:g} s each")
    print("| input rate | method | files | LSD | LSD-HF | LSD-LF | SI-SDR (dB) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in json.loads(run.stdout)["results"]:
        print(f"| {r['rate']} | {r['method']} | {len(r['files'])} | {r['lsd']:.3f} | {r['lsd_hf']:.3f} | "
              f"{r['lsd_lf']:.3f} | {r['si_sdr_db']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
