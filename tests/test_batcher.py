"""The dynamic batcher, with a numpy stand-in model (fast; no torch)."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from flashsr_tasks.model.batcher import Batcher, BatcherClosed


class Recorder:
    """A model that doubles its input and remembers the size of every batch."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay_s = delay_s
        self.thread_names: set[str] = set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.sizes.append(x.shape[0])
        self.thread_names.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return x * 2


def rows(n: int, first: float) -> np.ndarray:
    return (first + np.arange(n, dtype=np.float32))[:, None] * np.ones((1, 3), np.float32)


def test_rows_from_many_callers_share_batches_and_each_gets_its_own_back() -> None:
    model = Recorder(delay_s=0.05)
    batcher = Batcher(model, max_rows=4, max_wait_s=0.5)
    try:
        blocks = [rows(n, 100 * i) for i, n in enumerate([1, 3, 2, 5, 1, 4])]
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(batcher.run, blocks))
        for block, result in zip(blocks, results):
            np.testing.assert_array_equal(result, block * 2)
        assert max(model.sizes) == 4 and sum(model.sizes) == 16
        assert len(model.sizes) <= 6  # full batches, not one call per block
        assert model.thread_names == {"flashsr-batcher"}
        assert batcher.stats.rows == 16 and batcher.stats.batches == len(model.sizes)
    finally:
        batcher.close()


def test_a_lone_row_waits_for_the_oldest_rows_deadline_only() -> None:
    model = Recorder()
    batcher = Batcher(model, max_rows=8, max_wait_s=0.2)
    try:
        started = time.monotonic()
        first = batcher.submit(rows(1, 0))
        time.sleep(0.1)
        second = batcher.submit(rows(1, 1))  # does not push the deadline back
        first.result(5), second.result(5)
        waited = time.monotonic() - started
        assert 0.18 <= waited < 0.35, waited
        assert model.sizes == [2]
    finally:
        batcher.close()


def test_a_failing_batch_fails_every_caller_in_it_and_the_batcher_lives_on() -> None:
    calls = []

    def flaky(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return x

    batcher = Batcher(flaky, max_rows=4, max_wait_s=0.2)
    try:
        a, b = batcher.submit(rows(2, 0)), batcher.submit(rows(2, 10))
        for future in (a, b):
            with pytest.raises(RuntimeError, match="out of memory"):
                future.result(5)
        np.testing.assert_array_equal(batcher.run(rows(1, 5)), rows(1, 5))
    finally:
        batcher.close()


def test_a_block_spanning_batches_fails_whole_when_one_slice_fails() -> None:
    seen = []

    def second_call_fails(x: np.ndarray) -> np.ndarray:
        seen.append(x.shape[0])
        if len(seen) == 2:
            raise ValueError("bad slice")
        return x

    batcher = Batcher(second_call_fails, max_rows=2, max_wait_s=0)
    try:
        with pytest.raises(ValueError, match="bad slice"):
            batcher.run(rows(5, 0))
        assert seen[:2] == [2, 2]  # the rest of the block is not run once it has failed
        assert sum(seen) <= 4
    finally:
        batcher.close()


def test_a_model_returning_the_wrong_number_of_rows_is_an_error_for_its_callers() -> None:
    batcher = Batcher(lambda x: x[:-1], max_rows=4, max_wait_s=0)
    try:
        with pytest.raises(RuntimeError, match="returned 2 rows for a batch of 3"):
            batcher.run(rows(3, 0))
    finally:
        batcher.close()


def test_the_queue_is_bounded_and_close_fails_what_is_pending() -> None:
    release = threading.Event()

    def blocked(x: np.ndarray) -> np.ndarray:
        release.wait(5)
        return x

    batcher = Batcher(blocked, max_rows=1, max_wait_s=0, max_queued_rows=2)
    running = batcher.submit(rows(1, 0))
    time.sleep(0.1)  # taken by the model, which now blocks
    queued = [batcher.submit(rows(1, i)) for i in (1, 2)]
    admitted = threading.Event()
    threading.Thread(target=lambda: (batcher.submit(rows(1, 3)), admitted.set()), daemon=True).start()
    assert not admitted.wait(0.3)  # the queue is full: the producer waits
    release.set()
    assert admitted.wait(5)
    running.result(5)
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit(rows(1, 9))


def test_close_fails_queued_rows() -> None:
    gate = threading.Event()
    batcher = Batcher(lambda x: (gate.wait(5), x)[1], max_rows=1, max_wait_s=0)
    first = batcher.submit(rows(1, 0))
    time.sleep(0.1)
    waiting = batcher.submit(rows(1, 1))
    threading.Timer(0.2, gate.set).start()
    batcher.close(timeout=5)
    with pytest.raises(BatcherClosed):
        waiting.result(1)
    first.result(5)


def test_rows_of_a_cancelled_block_are_not_run() -> None:
    model = Recorder()
    gate = threading.Event()
    batcher = Batcher(lambda x: (gate.wait(5), model(x))[1], max_rows=1, max_wait_s=0)
    try:
        first = batcher.submit(rows(1, 0))
        time.sleep(0.1)
        unwanted = batcher.submit(rows(1, 1))
        assert unwanted.cancel()  # its caller failed elsewhere and gave up on it
        wanted = batcher.submit(rows(1, 2))
        gate.set()
        np.testing.assert_array_equal(wanted.result(5), rows(1, 2) * 2)
        first.result(5)
        assert model.sizes == [1, 1]  # first and wanted; never the cancelled one
    finally:
        batcher.close()


def test_with_finish_batch_the_next_batch_is_launched_before_the_previous_is_handed_back() -> None:
    events: list[str] = []

    def launch(x: np.ndarray) -> np.ndarray:
        events.append(f"launch {int(x[0, 0])}")
        return x * 2

    def finish(handle: np.ndarray) -> np.ndarray:
        events.append(f"finish {int(handle[0, 0]) // 2}")
        return handle

    batcher = Batcher(launch, max_rows=2, max_wait_s=0.5, finish_batch=finish)
    try:
        rows = np.arange(6, dtype=np.float32).reshape(6, 1)
        out = batcher.submit(rows).result(timeout=10)  # three batches, all ready at once
        np.testing.assert_array_equal(out, rows * 2)
        assert events == ["launch 0", "launch 2", "finish 0", "launch 4", "finish 2", "finish 4"]
        assert (batcher.stats.batches, batcher.stats.rows) == (3, 6)
        # a lone batch with nothing behind it is finished at once, not held for a next one
        assert batcher.submit(rows[:1]).result(timeout=10)[0, 0] == 0
    finally:
        batcher.close(timeout=5)
