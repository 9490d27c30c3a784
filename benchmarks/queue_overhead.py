"""What the queue costs: the same calls through Redis + one cpu worker of N processes, and
in-process on N processes, in one run. Also where the CPU goes (pool processes, the worker's
main process, the orchestrator, redis-server) and the idle resident memory of the workers.

    python benchmarks/queue_overhead.py                 # 300 thirty-second 8 kHz calls
    python benchmarks/queue_overhead.py --files 50 --seconds 10
    python benchmarks/queue_overhead.py --model_dir DIR # gpu worker idle memory with the model loaded
    python benchmarks/queue_overhead.py --metrics       # A/B: a worker with FLASHSR_METRICS_PORT (scraped
                                                        # every second) against one without

Needs redis-server on PATH (a private one is started on a free port).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator_hooks import FlashSRExtension  # noqa: E402
from tests.services import free_port, start_redis, start_worker, worker_env  # noqa: E402


def make_calls(folder: Path, files: int, seconds: float) -> None:
    rng = np.random.default_rng(0)
    rate = 8000
    t = np.arange(int(rate * seconds)) / rate
    for i in range(files):
        tone = 0.2 * np.sin(2 * np.pi * (150 + i % 50) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
        noise = 0.02 * rng.standard_normal(t.shape[0])
        sf.write(str(folder / f"call_{i:04d}.wav"), (tone + noise).astype(np.float32), rate, subtype="PCM_16")


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of a process, plus that of its children it has already reaped."""
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Run:
    wall_s: float
    cpu_s: dict[str, float]  # by role


def measured_run(folder: Path, roles: dict[str, list[psutil.Process]], **kwargs) -> Run:
    """One run of the stage; `roles` names the processes whose CPU time is counted."""
    before = {role: sum(cpu_seconds(p) for p in procs) for role, procs in roles.items()}
    started = time.perf_counter()
    summary = FlashSRExtension(folder, device="cpu", progress=False, **kwargs).run()
    wall = time.perf_counter() - started
    after = {role: sum(cpu_seconds(p) for p in procs) for role, procs in roles.items()}
    if summary.enhanced != summary.files or summary.failed:
        raise SystemExit(f"benchmark run did not enhance every file: {summary.line()}")
    return Run(wall, {role: after[role] - before[role] for role in roles})


