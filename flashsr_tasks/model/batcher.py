"""A dynamic batcher: rows from many callers, one model call per batch, in one thread.

Callers `submit` a block of rows and get a `Future`; the thread only collates, calls the model (whatever function it
is given; numpy only) and copies rows back, so each file's CPU work stays in its caller's thread.
docs/gpu-worker.md, "The batcher", gives its rules: when a batch starts, failures, the bound, `finish_batch`, and
`TooBig`: a batch the device has no memory for runs again in halves, down to one row.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Optional

import numpy as np

from flashsr_tasks.model import observers

log = logging.getLogger(__name__)

RunBatch = Callable[[np.ndarray], Any]  # the output rows, or a handle for `finish_batch`
FinishBatch = Callable[[Any], np.ndarray]


class BatcherClosed(RuntimeError):
    """The batcher was closed before this block's rows were done."""


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class TooBig:
    """What says a batch is too large for the device (`errors`: CUDA's out-of-memory), what to do before a smaller
    batch runs (`free`: empty the allocator's cache), and the error that fails the blocks of a single row that does
    not fit alone (`alone`, given the device's message). The batcher itself knows no device."""

    errors: tuple[type[BaseException], ...]
    free: Callable[[], None] = _nothing
    alone: Callable[[str], BaseException] = RuntimeError


@dataclass
class _Block:
    rows: np.ndarray                 # [n, ...] float32
    future: Future
    queued_at: float
    out: Optional[np.ndarray] = None
    taken: int = 0                   # rows handed to a batch so far
    done: int = 0                    # rows whose result is back
    failed: bool = False


@dataclass
class _Launched:
    live: list[tuple[_Block, int, int]]
    rows: int
    handle: Any
    started: float


@dataclass
class BatcherStats:
    """What the batcher did: for benchmarks and logs (each batch also goes to the process's
    model observer, flashsr_tasks.model.observers: a worker's metrics)."""

    batches: int = 0
    rows: int = 0
    busy_s: float = 0.0              # wall time inside the model call
    halvings: int = 0                # batches run again in halves (out of device memory)
    started_at: float = field(default_factory=time.perf_counter)

    @property
    def rows_per_batch(self) -> float:
        return self.rows / self.batches if self.batches else 0.0


