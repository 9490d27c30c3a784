"""Throughput of the FlashSR path: batched windows against upstream's one-window-at-a-time call.

Runs the real architecture (random weights, written to a temporary folder unless
`--model_dir` is given; the speed does not depend on the weights' values) on one device, on
the same speech-like 8 kHz audio cut into the same 5.12 s windows, and prints for each run
audio-seconds per wall-second, windows per second, CPU time and peak memory:

  upstream   the library's own public call, `FlashSR(x[None, :], lowpass_input=…)`, once per
             window, on the 48 kHz windows (what one would write from upstream's example);
  batch N    `FlashSREnhancer.enhance(audio, 8000)`: resampling, windows of all channels in
             batches of N, the per-window input low-pass, the cross-fade and the trim.

Both use the same loaded model and the same input low-pass setting. Peak memory is the
process's resident set (sampled every 20 ms) on the CPU and torch's max_memory_allocated on
CUDA. An untimed warm-up window runs first so no run pays for first-call costs.

    python benchmarks/model_throughput.py [--device cpu|cuda|cuda:N] [--windows N]
        [--batch-sizes 1,2,4] [--model_dir DIR] [--lowpass 1|0] [--autocast off|bf16|fp16]

Defaults: on CUDA 8 windows and batch sizes 1,2,4; on the CPU (minutes per window) 2 windows,
which runs upstream and batch sizes 1 and 2 in about a quarter of an hour; a batch size above
the number of windows is skipped, as it would be the same run again.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from flashsr_tasks.audio.resample import to_output_rate  # noqa: E402
from flashsr_tasks.model.flashsr import FlashSREnhancer, load_flashsr  # noqa: E402
from flashsr_tasks.model.random_weights import write_random_weights_in_subprocess  # noqa: E402
from flashsr_tasks.model.windows import DEFAULT_OVERLAP, WINDOW, window_starts  # noqa: E402

RATE = 8000
OUTPUT_RATE = 48000


@dataclass
class Result:
    run: str
    batch_size: int
    wall_s: float
    cpu_s: float
    audio_s_per_wall_s: float
    windows_per_s: float
    peak_memory_gib: float


def speech_like(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """A gliding harmonic series in ~4 Hz syllables over a little noise: band-limited like a call."""
    t = np.arange(int(round(seconds * rate))) / rate
    f0 = 140 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 25))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    noise = np.random.default_rng(seed).normal(0, 0.02, t.shape)
    return (0.25 * envelope * voiced + noise).astype(np.float32)[:, None]


class PeakMemory:
    """Peak resident set on the CPU (sampled), torch's peak allocation on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    @contextmanager
    def measure(self) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        try:
            import psutil
        except ImportError:  # lifetime peak only: an upper bound for every run
            yield
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            return
        process, done = psutil.Process(), threading.Event()
        self.peak = process.memory_info().rss

        def sample() -> None:
            while not done.wait(0.02):
                self.peak = max(self.peak, process.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield
        finally:
            done.set()
            sampler.join()
            self.peak = max(self.peak, process.memory_info().rss)


def timed(name: str, batch_size: int, windows: int, audio_s: float, memory: PeakMemory,
          work: Callable[[], None]) -> Result:
    cpu0 = time.process_time()
    with memory.measure():
        start = time.perf_counter()
        work()
        wall = time.perf_counter() - start
    result = Result(name, batch_size, wall, time.process_time() - cpu0, audio_s / wall, windows / wall,
                    memory.peak / 2**30)
    print(f"  {name:<10} batch {batch_size}: {wall:8.1f} s", file=sys.stderr, flush=True)
    return result


def upstream_call(enhancer: FlashSREnhancer, windows48: list[np.ndarray], lowpass: bool) -> Callable[[], None]:
    """The library's public call on one window at a time (what its example does), no batching."""
    model, device = enhancer.module, torch.device(enhancer.device)
    kwargs = {"lowpass_input": lowpass} if "lowpass_input" in inspect.signature(model.forward).parameters else {}

    def run() -> None:
        with torch.inference_mode():
            for window in windows48:
                model(torch.from_numpy(window)[None, :].to(device), **kwargs).cpu()

    return run


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--windows", type=int, default=None,
                        help="5.12 s windows of mono audio per run (default: 8 on CUDA, 2 on the CPU)")
    parser.add_argument("--batch-sizes", default="1,2,4", help="comma-separated (default 1,2,4)")
    parser.add_argument("--model_dir", default=None, help="checkpoints to load (default: random weights in a temp folder)")
    parser.add_argument("--lowpass", type=int, choices=(0, 1), default=1, help="input low-pass, both paths (default 1)")
    parser.add_argument("--autocast", default="off", choices=("off", "bf16", "fp16"), help="CUDA only")
    parser.add_argument("--warmup", type=int, default=1, help="untimed windows first (default 1)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)
    try:
        batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
        assert batch_sizes[0] >= 1
    except (ValueError, AssertionError):
        parser.error(f"--batch-sizes must be positive integers, got {args.batch_sizes!r}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    device_type = "cuda" if args.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    windows = args.windows or (8 if device_type == "cuda" else 2)
    if windows < 1:
        parser.error("--windows must be at least 1")

    temp = None
    model_dir = args.model_dir
    if model_dir is None:
        temp = tempfile.mkdtemp(prefix="flashsr_bench_weights_")
        print(f"writing random-weight checkpoints to {temp} …", file=sys.stderr, flush=True)
        write_random_weights_in_subprocess(temp)
        model_dir = temp
    try:
        load_start = time.perf_counter()
        enhancer = load_flashsr(device=args.device, model_dir=model_dir, batch_size=1,
                                lowpass_input=bool(args.lowpass), autocast_dtype=args.autocast)
        load_s = time.perf_counter() - load_start
        device = torch.device(enhancer.device)
        memory = PeakMemory(device)

        # Audio exactly `windows` windows long at 48 kHz (WINDOW and the stride are multiples of 6).
        frames48 = WINDOW + (windows - 1) * (WINDOW - DEFAULT_OVERLAP)
        audio8 = speech_like(frames48 / OUTPUT_RATE)
        audio48 = to_output_rate(audio8, RATE)[:, 0]
        starts = window_starts(frames48)
        assert len(starts) == windows
        windows48 = [np.ascontiguousarray(audio48[s:s + WINDOW]) for s in starts]
        audio_s = frames48 / OUTPUT_RATE

        print(f"device {enhancer.device}, {windows} window(s), {audio_s:.2f} s of audio, load {load_s:.1f} s; "
              f"warm-up …", file=sys.stderr, flush=True)
        if args.warmup:
            upstream_call(enhancer, windows48[:1] * args.warmup, bool(args.lowpass))()

        results = [timed("upstream", 1, windows, audio_s, memory,
                         upstream_call(enhancer, windows48, bool(args.lowpass)))]
        for batch_size in batch_sizes:
            if batch_size > windows and batch_size != batch_sizes[0]:
                print(f"  batch {batch_size}: skipped (only {windows} windows)", file=sys.stderr)
                continue
            enhancer.batch_size = batch_size
            results.append(timed("batched", batch_size, windows, audio_s, memory,
                                 lambda: enhancer.enhance(audio8, RATE)))
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)

    base = results[0].wall_s
    context = {
        "device": enhancer.device, "windows": windows, "audio_s": round(audio_s, 2),
        "lowpass_input": bool(args.lowpass), "autocast": enhancer.autocast, "load_s": round(load_s, 1),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    if args.json:
        print(json.dumps({"context": context, "results": [
            {**asdict(r), "speedup_vs_upstream": base / r.wall_s} for r in results]}, indent=2))
        return 0
    memory_kind = "peak alloc" if device.type == "cuda" else "peak RSS"
    print(f"FlashSR throughput, random weights of the real architecture: device {context['device']}"
          f"{' (' + context['gpu'] + ')' if context['gpu'] else ''}, {windows} x 5.12 s windows "
          f"({audio_s:.2f} s of 8 kHz mono audio), input low-pass {'on' if args.lowpass else 'off'}, "
          f"autocast {context['autocast']}, torch {context['torch']}, {context['threads']} threads, "
          f"model load {load_s:.1f} s")
    print(f"{'run':<22}{'wall s':>9}{'CPU s':>9}{'audio s/s':>11}{'windows/s':>11}{memory_kind:>12}{'vs upstream':>13}")
    for r in results:
        name = "upstream, 1 per call" if r.run == "upstream" else f"batched, batch {r.batch_size}"
        print(f"{name:<22}{r.wall_s:>9.1f}{r.cpu_s:>9.1f}{r.audio_s_per_wall_s:>11.4f}{r.windows_per_s:>11.4f}"
              f"{r.peak_memory_gib:>9.2f} GiB{base / r.wall_s:>12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
