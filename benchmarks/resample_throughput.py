"""Throughput of the CPU path: `flashsr-enhance` against sox and against a bare soxr loop.

Creates N short 8 kHz mono PCM_16 speech-like calls in a temporary folder, then measures
files per second, in one run and on the same files, for:

  flashsr  the whole command `flashsr-enhance --input DIR --device cpu --quiet` as a
           subprocess: start-up, discovery, selection, hashing and manifest included, on a
           fresh copy of the folder each time so nothing is skipped;
  sox      `sox in.wav -r 48000 out.wav`, two files at a time (`xargs -P 2`), with sox's
           default rate quality (`rate -h`, "high"; sox also dithers the 16-bit output);
  bare     soundfile.read -> soxr.resample(VHQ) -> soundfile.write(PCM_16) on two processes:
           the resampling and I/O flashsr does, without anything around it (the limit). It
           writes through a file object: given a path, soundfile fsyncs every file it closes,
           which sox does not do and which would make this "limit" slower than it has to be.

Each method writes 48 kHz PCM_16 files. The page cache is flushed (sync) before each timed
run, so no method pays for another's write-back. The methods run interleaved, in rotating
order, `--repeat` times. Other work on the machine only ever slows a run down, so the table
gives the best files/s of the repeats (and the median), the ratios of the best, and the
median CPU time per file (user + system, every process), which a busy machine disturbs less.
Targets: flashsr >= 2x sox and >= 0.8x bare.

`--baseline CHECKOUT` adds a fourth method: the same command from another checkout of flashsr (a `git
worktree` of an older commit), run with this Python and `PYTHONPATH=CHECKOUT`, interleaved with the others,
and prints flashsr ÷ baseline: whether a change made the command slower, on the same machine in one run.

    python benchmarks/resample_throughput.py [--files 1000] [--seconds 3] [--repeat 3] [--baseline DIR]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import soundfile as sf
import soxr

RATE = 8000
OUTPUT_RATE = 48000
WORKERS = 2  # sox and bare: two files at a time, as the target is stated


@dataclass
class Timing:
    rates: list[float] = field(default_factory=list)   # files/s, one per repeat
    cpu_ms: list[float] = field(default_factory=list)  # CPU ms per file, one per repeat


def speech_like(index: int, seconds: float, rate: int = RATE) -> np.ndarray:
    """A deterministic, cheap voice-like signal: a gliding harmonic series shaped by three
    formants, chopped into ~4 Hz syllables, over a little breath noise."""
    rng = np.random.default_rng(index)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    f0 = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    formants = rng.uniform([500, 1200, 2400], [800, 1900, 3100])
    voiced = np.zeros(n)
    for k in range(1, int(3600 // f0.max()) + 1):
        gain = sum(np.exp(-((k * f0.mean() - f) / 180.0) ** 2) for f in formants) / k**0.5
        voiced += gain * np.sin(k * phase)
    syllables = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, np.pi)), 0, None) ** 2
    signal = voiced * syllables + 0.01 * rng.standard_normal(n)
    return (0.5 * signal / np.abs(signal).max()).astype(np.float32)


def make_calls(folder: Path, files: int, seconds: float) -> None:
    folder.mkdir(parents=True)
    for i in range(files):
        sf.write(folder / f"call_{i:05d}.wav", speech_like(i, seconds), RATE, subtype="PCM_16")


def timed(run: Callable[[], None]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (this process and every child it waited for) of `run`."""
    os.sync()  # the previous method's write-back is not this one's cost
    before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
    return wall, cpu


