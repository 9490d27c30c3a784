"""Peak memory and wall time of `flashsr-enhance` on long files: does the resample path's memory depend on length?

For each file, in a fresh temporary folder: writes it (a minute at a time), runs `flashsr-enhance --input DIR
--device cpu --processes 1 --quiet` (in-process: the runner and its one pool process) and samples the resident
memory of the whole process tree every 20 ms with psutil; then deletes the folder (the files are big). Files:
8 kHz mono PCM_16 calls (speech-band noise and a tone) of 10, 60, 180 and 600 minutes, and a 44.1 kHz stereo
PCM_16 file low-passed at 4 kHz (selected as band-limited: the judging pass, then the writing pass) of 120 minutes.
Prints a table, the peak's growth per minute of input along the calls, and the ratio of the longest call's peak
to the shortest's. Targets: the 600-minute call within 1.25x the 10-minute call's peak, under 300 MiB.

`--model` instead: the model's path (streamed, model.window_stream) with a stand-in network (each row × 0.9,
batches of 4), in-process: `process_file` in a fresh child per file, whose peak is its own VmHWM; 8 kHz mono
calls of 1 and 60 minutes by default. Target: the longest call within 1.25x the shortest's peak.

`--worker cpu`: the calls through a real `celery worker -Q cpu -c 1` on a private redis-server instead; the
peak is the worker's process tree (its main process and its pool process). `--worker gpu`: the model's path
on a real gpu worker of the threads pool with 8 files in flight (`-c 8`), its model a stand-in
(SIMULATED: benchmarks/simulated_gpu_app.py, each pass returns its rows), 8 calls of each length at once;
calls of 1 and 60 minutes by default.

`--format mp3`: the calls written as MP3 (libsndfile's LAME encoder, its default bit rate) instead of WAV, the
file encoded once per length before the run is timed.

`--quick` (the test suite's): the same ratios at a twentieth of the lengths. The code measured is whatever
`flashsr-enhance` imports (PYTHONPATH decides which checkout).

    python benchmarks/long_files.py [--quick] [--minutes 10 60] [--no-stereo] [--model] [--worker cpu|gpu]
                                    [--format wav|mp3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import soundfile as sf
import soxr

CALL_MINUTES = (10, 60, 180, 600)
CALL_SUFFIX = {"wav": ".wav", "mp3": ".mp3"}
STEREO_MINUTES = 120
QUICK_DIVISOR = 20
SAMPLE_S = 0.02


def write_call(path: Path, minutes: float) -> None:
    """8 kHz mono: a tone under noise, a minute at a time (never the whole file in this process); PCM_16 in a WAV,
    or an MP3 for a path ending in .mp3."""
    rng = np.random.default_rng(0)
    frames = int(minutes * 60 * 8000)
    container, subtype = ("MP3", "MPEG_LAYER_III") if path.suffix == ".mp3" else ("WAV", "PCM_16")
    with sf.SoundFile(str(path), "w", 8000, 1, subtype, format=container) as out:
        for start in range(0, frames, 60 * 8000):
            n = min(60 * 8000, frames - start)
            t = np.arange(start, start + n) / 8000
            out.write((0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32))


def write_band_limited(path: Path, minutes: float) -> None:
    """44.1 kHz stereo with nothing above 4 kHz (noise made at 8 kHz and resampled): selected as band-limited."""
    rng = np.random.default_rng(1)
    with sf.SoundFile(str(path), "w", 44100, 2, "PCM_16") as out:
        left = minutes
        while left > 0:
            chunk = min(1.0, left)
            narrow = (0.1 * rng.standard_normal((int(chunk * 60 * 8000), 2))).astype(np.float32)
            out.write(soxr.resample(narrow, 8000, 44100, quality="VHQ"))
            left -= chunk


def flashsr_command() -> list[str]:
    found = shutil.which("flashsr-enhance") or shutil.which("flashsr-enhance", path=str(Path(sys.executable).parent))
    if not found:
        raise SystemExit("flashsr-enhance is not installed: run `pip install -e .` in this Python's environment")
    return [found]


def tree_rss(process: psutil.Process) -> int:
    """The resident memory of `process` and all its descendants now."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:  # it ended between the listing and the reading
            pass
    return total


