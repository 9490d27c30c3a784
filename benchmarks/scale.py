"""Runs of any size: the same tree of one-second 8 kHz calls at several sizes, in-process and
through Redis + one cpu worker (2 processes), each run followed by a re-run of the unchanged root.

Prints, per size and mode: files/s of the first run, peak RSS of the orchestrator (or the
in-process runner's main process), peak memory of redis-server and the keys left in it, the
bytes written to manifest.json and its journal against the final manifest's size, and the
re-run's time; then the growth of each figure per file and per 10,000 files.

    python benchmarks/scale.py                                 # 10,000, 30,000 and 100,000 files (~25 min)
    python benchmarks/scale.py --sizes 200 400 --folders 4     # a quick look

Needs redis-server on PATH (a private one is started per size) and about 12 GB of free disk
at 100,000 files (sources and outputs; each tree is removed after its runs).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.services import start_redis, start_worker, worker_env  # noqa: E402

# The command line, with the manifest's fold messages on stderr (they carry the bytes written).
_CHILD = (
    "import logging, sys; logging.basicConfig(level=logging.WARNING, format='%(name)s: %(message)s');"
    "logging.getLogger('flashsr_tasks.manifest.store').setLevel(logging.INFO);"
    "from orchestrator_hooks.cli.enhance import main; sys.exit(main())"
)
_FOLDED = re.compile(r"folded \d+ records \((\d+) journal bytes\) into manifest\.json \((\d+) bytes\)")


@dataclass
class Run:
    wall_s: float
    peak_rss: int  # bytes, the command's main process
    summary: dict
    log: str


@dataclass
class Result:
    mode: str
    files: int
    first: Run
    rerun: Run
    manifest_bytes: int
    written_bytes: int = 0
    redis_peak: Optional[int] = None
    keys_left: Optional[int] = None
    notes: list[str] = field(default_factory=list)


def make_tree(root: Path, files: int, folders: int) -> None:
    """`files` one-second 8 kHz calls spread over `folders` sub-folders (dated folders of an archive)."""
    rate = 8000
    t = np.arange(rate) / rate
    signal = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, signal, rate, format="WAV", subtype="PCM_16")
    data = buffer.getvalue()
    for folder in range(folders):
        (root / f"day_{folder:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        with open(root / f"day_{i % folders:03d}" / f"call_{i:06d}.wav", "wb") as handle:
            handle.write(data)


def run_command(root: Path, broker: Optional[str], *extra: str) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}
    if broker:
        env["FLASHSR_BROKER_URL"] = broker
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "--input", str(root), "--device", "cpu", "--quiet", "--json", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    peak = 0
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            match = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
            peak = max(peak, int(match.group(1)) * 1024) if match else peak
        except OSError:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - started
    out, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"flashsr-enhance failed ({process.returncode}):\n{err[-3000:]}")
    return Run(wall, peak, json.loads(out), err)


def folded_bytes(log: str) -> int:
    """Bytes written to the journal and to manifest.json, from the fold messages."""
    return sum(int(journal) + int(manifest) for journal, manifest in _FOLDED.findall(log))


def measure(mode: str, files: int, folders: int, workdir: Path) -> Result:
    root = workdir / f"{mode}-{files}"
    make_tree(root, files, folders)
    redis_server = worker = None
    try:
        if mode == "distributed":
            redis_server = start_redis(workdir)
            worker = start_worker("cpu", redis_server.url, workdir, 2, env=worker_env(redis_server.url))
        broker = redis_server.url if redis_server else None
        first = run_command(root, broker)
        if first.summary["enhanced"] != files:
            raise SystemExit(f"the first run did not enhance every file: {first.summary}")
        worker_log = worker.log_text() if worker else ""
        result = Result(mode, files, first, run_command(root, broker), (root / "manifest.json").stat().st_size)
        if result.rerun.summary["skipped"] != files:
            raise SystemExit(f"the re-run did not skip every file: {result.rerun.summary}")
        # Folds during the first run: its own end (and start) fold, and any a chord callback made.
        result.written_bytes = folded_bytes(first.log) + folded_bytes(worker_log)
        if redis_server:
            client = redis_server.client()
            result.redis_peak = int(client.info("memory")["used_memory_peak"])
            result.keys_left = int(client.dbsize())
            result.notes = sorted(k.decode() for k in client.keys("*"))
        return result
    finally:
        if worker:
            worker.stop()
        if redis_server:
            redis_server.stop()
        shutil.rmtree(root, ignore_errors=True)


def queued_cost(files: int, workdir: Path) -> float:
    """Redis bytes per file of a run sent with --no-wait while no worker takes anything."""
    root = workdir / "queued"
    make_tree(root, files, 10)
    server = start_redis(workdir)
    try:
        client = server.client()
        before = int(client.info("memory")["used_memory"])
        env_run = run_command(root, server.url, "--no-wait")
        assert env_run.summary["chords"] > 0
        return (int(client.info("memory")["used_memory"]) - before) / files
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def report(results: list[Result]) -> None:
    print()
    print(f"{'mode':<12}{'files':>8}{'files/s':>9}{'peak RSS':>10}{'Redis peak':>12}{'keys left':>10}"
          f"{'manifest':>10}{'written/manifest':>18}{'re-run':>9}{'re-run/first':>14}")
    for r in results:
        print(f"{r.mode:<12}{r.files:>8}{r.files / r.first.wall_s:>9.0f}{mib(r.first.peak_rss):>10}"
              f"{mib(r.redis_peak) if r.redis_peak is not None else '-':>12}"
              f"{r.keys_left if r.keys_left is not None else '-':>10}{mib(r.manifest_bytes):>10}"
              f"{r.written_bytes / r.manifest_bytes:>17.2f}x{r.rerun.wall_s:>8.2f}s{r.rerun.wall_s / r.first.wall_s:>13.1%}")
        if r.notes:
            print(f"{'':<12}keys left: {', '.join(r.notes)}")
    for mode in sorted({r.mode for r in results}):
        rows = sorted((r for r in results if r.mode == mode), key=lambda r: r.files)
        if len(rows) < 2:
            continue
        small, large = rows[0], rows[-1]
        extra = large.files - small.files
        rss_run = max(large.first.peak_rss, large.rerun.peak_rss) - max(small.first.peak_rss, small.rerun.peak_rss)
        line = (f"growth {mode}, {small.files} → {large.files} files: peak RSS {rss_run / extra:+.0f} bytes/file "
                f"({rss_run / extra * 10000 / 2**20:+.1f} MiB per 10,000 files)")
        if large.redis_peak is not None and small.redis_peak is not None:
            redis = large.redis_peak - small.redis_peak
            line += f"; Redis peak {redis / extra:+.0f} bytes/file ({redis / extra * 10000 / 2**20:+.2f} MiB per 10,000)"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 100000])
    parser.add_argument("--modes", nargs="+", default=["in-process", "distributed"], choices=["in-process", "distributed"])
    parser.add_argument("--folders", type=int, default=100)
    parser.add_argument("--workdir", type=Path, help="where the trees are written (default: a temporary folder)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="flashsr-scale-", dir=args.workdir))
    results = []
    try:
        for files in args.sizes:
            for mode in args.modes:
                result = measure(mode, files, args.folders, workdir)
                results.append(result)
                print(f"{mode} {files} files: first run {result.first.wall_s:.1f} s, re-run {result.rerun.wall_s:.2f} s",
                      flush=True)
        if "distributed" in args.modes:
            cost = queued_cost(min(args.sizes), workdir)
            print(f"--no-wait, nothing taken yet: {cost:.0f} bytes of Redis per queued file")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results)


if __name__ == "__main__":
    main()
