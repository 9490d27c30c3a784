"""The embedded default: run a job's files on this machine, journaling each record as it comes.

The resampler is cheap and CPU-bound, so it fans out over every core, in pool processes
(in_process.file_pool) where a death takes only its own file; the model is large and owns its
device, so it runs in one child process (in_process.model_process), its files pipelined through
one batcher.

Sources stream in and outcomes stream out: a few files per process are in flight, whatever the
run's length. Records are appended to the root's journal as they arrive, so a run killed at any
moment keeps every file it finished; the caller folds the journal into manifest.json at the end.
"""
from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator, Mapping, Optional, Union

from flashsr_tasks import config
from flashsr_tasks.files.disk_full import DiskFull, is_disk_full
from flashsr_tasks.in_process.file_pool import FilePool
from flashsr_tasks.manifest.records import Outcome, records_of
from flashsr_tasks.manifest.store import append_records
from flashsr_tasks.runs.job import Job
from flashsr_tasks.runs.planning import Todo

# Records held before one journal write while they come fast: a killed run loses at most these.
_CHUNK = 8
# The journal is fsynced at most this often (a killed process loses nothing either way; this
# bounds what a power cut can take).
_SYNC_EVERY_S = 1.0
# Records that come closer together than this are journaled a chunk at a time.
_HOLD_S = 0.2


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
    produced = _outcomes(root, iter(work), job, processes or os.cpu_count() or 1, journal.add_if_room)
    try:
        for outcomes in produced:
            try:
                journal.add(outcomes)
            except OSError as exc:
                if is_disk_full(exc):
                    raise DiskFull(str(job.manifest_root)) from None
                raise
            if on_outcome:
                for outcome in outcomes:
                    on_outcome(outcome)
            full = next((o["stop_disk_full"] for o in outcomes if o.get("stop_disk_full")), None)
            if full is not None:
                raise DiskFull(full)  # every later file would fail the same way
    finally:
        # Stop the pool now (its processes unwind and remove their temporary files), not whenever
        # the generator is collected: after this process exits they would be SIGKILLed mid-write.
        produced.close()
        journal.flush_if_room()  # Ctrl-C or an error too: what finished is journaled
        from flashsr_tasks.in_process.model_process import discard_preloaded

        discard_preloaded()  # strict mode's, when no file needed it


class _Journal:
    """Appends records a chunk at a time while they come fast: resampling one file after
    another (one process) would otherwise take the lock and write once per file. Records that
    come slowly (the model: seconds a file) are appended as they come. At most `_CHUNK` records
    are held, so a killed run loses no more than one pool chunk's worth."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.synced = time.monotonic()
        self.held: list[Mapping[str, Any]] = []
        self.last_add = 0.0

    def add_if_room(self, outcomes: list[Outcome]) -> None:
        """For records salvaged while the run stops: a full disk must not hide why it stopped
        (those files are redone by the next run, their outputs being unrecorded)."""
        self.held.extend(records_of(outcomes))
        self.flush_if_room()

    def flush_if_room(self) -> None:
        try:
            self.flush()
        except OSError as exc:
            if not is_disk_full(exc):
                raise

    def add(self, outcomes: list[Outcome]) -> None:
        now = time.monotonic()
        slow = now - self.last_add >= _HOLD_S
        self.last_add = now
        self.held.extend(records_of(outcomes))
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
              salvage: Callable[[list[Outcome]], None]) -> Generator[list[Outcome], None, None]:
    first: list[Todo] = []
    yield from _skips_until(work, 1, first)
    if not first:
        return  # everything was skipped: nothing to load, not even numpy
    # Imported only now, for the same reason.
    from flashsr_tasks.enhance import memory_budget
    from flashsr_tasks.enhance.enhancers import note_fallback, wants_model

    todos: Iterator[Union[Todo, Outcome]] = itertools.chain(first, work)
    if wants_model(job.device, job.model_dir):
        # One child process holds the model; files share its batches (pipelined). A death there takes that
        # process, not the run: its files are tried again (in_process.model_process).
        from flashsr_tasks.in_process.model_process import model_process_for

        model = model_process_for(job.device, job.model_dir)
        if model.runs_model:
            try:
                yield from ([outcome] for outcome in model.outcomes(root, job, todos))
            except BaseException:
                model.close(salvage)  # Ctrl-C: the files it holds finish and are journaled
                raise
            todos = itertools.chain(model.leftover(), todos)
        model.close()
        if not model.runs_model:
            note_fallback(model.fallback_reason)
        # the model could not load: the rest is resampling, which a pool does best
    first = []
    yield from _skips_until(todos, processes, first)
    if not first:
        return
    # Even one file runs in a pool process: whatever kills it (the OOM killer) takes that file alone.
    size = min(processes, len(first))
    memory_budget.share_among(size + 1, size)  # the pool's processes and this one; one file each
    pool = FilePool(size, root, job, config.max_attempts())
    try:
        yield from ([outcome] for outcome in pool.outcomes(itertools.chain(first, todos)))
    except BaseException:
        # Ctrl-C (or a full disk): each process finishes the file it is on, so that none is cut
        # mid-write; what they finish is journaled (salvage). A second Ctrl-C cuts it short.
        pool.close(salvage)
        raise
    pool.close()


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


