"""The gpu worker's pipeline against today's one-file-at-a-time path, on two corpora, in one run.

Corpora (written to a temporary folder): 400 three-second 16 kHz clips, and 10 three-minute
8 kHz calls (mono PCM_16, speech-like). Each goes through

  today      `process_file` on one file after another, the model called as soon as a file's
             batch is cut (no waiting, nothing in flight), with the library's own input
             low-pass (`UtilAudioLowPassFilter`, as before this change);
  pipeline   up to `--in-flight` files at once in threads (as the in-process model's process and a
             threads-pool gpu worker run them), their windows
             gathered into batches of up to `--batch-size` rows across files by the batcher
             (waiting at most `--wait-ms` for a batch to fill), with `flashsr_tasks.model.lowpass`.

Both call the same per-file function, which reads, decides, enhances, writes and hashes.
Printed per corpus and path: files/s, audio seconds per second, rows per forward pass, the
share of wall time the model is busy, and CPU ms per window outside the model (process CPU
time minus the model thread's, per window).

The model:
  --simulate-ms M   a stand-in that keeps a simulated device busy M ms per forward pass
                    (sleeping, the GIL released) and returns its input: SIMULATED figures,
                    for measuring the pipeline on any machine;
  --device cuda     the real FlashSR architecture (random weights unless --model_dir; the
                    speed does not depend on the weights' values). `--autocast bf16` too.

With `--celery` (and --simulate-ms) the clips also go through real gpu workers on a private
redis-server, the way a deployment runs them: the prefork pool with one process (the gpu
worker before this change) against the threads pool with `--in-flight` task threads sharing
one model (`simulated_gpu_app.py`); files/s, rows per pass and model busy are printed.

    python benchmarks/gpu_pipeline.py --simulate-ms 400 --batch-size 8 [--celery]
    python benchmarks/gpu_pipeline.py --device cuda --batch-size 8 [--autocast bf16]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flashsr_tasks.enhance.per_file import process_file
from flashsr_tasks.files.roots import check_root  # noqa: E402
from flashsr_tasks.model.batched_enhancer import BatchedEnhancer  # noqa: E402
from flashsr_tasks.model.lowpass import lowpass_rows  # noqa: E402
from flashsr_tasks.runs.job import Job  # noqa: E402

CORPORA = {  # name: (files, seconds, rate)
    "clips": (400, 3.0, 16000),
    "calls": (10, 180.0, 8000),
}


def speech_like(rate: int, seconds: float, seed: int) -> np.ndarray:
    """Voiced harmonics with a wobbling pitch and a syllable envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(100, 220)
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20) if k * f0 < rate / 2)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)) ** 2
    return (0.15 * envelope * voiced + rng.normal(0, 0.01, t.shape)).astype(np.float32)


def write_corpus(folder: Path, files: int, seconds: float, rate: int) -> list[str]:
    folder.mkdir(parents=True)
    base = [speech_like(rate, seconds, seed) for seed in range(min(files, 8))]  # content varies a little
    names = []
    for i in range(files):
        name = f"f{i:04d}.wav"
        sf.write(str(folder / name), base[i % len(base)], rate, subtype="PCM_16")
        names.append(name)
    return names


class TimedModel:
    """Wraps the model call: CPU time of the model's own thread (to subtract it)."""

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray]) -> None:
        self._run_batch = run_batch
        self.thread_cpu_s = 0.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        started = time.thread_time()
        try:
            return self._run_batch(x)
        finally:
            self.thread_cpu_s += time.thread_time() - started


def simulated_model(ms: float) -> Callable[[np.ndarray], np.ndarray]:
    def run_batch(x: np.ndarray) -> np.ndarray:
        time.sleep(ms / 1000)  # the device is busy; the GIL is free
        return x

    return run_batch


def library_lowpass() -> Callable[[np.ndarray], np.ndarray]:
    """Today's per-window low-pass: the library's detector and filter, row by row."""
    import torch

    from flashsr_tasks.model.library import import_library

    _, rows_fn = import_library()

    def prepare(rows: np.ndarray) -> np.ndarray:
        return rows_fn(torch.from_numpy(rows)).numpy()

    return prepare


