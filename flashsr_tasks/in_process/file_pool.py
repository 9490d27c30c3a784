"""Per-file work in forked processes, where a death takes only its own file.

Each process does one file at a time, in the order its pipe brings them, and sends back the outcomes a
few at a time; the supervisor (the runner's process) keeps every process `_AHEAD` files ahead so it
never waits on the pipe, and watches every process's sentinel. Each process notes in shared memory which
file it is on. When one dies (the OOM killer, a crashing decoder) the supervisor reads what it sent
before dying and which file it was on: that file runs again in a fresh process, up to
FLASHSR_MAX_ATTEMPTS runs in all, then gets a failed record that says so (enhance.killed); the files it
finished without answering and those queued behind it are sent again without counting. The run goes on.
"""
from __future__ import annotations

import collections
import multiprocessing
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from flashsr_tasks.in_process.child_process import start_child
from flashsr_tasks.in_process.work_feed import WorkFeed
from flashsr_tasks.manifest.records import Outcome
from flashsr_tasks.runs.job import Job
from flashsr_tasks.runs.planning import Todo

# Outcomes a process sends back together while files come fast (short ones): one message, and one wake-up of the
# supervisor, per this many files rather than per file. Before each file the process sends what it holds when
# nothing else waits in its pipe, or when it holds this many, or when the oldest has waited `_HOLD_S`; so an
# outcome held when a long file starts goes back once that file ends.
_ANSWER_EVERY = 8
_HOLD_S = 0.2
# Files queued at each process beyond the one it is on: more than it answers at a time, so it never waits.
_AHEAD = 2 * _ANSWER_EVERY
# `_Process.on`'s value while the process is between files.
_BETWEEN = -1
# Seconds a stopping run waits for a process to finish the file it is on before ending it.
_FINISH_S = 600.0


class _Process:
    def __init__(self, context: Any, root: Path, job: Job, stop: Any) -> None:
        self.conn, child_end = context.Pipe()
        # The index (among the files sent to it) of the file the process is on; shared memory, so it is known
        # after a death even though the process answers several files at a time.
        self.on = context.RawValue("q", _BETWEEN)
        self.process = context.Process(target=_serve, args=(child_end, str(root), job.to_dict(), stop, self.on),
                                       daemon=True)
        self.process.start()
        child_end.close()
        self.queued: collections.deque[Todo] = collections.deque()  # sent, not yet answered, in order
        self.answered = 0  # files answered so far: queued[i] is the file of index answered + i

    def has_room(self) -> bool:
        return len(self.queued) <= _AHEAD

    def send(self, todo: Todo) -> None:
        self.queued.append(todo)
        self.conn.send((todo.source, todo.known_sha256))