def resident_mib(pid: int) -> tuple[float, float]:
    """(sum of RSS, sum of PSS) of a process and its children, in MiB."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    rss = sum(p.memory_info().rss for p in procs)
    pss = sum(p.memory_full_info().pss for p in procs)
    return rss / 2**20, pss / 2**20


def idle_memory(queue: str, broker: str, workdir: Path, concurrency: int, **env: str) -> tuple[float, float]:
    worker = start_worker(queue, broker, workdir, concurrency, env=worker_env(broker, **env), ready_timeout=600)
    try:
        time.sleep(3 if queue == "cpu" else 1)
        if queue == "gpu":  # wait for the model load to finish
            deadline = time.monotonic() + 900
            while "gpu worker ready" not in worker.log_text() and time.monotonic() < deadline:
                time.sleep(1)
        return resident_mib(worker.process.pid)
    finally:
        worker.stop()


def _signal_tree(pid: int, sig: int) -> None:
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        os.kill(proc.pid, sig)


def _scrape_every_second(port: int, stop: threading.Event, scrapes: list[int]) -> None:
    """What a Prometheus does to the worker: GET /metrics every second."""
    while not stop.is_set():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            response.read()
        scrapes.append(1)
        stop.wait(1.0)


def metrics_ab(args: argparse.Namespace) -> None:
    """The same load through two workers of `args.processes` processes, each on its own Redis: one
    with FLASHSR_METRICS_PORT and a scrape every second, one without; runs interleaved, the idle
    worker stopped (SIGSTOP) while the other runs, so neither costs the other anything."""
    with tempfile.TemporaryDirectory(prefix="flashsr-bench-") as tmp:
        work = Path(tmp)
        source = work / "calls"
        source.mkdir()
        make_calls(source, args.files, args.seconds)
        port = free_port()
        modes = {"off": {}, "on": {"FLASHSR_METRICS_PORT": str(port)}}
        servers = {mode: start_redis(work / f"redis-{mode}") for mode in modes}
        workers = {}
        try:
            for mode, env in modes.items():
                workers[mode] = start_worker("cpu", servers[mode].url, work, args.processes,
                                             env=worker_env(servers[mode].url, **env))
            runs: dict[str, list[Run]] = {mode: [] for mode in modes}
            scrapes: list[int] = []
            for round_ in range(args.rounds + 1):  # round 0: the warm-up
                order = list(modes) if round_ % 2 else list(reversed(modes))
                for mode in order:
                    other = workers["on" if mode == "off" else "off"]
                    _signal_tree(other.process.pid, signal.SIGSTOP)
                    stop = threading.Event()
                    scraper = threading.Thread(target=_scrape_every_second, args=(port, stop, scrapes), daemon=True)
                    try:
                        if mode == "on":
                            scraper.start()
                        folder = work / f"{mode}-{round_}"
                        shutil.copytree(source, folder)
                        main = psutil.Process(workers[mode].process.pid)
                        run = measured_run(folder, {"worker": [main, *main.children()]}, broker=servers[mode].url)
                        shutil.rmtree(folder)
                    finally:
                        stop.set()
                        if scraper.is_alive():
                            scraper.join(10)
                        _signal_tree(other.process.pid, signal.SIGCONT)
                    if round_:
                        runs[mode].append(run)
        finally:
            for worker in workers.values():
                worker.stop()
            for server in servers.values():
                server.stop()

    n = args.files
    ratios = [off.wall_s / on.wall_s for off, on in zip(runs["off"], runs["on"])]
    cpu = {mode: statistics.median(r.cpu_s["worker"] for r in runs[mode]) for mode in modes}
    best = {mode: min(r.wall_s for r in runs[mode]) for mode in modes}
    print(f"{n} calls of {args.seconds:g} s at 8 kHz through Redis + 1 cpu worker of {args.processes} processes, "
          f"{args.rounds} interleaved rounds after a warm-up; metrics scraped every second ({len(scrapes)} scrapes)")
    print("| metrics | files/s (best) | worker CPU ms per file (median) |\n| --- | ---: | ---: |")
    for mode in modes:
        print(f"| {mode} | {n / best[mode]:.1f} | {cpu[mode] / n * 1000:.2f} |")
    print(f"throughput on / off: best {best['off'] / best['on']:.3f}, median of rounds {statistics.median(ratios):.3f} "
          f"(target >= 0.98); every round: " + ", ".join(f"{r:.3f}" for r in ratios))
    print(f"worker CPU per file, on / off: {cpu['on'] / cpu['off']:.3f}")
    hooks_us, scrape_ms = component_costs()
    print(f"measured alone: the task body's metric hooks {hooks_us:.0f} us of CPU per file; one scrape "
          f"{scrape_ms:.1f} ms of CPU (server and client in one process)")


def component_costs(files: int = 20000, scrapes: int = 50) -> tuple[float, float]:
    """The two things metrics add, timed in this process: the hooks around one file (microseconds)
    and one scrape of /metrics (milliseconds). Last: it turns this process into a metrics worker."""
    os.environ["FLASHSR_METRICS_PORT"] = str(free_port())
    from flashsr_tasks.worker import metrics

    port = metrics.start(["cpu"], None)
    outcome = {"source": "call.wav", "outcome": "enhanced", "record": {"method": "resample", "duration_s": 30.0}}
    began = time.process_time()
    for _ in range(files):
        metrics.task_finished("cpu", metrics.task_started("cpu"), outcome)  # type: ignore[arg-type]
    hooks = (time.process_time() - began) / files
    began = time.process_time()
    for _ in range(scrapes):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            response.read()
    scrape = (time.process_time() - began) / scrapes
    metrics.stop()
    return hooks * 1e6, scrape * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of each mode (after a warm-up)")
    parser.add_argument("--model_dir", help="load this model in the gpu worker for its idle-memory figure")
    parser.add_argument("--metrics", action="store_true",
                        help="instead: the worker's throughput with FLASHSR_METRICS_PORT (scraped every second) and without")
    args = parser.parse_args()
    if args.metrics:
        metrics_ab(args)
        return

    with tempfile.TemporaryDirectory(prefix="flashsr-bench-") as tmp:
        work = Path(tmp)
        source = work / "calls"
        source.mkdir()
        make_calls(source, args.files, args.seconds)
        redis = start_redis(work)
        try:
            worker = start_worker("cpu", redis.url, work, args.processes)
            try:
                main = psutil.Process(worker.process.pid)
                dist_roles = {"pool processes": main.children(), "worker main process": [main],
                              "orchestrator": [psutil.Process()], "redis-server": [psutil.Process(redis.process.pid)]}
                # The in-process pool's children are reaped by the end of a run, so they count here.
                inproc_roles = {"orchestrator and its pool": [psutil.Process()]}
                # A warm-up run (the pool processes import numpy and soxr on their first task),
                # then interleaved runs on fresh copies: noise hits both modes alike.
                dist: list[Run] = []
                inproc: list[Run] = []
                for round_ in range(args.rounds + 1):
                    for mode, runs in (("dist", dist), ("inproc", inproc)):
                        folder = work / f"{mode}-{round_}"
                        shutil.copytree(source, folder)
                        if mode == "dist":
                            run = measured_run(folder, dist_roles, broker=redis.url)
                        else:
                            run = measured_run(folder, inproc_roles, processes=args.processes)
                        if round_:
                            runs.append(run)
                        shutil.rmtree(folder)
            finally:
                worker.stop()
            cpu_rss, cpu_pss = idle_memory("cpu", redis.url, work, args.processes)
            gpu_env = {"HF_HUB_OFFLINE": "1", "FLASHSR_CACHE_DIR": str(work / "cache")}
            if args.model_dir:
                gpu_env.update(FLASHSR_MODEL_DIR=args.model_dir, FLASHSR_DEVICE="cpu")
            gpu_rss, gpu_pss = idle_memory("gpu", redis.url, work, 1, **gpu_env)
        finally:
            redis.stop()

    best_dist = min(dist, key=lambda r: r.wall_s)
    best_in = min(inproc, key=lambda r: r.wall_s)
    n = args.files
    print(f"{n} calls of {args.seconds:g} s at 8 kHz, {args.processes} processes, resample to 48 kHz, "
          f"best of {args.rounds} interleaved runs")
    print("| mode | files/s | CPU s |\n| --- | ---: | ---: |")
    print(f"| in-process ({args.processes} processes) | {n / best_in.wall_s:.1f} | {sum(best_in.cpu_s.values()):.2f} |")
    print(f"| Redis + 1 cpu worker ({args.processes} processes) | {n / best_dist.wall_s:.1f} | "
          f"{sum(best_dist.cpu_s.values()):.2f} |")
    print(f"distributed / in-process: {best_in.wall_s / best_dist.wall_s:.2f} (target >= 0.8); every round: "
          + ", ".join(f"{i.wall_s / d.wall_s:.2f}" for d, i in zip(dist, inproc)))
    print(f"per-task overhead: {(best_dist.wall_s - best_in.wall_s) * args.processes / n * 1000:.1f} ms of wall time "
          f"on {args.processes} processes, {(sum(best_dist.cpu_s.values()) - sum(best_in.cpu_s.values())) / n * 1000:.1f} "
          "ms of CPU")
    print("CPU s of the distributed run: " + ", ".join(f"{role} {cpu:.2f}" for role, cpu in best_dist.cpu_s.items()))
    print(f"idle cpu worker (main + {args.processes} pool processes): RSS {cpu_rss:.0f} MiB, PSS {cpu_pss:.0f} MiB "
          "(target < 200 MiB)")
    loaded = "model loaded" if args.model_dir else "no weights: resample fallback"
    print(f"idle gpu worker (main + 1 pool process, {loaded}): RSS {gpu_rss:.0f} MiB, PSS {gpu_pss:.0f} MiB")


if __name__ == "__main__":
    main()