class Batcher:
    """One model, many callers (docs/gpu-worker.md, "The batcher")."""

    def __init__(self, run_batch: RunBatch, max_rows: int, max_wait_s: float = 0.02,
                 max_queued_rows: Optional[int] = None,
                 thread_context: Optional[Callable[[], ContextManager]] = None,
                 name: str = "flashsr-batcher", finish_batch: Optional[FinishBatch] = None,
                 too_big: Optional[TooBig] = None) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be 0 or more, got {max_wait_s}")
        self._run_batch = run_batch
        self._finish_batch = finish_batch
        self._too_big = too_big
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.max_queued_rows = max_queued_rows or 4 * max_rows
        self._thread_context = thread_context or contextlib.nullcontext
        self._queue: deque[_Block] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self.stats = BatcherStats()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers' side

    def submit(self, rows: np.ndarray) -> Future:
        """Queue `rows` ([n, ...], n ≥ 1); the future gives the model's n output rows, in order."""
        rows = np.asarray(rows)
        if rows.ndim < 1 or rows.shape[0] == 0:
            raise ValueError(f"submit needs at least one row, got shape {rows.shape}")
        future: Future = Future()
        with self._cond:
            while self._queued_rows >= self.max_queued_rows and not self._closed:
                self._cond.wait()
            if self._closed:
                raise BatcherClosed("the model's batcher is closed (the worker is shutting down)")
            self._queue.append(_Block(rows=rows, future=future, queued_at=time.monotonic()))
            self._queued_rows += rows.shape[0]
            self._cond.notify_all()
        return future

    def run(self, rows: np.ndarray) -> np.ndarray:
        """`submit` and wait."""
        return self.submit(rows).result()

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop taking rows, fail every block still queued, and wait for the thread."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
            self._cond.notify_all()
        for block in pending:
            _fail(block, BatcherClosed("the model's batcher was closed before these rows ran"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ the batcher thread

    def _next_batch(self, wait: bool = True) -> Optional[list[tuple[_Block, int, int]]]:
        """Wait for a full batch or the oldest row's deadline; take up to max_rows rows (in
        arrival order). None when closed; with `wait` false, [] when no batch is ready now."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                if self._queue:
                    waiting = self._queued_rows
                    deadline = self._queue[0].queued_at + self.max_wait_s
                    now = time.monotonic()
                    if waiting >= self.max_rows or now >= deadline:
                        break
                    if not wait:
                        return []
                    self._cond.wait(deadline - now)
                elif not wait:
                    return []
                else:
                    self._cond.wait()
            parts: list[tuple[_Block, int, int]] = []
            room = self.max_rows
            while room and self._queue:
                block = self._queue[0]
                start = block.taken
                n = min(room, block.rows.shape[0] - start)
                parts.append((block, start, start + n))
                block.taken += n
                room -= n
                if block.taken == block.rows.shape[0]:
                    self._queue.popleft()
            self._queued_rows -= self.max_rows - room
            self._cond.notify_all()  # room in the queue: wake blocked submitters
            return parts

    def _loop(self) -> None:
        # e.g. torch.inference_mode: it is per thread, so it is entered here, in the model's thread
        with self._thread_context():
            self._serve()

    def _serve(self) -> None:
        in_flight: Optional[_Launched] = None  # launched, not yet waited for (finish_batch only)
        while True:
            parts = self._next_batch(wait=in_flight is None)
            if parts is None:
                if in_flight is not None:
                    self._complete(in_flight)
                return
            launched, too_big = self._launch(parts) if parts else (None, None)
            if in_flight is not None:
                self._complete(in_flight)  # after the next batch is on its way
            if too_big is not None:  # once the previous batch has finished and let go of its memory
                self._run_in_halves(*too_big)
            in_flight = launched
            if in_flight is not None and self._finish_batch is None:
                self._complete(in_flight)
                in_flight = None

    def _launch(self, parts: list[tuple[_Block, int, int]]) -> tuple[Optional[_Launched], Optional[_TooBigBatch]]:
        """The batch launched, or (None, the batch and the device's message) when it is too big for the device."""
        # a block that failed in an earlier slice, or whose caller gave up on it, is not run
        live = _live(parts)
        if not live:
            return None, None
        try:
            x = _collate(live)
            started = time.perf_counter()
            return _Launched(live, x.shape[0], self._run_batch(x), started), None
        except BaseException as exc:  # every caller in this batch hears of it; the thread lives on
            if self._is_too_big(exc):
                return None, (live, str(exc))  # the exception (and the tensors its frames hold) is let go here
            self._fail_batch(live, exc)
            return None, None

    def _complete(self, launched: _Launched) -> None:
        message: Optional[str] = None
        try:
            y = np.asarray(self._finish_batch(launched.handle) if self._finish_batch else launched.handle)
        except BaseException as exc:
            if not self._is_too_big(exc):
                self._fail_batch(launched.live, exc)
                return
            message = str(exc)
        if message is not None:
            self._run_in_halves(launched.live, message)
            return
        self._deliver(launched.live, y, time.perf_counter() - launched.started)

    def _deliver(self, live: list[tuple[_Block, int, int]], y: np.ndarray, busy: float) -> None:
        rows = sum(e - s for _, s, e in live)
        self.stats.busy_s += busy
        if y.shape[0] != rows:
            self._fail_batch(live, RuntimeError(f"the model returned {y.shape[0]} rows for a batch of {rows}"))
            return
        self.stats.batches += 1
        self.stats.rows += y.shape[0]
        _report_batch(y.shape[0], busy)
        log.debug("model batch of %d row%s from %d caller%s", y.shape[0], "" if y.shape[0] == 1 else "s",
                  len(live), "" if len(live) == 1 else "s")
        offset = 0
        for block, s, e in live:
            if block.out is None:
                block.out = np.empty((block.rows.shape[0], *y.shape[1:]), dtype=y.dtype)
            block.out[s:e] = y[offset:offset + e - s]
            offset += e - s
            block.done += e - s
            if block.done == block.rows.shape[0]:
                _resolve(block)

    # ------------------------------------------------------------------ out of device memory

    def _is_too_big(self, exc: BaseException) -> bool:
        return self._too_big is not None and isinstance(exc, self._too_big.errors)

    def _run_in_halves(self, live: list[tuple[_Block, int, int]], message: str) -> None:
        """A batch the device had no memory for: free the cache, run each half (synchronously, launch and finish),
        halving again as needed; a single row that does not fit fails its block (`TooBig.alone`)."""
        assert self._too_big is not None
        self._too_big.free()
        rows = sum(e - s for _, s, e in live)
        if rows == 1:
            log.warning("one row alone does not fit on the device (%s): its file fails", message.splitlines()[0][:200])
            self._fail_batch(live, self._too_big.alone(message))
            return
        self.stats.halvings += 1
        log.warning("a batch of %d rows ran out of device memory; it runs again as %d and %d rows (lower "
                    "FLASHSR_BATCH_SIZE if this recurs)", rows, (rows + 1) // 2, rows // 2)
        for half in _halves(live, (rows + 1) // 2):
            half = _live(half)
            if not half:
                continue
            message = ""
            try:
                x = _collate(half)
                started = time.perf_counter()
                handle = self._run_batch(x)
                y = np.asarray(self._finish_batch(handle) if self._finish_batch else handle)
            except BaseException as exc:
                if not self._is_too_big(exc):
                    self._fail_batch(half, exc)
                    continue
                message = str(exc)
            if message:
                self._run_in_halves(half, message)
            else:
                self._deliver(half, y, time.perf_counter() - started)

    @staticmethod
    def _fail_batch(live: list[tuple[_Block, int, int]], exc: BaseException) -> None:
        log.debug("batch of %d rows failed", sum(e - s for _, s, e in live), exc_info=True)
        for block, _, _ in live:
            _fail(block, exc)


_TooBigBatch = tuple[list[tuple[_Block, int, int]], str]


def _live(parts: list[tuple[_Block, int, int]]) -> list[tuple[_Block, int, int]]:
    return [(b, s, e) for b, s, e in parts if not b.failed and not b.future.cancelled()]


def _collate(live: list[tuple[_Block, int, int]]) -> np.ndarray:
    first, start, end = live[0]
    return np.concatenate([b.rows[s:e] for b, s, e in live]) if len(live) > 1 else first.rows[start:end]


def _halves(live: list[tuple[_Block, int, int]], first_rows: int) -> tuple[list[tuple[_Block, int, int]], ...]:
    """`live` cut after `first_rows` rows (a block's slice may be cut in two)."""
    first: list[tuple[_Block, int, int]] = []
    second: list[tuple[_Block, int, int]] = []
    room = first_rows
    for block, s, e in live:
        take = min(room, e - s)
        if take:
            first.append((block, s, s + take))
        if s + take < e:
            second.append((block, s + take, e))
        room -= take
    return first, second


def _report_batch(rows: int, seconds: float) -> None:
    observer = observers.current()
    if observer is not None:
        try:
            observer.batch(rows, seconds)
        except Exception:  # a metric must never fail a batch
            log.debug("the model observer failed", exc_info=True)


def _resolve(block: _Block) -> None:
    try:
        block.future.set_result(block.out)
    except Exception:  # cancelled by its caller: nothing to hand back, and no reason to die
        pass


def _fail(block: _Block, exc: BaseException) -> None:
    block.failed = True
    try:
        block.future.set_exception(exc)
    except Exception:  # already resolved or cancelled
        pass