class FilePool:
    """`processes` forked processes that run the per-file function (resampling) on Todos."""

    def __init__(self, processes: int, root: Path, job: Job, max_attempts: int) -> None:
        self.root = root
        self.job = job
        self.max_attempts = max_attempts
        self.context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                                   else "spawn")
        self.stop = self.context.Event()
        self.processes = [_Process(self.context, root, job, self.stop) for _ in range(processes)]
        self.again: collections.deque[Todo] = collections.deque()  # files to send before new ones
        self.deaths: dict[str, int] = {}  # source → deaths so far
        self.received: collections.deque[Outcome] = collections.deque()  # answered, not yet yielded

    def outcomes(self, work: Iterator[Union[Todo, Outcome]]) -> Iterator[Outcome]:
        """Each outcome as it comes (skips in `work` pass straight through), until `work` is done."""
        feed = WorkFeed(work, self.again)  # files to run again go first
        while True:
            for worker in self.processes:
                yield from feed.fill(worker.send, worker.has_room)
            if feed.done and not any(w.queued for w in self.processes):
                return
            yield from self._collect()

    def _collect(self) -> Iterator[Outcome]:
        """Wait until a process answers or dies; yield what it answered."""
        by_handle: dict[Any, _Process] = {}
        for worker in self.processes:
            by_handle[worker.conn] = worker
            by_handle[worker.process.sentinel] = worker
        for handle in wait(list(by_handle)):
            worker = by_handle[handle]
            if worker not in self.processes:
                continue  # replaced while handling an earlier handle of this round
            if handle is worker.conn:
                yield from self._answers(worker)
            elif not worker.process.is_alive():
                yield from self._answers(worker)  # what it sent before it died
                yield from self._died(worker)

    def _answers(self, worker: _Process) -> Iterator[Outcome]:
        while worker.queued and worker.conn.poll():
            try:
                outcomes = worker.conn.recv()
            except (EOFError, OSError):
                return
            for _ in outcomes:
                worker.queued.popleft()
            worker.answered += len(outcomes)
            # Held here until yielded: a run that stops part way through a batch (a full disk) salvages the rest.
            self.received.extend(outcomes)
            while self.received:
                yield self.received.popleft()

    def _died(self, worker: _Process) -> Iterator[Outcome]:
        from flashsr_tasks.enhance.killed import how_it_died, killed_outcome, remove_leftovers

        worker.process.join()
        worker.conn.close()
        self.processes[self.processes.index(worker)] = _Process(self.context, self.root, self.job, self.stop)
        queued = list(worker.queued)
        index = worker.on.value - worker.answered  # in `queued`; outside it, the death was between files
        if not 0 <= index < len(queued):
            self.again.extend(queued)  # finished but unanswered, or never started: sent again, not counted
            return
        on = queued[index]
        self.again.extend(queued[:index])  # finished, their outcomes unsent: run again (the same output), not counted
        remove_leftovers(self.root, on.source, self.job.output_dir)
        deaths = self.deaths.get(on.source, 0) + 1
        if deaths >= self.max_attempts:
            self.deaths.pop(on.source, None)
            yield killed_outcome(self.root, on.source, deaths, how_it_died(worker.process.exitcode), "its process")
        else:
            self.deaths[on.source] = deaths
            self.again.append(on)
        self.again.extend(queued[index + 1:])  # never started: sent again, not counted

    def close(self, salvage: Optional[Callable[[list[Outcome]], None]] = None) -> None:
        """Stop: each process finishes the file it is on (none is cut mid-write) and exits; what they
        finish goes to `salvage`. A second Ctrl-C while waiting cuts it short."""
        self.stop.set()
        finished: list[Outcome] = list(self.received)
        self.received.clear()
        try:
            for worker in self.processes:
                if not worker.queued:
                    worker.conn.close()  # an idle process waits on its pipe: its end tells it to go
            for worker in self.processes:
                while worker.queued and worker.process.is_alive():
                    if wait([worker.conn, worker.process.sentinel], timeout=_FINISH_S):
                        before = len(worker.queued)
                        finished.extend(self._answers(worker))
                        if len(worker.queued) == before:
                            break  # it exited, or stopped without taking the rest
                    else:
                        break
        finally:
            for worker in self.processes:
                if worker.process.is_alive():
                    worker.process.terminate()
            for worker in self.processes:
                worker.process.join(5)
                worker.conn.close()
            if salvage is not None and finished:
                salvage(finished)


def _serve(conn: Connection, root: str, job_data: dict[str, Any], stop: Any, on: Any) -> None:
    """A pool process: files from the pipe, one at a time, their outcomes sent back a few at a time (at once when
    no file is waiting); ends when the pipe closes or the run stops."""
    from flashsr_tasks.enhance.enhancers import Resampler
    from flashsr_tasks.enhance.per_file import process_file

    start_child()
    job = Job.from_dict(job_data)
    done: list[Outcome] = []
    held_since = 0.0
    index = 0
    try:
        while not stop.is_set():
            if done and (len(done) >= _ANSWER_EVERY or time.monotonic() - held_since >= _HOLD_S or not conn.poll()):
                conn.send(done)
                done = []
            try:
                source, known_sha256 = conn.recv()
            except (EOFError, OSError):
                return
            if stop.is_set():
                return  # the run is stopping: what is queued is left for the next run
            on.value = index
            outcome = process_file(Path(root), source, job, Resampler, known_sha256)
            on.value = _BETWEEN
            index += 1
            if not done:
                held_since = time.monotonic()
            done.append(outcome)
    finally:
        if done:
            conn.send(done)

