"""Runs of any size: killed runs resume, re-runs decide without work, Redis keeps nothing."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import soundfile as sf

from flashsr_tasks.manifest import journal
from orchestrator_hooks import FlashSRExtension
from tests.services import REPO
from tests.signals import speech_like, write


def tree(root: Path, count: int, seconds: float = 1.0) -> list[str]:
    """`count` calls in a few dated folders; one written, the others copied (fast to make)."""
    first = root / "day_0" / "call_0000.wav"
    write(first, speech_like(8000, seconds, seed=1), 8000)
    data = first.read_bytes()
    names = []
    for i in range(count):
        name = f"day_{i % 4}/call_{i:04d}.wav"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        names.append(name)
    return names


def journaled(root: Path) -> int:
    return sum(1 for _ in journal.replay(root))


def manifest_records(root: Path) -> dict[str, dict]:
    data = json.loads((root / "manifest.json").read_text())
    found: dict[str, dict] = {}
    for r in data["enhancements"]:
        assert r["source"] not in found, f"two records for {r['source']}"
        found[r["source"]] = r
    return found


def command(root: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator_hooks.flashsr_extension", "--input", str(root), "--device", "cpu",
         "--json", "--quiet", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )


def kill_when_journaled(process: subprocess.Popen, root: Path, at_least: int, sig: int = signal.SIGKILL) -> int:
    deadline = time.monotonic() + 120
    while journaled(root) < at_least:
        assert process.poll() is None, f"the run ended before it could be killed: {process.communicate()}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)
    process.send_signal(sig)
    process.wait(30)
    return journaled(root)


def assert_complete(root: Path, names: list[str]) -> None:
    found = manifest_records(root)
    assert sorted(found) == sorted(names)
    for name in names:
        record = found[name]
        assert record["status"] == "ok", record
        info = sf.info(str(root / record["output_path"]))
        assert info.samplerate == 48000 and abs(info.duration - 1.0) < 1e-3


def test_in_process_runner_killed_halfway_resumes_with_only_the_rest(tmp_path):
    root = tmp_path / "archive"
    names = tree(root, 400)
    process = command(root, "--processes", "2")
    pid = process.pid
    done = kill_when_journaled(process, root, 150)
    outputs_at_kill = len(list(root.rglob("*_flashsr.wav")))
    # the pool died with its runner (no orphan still writing)
    time.sleep(0.5)
    assert not [p for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == pid]
    # a file finished but not yet journaled is one that was in flight: at most the runner's window
    assert 0 <= outputs_at_kill - done <= 2 * 4 * 8 + 2 * 8
    resumed = command(root, "--processes", "2")
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    summary = json.loads(out)
    assert summary["skipped"] == done and summary["enhanced"] == len(names) - done
    assert_complete(root, names)
    assert not journal.journal_path(root).exists()


def test_ctrl_c_keeps_every_finished_record_in_the_manifest(tmp_path):
    root = tmp_path / "archive"
    names = tree(root, 400)
    process = command(root, "--processes", "2")
    kill_when_journaled(process, root, 100, signal.SIGINT)
    assert process.returncode == 130 and "interrupted" in process.stderr.read()
    kept = manifest_records(root)  # folded on the way out
    assert len(kept) >= 100 and all(r["status"] == "ok" for r in kept.values())
    resumed = command(root)
    out, _ = resumed.communicate(timeout=180)
    assert json.loads(out)["skipped"] == len(kept)
    assert_complete(root, names)


def test_a_rerun_decides_by_size_and_time_without_hashing(tmp_path):
    root = tmp_path / "stage"
    names = tree(root, 6)
    first = FlashSRExtension(root, device="cpu", progress=False).run()
    assert first.enhanced == 6
    records = manifest_records(root)
    assert records[names[0]]["source_size"] == (root / names[0]).stat().st_size
    assert records[names[0]]["source_mtime_ns"] == (root / names[0]).stat().st_mtime_ns

    def swap_content(name: str, seed: int) -> os.stat_result:
        """Same size, other samples; returns the old stat to restore its time."""
        path = root / name
        old = path.stat()
        write(path, speech_like(8000, 1.0, seed=seed), 8000)
        assert path.stat().st_size == old.st_size
        return old

    # content changed, but size and time put back: decided from the record alone, so skipped
    old = swap_content(names[1], 7)
    os.utime(root / names[1], ns=(old.st_atime_ns, old.st_mtime_ns))
    # only the time changed (same bytes): the hash decides, still skipped
    os.utime(root / names[2], ns=(1, 1))
    # content and time changed: redone
    swap_content(names[3], 8)
    # the output was damaged: redone
    (root / records[names[4]]["output_path"]).write_bytes(b"RIFF")
    summary = FlashSRExtension(root, device="cpu", progress=False).run()
    assert (summary.skipped, summary.enhanced) == (4, 2)
    after = manifest_records(root)
    assert after[names[1]] == records[names[1]] and after[names[2]] == records[names[2]]
    assert after[names[3]]["input_sha256"] != records[names[3]]["input_sha256"]
    assert after[names[4]]["created_at"] >= records[names[4]]["created_at"]


def test_an_unchanged_rerun_is_a_small_fraction_of_the_first_run(tmp_path):
    root = tmp_path / "archive"
    names = tree(root, 1000, seconds=3.0)
    started = time.perf_counter()
    first = FlashSRExtension(root, device="cpu", progress=False).run()
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    again = FlashSRExtension(root, device="cpu", progress=False).run()
    rerun_s = time.perf_counter() - started
    assert first.enhanced == again.skipped == len(names)
    assert rerun_s < 0.2 * first_s, (rerun_s, first_s)


@pytest.mark.celery
def test_orchestrator_killed_halfway_resumes_and_redis_keeps_nothing(tmp_path, redis_server, workers):
    worker = workers("cpu", concurrency=2)
    root = tmp_path / "archive"
    names = tree(root, 300)
    env = {"FLASHSR_BROKER_URL": redis_server.url, "FLASHSR_CHORD_SIZE": "10", "FLASHSR_MAX_IN_FLIGHT": "40"}
    process = command(root, env=env)
    kill_when_journaled(process, root, 100)
    # the chords it sent still finish on the workers and journal their records
    resumed = command(root, env=env)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    summary = json.loads(out)
    assert summary["enhanced"] + summary["skipped"] == len(names) and summary["skipped"] >= 100
    client = redis_server.client()
    deadline = time.monotonic() + 30
    while client.llen("cpu") or client.hlen("unacked"):  # the killed run's last chords
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1)
    FlashSRExtension(root, device="cpu", broker=redis_server.url, progress=False).run()  # folds the stragglers
    assert_complete(root, names)
    # every file was worked on once, but for those in flight when the orchestrator died
    runs = worker.log_text().count("Task flashsr.enhance_cpu[")
    succeeded = len([line for line in worker.log_text().splitlines() if "flashsr.enhance_cpu[" in line and "succeeded" in line])
    assert runs >= succeeded >= len(names)
    assert succeeded - len(names) <= 40 + 10
    # a re-run of the unchanged root sends nothing at all
    again = FlashSRExtension(root, device="cpu", broker=redis_server.url, progress=False).run()
    assert again.skipped == len(names) and again.chords == 0
    # the summaries of the chords nobody collected (the killed run's) expire within a day
    for key in client.keys("*"):
        if not key.startswith(b"_kombu."):
            assert 0 < client.ttl(key) <= 24 * 3600, key
