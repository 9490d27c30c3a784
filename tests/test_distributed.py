"""The distributed stage on real parts: a private redis-server and real celery workers."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import soundfile as sf

from flashsr_tasks.broker.app import make_app
from orchestrator_hooks import FlashSRExtension
from tests.signals import speech_like, write

pytestmark = pytest.mark.celery
REPO = Path(__file__).resolve().parent.parent


def calls(root: Path, count: int, seconds: float = 0.5, rate: int = 8000) -> list[str]:
    names = []
    for i in range(count):
        name = f"call_{i:03d}.wav"
        write(root / name, speech_like(rate, seconds, seed=i), rate)
        names.append(name)
    return names


def records(root: Path) -> dict[str, dict]:
    data = json.loads((root / "manifest.json").read_text())
    return {r["source"]: r for r in data["enhancements"] if r["type"] == "flashsr"}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def hanging_source(root: Path, name: str) -> Path:
    """A FIFO where a WAV should be: a task that opens it blocks until the test lets it go,
    which puts a worker reliably in the middle of a task."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    os.mkfifo(path)
    return path


def release(path: Path, rate: int = 8000) -> None:
    """Put a real WAV in the FIFO's place; a task already blocked on the FIFO stays blocked."""
    tmp = path.with_name(".real-" + path.name)
    write(tmp, speech_like(rate, 0.5, seed=99), rate)
    os.replace(tmp, path)


def test_cpu_queue_end_to_end_through_the_command_line(tmp_path, redis_server, workers):
    workers("cpu", concurrency=2)
    root = tmp_path / "stage"
    calls(root, 5)
    (root / "broken.wav").write_text("not audio")
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator_hooks.flashsr_extension", "--input", str(root), "--device", "cpu",
         "--json"], capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "FLASHSR_BROKER_URL": redis_server.url},
    )
    assert result.returncode == 1, result.stderr  # the broken file failed, the rest is done
    summary = json.loads(result.stdout)
    assert (summary["mode"], summary["enhanced"], summary["failed"]) == ("distributed", 5, 1)
    found = records(root)
    assert len(found) == 6 and found["broken.wav"]["status"] == "failed"
    assert "cannot be read as audio" in found["broken.wav"]["error"]
    for i in range(5):
        record = found[f"call_{i:03d}.wav"]
        assert record["status"] == "ok" and record["method"] == "resample"
        assert sf.info(str(root / record["output_path"])).samplerate == 48000
    assert "Traceback" not in result.stderr


def test_a_distributed_rerun_skips_current_outputs(tmp_path, redis_server, workers):
    workers("cpu")
    root = tmp_path / "stage"
    calls(root, 3)
    first = FlashSRExtension(root, device="cpu", broker=redis_server.url, progress=False).run()
    before = records(root)
    again = FlashSRExtension(root, device="cpu", broker=redis_server.url, progress=False).run()
    assert (first.enhanced, again.enhanced, again.skipped) == (3, 0, 3)
    assert records(root) == before
    redo = FlashSRExtension(root, device="cpu", broker=redis_server.url, overwrite=True, progress=False).run()
    assert redo.enhanced == 3


def test_gpu_worker_without_model_resamples_with_one_warning(tmp_path, redis_server, workers):
    gpu = workers("gpu", HF_HUB_OFFLINE="1", FLASHSR_CACHE_DIR=str(tmp_path / "cache"))
    root = tmp_path / "stage"
    calls(root, 3)
    summary = FlashSRExtension(root, device="cuda", broker=redis_server.url, progress=False).run()
    assert summary.enhanced == 3 and summary.methods == {"resample": 3}
    assert all(r["method"] == "resample" for r in records(root).values())
    log = gpu.log_text()
    assert log.count("FlashSR model unavailable") == 1, log
    # the model was tried once, at process start, not per task
    assert log.count("gpu worker ready") == 1


