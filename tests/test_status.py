"""flashsr-status: how a run stands, from manifest.json and its journal, with real runs, a real
Redis and real workers; its exit statuses; its memory at 100,000 records; no worker code loaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flashsr_tasks.files.naming import MANIFEST_NAME
from flashsr_tasks.manifest import journal
from flashsr_tasks.manifest.full_band import new_entry
from flashsr_tasks.manifest.layout import RECORDS_KEY, Writer
from flashsr_tasks.manifest.records import new_record
from flashsr_tasks.manifest.store import append_records, fold
from flashsr_tasks.manifest.tally import Tally
from orchestrator_hooks import FlashSRExtension
from tests.signals import music_like, write
from tests.test_distributed import _blocked_on, calls, hanging_source, release, wait_for
from tests.test_orchestrator_lean import FORBIDDEN, forbidden_imports_of

REPO = Path(__file__).resolve().parent.parent
STATUS = [sys.executable, "-m", "orchestrator_hooks.cli.status"]
KEYS = {"root", "manifest", "found", "enhanced", "failed", "full_band", "not_done", "done", "queues",
        "broker_error", "output_dir"}


def status(*args: str, broker: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}
    if broker:
        env["FLASHSR_BROKER_URL"] = broker
    return subprocess.run([*STATUS, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def as_json(done: subprocess.CompletedProcess) -> dict:
    data = json.loads(done.stdout)
    assert set(data) == KEYS, data
    return data


def record(source: str, ok: bool = True) -> dict:
    entry = dict(new_record(source))
    entry.update(status="ok" if ok else "failed", error=None if ok else f"{source} cannot be read as audio.",
                 method="resample", input_sha256="0" * 64, created_at="2026-01-01T00:00:00Z")
    return entry


def full_band(source: str) -> dict:
    return dict(new_entry(source, 48000, None, 0, 0, "2026-01-01T00:00:00Z"))


# ------------------------------------------------------------------------------- an in-process run

def test_counts_match_an_in_process_run_and_the_exit_statuses(tmp_path):
    root = tmp_path / "stage"
    names = calls(root, 3)
    write(root / "music_48k.wav", music_like(48000, 1.0), 48000)  # full-band: left alone
    (root / "broken.wav").write_text("not audio")
    summary = FlashSRExtension(root, device="cpu", progress=False, processes=1).run()
    assert (summary.files, summary.enhanced, summary.unselected, summary.failed) == (5, 3, 1, 1)

    done = status(str(root), "--json")
    assert done.returncode == 0, done.stderr
    counts = as_json(done)
    assert {k: counts[k] for k in ("found", "enhanced", "failed", "full_band", "not_done", "done")} == {
        "found": summary.files, "enhanced": summary.enhanced, "failed": summary.failed,
        "full_band": summary.unselected, "not_done": 0, "done": True}
    assert counts["queues"] is None and counts["broker_error"] is None
    assert counts["manifest"] == str(root / MANIFEST_NAME)
    # the orchestrator side gives the very same object
    assert FlashSRExtension(root, device="cpu").status().to_dict() == counts

    plain = status(str(root))
    assert plain.returncode == 0
    assert plain.stdout.startswith("flashsr: 5 files found: 3 enhanced, 1 failed, 1 full-band, 0 not yet done")
    # --wait exits as flashsr-enhance did: 1, a file failed
    assert status(str(root), "--wait", "--timeout", "10").returncode == 1
    # a source that no longer exists no longer counts
    (root / "broken.wav").unlink()
    waited = status(str(root), "--wait", "--json")
    assert waited.returncode == 0, waited.stderr
    assert (as_json(waited)["found"], as_json(waited)["failed"]) == (4, 0)
    # usage errors: 2; a manifest that is not JSON: 3, one sentence
    assert status(str(tmp_path / "missing")).returncode == 2
    assert status(str(root), "--timeout", "5").returncode == 2
    assert status(str(root), "--broker", "localhost:6379").returncode == 2
    assert status(str(root), "--output-dir", str(tmp_path / "nowhere")).returncode == 2
    (root / MANIFEST_NAME).write_text("{ not json")
    bad = status(str(root))
    assert bad.returncode == 3 and "not valid JSON" in bad.stderr and "Traceback" not in bad.stderr
    assert len(names) == 3


def test_the_last_line_per_source_wins_and_a_fold_is_followed(tmp_path):
    root = tmp_path / "stage"
    root.mkdir()
    for name in ("a.wav", "b.wav", "c.wav", "d.wav", "e.wav"):
        (root / name).touch()
    append_records(root, [record("a.wav", ok=False), full_band("b.wav"), record("gone.wav")])
    fold(root)
    tally = Tally(root)
    counts = tally.refresh()
    assert (counts.found, counts.enhanced, counts.failed, counts.full_band, counts.not_done) == (5, 0, 1, 1, 3)
    # the journal on top of manifest.json: a failed file done again, a full-band file forced, a new one
    append_records(root, [record("a.wav"), record("b.wav"), record("c.wav", ok=False)])
    counts = tally.refresh()
    assert (counts.enhanced, counts.failed, counts.full_band, counts.not_done) == (2, 1, 0, 2)
    # a torn last line (a killed writer) is not read, and read once whole
    with open(journal.journal_path(root), "ab") as out:
        out.write(journal.dumps(record("d.wav")).encode()[:40])
    assert tally.refresh().not_done == 2
    append_records(root, [record("d.wav")])  # cuts the torn line away, appends whole
    assert tally.refresh().not_done == 1
    fold(root)  # manifest.json replaced, journal gone: counted again from the new manifest
    append_records(root, [full_band("e.wav")])
    counts = tally.refresh()
    assert (counts.enhanced, counts.failed, counts.full_band, counts.not_done) == (3, 1, 1, 0)
    # a line damaged before the journal's last one: one sentence, exit 3
    with open(journal.journal_path(root), "ab") as out:
        out.write(b"garbage\n" + journal.dumps(record("e.wav")).encode() + b"\n")
    bad = status(str(root))
    assert bad.returncode == 3 and "damaged" in bad.stderr and "Traceback" not in bad.stderr


def test_output_dir_and_a_single_file(tmp_path):
    source, out = tmp_path / "corpus", tmp_path / "out"
    calls(source, 2)
    summary = FlashSRExtension(source, device="cpu", progress=False, processes=1, output_dir=out).run()
    assert summary.enhanced == 2
    assert as_json(status(str(source), "--json"))["not_done"] == 2  # its manifest is not in the sources' folder
    counted = as_json(status(str(source), "--output-dir", str(out), "--json"))
    assert (counted["found"], counted["enhanced"], counted["output_dir"]) == (2, 2, str(out))
    one = as_json(status(str(source / "call_000.wav"), "--output-dir", str(out), "--json"))
    assert (one["found"], one["enhanced"]) == (1, 1)


# ------------------------------------------------------------------------------- a distributed run

@pytest.mark.celery
def test_a_no_wait_run_is_watched_while_busy_and_waited_for(tmp_path, redis_server, workers):
    worker = workers("cpu", concurrency=1, FLASHSR_CPU_PREFETCH="1")
    root = tmp_path / "stage"
    calls(root, 8)
    fifo = hanging_source(root, "a_hangs.wav")  # found first: the worker blocks on it
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}, "FLASHSR_BROKER_URL": redis_server.url}
    sent = subprocess.run([sys.executable, "-m", "orchestrator_hooks", "--input", str(root), "--device", "cpu",
                           "--no-wait", "--json", "-q"], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert sent.returncode == 0, sent.stderr
    summary = json.loads(sent.stdout)
    assert (summary["waited"], summary["files"], summary["sent"]) == (False, 9, 9)
    assert 1 <= summary["not_done"] <= 9
    wait_for(lambda: any(_blocked_on(pid, fifo) for pid in worker.pool_pids()), 30, "the worker to block")

    started = time.monotonic()
    busy = status(str(root), "--json", broker=redis_server.url, timeout=30)
    assert time.monotonic() - started < 15
    assert busy.returncode == 0, busy.stderr
    counts = as_json(busy)
    assert (counts["found"], counts["enhanced"], counts["not_done"], counts["done"]) == (9, 0, 9, False)
    assert counts["queues"]["gpu"] == 0 and counts["queues"]["cpu"] >= 5, counts  # 9 sent, at most 2 taken
    assert "messages waiting on the broker: gpu 0, cpu " in status(str(root), broker=redis_server.url).stdout

    # let it go: a real WAV in the FIFO's place, and the blocked pool process killed (its task is redone at once)
    release(fifo)
    for pid in worker.pool_pids():
        if _blocked_on(pid, fifo):
            os.kill(pid, 9)
    waited = status(str(root), "--wait", "--timeout", "60", "--json", broker=redis_server.url, timeout=90)
    assert waited.returncode == 0, waited.stderr + worker.log_text()[-2000:]
    counts = as_json(waited)
    assert (counts["found"], counts["enhanced"], counts["failed"], counts["not_done"], counts["done"]) == (9, 9, 0, 0, True)
    assert counts["queues"] == {"gpu": 0, "cpu": 0}
    # read from the journal: nothing has folded it into manifest.json yet (--no-wait)
    assert journal.journal_path(root).exists() and not (root / MANIFEST_NAME).exists()


def test_an_unreachable_broker_is_one_sentence_and_the_rest_is_printed(tmp_path):
    root = tmp_path / "stage"
    calls(root, 1)
    for url in ("redis://:secret@127.0.0.1:1/0", "amqp://guest:secret@127.0.0.1:1//"):
        started = time.monotonic()
        done = status(str(root), "--json", "--broker", url, timeout=30)
        assert time.monotonic() - started < 15
        assert done.returncode == 0, done.stderr
        counts = as_json(done)
        assert counts["not_done"] == 1 and counts["queues"] is None
        assert "could not be reached" in counts["broker_error"] and "secret" not in done.stderr + done.stdout
        assert done.stderr.strip().count("\n") == 0 and "could not be reached" in done.stderr


def test_wait_with_a_timeout_ends_with_its_status(tmp_path):
    root = tmp_path / "stage"
    calls(root, 3)  # never processed
    started = time.monotonic()
    done = status(str(root), "--wait", "--timeout", "2", timeout=30)
    assert time.monotonic() - started < 8
    assert done.returncode == 1
    assert "3 files not yet done after 2 s" in done.stderr
    assert "0 enhanced" in done.stdout


# ------------------------------------------------------------------------------- scale and imports

def write_big_root(root: Path, count: int) -> None:
    """`count` empty .wav files in folders of 1000 (discovery only lists names), manifest.json in
    the project's layout with records for 80 % of them (1 in 50 failed) and full-band entries for
    10 %, and a journal with records for 5 % more."""
    names = [f"d{i // 1000:03d}/f{i % 1000:04d}.wav" for i in range(count)]
    for folder in sorted({name.split("/")[0] for name in names}):
        (root / folder).mkdir(parents=True)
    for name in names:
        open(root / name, "wb").close()
    with open(root / MANIFEST_NAME, "w", encoding="utf-8") as out:
        writer = Writer(out)
        writer.value("other_stage", {"kept": True})
        writer.list_start(RECORDS_KEY)
        for i, name in enumerate(names[:count * 8 // 10]):
            writer.item(record(name, ok=i % 50 != 0))
        writer.list_end()
        writer.list_start("full_band")
        for name in names[count * 8 // 10:count * 9 // 10]:
            writer.item(full_band(name))
        writer.list_end()
        writer.close()
    append_records(root, [record(name) for name in names[count * 9 // 10:count * 95 // 100]])


MEASURE = """
import contextlib, io, json, sys
from orchestrator_hooks.cli import status

