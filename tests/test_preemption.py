"""Preempted workers (SIGTERM, as a spot notice or `docker stop` sends it) hand back what they have
not finished after FLASHSR_SHUTDOWN_GRACE, on both pools, so another worker runs it at once (a hand-back
is not counted as a death of the file's worker); and
FLASHSR_CPU_PREFETCH reaches the worker. Real redis-server, real workers, real files."""
import signal
import threading
import time

import pytest

from flashsr_tasks.broker.app import make_app
from orchestrator_hooks import FlashSRExtension
from tests.test_distributed import _blocked_on, _threads_in_open, calls, hanging_source, records, release, wait_for

pytestmark = pytest.mark.celery

GRACE_S = 2
# the visibility timeout is an hour: a file that came back sooner was handed back, not redelivered
POOLS = {
    "prefork": dict(queue="cpu", device="cpu", extra_args=()),
    "threads": dict(queue="gpu", device="cuda", extra_args=("--pool", "threads")),
}


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_a_worker_sent_sigterm_mid_task_hands_it_back_after_the_grace(tmp_path, redis_server, workers, pool):
    spec = POOLS[pool]
    # One run per file: a hand-back counted as a death would fail the file handed back.
    env = dict(FLASHSR_SHUTDOWN_GRACE=str(GRACE_S), FLASHSR_VISIBILITY_TIMEOUT="3600", FLASHSR_MAX_ATTEMPTS="1",
               HF_HUB_OFFLINE="1",
               FLASHSR_CACHE_DIR=str(tmp_path / "cache"))
    first = workers(spec["queue"], concurrency=2, extra_args=spec["extra_args"], **env)
    root = tmp_path / "stage"
    names = calls(root, 2)
    fifo = hanging_source(root, "hang.wav")
    done = {}
    thread = threading.Thread(target=lambda: done.update(s=FlashSRExtension(
        root, device=spec["device"], broker=redis_server.url, progress=False).run()), daemon=True)
    thread.start()
    if pool == "prefork":
        wait_for(lambda: any(_blocked_on(p, fifo) for p in first.pool_pids()), 60, "the task to start")
    else:
        wait_for(lambda: _threads_in_open(first.process.pid) == 1, 60, "the task to start")
    release(fifo)  # the task stays blocked: it is cut mid-task
    sent = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    client = redis_server.client()
    wait_for(lambda: client.llen(spec["queue"]) == 1, GRACE_S + 10, "the unfinished task back on its queue")
    handed_back_s = time.monotonic() - sent
    assert handed_back_s >= GRACE_S - 0.5, "handed back before the grace was over"
    first.process.wait(10)
    assert client.hlen("unacked") == 0
    second = workers(spec["queue"], concurrency=2, extra_args=spec["extra_args"], **env)
    thread.join(60)
    assert not thread.is_alive(), second.log_text()[-2000:]
    assert done["s"].enhanced == 3 and done["s"].failed == 0
    found = records(root)
    assert sorted(found) == sorted([*names, "hang.wav"]) and all(r["status"] == "ok" for r in found.values())
    assert "Traceback" not in first.log_text()
    assert not list(client.scan_iter("flashsr-runs-*")), "the handed-back task's run count is gone"


def test_cpu_prefetch_setting_reaches_the_worker(redis_server, workers):
    worker = workers("cpu", concurrency=2, FLASHSR_CPU_PREFETCH="3")
    app = make_app(redis_server.url)
    stats = app.control.inspect(destination=[worker.name], timeout=5).stats() or {}
    assert stats[worker.name]["prefetch_count"] == 6
