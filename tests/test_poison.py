"""A file whose work kills its process (here: a real kernel OOM kill, inside a real cgroup memory
limit) is run at most FLASHSR_MAX_ATTEMPTS times, then failed with one sentence; the run ends, every
other file is done, and the worker (or the command) lives on. An hour-long call beside it simply
succeeds: the resample path streams, in memory that does not grow with the file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.cgroups import memory_group
from tests.services import REPO, make_rabbit_vhost, start_redis, start_worker, stop_process, worker_env
from tests.test_distributed import calls

pytestmark = pytest.mark.celery

MiB = 1 << 20
# Above what a worker and its pool process need for any mono or stereo call, of any length; below
# what a block of a 1024-channel file needs (about 650 MiB): the poison.
LIMIT = 300 * MiB
LONG_MINUTES = 60
# A worker that knows its limit refuses such a file before trying (tests/test_memory_limit.py);
# here it must try, and be killed, so that the counting of deaths is what is tested.
NO_REFUSAL = {"FLASHSR_MEMORY_LIMIT": "off"}


def long_call(path: Path, minutes: int = LONG_MINUTES, rate: int = 8000) -> None:
    """An 8 kHz mono call of `minutes`, written a minute at a time (the test process stays small)."""
    rng = np.random.default_rng(7)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        for _ in range(minutes):
            out.write((rng.standard_normal(rate * 60) * 0.1).astype(np.float32))


def wide_file(path: Path, channels: int = 1024, seconds: float = 2.0, rate: int = 8000) -> None:
    """Two seconds of 1024 channels (libsndfile's most): a crafted file whose every block is huge,
    whatever its length."""
    rng = np.random.default_rng(3)
    sf.write(str(path), (rng.standard_normal((int(rate * seconds), channels)) * 0.1).astype(np.float32), rate,
             subtype="PCM_16")


def records(root: Path) -> dict[str, dict]:
    return {r["source"]: r for r in json.loads((root / "manifest.json").read_text())["enhancements"]}


def run_command(root: Path, env: dict[str, str], *args: str, wrap=lambda cmd: cmd,
                timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "orchestrator_hooks", "--input", str(root), "--device", "cpu", "--quiet", *args]
    return subprocess.run(wrap(cmd), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def killed_three_times(record: dict, who: str) -> None:
    assert record["status"] == "failed", record
    assert record["error"] == (f"wide.wav killed {who} 3 times (signal 9: out of memory?; the file is 2.0 s of "
                               "8 kHz 1024-channel audio); give the worker more memory or leave the file out."), record


def long_call_succeeded(record: dict) -> None:
    assert record["status"] == "ok" and record["duration_s"] == LONG_MINUTES * 60, record


def command_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}
    env.update(settings)
    return env


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_a_file_that_kills_its_worker_is_failed_after_three_runs_and_the_worker_serves_on(tmp_path, broker):
    server = start_redis(tmp_path / "redis")
    vhost = None
    try:
        if broker == "rabbitmq":
            try:
                vhost = make_rabbit_vhost()
            except RuntimeError as exc:
                pytest.skip(f"needs a local RabbitMQ: {exc}")
        url = vhost.url if vhost else server.url
        settings = {"FLASHSR_BROKER_URL": url, "FLASHSR_RESULT_BACKEND": server.url, **NO_REFUSAL}
        with memory_group(LIMIT) as group:
            worker = start_worker("cpu", url, tmp_path, concurrency=1, env=worker_env(url, **settings),
                                  wrap=group.wrap)
            try:
                root = tmp_path / "stage"
                names = calls(root, 5)
                long_call(root / "long.wav")
                wide_file(root / "wide.wav")
                started = time.monotonic()
                run = run_command(root, command_env(**settings))
                took = time.monotonic() - started
                assert run.returncode == 1, run.stderr
                found = records(root)
                killed_three_times(found["wide.wav"], "its worker")
                long_call_succeeded(found["long.wav"])
                assert all(found[n]["status"] == "ok" for n in names), found
                assert group.oom_kills() == 3, "each of the three runs was one OOM kill"
                assert worker.process.poll() is None, "the worker's main process lives"
                assert took < 180, f"the run took {took:.0f} s"
                # The same worker takes a new run.
                again = tmp_path / "again"
                more = calls(again, 3)
                second = run_command(again, command_env(**settings), timeout=120)
                assert second.returncode == 0, second.stderr
                assert all(records(again)[n]["status"] == "ok" for n in more)
                assert not list(server.client().scan_iter("flashsr-runs-*")), "a finished task's count is gone"
            finally:
                stop_process(worker.process)
    finally:
        if vhost is not None:
            vhost.delete()
        server.stop()


def test_on_the_threads_pool_the_whole_worker_dies_and_the_count_is_kept_across_its_restarts(tmp_path):
    """The threads pool runs tasks in the worker's only process: the OOM killer takes the worker,
    its task comes back after the visibility timeout to the restarted worker (a supervisor's
    restart policy), and the count, kept in Redis, ends it after three runs."""
    server = start_redis(tmp_path / "redis")
    settings = {"FLASHSR_BROKER_URL": server.url, "FLASHSR_VISIBILITY_TIMEOUT": "4", "HF_HUB_OFFLINE": "1",
                "FLASHSR_CACHE_DIR": str(tmp_path / "cache"), **NO_REFUSAL}
    try:
        with memory_group(LIMIT) as group:
            root = tmp_path / "stage"
            names = calls(root, 3)
            wide_file(root / "wide.wav")
            run = subprocess.Popen(
                [sys.executable, "-m", "orchestrator_hooks", "--input", str(root), "--device", "cuda", "--quiet"],
                cwd=REPO, env=command_env(**settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            restarts = 0
            deadline = time.monotonic() + 240
            try:
                while run.poll() is None:  # the supervisor: a dead worker is started again
                    assert time.monotonic() < deadline, "the run did not end"
                    worker = start_worker("gpu", server.url, tmp_path, concurrency=1, extra_args=("--pool", "threads"),
                                          env=worker_env(server.url, **settings), wrap=group.wrap)
                    while worker.process.poll() is None and run.poll() is None:
                        assert time.monotonic() < deadline, "the run did not end"
                        time.sleep(0.2)
                    if worker.process.poll() is None:
                        stop_process(worker.process)
                    else:
                        restarts += 1
                _, stderr = run.communicate(timeout=10)
            finally:
                if run.poll() is None:
                    run.kill()
            assert run.returncode == 1, stderr
            found = records(root)
            assert found["wide.wav"]["status"] == "failed"
            assert found["wide.wav"]["error"].startswith(
                "wide.wav killed its worker 3 times (the file is 2.0 s of 8 kHz 1024-channel audio)"), found
            assert all(found[n]["status"] == "ok" for n in names), found
            assert restarts == 3 and group.oom_kills() == 3
    finally:
        server.stop()


@pytest.mark.parametrize("processes", [1, 2])
def test_in_process_a_file_that_kills_its_process_is_failed_after_three_runs_and_the_run_ends(tmp_path, processes):
    """The command runs each file in a pool process (also with --processes 1): the OOM killer takes
    that process, never the command, which retries the file in a fresh one, then fails it."""
    with memory_group(LIMIT) as group:
        root = tmp_path / "stage"
        names = calls(root, 6)
        long_call(root / "long.wav")
        wide_file(root / "wide.wav")
        started = time.monotonic()
        run = run_command(root, command_env(**NO_REFUSAL), "--processes", str(processes), wrap=group.wrap)
        took = time.monotonic() - started
        assert run.returncode == 1, run.stderr
        assert "1 failed" in run.stdout + run.stderr
        found = records(root)
        killed_three_times(found["wide.wav"], "its process")
        long_call_succeeded(found["long.wav"])
        assert all(found[n]["status"] == "ok" for n in names), found
        assert group.oom_kills() == 3
        assert took < 120, f"the run took {took:.0f} s"
        assert not list(root.rglob(".*.tmp"))