def peak_kb():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:"))

with contextlib.redirect_stdout(io.StringIO()):
    status.main([sys.argv[2], "--json"])  # a root of 1000 files: every module and code path loaded
base = peak_kb()
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = status.main([sys.argv[1], "--json"])
print(json.dumps({"code": code, "counts": json.loads(out.getvalue()), "growth_kb": peak_kb() - base}))
"""


def test_a_root_of_100000_records_in_bounded_memory(tmp_path):
    root, small = tmp_path / "big", tmp_path / "small"
    write_big_root(root, 100_000)
    write_big_root(small, 1000)
    done = subprocess.run([sys.executable, "-c", MEASURE, str(root), str(small)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    counts = {k: result["counts"][k] for k in ("found", "enhanced", "failed", "full_band", "not_done")}
    assert (result["code"], counts) == (0, {"found": 100_000, "enhanced": 78_400 + 5_000, "failed": 1_600,
                                            "full_band": 10_000, "not_done": 5_000})
    # Measured 3-4 MB: the digest table (262,144 slots x 9 bytes = 2.3 MB) and one line at a time.
    # A dict of every source's path alone measures 11 MB at these short names, every record as a
    # dict hundreds of MB; the bound keeps clear of the first.
    assert result["growth_kb"] < 8 * 1024, f"peak RSS grew {result['growth_kb']} KB"
    print(f"peak RSS growth at 100,000 records: {result['growth_kb']} KB")


def test_the_status_command_loads_no_worker_code(tmp_path):
    # every import the command and the stage's status() can make, at their tops and in functions
    assert forbidden_imports_of(["orchestrator_hooks.cli.status", "orchestrator_hooks.run_status",
                                 "flashsr_tasks.manifest.tally", "flashsr_tasks.broker.queues"]) == []
    # and what a real run of it loads, with a broker (not reached) and through the stage's status()
    root = tmp_path / "stage"
    root.mkdir()
    (root / "a.wav").touch()
    code = (
        "import sys, json\n"
        "from orchestrator_hooks.cli.status import main\n"
        "main([sys.argv[1], '--json', '--broker', 'redis://127.0.0.1:1/0'])\n"
        "main([sys.argv[1], '--broker', 'amqp://guest:guest@127.0.0.1:1//'])\n"
        "from orchestrator_hooks import FlashSRExtension\n"
        "FlashSRExtension(sys.argv[1], device='cpu').status()\n"
        f"print('LOADED', json.dumps(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r} + ('celery',)))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rsplit("LOADED ", 1)[1].strip() == "[]"