def test_routing_by_device_and_a_stack_with_only_cpu_workers(tmp_path, redis_server, workers):
    workers("cpu")
    root = tmp_path / "stage"
    calls(root, 3)
    # --device cpu completes on a cpu-only stack, callback included
    summary = FlashSRExtension(root, device="cpu", broker=redis_server.url, progress=False).run()
    assert summary.enhanced == 3 and len(records(root)) == 3
    # --device cuda goes to the gpu queue, which nobody serves here: the tasks wait there
    other = tmp_path / "other"
    calls(other, 2)
    sent = FlashSRExtension(other, device="cuda:1", broker=redis_server.url, wait=False, progress=False).run()
    assert (sent.chords, sent.waited, sent.files) == (1, False, 2)
    client = redis_server.client()
    wait_for(lambda: client.llen("gpu") == 2, 10, "two messages on the gpu queue")
    time.sleep(1)
    assert client.llen("gpu") == 2 and not list(other.glob("*_flashsr.wav"))


def test_chord_with_a_failing_member_still_merges_and_a_duplicate_leaves_one_record(tmp_path, redis_server, workers):
    workers("cpu", concurrency=2)
    root = tmp_path / "stage"
    names = calls(root, 3)
    (root / "empty.wav").write_bytes(b"")
    from flashsr_tasks.manifest.store import fold
    from flashsr_tasks.runs.job import Job
    from flashsr_tasks.runs.planning import Todo
    from orchestrator_hooks.distributed.dispatch import run_distributed

    outcomes = []
    job = Job(root=str(root.resolve()), device="cpu")
    # call_000 twice in one chord: a task delivered twice
    todos = [Todo(name, None) for name in [*names, names[0], "empty.wav"]]
    run_distributed(job, todos, redis_server.url, True, outcomes.append, timeout_s=60)
    fold(root)
    kinds = sorted(o["outcome"] for o in outcomes)
    # the second delivery finds the first one's output and record, or redoes it if both ran at once
    assert kinds in (["enhanced"] * 4 + ["failed"], ["enhanced"] * 3 + ["failed", "skipped"])
    found = records(root)
    assert sorted(found) == sorted([*names, "empty.wav"])
    assert len(json.loads((root / "manifest.json").read_text())["enhancements"]) == 4
    assert sorted(p.name for p in root.glob("*_flashsr.wav")) == [n.replace(".wav", "_flashsr.wav") for n in names]
    assert not list(root.glob(".*.tmp"))


def test_a_killed_pool_process_has_its_task_redone_at_once(tmp_path, redis_server, workers):
    worker = workers("cpu", concurrency=2)
    root = tmp_path / "stage"
    names = calls(root, 4)
    fifo = hanging_source(root, "hang.wav")
    done = {}
    thread = threading.Thread(target=lambda: done.update(s=FlashSRExtension(
        root, device="cpu", broker=redis_server.url, progress=False).run()))
    thread.start()
    wait_for(lambda: len(list(root.glob("*_flashsr.wav"))) == 4, 60, "the four ordinary files")
    # the task on the FIFO is blocked in its pool process; find that process by its open FIFO wait
    busy = [pid for pid in worker.pool_pids() if _blocked_on(pid, fifo)]
    assert len(busy) == 1, "expected one pool process blocked on the FIFO"
    release(fifo)
    os.kill(busy[0], signal.SIGKILL)  # the OOM killer, say
    thread.join(60)
    assert not thread.is_alive()
    summary = done["s"]
    assert summary.enhanced == 5 and summary.failed == 0
    assert set(records(root)) == {*names, "hang.wav"}
    assert records(root)["hang.wav"]["status"] == "ok"
    assert "SIGKILL" in worker.log_text()


def _blocked_on(pid: int, path: Path) -> bool:
    """True when `pid` is inside an open() or read() of `path` (a FIFO with no writer)."""
    try:
        proc = psutil.Process(pid)
        if any(Path(f.path) == path for f in proc.open_files()):
            return True
        with open(f"/proc/{pid}/syscall") as handle:
            # openat (257) blocked on a FIFO without a writer
            return handle.read().split()[0] == "257"
    except (psutil.Error, OSError):
        return False