@dataclass
class Figures:
    corpus: str
    path: str
    files: int
    wall_s: float
    audio_s: float
    rows: int
    batches: int
    busy_s: float
    cpu_outside_s: float
    failed: int

    def line(self) -> str:
        return (f"| {self.corpus} | {self.path} | {self.files / self.wall_s:.2f} | {self.audio_s / self.wall_s:.1f} | "
                f"{self.rows / max(self.batches, 1):.2f} | {100 * self.busy_s / self.wall_s:.0f} % | "
                f"{1000 * self.cpu_outside_s / max(self.rows, 1):.1f} |")


def run(corpus: str, path: str, root: Path, sources: list[str], make_enhancer: Callable[[str], tuple[BatchedEnhancer, TimedModel]],
        in_flight: int, audio_s: float) -> Figures:
    for old in root.glob("*_flashsr.wav"):
        old.unlink()
    enhancer, timed = make_enhancer(path)
    job = Job(root=str(root), device=enhancer.device)
    checked = check_root(root)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if path == "today":
        outcomes = [process_file(checked, s, job, lambda: enhancer) for s in sources]
    else:
        with ThreadPoolExecutor(in_flight, thread_name_prefix="flashsr-file") as threads:
            outcomes = list(threads.map(lambda s: process_file(checked, s, job, lambda: enhancer), sources))
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    stats = enhancer.stats
    enhancer.close()
    failed = [o for o in outcomes if o["outcome"] != "enhanced"]
    if failed:
        print(f"warning: {len(failed)} files not enhanced, e.g. {failed[0]['record']}", file=sys.stderr)
    return Figures(corpus, path, len(sources), wall, audio_s, stats.rows, stats.batches, stats.busy_s,
                   cpu - timed.thread_cpu_s, len(failed))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--simulate-ms", type=float, help="stand-in model: M ms of simulated device time per forward pass")
    model.add_argument("--device", help="the real model on this device (cuda, cuda:N; cpu takes minutes per window)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per forward pass (default 8)")
    parser.add_argument("--wait-ms", type=float, default=30, help="longest wait for a batch to fill (default 30)")
    parser.add_argument("--in-flight", type=int, default=None, help="files at once in the pipeline (default 3 x batch size)")
    parser.add_argument("--corpora", default="clips,calls", help="which corpora (default clips,calls)")
    parser.add_argument("--clips", type=int, default=CORPORA["clips"][0], help="number of clips (default 400)")
    parser.add_argument("--calls", type=int, default=CORPORA["calls"][0], help="number of calls (default 10)")
    parser.add_argument("--call-seconds", type=float, default=CORPORA["calls"][1], help="length of a call (default 180)")
    parser.add_argument("--model_dir", help="real weights (default: random weights of the real architecture)")
    parser.add_argument("--autocast", default="off", choices=["off", "bf16", "fp16"], help="real model only")
    parser.add_argument("--celery", action="store_true", help="also the clips through real gpu workers (simulated model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    in_flight = args.in_flight or 3 * args.batch_size

    workdir = Path(tempfile.mkdtemp(prefix="flashsr-gpu-pipeline-"))
    try:
        if args.simulate_ms is not None:
            label = f"SIMULATED model, {args.simulate_ms:g} ms per forward pass (not a GPU figure)"

            def make_enhancer(path: str) -> tuple[BatchedEnhancer, TimedModel]:
                timed = TimedModel(simulated_model(args.simulate_ms))
                today = path == "today"
                return BatchedEnhancer(timed, batch_size=args.batch_size, model="simulated", device="simulated",
                                       prepare_rows=library_lowpass() if today else lowpass_rows,
                                       max_wait_s=0 if today else args.wait_ms / 1000, ahead=0 if today else 1), timed
        else:
            make_enhancer, label = real_model(args, workdir)

        print(f"# {label}; batch size {args.batch_size}, wait {args.wait_ms:g} ms, {in_flight} files in flight, "
              f"{os.cpu_count()} CPU cores")
        print("| corpus | path | files/s | audio s/s | rows per forward | model busy | CPU ms/window outside the model |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        specs = {"clips": (args.clips, CORPORA["clips"][1], CORPORA["clips"][2]),
                 "calls": (args.calls, args.call_seconds, CORPORA["calls"][2])}
        for corpus in [c.strip() for c in args.corpora.split(",") if c.strip()]:
            files, seconds, rate = specs[corpus]
            root = workdir / corpus
            sources = write_corpus(root, files, seconds, rate)
            results = {path: run(corpus, path, root, sources, make_enhancer, in_flight, files * seconds)
                       for path in ("today", "pipeline")}
            for figures in results.values():
                print(figures.line(), flush=True)
            today, pipe = results["today"], results["pipeline"]
            print(f"# {corpus}: pipeline / today = {today.wall_s / pipe.wall_s:.2f}x files/s; "
                  f"windows {pipe.rows} ({pipe.rows / files:.1f} per file)", flush=True)
            shutil.rmtree(root)
        if args.celery:
            if args.simulate_ms is None:
                parser.error("--celery needs --simulate-ms")
            celery_pools(args, workdir, in_flight)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def real_model(args: argparse.Namespace, workdir: Path) -> tuple[Callable[[str], tuple[BatchedEnhancer, TimedModel]], str]:
    import torch

    from flashsr_tasks.model.flashsr import load_flashsr
    from flashsr_tasks.model.random_weights import write_random_weights_in_subprocess

    model_dir = args.model_dir
    if model_dir is None:
        model_dir = str(write_random_weights_in_subprocess(workdir / "random_weights"))
    loaded = load_flashsr(device=args.device, model_dir=model_dir, batch_size=args.batch_size,
                          autocast_dtype=args.autocast)
    name = torch.cuda.get_device_name(loaded.device) if loaded.device.startswith("cuda") else "CPU"
    label = f"FlashSR on {loaded.device} ({name}), autocast {loaded.autocast}"
    today_lowpass = library_lowpass()

    def make_enhancer(path: str) -> tuple[BatchedEnhancer, TimedModel]:
        today = path == "today"
        timed = TimedModel(loaded.forward_rows)
        return BatchedEnhancer(timed, batch_size=args.batch_size, model=loaded.model, device=loaded.device,
                               prepare_rows=today_lowpass if today else lowpass_rows,
                               max_wait_s=0 if today else args.wait_ms / 1000, ahead=0 if today else 1,
                               thread_context=torch.inference_mode), timed

    return make_enhancer, label


def celery_pools(args: argparse.Namespace, workdir: Path, in_flight: int) -> None:
    """The clips through a real gpu worker on each pool, with the simulated model."""
    import subprocess

    from orchestrator_hooks import FlashSRExtension
    from tests.services import REPO, start_redis, stop_process, worker_env

    root = workdir / "celery-clips"
    files, seconds, rate = args.clips, CORPORA["clips"][1], CORPORA["clips"][2]
    write_corpus(root, files, seconds, rate)
    redis = start_redis(workdir)
    print(f"\n# Celery gpu worker, SIMULATED model ({args.simulate_ms:g} ms per pass), {files} clips")
    print("| gpu worker | files/s | audio s/s | rows per pass | model busy |")
    print("| --- | ---: | ---: | ---: | ---: |")
    try:
        for pool, concurrency in (("prefork", 1), ("threads", in_flight)):
            for old in root.glob("*_flashsr.wav"):
                old.unlink()
            (root / "manifest.json").unlink(missing_ok=True)
            log_path = workdir / f"worker-{pool}.log"
            env = worker_env(redis.url, FLASHSR_SIMULATE_MS=str(args.simulate_ms), FLASHSR_BATCH_SIZE=str(args.batch_size),
                             FLASHSR_BATCH_WAIT_MS=str(int(args.wait_ms)) if args.wait_ms >= 1 else "0",
                             PYTHONPATH=str(REPO))
            cmd = [sys.executable, "-m", "celery", "-A", "simulated_gpu_app", "worker", "-Q", "gpu", "--pool", pool,
                   "--concurrency", str(concurrency), "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                   "-n", f"sim-{pool}@localhost"]
            with open(log_path, "wb") as out:
                worker = subprocess.Popen(cmd, cwd=REPO / "benchmarks", env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
            try:
                time.sleep(8)  # start-up (the stand-in model loads at once)
                started = time.perf_counter()
                summary = FlashSRExtension(root, device="cuda", broker=redis.url, progress=False).run()
                wall = time.perf_counter() - started
            finally:
                stop_process(worker)
            passes = [int(n) for n in __import__("re").findall(r"simulated pass: (\d+) rows", log_path.read_text())]
            if summary.enhanced != files:
                print(f"warning: {summary.enhanced} of {files} enhanced ({summary})", file=sys.stderr)
            label = f"{pool}, --concurrency {concurrency}"
            print(f"| {label} | {files / wall:.2f} | {files * seconds / wall:.1f} | "
                  f"{sum(passes) / max(len(passes), 1):.2f} | {100 * len(passes) * args.simulate_ms / 1000 / wall:.0f} % |",
                  flush=True)
    finally:
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
