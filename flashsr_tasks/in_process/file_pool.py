"""Per-file work in forked processes, where a death takes only its own file.

Each process does one file at a time, in the order its pipe brings them, and sends back each
outcome; the supervisor (the runner's process) keeps every process `_AHEAD` files ahead so it never
waits on the pipe, and watches every process's sentinel. When a process dies (the OOM killer, a
crashing decoder) the supervisor reads what it sent before dying: the first file it had not
answered is the one it died on. That file runs again in a fresh process, up to
FLASHSR_MAX_ATTEMPTS runs in all, then gets a failed record that says so (enhance.killed); the files
queued behind it are sent again without counting. The run goes on.
"""
from __future__ import annotations

import collections
import multiprocessing
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from flashsr_tasks.in_process.child_process import start_child
from flashsr_tasks.in_process.work_feed import WorkFeed
from flashsr_tasks.manifest.records import Outcome
from flashsr_tasks.runs.job import Job
from flashsr_tasks.runs.planning import Todo

# Files queued at each process beyond the one it is on: the next is in its pipe when it finishes.
_AHEAD = 2
# Seconds a stopping run waits for a process to finish the file it is on before ending it.
_FINISH_S = 600.0


class _Process:
    def __init__(self, context: Any, root: Path, job: Job, stop: Any) -> None:
        self.conn, child_end = context.Pipe()
        self.process = context.Process(target=_serve, args=(child_end, str(root), job.to_dict(), stop), daemon=True)
        self.process.start()
        child_end.close()
        self.queued: collections.deque[Todo] = collections.deque()  # sent, not yet answered, in order

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
                outcome = worker.conn.recv()
            except (EOFError, OSError):
                return
            worker.queued.popleft()
            yield outcome

    def _died(self, worker: _Process) -> Iterator[Outcome]:
        from flashsr_tasks.enhance.killed import how_it_died, killed_outcome, remove_leftovers

        worker.process.join()
        worker.conn.close()
        self.processes[self.processes.index(worker)] = _Process(self.context, self.root, self.job, self.stop)
        if not worker.queued:
            return
        on = worker.queued.popleft()
        remove_leftovers(self.root, on.source, self.job.output_dir)
        deaths = self.deaths.get(on.source, 0) + 1
        if deaths >= self.max_attempts:
            self.deaths.pop(on.source, None)
            yield killed_outcome(self.root, on.source, deaths, how_it_died(worker.process.exitcode), "its process")
        else:
            self.deaths[on.source] = deaths
            self.again.append(on)
        self.again.extend(worker.queued)  # never started: sent again, not counted

    def close(self, salvage: Optional[Callable[[list[Outcome]], None]] = None) -> None:
        """Stop: each process finishes the file it is on (none is cut mid-write) and exits; what they
        finish goes to `salvage`. A second Ctrl-C while waiting cuts it short."""
        self.stop.set()
        finished: list[Outcome] = []
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


def _serve(conn: Connection, root: str, job_data: dict[str, Any], stop: Any) -> None:
    """A pool process: files from the pipe, one at a time, each outcome sent back; ends when the
    pipe closes or the run stops."""
    from flashsr_tasks.enhance.enhancers import Resampler
    from flashsr_tasks.enhance.per_file import process_file

    start_child()
    job = Job.from_dict(job_data)
    while not stop.is_set():
        try:
            source, known_sha256 = conn.recv()
        except (EOFError, OSError):
            return
        if stop.is_set():
            return  # the run is stopping: what is queued is left for the next run
        conn.send(process_file(Path(root), source, job, Resampler, known_sha256))

