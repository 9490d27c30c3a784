"""The embedded default: run a job's files in this process (or a local process pool).

The resampler is cheap and CPU-bound, so it fans out over every core; the model is large
and owns its device, so it runs in this process, one file after another.

Sources stream in and outcomes stream out: at most `_WINDOW_CHUNKS` chunks per process are in
flight, whatever the run's length. Every finished chunk's records are appended to the root's
journal as it arrives, so a run killed at any moment keeps every file it finished; the caller
folds the journal into manifest.json at the end.
"""
from __future__ import annotations

import collections
import ctypes
import itertools
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from flashsr_tasks.job import Job
from flashsr_tasks.lazy import LazyEnhancer
from flashsr_tasks.manifest import append_records
from flashsr_tasks.memory import keep_freed_memory
from flashsr_tasks.planning import Todo, in_chunks

Outcome = dict[str, Any]
# Files per pool message: large enough to amortise inter-process traffic on short calls,
# small enough that the progress bar still moves and a killed run redoes little.
_CHUNK = 8
# Chunks queued per pool process: enough to keep it busy while the main process collects.
_WINDOW_CHUNKS = 4
_MIN_FILES_FOR_POOL = 4
# The journal is fsynced at most this often (a killed process loses nothing either way; this
# bounds what a power cut can take).
_SYNC_EVERY_S = 1.0
# Records that come closer together than this are journaled a chunk at a time.
_HOLD_S = 0.2

_pool_state: dict[str, Any] = {}


def run_in_process(
    root: Path,
    job: Job,
    work: Iterable[Union[Todo, Outcome]],
    on_outcome: Optional[Callable[[Outcome], None]] = None,
    processes: Optional[int] = None,
) -> None:
    """Process the Todos of `work` under the checked `root`, journaling each record as it arrives;
    outcomes already decided (skips) pass straight through to `on_outcome`."""
    journal = _Journal(job.manifest_root)
    try:
        for outcomes in _outcomes(root, iter(work), job, processes or os.cpu_count() or 1, journal.add):
            journal.add(outcomes)
            if on_outcome:
                for outcome in outcomes:
                    on_outcome(outcome)
    finally:
        journal.flush()  # Ctrl-C or an error too: what finished is journaled


class _Journal:
    """Appends records a chunk at a time while they come fast: resampling one file after
    another (one process) would otherwise take the lock and write once per file. Records that
    come slowly (the model: seconds a file) are appended as they come. At most `_CHUNK` records
    are held, so a killed run loses no more than one pool chunk's worth."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.synced = time.monotonic()
        self.held: list[dict[str, Any]] = []
        self.last_add = 0.0

    def add(self, outcomes: list[Outcome]) -> None:
        now = time.monotonic()
        slow = now - self.last_add >= _HOLD_S
        self.last_add = now
        self.held.extend(o["record"] for o in outcomes if o["record"] is not None)
        if slow or len(self.held) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        records, self.held = self.held, []
        if records:
            sync = time.monotonic() - self.synced >= _SYNC_EVERY_S
            append_records(self.root, records, sync=sync)
            if sync:
                self.synced = time.monotonic()


def _outcomes(root: Path, work: Iterator[Union[Todo, Outcome]], job: Job, processes: int,
              salvage: Callable[[list[Outcome]], None]) -> Iterator[list[Outcome]]:
    first: list[Todo] = []
    yield from _skips_until(work, 1, first)
    if not first:
        return  # everything was skipped: nothing to load, not even numpy
    # Imported only now, for the same reason.
    from flashsr_tasks.enhancers import Resampler, load_enhancer, wants_model

    todos: Iterator[Union[Todo, Outcome]] = itertools.chain(first, work)
    if wants_model(job.device, job.model_dir):
        # The model is loaded at the first file that needs it; files share its batches (pipelined).
        model = LazyEnhancer(lambda: load_enhancer(job.device, job.model_dir))
        from flashsr_tasks.pipelined import pipelined_outcomes

        yield from ([outcome] for outcome in pipelined_outcomes(root, todos, job, model))
        # the model could not load: the rest is resampling, which a pool does best
    first = []
    yield from _skips_until(todos, _MIN_FILES_FOR_POOL, first)
    todos = itertools.chain(first, todos)
    if processes < 2 or len(first) < _MIN_FILES_FOR_POOL:
        for item in todos:
            yield _one(root, item, job, Resampler)
        return
    with multiprocessing.get_context(_start_method()).Pool(
        processes, initializer=_init_pool, initargs=(str(root), job.to_dict())
    ) as pool:
        window: collections.deque = collections.deque()
        try:
            for item in in_chunks(todos, _CHUNK):
                if isinstance(item, dict):
                    yield [item]
                    continue
                window.append(pool.apply_async(_pool_process, (item,)))
                # Collect what is done; wait for the oldest chunk only when the window is full.
                while window and (window[0].ready() or len(window) >= processes * _WINDOW_CHUNKS):
                    yield window.popleft().get()
            while window:
                yield window.popleft().get()
        except BaseException:
            # Ctrl-C: chunks that finished behind an unfinished one are records too.
            salvage([o for r in window if r.ready() and r.successful() for o in r.get()])
            raise


def _one(root: Path, item: Union[Todo, Outcome], job: Job, enhancer_for: Callable[[], Any]) -> list[Outcome]:
    from flashsr_tasks.pipeline import process_file

    return [item if isinstance(item, dict) else process_file(root, item.source, job, enhancer_for, item.known_sha256)]


def _skips_until(work: Iterator[Union[Todo, Outcome]], count: int, todos: list[Todo]) -> Iterator[list[Outcome]]:
    """Pass skips through until `count` Todos are in `todos` (or `work` ends): a pool is only
    worth starting for a few files, and a re-run that skips everything holds nothing."""
    for item in work:
        if isinstance(item, dict):
            yield [item]
        else:
            todos.append(item)
            if len(todos) >= count:
                return


def _start_method() -> str:
    # fork starts workers in milliseconds with the modules already imported; the resample
    # path holds no threads or devices that fork could break.
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _init_pool(root: str, job: dict[str, Any]) -> None:
    _die_with_parent()
    keep_freed_memory()
    _pool_state.update(root=Path(root), job=Job.from_dict(job))


def _die_with_parent() -> None:
    """A runner killed with SIGKILL cannot stop its pool; without this its processes would wait
    on the task pipe forever. Linux only; elsewhere a no-op."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pool_process(chunk: list[Todo]) -> list[Outcome]:
    from flashsr_tasks.enhancers import Resampler
    from flashsr_tasks.pipeline import process_file

    root, job = _pool_state["root"], _pool_state["job"]
    return [process_file(root, source, job, Resampler, known_sha256) for source, known_sha256 in chunk]
