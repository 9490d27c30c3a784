"""Faults of the infrastructure, on real parts: a private redis-server killed and started again
(with and without its append-only file), real celery workers, real files, a port that never
answers. Each test has a deadline (pytest-timeout), so a regression fails instead of hanging."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from orchestrator_hooks import FlashSRExtension
from tests.services import REPO, start_redis, start_worker
from tests.signals import speech_like, write
from tests.test_distributed import _blocked_on, calls, hanging_source, wait_for

pytestmark = [pytest.mark.celery, pytest.mark.timeout(150)]


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture
def started() -> Iterator[list]:
    """Workers and servers a test starts, stopped at its end whatever happens."""
    things: list = []
    yield things
    for thing in reversed(things):
        thing.stop()


def cli(root: Path, broker: str, *args: str, stderr: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}
    env["FLASHSR_BROKER_URL"] = broker
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator_hooks.flashsr_extension", "--input", str(root), "--device", "cpu",
         "--quiet", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=open(stderr, "wb"), text=True)


def let_through(fifo: Path, rate: int = 8000) -> None:
    """Unblock the task waiting on the FIFO with a real WAV: its first read (the hash) gets the WAV's
    bytes through the pipe, every later open finds the WAV itself in the FIFO's place."""
    tmp = fifo.with_name(".real-" + fifo.name)
    write(tmp, speech_like(rate, 0.5, seed=99), rate)
    data = tmp.read_bytes()
    try:  # the task blocked opening it for reading lets this open at once
        pipe = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # nobody reads it any more (the task was cancelled): the WAV alone will do
        os.replace(tmp, fifo)
        return
    try:
        os.replace(tmp, fifo)
        os.set_blocking(pipe, True)
        os.write(pipe, data)
    finally:
        os.close(pipe)


def one_ok_record_each(root: Path, sources: list[str]) -> None:
    entries = json.loads((root / "manifest.json").read_text())["enhancements"]
    assert sorted(e["source"] for e in entries) == sorted(sources)
    assert all(e["status"] == "ok" for e in entries), [e.get("error") for e in entries]
    assert not list(root.rglob(".*.tmp"))


def redis_killed_mid_task(tmp_path: Path, logdir: Path, started: list, aof: bool) -> tuple[str, Path, list[str]]:
    """A run waits on a file in the middle of its task; Redis is killed, the task finishes while
    Redis is down, Redis comes back (from its AOF, or empty). Returns the run's stderr."""
    server = start_redis(tmp_path / "redis", aof=aof)
    started.append(server)
    worker = start_worker("cpu", server.url, logdir, concurrency=2)
    started.append(worker)
    root = tmp_path / "stage"
    names = calls(root, 6)
    fifo = hanging_source(root, "hang.wav")
    errors = tmp_path / "stderr"
    run = cli(root, server.url, stderr=errors)
    wait_for(lambda: any(_blocked_on(p, fifo) for p in worker.pool_pids()), 60, "the task on the FIFO to start")
    wait_for(lambda: len(list(root.glob("*_flashsr.wav"))) == 6, 60, "the six other files")
    time.sleep(1.5)  # appendfsync everysec: what is in Redis now is on disk
    server.kill()
    let_through(fifo)  # the task finishes while Redis is down
    time.sleep(4)
    server.restart()
    out, _ = run.communicate(timeout=120)
    stderr = errors.read_text()
    assert run.returncode == 0, stderr
    one_ok_record_each(root, [*names, "hang.wav"])
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    return stderr, root, names


def test_redis_with_aof_killed_mid_run_is_ridden_out_and_the_file_mid_task_ends_ok(tmp_path, logdir, started):
    stderr, _, _ = redis_killed_mid_task(tmp_path, logdir, started, aof=True)
    assert stderr.count("lost the connection to the broker") == 1, stderr
    assert stderr.count("is back after") == 1, stderr


def test_redis_without_persistence_restarted_empty_has_the_lost_files_sent_again(tmp_path, logdir, started):
    stderr, _, _ = redis_killed_mid_task(tmp_path, logdir, started, aof=False)
    assert "sending them again" in stderr, stderr