def flashsr(command: list[str], calls: Path, out: Path, env: Optional[dict[str, str]] = None) -> Callable[[], None]:
    shutil.copytree(calls, out)  # before the clock starts: a fresh root, so nothing is skipped

    def run() -> None:
        done = subprocess.run([*command, "--input", str(out), "--device", "cpu", "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"flashsr-enhance exited with {done.returncode}:\n{done.stderr}")
    return run


def sox(calls: Path, out: Path) -> Callable[[], None]:
    out.mkdir()
    names = "".join(f"{p.name}\0" for p in sorted(calls.glob("*.wav")))
    command = ["xargs", "-0", f"-P{WORKERS}", "-I{}", "sox", f"{calls}/{{}}", "-r", str(OUTPUT_RATE), f"{out}/{{}}"]
    return lambda: subprocess.run(command, input=names, text=True, check=True)


def _bare_one(paths: tuple[Path, Path]) -> None:
    source, target = paths
    audio, rate = sf.read(source, dtype="float32", always_2d=True)
    resampled = soxr.resample(audio, rate, OUTPUT_RATE, quality="VHQ")
    with open(target, "wb") as handle:  # a file object, not a path: soundfile fsyncs the files it opens
        sf.write(handle, resampled, OUTPUT_RATE, subtype="PCM_16", format="WAV")


def bare(calls: Path, out: Path) -> Callable[[], None]:
    out.mkdir()
    pairs = [(p, out / p.name) for p in sorted(calls.glob("*.wav"))]

    def run() -> None:
        with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
            pool.map(_bare_one, pairs, chunksize=max(1, len(pairs) // (8 * WORKERS)))
    return run


def flashsr_command() -> list[str]:
    beside_python = str(Path(sys.executable).parent)
    found = shutil.which("flashsr-enhance") or shutil.which("flashsr-enhance", path=beside_python)
    if not found:
        raise SystemExit("flashsr-enhance is not installed: run `pip install -e .` in this Python's environment")
    return [found]


def sox_version() -> str:
    if not shutil.which("sox"):
        raise SystemExit("sox is not on PATH: install it (Debian/Ubuntu: apt-get install -y sox) and run again")
    return subprocess.run(["sox", "--version"], capture_output=True, text=True).stdout.split()[-1].lstrip("v")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000, help="number of calls (default: 1000)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each call in seconds (default: 3)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved repeats; the best and the median are reported (default: 3)")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also time the command from this checkout of flashsr (an older commit's worktree)")
    args = parser.parse_args()
    version = sox_version()
    command = flashsr_command()
    if os.getloadavg()[0] > 1.0:
        print(f"warning: load average {os.getloadavg()[0]:.1f}: other work on this machine makes the figures noisy",
              file=sys.stderr)

    methods = {"flashsr": lambda c, o: flashsr(command, c, o), "sox": sox, "bare": bare}
    if args.baseline:
        checkout = args.baseline.resolve()
        if not (checkout / "orchestrator_hooks" / "flashsr_extension.py").is_file():
            raise SystemExit(f"--baseline {checkout}: not a checkout of flashsr (no orchestrator_hooks/flashsr_extension.py)")
        baseline_env = {**os.environ, "PYTHONPATH": str(checkout)}
        baseline_command = [sys.executable, "-m", "orchestrator_hooks.flashsr_extension"]
        methods["baseline"] = lambda c, o: flashsr(baseline_command, c, o, baseline_env)
    timings = {name: Timing() for name in methods}
    with tempfile.TemporaryDirectory(prefix="flashsr-bench-") as tmp:
        calls = Path(tmp, "calls")
        make_calls(calls, args.files, args.seconds)
        names = list(methods)
        for r in range(args.repeat):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
                out = Path(tmp, name)
                wall, cpu = timed(methods[name](calls, out))
                written = len(list(out.glob("*_flashsr.wav" if name in ("flashsr", "baseline") else "*.wav")))
                if written != args.files:
                    raise SystemExit(f"{name} wrote {written} of {args.files} outputs")
                shutil.rmtree(out)
                timings[name].rates.append(args.files / wall)
                timings[name].cpu_ms.append(1000 * cpu / args.files)
                print(f"  repeat {r + 1}: {name:8s}{args.files / wall:7.1f} files/s", file=sys.stderr)

    best = {name: max(t.rates) for name, t in timings.items()}
    labels = {
        "flashsr": "`flashsr-enhance --device cpu` (whole command, every core)",
        "sox": f"`sox in.wav -r 48000 out.wav`, `xargs -P {WORKERS}` (SoX {version}, its default rate quality `-h`)",
        "bare": f"soundfile → soxr VHQ → soundfile, {WORKERS} processes (the limit)",
        "baseline": f"the same command from {args.baseline}",
    }
    print(f"{args.files} calls × {args.seconds:g} s, 8 kHz mono PCM_16 → 48 kHz PCM_16; {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, soxr {soxr.__version__}, libsndfile {sf.__libsndfile_version__}; "
          f"best (median) of {args.repeat} interleaved runs\n")
    print("| method | files/s | CPU ms/file | flashsr ÷ this |")
    print("| --- | ---: | ---: | ---: |")
    for name, timing in timings.items():
        print(f"| {labels[name]} | {best[name]:.0f} ({statistics.median(timing.rates):.0f}) "
              f"| {statistics.median(timing.cpu_ms):.2f} | {best['flashsr'] / best[name]:.2f} |")
    print(f"\ntargets: flashsr ÷ sox = {best['flashsr'] / best['sox']:.2f} (≥ 2), "
          f"flashsr ÷ bare = {best['flashsr'] / best['bare']:.2f} (≥ 0.8)")
    if args.baseline:
        pairs = [a / b for a, b in zip(timings["flashsr"].rates, timings["baseline"].rates)]
        print(f"flashsr ÷ baseline: {best['flashsr'] / best['baseline']:.3f} (best), "
              f"{statistics.median(pairs):.3f} (median of the repeats' ratios); CPU per file "
              f"{statistics.median(timings['flashsr'].cpu_ms) / statistics.median(timings['baseline'].cpu_ms):.3f}")


if __name__ == "__main__":
    main()