class PeakSampler:
    """The peak resident memory of a process tree, sampled every 20 ms in a thread until `stop`."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                self.peak = max(self.peak, tree_rss(self.root))
            except psutil.Error:  # the process ended
                return
            time.sleep(SAMPLE_S)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def measure(folder: Path) -> dict[str, float]:
    """Run flashsr-enhance on `folder`: the process tree's peak RSS (sampled every 20 ms) and the wall time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_BROKER")}
    command = flashsr_command() + ["--input", str(folder), "--device", "cpu", "--processes", "1", "--quiet"]
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = PeakSampler(child.pid)
    _, stderr = child.communicate()
    wall = time.perf_counter() - started
    peak = sampler.stop()
    if child.returncode != 0:
        raise SystemExit(f"flashsr-enhance exited with {child.returncode}:\n{stderr.decode()[-3000:]}")
    return {"peak_mib": peak / 2**20, "wall_s": wall}


def one(kind: str, minutes: float, suffix: str = ".wav") -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="flashsr-long-"))
    try:
        name = folder / (f"call{suffix}" if kind == "call" else "band_limited.wav")
        (write_call if kind == "call" else write_band_limited)(name, minutes)
        row: dict[str, Any] = {"kind": kind, "minutes": minutes, **measure(folder)}
        outputs = list(folder.glob("*_flashsr.wav"))
        if len(outputs) != 1:
            raise SystemExit(f"{name.name}: expected one output, found {[p.name for p in outputs]}")
        return row
    finally:
        shutil.rmtree(folder, ignore_errors=True)


MODEL_MINUTES = (1, 60)


def model_child(folder: Path) -> None:
    """In a fresh process: the call in `folder` through the model's path with a stand-in network; prints JSON."""
    name = next(p.name for p in folder.iterdir() if p.stem == "call")
    import json

    from flashsr_tasks.enhance.per_file import process_file
    from flashsr_tasks.files.roots import check_root
    from flashsr_tasks.model.batched_enhancer import BatchedEnhancer
    from flashsr_tasks.runs.job import Job

    model = BatchedEnhancer(lambda rows: rows * np.float32(0.9), batch_size=4, model="stand-in", device="cpu",
                            max_wait_s=0.0)
    started = time.perf_counter()
    outcome = process_file(check_root(folder), name, Job(root=str(folder), device="cpu"), lambda: model)
    wall = time.perf_counter() - started
    model.close()
    if outcome["outcome"] != "enhanced":
        raise SystemExit(f"not enhanced: {outcome}")
    status = Path("/proc/self/status").read_text()
    peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) * 1024
    print(json.dumps({"peak_mib": peak / 2**20, "wall_s": wall}))


def one_model(minutes: float, suffix: str = ".wav") -> dict[str, Any]:
    import json

    folder = Path(tempfile.mkdtemp(prefix="flashsr-long-model-"))
    try:
        write_call(folder / f"call{suffix}", minutes)
        done = subprocess.run([sys.executable, __file__, "--model-child", str(folder)], capture_output=True,
                              text=True, check=True)
        return {"kind": "model", "minutes": minutes, **json.loads(done.stdout.strip().splitlines()[-1])}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


GPU_IN_FLIGHT = 8