@pytest.mark.timeout(240)
@pytest.mark.parametrize("moment", [0.1, 0.4, 0.85], ids=["early", "mid-acks", "late"])
def test_an_outage_that_cuts_acknowledgements_does_not_wait_for_the_visibility_timeout(
        tmp_path, logdir, started, moment):
    """Redis (AOF) killed while files finish many times a second: the workers hold prefetched
    messages and acknowledge finished ones when it dies, and can put back or acknowledge none of
    them. With the default visibility timeout (30 min) those messages would sit in `unacked` and the
    run would wait for them; the workers settle them once Redis is back instead (kombu_fixes)."""
    server = start_redis(tmp_path / "redis", aof=True)
    started.append(server)
    workers = [start_worker("cpu", server.url, logdir, concurrency=2) for _ in range(2)]
    started.extend(workers)
    root = tmp_path / "stage"
    names = calls(root, 300, seconds=1.0)
    errors = tmp_path / "stderr"
    run = cli(root, server.url, stderr=errors)
    wait_for(lambda: len(list(root.glob("*_flashsr.wav"))) >= int(300 * moment), 120, "files to finish")
    server.kill()  # AOF: what Redis had answered survives; SIGKILL leaves it in the page cache
    done_at_kill = len(list(root.glob("*_flashsr.wav")))
    assert done_at_kill < 300, "the run ended before the outage: no acknowledgement was cut"
    outage_s = 5
    time.sleep(outage_s)
    server.restart()
    back = time.monotonic()
    try:
        run.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        unacked = server.client().hlen("unacked")
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=30)
        pytest.fail(f"still running 120 s after Redis came back ({unacked} messages in unacked, "
                    f"{len(list(root.glob('*_flashsr.wav')))} of 300 outputs)")
    after_back = time.monotonic() - back
    stderr = errors.read_text()
    assert run.returncode == 0, stderr
    # A file both put back by its worker and sent again by the orchestrator runs twice; the second
    # run may still be writing its output (atomically) when the run ends: give it a moment.
    wait_for(lambda: not list(root.rglob(".*.tmp")), 15, "a second run of a file to finish its write")
    one_ok_record_each(root, names)
    assert "Traceback" not in stderr, stderr
    assert after_back < 120, after_back
    print(f"moment {moment}: {done_at_kill} of 300 done at the kill; exit {after_back:.1f} s after Redis came back")


def test_a_message_lost_from_the_queue_is_sent_again(tmp_path, logdir, started):
    server = start_redis(tmp_path / "redis")
    started.append(server)
    root = tmp_path / "stage"
    names = calls(root, 3)
    done: dict = {}
    thread = threading.Thread(target=lambda: done.update(s=FlashSRExtension(
        root, device="cpu", broker=server.url, progress=False).run()), daemon=True)
    thread.start()
    client = server.client()
    wait_for(lambda: client.llen("cpu") == 3, 20, "three messages on the queue")
    assert client.rpop("cpu")  # popped the instant Redis died: never in unacked, gone for good
    started.append(start_worker("cpu", server.url, logdir))
    thread.join(60)
    assert not thread.is_alive(), "the run did not notice the lost message"
    assert done["s"].enhanced == 3 and done["s"].failed == 0
    one_ok_record_each(root, names)


