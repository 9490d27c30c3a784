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


def test_a_pool_process_killed_on_a_file_takes_only_that_file_which_fails_after_three_runs(tmp_path):
    root = tmp_path / "stage"
    names = calls(root, 8)
    fifo = hanging_source(root, "hang.wav")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}
    run = subprocess.Popen([sys.executable, "-m", "orchestrator_hooks", "--input", str(root), "--device", "cpu",
                            "--processes", "2", "--quiet"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        killed = []
        for _ in range(3):
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
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, err
    found = {r["source"]: r for r in json.loads((root / "manifest.json").read_text())["enhancements"]}
    assert found["hang.wav"]["error"] == ("hang.wav killed its process 3 times (signal 9: out of memory?); "
                                          "give the worker more memory or leave the file out."), found["hang.wav"]
    assert all(found[n]["status"] == "ok" for n in names), found
    assert "Traceback" not in err, err

