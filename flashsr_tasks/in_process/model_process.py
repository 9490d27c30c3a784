"""The in-process runner's model path in a child process, where a death takes only that process.

One child loads the model and runs the files sent to it, each in a thread of its own: the model's enhancer
(`BatchedEnhancer`) gathers their windows into shared forward passes while the other threads decode, resample,
write and hash. The supervisor (the runner's process) keeps up to `in_flight` files unanswered at the child and
watches its sentinel. When the child dies (the OOM killer, a crash in a library), the files it had not answered
each count one death and become suspects: a fresh child runs them one at a time, where a death is that file's
alone. A file that reaches FLASHSR_MAX_ATTEMPTS deaths gets a failed record (enhance.killed); the run goes on.

The child is forked (a test's stand-in model travels with it), unless this process has already initialised
CUDA, which a forked child cannot use: then it is spawned, and its factory must pickle.
"""
from __future__ import annotations

import collections
import multiprocessing
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union

from flashsr_tasks.in_process.child_process import start_child
from flashsr_tasks.in_process.work_feed import WorkFeed
from flashsr_tasks.manifest.records import Outcome
from flashsr_tasks.runs.job import Job
from flashsr_tasks.runs.planning import Todo

if TYPE_CHECKING:
    from flashsr_tasks.enhance.enhancers import Enhancer

# Seconds a stopping run waits for the child to finish the files it is on before ending it.
_FINISH_S = 600.0
# Seconds the child gets to exit on its own once its files are done, then on SIGTERM, before SIGKILL.
_EXIT_S = 10.0


