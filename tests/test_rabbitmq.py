"""RabbitMQ as the broker (results in Redis): a run end to end, and a worker killed mid-task has its
task redelivered to another at once (no visibility timeout). Each test has a vhost of its own."""
import subprocess
import threading
import time

import pytest

from orchestrator_hooks import FlashSRExtension
from tests.services import make_rabbit_vhost, start_worker, worker_env
from tests.test_distributed import _blocked_on, calls, hanging_source, records, release, wait_for

pytestmark = pytest.mark.celery


@pytest.fixture
def vhost():
    try:
        made = make_rabbit_vhost()
    except RuntimeError as exc:
        pytest.skip(f"RabbitMQ tests need a local RabbitMQ: {exc}")
    try:
        yield made
    finally:
        made.delete()


def test_a_killed_worker_on_rabbitmq_has_its_task_redone_by_another_within_seconds(tmp_path, redis_server, vhost,
                                                                                   monkeypatch):
    monkeypatch.setenv("FLASHSR_RESULT_BACKEND", redis_server.url)
    env = worker_env(vhost.url, FLASHSR_RESULT_BACKEND=redis_server.url)
    first = start_worker("cpu", vhost.url, tmp_path, 1, env=env)
    second = None
    try:
        root = tmp_path / "stage"
        names = calls(root, 3)
        fifo = hanging_source(root, "hang.wav")
        done = {}
        thread = threading.Thread(target=lambda: done.update(s=FlashSRExtension(
            root, device="cpu", broker=vhost.url, progress=False).run()), daemon=True)
        thread.start()
        wait_for(lambda: any(_blocked_on(p, fifo) for p in first.pool_pids()), 60, "the task to start")
        release(fifo)
        second = start_worker("cpu", vhost.url, tmp_path, 1, env=env)
        killed = time.monotonic()
        first.kill()  # a crashed host: nothing handed back
        thread.join(60)
        assert not thread.is_alive(), second.log_text()[-2000:]
        assert time.monotonic() - killed < 60
        assert done["s"].enhanced == 4 and done["s"].failed == 0
        found = records(root)
        assert sorted(found) == sorted([*names, "hang.wav"]) and all(r["status"] == "ok" for r in found.values())
    finally:
        first.kill()
        if second is not None:
            second.stop()


def test_quorum_queues_on_request(tmp_path, redis_server, vhost, monkeypatch):
    monkeypatch.setenv("FLASHSR_RESULT_BACKEND", redis_server.url)
    monkeypatch.setenv("FLASHSR_QUORUM_QUEUES", "1")
    env = worker_env(vhost.url, FLASHSR_RESULT_BACKEND=redis_server.url, FLASHSR_QUORUM_QUEUES="1")
    worker = start_worker("cpu", vhost.url, tmp_path, 1, env=env)
    try:
        root = tmp_path / "stage"
        names = calls(root, 3)
        summary = FlashSRExtension(root, device="cpu", broker=vhost.url, progress=False).run()
        assert summary.enhanced == 3 and sorted(records(root)) == names
        listed = subprocess.run(["rabbitmqctl", "list_queues", "-q", "-p", vhost.name, "name", "type"],
                                capture_output=True, text=True, timeout=60, check=True).stdout
        types = dict(line.split()[:2] for line in listed.splitlines() if line.strip() and "\t" in line)
        assert types.get("cpu") == "quorum", listed
    finally:
        worker.stop()
