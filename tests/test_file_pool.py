"""The in-process pool: a process that dies on a file takes only that file, which runs again in a
fresh process and fails after FLASHSR_MAX_ATTEMPTS runs; the files queued behind it are not counted.
Real processes killed with SIGKILL while they hold the file (no memory limit needed)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil

from tests.services import REPO
from tests.test_distributed import _blocked_on, calls, hanging_source, wait_for


def _kill_on_fifo(run: subprocess.Popen, fifo, killed: list[int]) -> None:
    """SIGKILL the run's pool process that blocks on `fifo` (not one killed before), once it does."""
    def on_fifo() -> list[int]:
        try:
            children = psutil.Process(run.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [c.pid for c in children if c.pid not in killed and _blocked_on(c.pid, fifo)]

    wait_for(lambda: on_fifo(), 30, "a pool process to take the file")
    pid = on_fifo()[0]
    os.kill(pid, signal.SIGKILL)
    killed.append(pid)


def _run_killing_on_fifo(root, fifo, kills: int, processes: int, **settings: str) -> tuple[int, str, dict]:
    """The command on `root`, its pool process SIGKILLed `kills` times on `fifo`: exit status, stderr, records."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}
    env.update(settings)
    run = subprocess.Popen([sys.executable, "-m", "orchestrator_hooks", "--input", str(root), "--device", "cpu",
                            "--processes", str(processes), "--quiet"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        killed: list[int] = []
        for _ in range(kills):
            _kill_on_fifo(run, fifo, killed)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    found = {r["source"]: r for r in json.loads((root / "manifest.json").read_text())["enhancements"]}
    return run.returncode, err, found


def test_a_pool_process_killed_on_a_file_takes_only_that_file_which_fails_after_three_runs(tmp_path):
    root = tmp_path / "stage"
    names = calls(root, 8)
    fifo = hanging_source(root, "hang.wav")
    returncode, err, found = _run_killing_on_fifo(root, fifo, kills=3, processes=2)
    assert returncode == 1, err
    assert found["hang.wav"]["error"] == ("hang.wav killed its process 3 times (signal 9: out of memory?); "
                                          "give the worker more memory or leave the file out."), found["hang.wav"]
    assert all(found[n]["status"] == "ok" for n in names), found
    assert "Traceback" not in err, err



def test_the_files_a_killed_process_finished_but_had_not_answered_are_not_blamed(tmp_path):
    """A process answers short files a few at a time: when it dies, those it finished but had not yet answered run
    again uncounted, and only the file it was on counts (with one attempt allowed, a wrong guess fails a file)."""
    root = tmp_path / "stage"
    names = calls(root, 30, seconds=0.2)  # call_000 … call_029; the FIFO sorts after them, behind 30 short files
    fifo = hanging_source(root, "hang.wav")
    names += calls(root / "later", 5, seconds=0.2)  # after it too ("later/…" sorts last)
    returncode, err, found = _run_killing_on_fifo(root, fifo, kills=1, processes=1, FLASHSR_MAX_ATTEMPTS="1")
    assert returncode == 1, err
    assert found.pop("hang.wav")["error"] == ("hang.wav killed its process once (signal 9: out of memory?); "
                                              "give the worker more memory or leave the file out.")
    assert sorted(found) == sorted(names[:30] + [f"later/{n}" for n in names[30:]])
    assert all(r["status"] == "ok" for r in found.values()), found