def test_a_port_that_never_answers_is_an_error_within_seconds(tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        root = tmp_path / "stage"
        calls(root, 1)
        errors = tmp_path / "stderr"
        started_at = time.monotonic()
        run = cli(root, f"redis://127.0.0.1:{silent.getsockname()[1]}/0", stderr=errors)
        run.communicate(timeout=60)
        took = time.monotonic() - started_at
    stderr = errors.read_text()
    assert run.returncode == 3, stderr
    assert took < 20, took
    assert stderr.startswith("flashsr: error: cannot reach the broker") and stderr.count("\n") == 1, stderr


def test_nobody_listening_is_said_within_30_s_and_give_up_after_ends_the_run(tmp_path, logdir, started):
    server = start_redis(tmp_path / "redis")
    started.append(server)
    started.append(start_worker("cpu", server.url, logdir))  # a worker, but not for the gpu queue
    root = tmp_path / "stage"
    calls(root, 2)
    errors = tmp_path / "stderr"
    started_at = time.monotonic()
    run = cli(root, server.url, "--device", "cuda", "--give-up-after", "5", stderr=errors)
    run.communicate(timeout=60)
    took = time.monotonic() - started_at
    stderr = errors.read_text()
    assert run.returncode == 1, stderr
    assert took < 30, took
    lines = stderr.splitlines()
    assert any("no worker consumes the queue 'gpu'" in line and "celery -A flashsr_tasks worker -Q gpu" in line
               for line in lines), stderr
    assert lines[-1].startswith("flashsr: error: no worker consumed the queue 'gpu' for 5 s"), stderr
    assert "Traceback" not in stderr
    client = server.client()
    assert client.keys("flashsr-cancelled-*"), "the given-up run's tasks must not run later"
    assert not client.keys("celery-task*"), client.keys("*")


def test_ctrl_c_stops_the_files_not_started_and_nothing_is_done_twice(tmp_path, logdir, started):
    server = start_redis(tmp_path / "redis")
    started.append(server)
    worker = start_worker("cpu", server.url, logdir)
    started.append(worker)
    root = tmp_path / "stage"
    calls(root, 30, seconds=0.3)
    fifo = hanging_source(root, "call_010_long.wav")
    errors = tmp_path / "stderr"
    run = cli(root, server.url, stderr=errors)
    wait_for(lambda: any(_blocked_on(p, fifo) for p in worker.pool_pids()), 60, "the task on the FIFO to start")
    run.send_signal(signal.SIGINT)
    run.communicate(timeout=30)
    assert run.returncode == 130, errors.read_text()
    let_through(fifo)  # the file being done at the interrupt finishes, and keeps its record
    client = server.client()
    wait_for(lambda: client.llen("cpu") == 0 and not client.hlen("unacked"), 30, "the queue to drain")
    time.sleep(0.5)
    done_first = {p.name for p in root.glob("*_flashsr.wav")}
    assert 1 <= len(done_first) <= 16, done_first  # what ran before the interrupt, and the one running
    assert not [k for k in client.keys("*") if not k.startswith(b"_kombu.") and not k.startswith(b"unacked")
                and not k.startswith(b"flashsr-cancelled-")], client.keys("*")
    again = FlashSRExtension(root, device="cpu", broker=server.url, progress=False).run()
    # every file finished in the first run has its record: the second run redoes none of them
    assert again.skipped == len(done_first) and again.enhanced == 31 - len(done_first), again
    assert "Traceback" not in errors.read_text()


# A clean run leaves only what the workers' queues need in Redis (docs/faults.md says so).
KOMBU_KEYS_LEFT = {b"_kombu.binding.cpu", b"_kombu.binding.celery.pidbox", b"_kombu.binding_permanent.cpu",
                   b"_kombu.binding_deadlines"}


def test_clean_exits_no_subscriptions_and_the_keys_left(tmp_path, logdir, started):
    server = start_redis(tmp_path / "redis")
    started.append(server)
    worker = start_worker("cpu", server.url, logdir, concurrency=2)
    started.append(worker)
    client = server.client()

    def subscriptions() -> int:
        return sum(int(c.get("sub", 0)) + int(c.get("psub", 0)) for c in client.client_list())

    root = tmp_path / "stage"
    calls(root, 4)
    fifo = hanging_source(root, "hang.wav")
    before = subscriptions()
    done: dict = {}
    thread = threading.Thread(target=lambda: done.update(s=FlashSRExtension(
        root, device="cpu", broker=server.url, progress=False).run()), daemon=True)
    thread.start()
    wait_for(lambda: any(_blocked_on(p, fifo) for p in worker.pool_pids()), 60, "the task on the FIFO to start")
    time.sleep(1)
    assert subscriptions() == before  # the waiting orchestrator subscribes to nothing
    let_through(fifo)
    thread.join(60)
    assert done["s"].enhanced == 5
    wait_for(lambda: not client.exists("unacked", "unacked_index", "unacked_mutex"), 10, "the last ack")
    assert set(client.keys("*")) == KOMBU_KEYS_LEFT, client.keys("*")
    # --no-wait, then a waiting re-run over new files: no traceback, no "Exception ignored"
    calls(root / "more", 3)
    errors = tmp_path / "stderr"
    run = cli(root, server.url, "--no-wait", stderr=errors)
    run.communicate(timeout=60)
    assert run.returncode == 0 and errors.read_text() == "", errors.read_text()


def test_finished_chords_behind_a_slow_head_are_not_taken_for_lost(tmp_path, logdir, started, caplog, monkeypatch):
    """Only the oldest chord is collected; the ones behind it finish meanwhile and their callbacks
    delete their members' results. The watchdog must not mistake those members for lost ones."""
    server = start_redis(tmp_path / "redis")
    started.append(server)
    worker = start_worker("cpu", server.url, logdir, concurrency=2)
    started.append(worker)
    root = tmp_path / "stage"
    names = calls(root, 6)
    fifo = hanging_source(root, "a_hang.wav")  # found first: a member of the oldest chord
    monkeypatch.setenv("FLASHSR_CHORD_SIZE", "2")
    done: dict = {}
    thread = threading.Thread(target=lambda: done.update(s=FlashSRExtension(
        root, device="cpu", broker=server.url, progress=False).run()), daemon=True)
    thread.start()
    wait_for(lambda: len(list(root.glob("*_flashsr.wav"))) == 6, 60, "the chords behind the head")
    time.sleep(12)  # two looks of the watchdog at least
    let_through(fifo)
    thread.join(60)
    assert done["s"].enhanced == 7
    assert "sending them again" not in caplog.text
    one_ok_record_each(root, [*names, "a_hang.wav"])
