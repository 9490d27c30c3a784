"""Short runs return fast: three 20-second calls through the command line, in-process and through
Redis + one warm cpu worker (2 processes), interleaved; prints each mode's median wall time and
the difference (target: at most 0.4 s more through the broker).

    python benchmarks/short_runs.py              # 7 rounds
    python benchmarks/short_runs.py --rounds 3

Needs redis-server on PATH (a private one is started on a free port).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.services import start_redis, start_worker, worker_env  # noqa: E402
from tests.signals import speech_like, write  # noqa: E402


def timed_command(root: Path, broker: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}
    if broker:
        env["FLASHSR_BROKER_URL"] = broker
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "orchestrator_hooks.flashsr_extension", "--input", str(root), "--device", "cpu",
                    "--quiet"], cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flashsr-short-"))
    server = start_redis(work)
    worker = start_worker("cpu", server.url, work, 2, env=worker_env(server.url))
    times: dict[str, list[float]] = {"in-process": [], "distributed": []}
    try:
        for round_ in range(args.rounds + 1):  # round 0 warms the worker and the disk cache
            for mode in times:
                root = work / f"{mode}-{round_}"
                for i in range(3):
                    write(root / f"call_{i}.wav", speech_like(8000, 20, seed=i), 8000)
                wall = timed_command(root, server.url if mode == "distributed" else None)
                if round_:
                    times[mode].append(wall)
    finally:
        worker.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    for mode, values in times.items():
        print(f"{mode}: median {medians[mode]:.3f} s (runs: {', '.join(f'{v:.2f}' for v in values)})")
    print(f"distributed - in-process: {medians['distributed'] - medians['in-process']:+.3f} s (target: at most +0.4 s)")


if __name__ == "__main__":
    main()