def test_a_killed_worker_has_its_tasks_redelivered_to_another(tmp_path, redis_server, workers):
    first = workers("cpu", FLASHSR_VISIBILITY_TIMEOUT="5")
    root = tmp_path / "stage"
    fifo = hanging_source(root, "hang.wav")
    done = {}
    thread = threading.Thread(target=lambda: done.update(s=FlashSRExtension(
        root, device="cpu", broker=redis_server.url, progress=False).run()))
    thread.start()
    wait_for(lambda: any(_blocked_on(p, fifo) for p in first.pool_pids()), 30, "the task to start")
    release(fifo)
    first.kill()  # the whole host is gone: no chance to requeue anything
    assert redis_server.client().hlen("unacked") == 1
    second = workers("cpu", FLASHSR_VISIBILITY_TIMEOUT="5")
    thread.join(90)
    assert not thread.is_alive(), second.log_text()[-2000:]
    assert done["s"].enhanced == 1 and records(root)["hang.wav"]["status"] == "ok"
    assert "flashsr.enhance_cpu" in second.log_text()


def _threads_in_open(pid: int) -> int:
    """How many threads of `pid` are blocked in openat (257), e.g. on a FIFO without a writer."""
    count = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            count += (task / "syscall").read_text().split()[0] == "257"
        except (OSError, IndexError):
            pass
    return count


def test_a_killed_pipelined_gpu_worker_loses_none_of_its_files_in_flight(tmp_path, redis_server, workers):
    """The gpu worker runs on the threads pool (files share the model's batches): there is no pool
    process to lose, so a kill is a whole worker's; its files in flight are redelivered, each
    ends with one output and one record."""
    gpu = dict(HF_HUB_OFFLINE="1", FLASHSR_CACHE_DIR=str(tmp_path / "cache"), FLASHSR_VISIBILITY_TIMEOUT="5")
    first = workers("gpu", concurrency=3, extra_args=("--pool", "threads"), **gpu)
    root = tmp_path / "stage"
    names = calls(root, 2)
    fifos = [hanging_source(root, f"hang{i}.wav") for i in range(3)]
    done = {}
    thread = threading.Thread(target=lambda: done.update(s=FlashSRExtension(
        root, device="cuda", broker=redis_server.url, progress=False).run()))
    thread.start()
    wait_for(lambda: _threads_in_open(first.process.pid) == 3, 60, "three files in flight in three task threads")
    for fifo in fifos:
        release(fifo)
    first.kill()
    assert redis_server.client().hlen("unacked") >= 3
    second = workers("gpu", concurrency=3, extra_args=("--pool", "threads"), **gpu)
    thread.join(90)
    assert not thread.is_alive(), second.log_text()[-2000:]
    assert done["s"].enhanced == 5 and done["s"].failed == 0
    found = records(root)
    assert sorted(found) == sorted([*names, "hang0.wav", "hang1.wav", "hang2.wav"])
    assert all(r["status"] == "ok" for r in found.values())
    assert len(json.loads((root / "manifest.json").read_text())["enhancements"]) == 5
    assert sorted(p.name for p in root.glob("*_flashsr.wav")) == sorted(
        n.replace(".wav", "_flashsr.wav") for n in found)
    assert not list(root.glob(".*.tmp"))


