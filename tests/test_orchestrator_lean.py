"""The orchestrator imports no worker code: a distributed run, interrupted or not, loads neither
numpy, soundfile nor torch, nor the worker's task module or app; and no import of the distributed
path (orphans, Ctrl-C and outages included, each behind a function-level import) reaches them."""
from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_distributed import calls, hanging_source, wait_for

REPO = Path(__file__).resolve().parent.parent
# Worker code and the heavy libraries it brings; flashsr_tasks.audio.containers reads headers
# without decoding (a re-run's planning needs it) and is the one audio module allowed.
FORBIDDEN = ("numpy", "soundfile", "soxr", "scipy", "torch", "FlashSR", "flashsr_tasks.tasks",
             "flashsr_tasks.celery", "flashsr_tasks.worker", "flashsr_tasks.in_process", "flashsr_tasks.model",
             "flashsr_tasks.enhance", "flashsr_tasks.quality", "flashsr_tasks.audio.reading",
             "flashsr_tasks.audio.writing", "flashsr_tasks.audio.resample", "flashsr_tasks.audio.crossover")
RUN = """
import json, sys
from orchestrator_hooks.cli.enhance import main
status = main(sys.argv[1:])
forbidden = {forbidden!r}
print("LOADED " + json.dumps(sorted(m for m in sys.modules if m.startswith(forbidden))), flush=True)
sys.exit(status)
""".format(forbidden=FORBIDDEN)


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] not in ("flashsr_tasks", "orchestrator_hooks"):
        return None
    base = REPO.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, package: str) -> set[str]:
    """Every module `path` imports, at its top or inside a function, with the packages on the way.
    A package's __init__ counts at its top only: its lazy `__getattr__` runs on attribute access."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    nodes = tree.body if path.name == "__init__.py" else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module if node.level == 0 else f"{package.rsplit('.', node.level - 1)[0]}.{node.module}"
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names if _module_file(f"{module}.{alias.name}"))
    parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return found | parents


def forbidden_imports_of(start: list[str]) -> list[str]:
    """The worker code that the modules `start` can import, at their tops or in functions."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is not None:
            package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
            todo.extend(_imports(path, package))
    return sorted(m for m in seen if m.startswith(FORBIDDEN))


def test_no_import_of_the_distributed_path_reaches_worker_code():
    start = [f"orchestrator_hooks.distributed.{p.stem}" for p in (REPO / "orchestrator_hooks" / "distributed").glob("*.py")]
    reached = forbidden_imports_of(start)
    assert reached == [], f"the distributed path imports worker code: {reached}"


def _loaded(stdout: str) -> list[str]:
    line = [text for text in stdout.splitlines() if text.startswith("LOADED ")]
    assert line, stdout
    return json.loads(line[-1][len("LOADED "):])


@pytest.mark.celery
def test_a_distributed_run_loads_no_worker_code(tmp_path, redis_server, workers):
    workers("cpu", concurrency=2)
    root = tmp_path / "stage"
    calls(root, 4)
    done = subprocess.run([sys.executable, "-c", RUN, "--input", str(root), "--device", "cpu", "-q"],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "FLASHSR_BROKER_URL": redis_server.url})
    assert done.returncode == 0, done.stderr
    assert _loaded(done.stdout) == []
    assert len(json.loads((root / "manifest.json").read_text())["enhancements"]) == 4


@pytest.mark.celery
def test_an_interrupted_distributed_run_loads_no_worker_code(tmp_path, redis_server, workers):
    workers("cpu", concurrency=1)
    root = tmp_path / "stage"
    calls(root, 2)
    blocker = hanging_source(root, "a_hangs.wav")  # first in order: the worker blocks on it
    run = subprocess.Popen([sys.executable, "-c", RUN, "--input", str(root), "--device", "cpu", "-q"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                           env={**os.environ, "FLASHSR_BROKER_URL": redis_server.url})
    try:
        client = redis_server.client()
        wait_for(lambda: client.llen("cpu") > 0 or client.hlen("unacked") > 0, 30, "the run's tasks to be sent")
        time.sleep(1)
        run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
        with open(blocker, "wb"):  # let the blocked task go
            pass
    assert run.returncode == 130, stderr
    assert _loaded(stdout) == []
