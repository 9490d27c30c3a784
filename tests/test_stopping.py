"""Stopping an in-process run: a full disk is one clear sentence and a resumable stop; Ctrl-C (SIGINT
to the whole process group, as a terminal sends it) is one line, exit 130, no traceback from any
process and none of the run's temporary files left. Real files, the real command, a real tmpfs."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.signals import speech_like, write

REPO = Path(__file__).resolve().parent.parent


def _calls(root: Path, count: int, seconds: float) -> list[str]:
    audio = speech_like(8000, seconds, seed=3)
    names = [f"call_{i:03d}.wav" for i in range(count)]
    for name in names:
        write(root / name, audio, 8000)
    return names


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator_hooks.flashsr_extension", "--device", "cpu", "-q", *args]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}


def _temporaries(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob(".*.tmp")]


@pytest.fixture
def small_disk(tmp_path):
    """A real 400 KB tmpfs (root only); skipped, saying why, where mounting is not permitted."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the full-disk test needs a small tmpfs")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_output_disk_stops_with_one_sentence_and_the_same_command_then_completes(tmp_path, small_disk):
    sources = tmp_path / "calls"
    names = _calls(sources, 24, seconds=1.0)  # 96 KB of output each: the disk holds three or four
    command = _command("--input", str(sources), "--output_dir", str(small_disk), "--processes", "2")
    first = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert first.returncode == 1, first.stderr
    lines = first.stderr.strip().splitlines()
    assert lines[-1] == (f"flashsr: stopped: no space left on device in {small_disk}; free some space and run "
                         "the same command again to finish"), first.stderr
    assert "Traceback" not in first.stderr and "Exception ignored" not in first.stderr
    assert len(lines) == 2 and "enhanced" in lines[0], first.stderr  # the summary, then the sentence
    assert not _temporaries(small_disk, sources)
    journal = small_disk / ".manifest.json.journal"
    for line in journal.read_text().splitlines() if journal.exists() else []:
        record = json.loads(line)  # whole lines only
        assert record["status"] == "ok" or record["error"].endswith("no space left on device.")
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    second = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    manifest = json.loads((small_disk / "manifest.json").read_text())
    assert sorted(r["source"] for r in manifest["enhancements"]) == names
    assert all(r["status"] == "ok" for r in manifest["enhancements"])
    assert not _temporaries(small_disk, sources)


def test_ctrl_c_to_the_process_group_is_one_line_and_leaves_no_temporary_file(tmp_path):
    root = tmp_path / "calls"
    names = _calls(root, 400, seconds=3.0)
    process = subprocess.Popen(_command("--input", str(root), "--processes", "2"), cwd=REPO, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(list(root.glob("*_flashsr.wav"))) < 20:  # well under way, the pool busy writing
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == [
        "flashsr: interrupted; every finished file is kept and recorded; run the same command again to resume"]
    assert not _temporaries(root)
    done = len(list(root.glob("*_flashsr.wav")))
    assert done < len(names), "the run finished before the interrupt: the test proves nothing"


@pytest.mark.celery
def test_on_a_worker_the_records_of_files_that_hit_a_full_disk_say_so(tmp_path, small_disk, redis_server, workers):
    workers("cpu", concurrency=2)
    sources = tmp_path / "calls"
    names = _calls(sources, 12, seconds=1.0)
    command = _command("--input", str(sources), "--output_dir", str(small_disk), "--broker", redis_server.url)
    run = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and "AssertionError" not in run.stderr
    journal = [json.loads(line) for line in (small_disk / ".manifest.json.journal").read_text().splitlines()]
    failed = [r for r in journal if r["status"] == "failed"]
    assert failed and all(r["error"] == f"{r['source']} could not be written: no space left on device."
                          for r in failed)
    assert len(journal) == len(names) and not _temporaries(small_disk, sources)