def test_two_orchestrators_write_one_manifest_at_once(tmp_path, redis_server, workers):
    workers("cpu", concurrency=2)
    root = tmp_path / "stage"
    for part in ("a", "b"):
        calls(root / part, 6, seconds=0.3)
    (root / "manifest.json").write_text(json.dumps({"other_stage": {"keep": True}}))
    results = {}

    def orchestrate(part: str) -> None:
        from flashsr_tasks.manifest.store import fold
        from flashsr_tasks.runs.job import Job
        from flashsr_tasks.runs.planning import Todo
        from orchestrator_hooks.distributed.dispatch import run_distributed

        job = Job(root=str(root.resolve()), device="cpu")
        out = []
        todos = [Todo(f"{part}/call_{i:03d}.wav", None) for i in range(6)]
        run_distributed(job, todos, redis_server.url, True, out.append, 60)
        fold(root)
        results[part] = out

    threads = [threading.Thread(target=orchestrate, args=(p,)) for p in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert len(results["a"]) == len(results["b"]) == 6
    data = json.loads((root / "manifest.json").read_text())
    assert data["other_stage"] == {"keep": True}
    assert len(records(root)) == 12


def test_forged_messages_with_outside_paths_are_refused(tmp_path, redis_server, workers):
    allowed = tmp_path / "allowed"
    root = allowed / "stage"
    calls(root, 1)
    outside = tmp_path / "outside"
    calls(outside, 1)
    workers("cpu", FLASHSR_ALLOWED_ROOTS=str(allowed))
    app = make_app(redis_server.url)
    forged = [
        ({"root": str(root)}, "../../outside/call_000.wav", "relative path inside the processed root"),
        ({"root": str(root)}, "/etc/passwd", "relative path inside the processed root"),
        ({"root": "/etc"}, "passwd", "outside FLASHSR_ALLOWED_ROOTS"),
        ({"root": str(outside)}, "call_000.wav", "outside FLASHSR_ALLOWED_ROOTS"),
        ({"root": str(root) + "/../../outside"}, "call_000.wav", "outside FLASHSR_ALLOWED_ROOTS"),
    ]
    (root / "link").symlink_to(outside)
    forged.append(({"root": str(root)}, "link/call_000.wav", "resolves outside the processed root"))
    for job, source, message in forged:
        outcome = app.send_task("flashsr.enhance_cpu", args=(job, source), queue="cpu").get(timeout=30)
        assert outcome["outcome"] == "failed" and message in outcome["record"]["error"], (source, outcome)
    assert not list(outside.glob("*_flashsr.wav"))
    assert not (outside / "manifest.json").exists()
    assert not (root / "manifest.json").exists()  # bare tasks record nothing; the callback merges


def test_pickle_is_refused(tmp_path, redis_server, workers):
    worker = workers("cpu")
    app = make_app(redis_server.url)
    app.conf.task_serializer = "pickle"
    app.conf.accept_content = ["json", "pickle"]
    result = app.send_task("flashsr.enhance_cpu", args=({"root": str(tmp_path)}, "x.wav"), queue="cpu")
    wait_for(lambda: "pickle" in worker.log_text(), 20, "the worker to refuse the pickle message")
    assert "ContentDisallowed" in worker.log_text() or "untrusted content" in worker.log_text()
    assert result.state == "PENDING"


def test_cpu_worker_never_loads_torch(tmp_path, redis_server, workers):
    worker = workers("cpu", concurrency=2)
    root = tmp_path / "stage"
    calls(root, 4)
    assert FlashSRExtension(root, device="cpu", broker=redis_server.url, progress=False).run().enhanced == 4
    for pid in [worker.process.pid, *worker.pool_pids()]:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "torch/_C" not in maps


def test_a_member_killed_by_the_hard_time_limit_still_leaves_every_record(tmp_path, redis_server, workers):
    """The callback cannot run when a member raises; the waiting orchestrator journals the other
    members' records instead, as the callback would have."""
    workers("cpu", concurrency=2, FLASHSR_TASK_TIME_LIMIT="3")
    root = tmp_path / "stage"
    names = calls(root, 3)
    hanging_source(root, "stuck.wav")  # never released: the task hangs until its time limit
    summary = FlashSRExtension(root, device="cpu", broker=redis_server.url, progress=False).run()
    assert (summary.enhanced, summary.failed) == (3, 1)
    found = records(root)
    assert sorted(found) == sorted([*names, "stuck.wav"])
    assert found["stuck.wav"]["status"] == "failed" and "TimeLimitExceeded" in found["stuck.wav"]["error"]
    # the orchestrator journaled the chord's records and removed its results and state
    client = redis_server.client()
    deadline = time.monotonic() + 10
    while client.exists("unacked") and time.monotonic() < deadline:  # the worker acks the last task
        time.sleep(0.1)
    keys = [k.decode() for k in client.keys("*")]
    assert not [k for k in keys if not k.startswith("_kombu.")] and len(keys) <= 5, keys


def test_a_worker_started_as_the_readme_shows_says_when_it_is_ready(tmp_path, redis_server):
    """`celery -A flashsr_tasks worker -Q cpu`, Celery's default log level: one "ready" line."""
    from tests.services import stop_process, worker_env

    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "celery", "-A", "flashsr_tasks", "worker", "-Q", "cpu",
                                    "--concurrency", "1"], cwd=REPO, env=worker_env(redis_server.url),
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "flashsr: worker ready" in log.read_text(), 60, "the worker's ready line")
        assert "taking tasks from queue cpu" in log.read_text()
    finally:
        stop_process(process)