def one_on_worker(queue: str, minutes: float, suffix: str = ".wav") -> dict[str, Any]:
    """The call(s) through a real worker on a private redis-server: the worker's process tree's peak."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.services import free_port, kill_tree, start_redis, stop_process, worker_env

    folder = Path(tempfile.mkdtemp(prefix="flashsr-long-worker-"))
    server = start_redis(folder / "redis")
    worker = None
    try:
        stage = folder / "stage"
        stage.mkdir()
        count = GPU_IN_FLIGHT if queue == "gpu" else 1
        for i in range(count):
            write_call(stage / f"call_{i}{suffix}", minutes)
        env = worker_env(server.url, FLASHSR_SIMULATE_MS="0", HF_HUB_OFFLINE="1")
        app, cwd = ("simulated_gpu_app", Path(__file__).parent) if queue == "gpu" else ("flashsr_tasks", None)
        extra = ["--pool", "threads"] if queue == "gpu" else []
        log = open(folder / "worker.log", "wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, "-n", f"long-{free_port()}@localhost",
             "--concurrency", str(count), "--without-gossip", "--without-mingle", *extra],
            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while b"worker ready" not in (folder / "worker.log").read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((folder / "worker.log").read_text()[-3000:])
            time.sleep(0.1)
        sampler = PeakSampler(worker.pid)
        started = time.perf_counter()
        command = flashsr_command() + ["--input", str(stage), "--device", "cuda" if queue == "gpu" else "cpu",
                                       "--broker", server.url, "--quiet"]
        run = subprocess.run(command, env={k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")},
                             capture_output=True, text=True)
        wall = time.perf_counter() - started
        peak = sampler.stop()
        if run.returncode != 0 or len(list(stage.glob("*_flashsr.wav"))) != count:
            raise SystemExit(f"the run failed ({run.returncode}):\n{run.stderr[-3000:]}")
        return {"kind": f"worker-{queue}", "minutes": minutes, "peak_mib": peak / 2**20, "wall_s": wall / count}
    finally:
        if worker is not None:
            stop_process(worker)
            kill_tree(worker.pid)
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"lengths divided by {QUICK_DIVISOR}")
    parser.add_argument("--minutes", type=float, nargs="+", help="the calls' lengths (default 10 60 180 600)")
    parser.add_argument("--no-stereo", action="store_true", help="leave out the 44.1 kHz stereo file")
    parser.add_argument("--model", action="store_true", help="the model's path with a stand-in network, in-process")
    parser.add_argument("--worker", choices=("cpu", "gpu"),
                        help="through a real worker: cpu (resample) or gpu (threads pool, 8 in flight, stand-in model)")
    parser.add_argument("--format", choices=tuple(CALL_SUFFIX), default="wav", help="the calls' container")
    parser.add_argument("--model-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model_child:
        model_child(args.model_child)
        return 0
    divisor = QUICK_DIVISOR if args.quick else 1
    defaults = MODEL_MINUTES if args.model or args.worker == "gpu" else CALL_MINUTES
    calls = [m / divisor for m in (args.minutes or defaults)]
    suffix = CALL_SUFFIX[args.format]
    if args.worker:
        rows = [one_on_worker(args.worker, m, suffix) for m in calls]
    else:
        rows = [one_model(m, suffix) if args.model else one("call", m, suffix) for m in calls]
    if not args.no_stereo and not args.model and not args.worker:
        rows.append(one("band_limited", STEREO_MINUTES / divisor))
    print("| file | minutes | peak RSS, process tree | wall | audio / wall |\n|---|---|---|---|---|")
    mp3 = " (MP3)" if args.format == "mp3" else ""
    call = f"8 kHz mono call{mp3}"
    labels = {"call": call, "model": f"{call}, model path (stand-in)",
              "worker-cpu": f"{call}, through a cpu worker (-c 1)",
              "worker-gpu": f"{GPU_IN_FLIGHT} 8 kHz mono calls{mp3} at once, gpu worker (threads, -c {GPU_IN_FLIGHT}, "
                            "stand-in)",
              "band_limited": "44.1 kHz stereo, low-passed at 4 kHz"}
    for r in rows:
        label = labels[r["kind"]]
        print(f"| {label} | {r['minutes']:g} | {r['peak_mib']:.0f} MiB | {r['wall_s']:.1f} s | "
              f"{r['minutes'] * 60 / r['wall_s']:.0f}x |")
    first, last = rows[0], rows[len(calls) - 1]
    if len(calls) > 1:
        growth = (last["peak_mib"] - first["peak_mib"]) / (last["minutes"] - first["minutes"])
        print(f"growth per minute of 8 kHz mono input: {growth:+.3f} MiB/min")
        print(f"peak ratio {last['minutes']:g} min / {first['minutes']:g} min: {last['peak_mib'] / first['peak_mib']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