class _Child:
    """One child process and the files it holds (sent, not yet answered, by source)."""

    def __init__(self, context: Any, factory: Callable[[], Enhancer], in_flight: int) -> None:
        self.conn, child_end = context.Pipe()
        self.process = context.Process(target=_serve, args=(child_end, factory, in_flight), daemon=True)
        self.process.start()
        child_end.close()
        self.held: dict[str, Todo] = {}

    def first_message(self) -> Optional[tuple[Any, ...]]:
        """The child's report once its model is loaded; None when it died first."""
        if wait([self.conn, self.process.sentinel]) and self.conn.poll():
            try:
                return self.conn.recv()  # type: ignore[no-any-return,unused-ignore]
            except (EOFError, OSError):
                return None
        return None

    def stop(self) -> None:
        """Take no more files: finish those held, then exit."""
        try:
            self.conn.send(None)
        except OSError:
            pass  # already gone

    def end(self) -> None:
        self.stop()
        self.process.join(_EXIT_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(_EXIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class ModelProcess:
    """The model in a supervised child. Once made, `method` says what the child runs ("flashsr", or
    "resample" when the model could not load: `fallback_reason` says why; such a child takes no files)."""

    def __init__(self, factory: Callable[[], Enhancer], max_attempts: int, in_flight: int) -> None:
        self.factory = factory
        self.max_attempts = max_attempts
        self.in_flight = max(1, in_flight)
        self.context = multiprocessing.get_context(_start_method())
        # source → deaths so far, for files not yet answered: the suspects, queued or held
        self.deaths: dict[str, int] = {}
        self.suspects: collections.deque[Todo] = collections.deque()  # held at a death: to run one at a time
        self.root: Optional[Path] = None
        self.job: Optional[Job] = None
        self.method = "resample"
        self.fallback_reason: Optional[str] = None
        self.child = self._start()

    def _start(self) -> _Child:
        """A fresh child, its model loaded; raises `ModelRequired` in strict model mode when it cannot load."""
        from flashsr_tasks.config import require_model
        from flashsr_tasks.enhance.enhancers import ModelRequired
        from flashsr_tasks.enhance.killed import how_it_died

        child = _Child(self.context, self.factory, self.in_flight)
        message = child.first_message()
        if message is None:
            child.process.join()
            child.conn.close()
            how = how_it_died(child.process.exitcode)
            self.method, self.fallback_reason = "resample", f"the model's process died while loading it ({how})"
            if require_model():
                raise ModelRequired(f"FLASHSR_REQUIRE_MODEL=1 and the FlashSR model cannot run: {self.fallback_reason}")
            return child
        if message[0] == "refused":
            child.end()
            raise ModelRequired(message[1])
        _, self.method, self.fallback_reason = message
        if self.root is not None and self.job is not None and self.runs_model:
            child.conn.send(("run", str(self.root), self.job.to_dict()))
        return child

    @property
    def runs_model(self) -> bool:
        return self.method != "resample"

    def outcomes(self, root: Path, job: Job, work: Iterator[Union[Todo, Outcome]]) -> Iterator[Outcome]:
        """Each outcome as it comes (skips in `work` pass straight through), until `work` is done, or until a
        fresh child could not load the model: then `leftover` holds the files still owed."""
        self.root, self.job = root, job
        if not self.runs_model:
            return
        self.child.conn.send(("run", str(root), job.to_dict()))
        feed = WorkFeed(work, self.suspects)
        while True:
            yield from feed.fill(self._send, self._has_room)
            if feed.done and not self.child.held:
                return
            yield from self._collect()
            if not self.runs_model:
                return  # a fresh child could not load the model: the caller resamples what is left

    def _has_room(self) -> bool:
        limit = 1 if self.deaths else self.in_flight  # a suspect runs alone: a death is its own
        return len(self.child.held) < limit

    def leftover(self) -> list[Todo]:
        """Files owed but not run (a fresh child could not load the model)."""
        owed = list(self.suspects) + list(self.child.held.values())
        self.suspects.clear()
        self.child.held.clear()
        return owed

    def _send(self, todo: Todo) -> None:
        self.child.held[todo.source] = todo
        self.child.conn.send(("file", todo.source, todo.known_sha256))

    def _collect(self) -> Iterator[Outcome]:
        """Wait until the child answers or dies; yield what it answered."""
        child = self.child
        ready = wait([child.conn, child.process.sentinel])
        yield from self._answers(child)
        if child.process.sentinel in ready and not child.process.is_alive():
            yield from self._answers(child)  # what it sent before it died
            yield from self._died(child)

    def _answers(self, child: _Child) -> Iterator[Outcome]:
        while child.held and child.conn.poll():
            try:
                outcome = child.conn.recv()
            except (EOFError, OSError):
                return
            child.held.pop(outcome["source"], None)
            self.deaths.pop(outcome["source"], None)
            yield outcome

    def _died(self, child: _Child) -> Iterator[Outcome]:
        from flashsr_tasks.enhance.killed import how_it_died, killed_outcome, remove_leftovers

        assert self.root is not None and self.job is not None
        child.process.join()
        child.conn.close()
        how = how_it_died(child.process.exitcode)
        for todo in child.held.values():
            remove_leftovers(self.root, todo.source, self.job.output_dir)
            deaths = self.deaths.get(todo.source, 0) + 1
            if deaths >= self.max_attempts:
                self.deaths.pop(todo.source, None)
                yield killed_outcome(self.root, todo.source, deaths, how, "its process")
            else:
                self.deaths[todo.source] = deaths
                self.suspects.append(todo)
        child.held.clear()
        self.child = self._start()

    def close(self, salvage: Optional[Callable[[list[Outcome]], None]] = None) -> None:
        """Stop: the child finishes the files it holds (none is cut mid-write) and exits; what it finishes
        goes to `salvage`. A second Ctrl-C while waiting cuts it short."""
        child = self.child
        finished: list[Outcome] = []
        try:
            child.stop()
            while child.held and child.process.is_alive():
                if not wait([child.conn, child.process.sentinel], timeout=_FINISH_S):
                    break
                before = len(child.held)
                finished.extend(self._answers(child))
                if len(child.held) == before:
                    break  # it exited
        finally:
            child.end()
            if self.root is not None and self.job is not None:
                from flashsr_tasks.enhance.killed import remove_leftovers

                for todo in child.held.values():  # cut short: a SIGKILL leaves its temporary files
                    remove_leftovers(self.root, todo.source, self.job.output_dir)
            if salvage is not None and finished:
                salvage(finished)


def _start_method() -> str:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "spawn"
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _serve(conn: Connection, factory: Callable[[], Enhancer], in_flight: int) -> None:
    """The child: load the model, report, then run the files the pipe brings, each in a thread, each outcome
    sent back as it comes; ends when the pipe says stop or closes, once the files it holds are done."""
    start_child()
    from flashsr_tasks.enhance import memory_budget
    from flashsr_tasks.enhance.enhancers import ModelRequired, Resampler
    from flashsr_tasks.enhance.per_file import process_file

    try:
        enhancer = factory()
    except ModelRequired as exc:
        conn.send(("refused", str(exc)))
        return
    if isinstance(enhancer, Resampler):
        conn.send(("loaded", "resample", enhancer.fallback_reason))
        return
    conn.send(("loaded", enhancer.method, None))
    # One process holds the model and its files in threads; the command's own process is small beside it.
    memory_budget.share_among(1, in_flight)
    sending = threading.Lock()

    def send(future: Future) -> None:
        with sending:
            conn.send(future.result())  # process_file never raises for a file

    root: Optional[Path] = None
    job: Optional[Job] = None
    with ThreadPoolExecutor(in_flight, thread_name_prefix="flashsr-file") as pool:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message is None:
                break
            if message[0] == "run":
                root, job = Path(message[1]), Job.from_dict(message[2])
                continue
            assert root is not None and job is not None
            _, source, known_sha256 = message
            pool.submit(process_file, root, source, job, lambda: enhancer, known_sha256).add_done_callback(send)
    close = getattr(enhancer, "close", None)
    if close is not None:
        close()


# A model process started before the run (strict model mode: a model that cannot load stops the run before it
# writes anything), by (device, model folder), until the runner takes it.
_preloaded: dict[tuple[str, Optional[str]], ModelProcess] = {}


def model_process_for(device: str, model_dir: Optional[str]) -> ModelProcess:
    """The preloaded model process for `device` and `model_dir`, else a new one (FLASHSR_MAX_ATTEMPTS,
    FLASHSR_FILES_IN_FLIGHT)."""
    from flashsr_tasks import config
    from flashsr_tasks.enhance.enhancers import load_enhancer

    preloaded = _preloaded.pop((device, model_dir), None)
    if preloaded is not None:
        return preloaded
    return ModelProcess(partial(load_enhancer, device, model_dir), config.max_attempts(), config.files_in_flight())


def preload(device: str, model_dir: Optional[str]) -> None:
    """Start the model process now, its model loaded; raises `ModelRequired` when it cannot run (strict mode)."""
    _preloaded[(device, model_dir)] = model_process_for(device, model_dir)


def discard_preloaded() -> None:
    """End a preloaded model process that no file needed (a re-run that skipped everything)."""
    while _preloaded:
        _preloaded.popitem()[1].close()
