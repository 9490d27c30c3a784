"""CUDA out of memory, on the CPU: a model that raises torch's real OutOfMemoryError above a given batch size. The
batcher runs such a batch again in halves down to one row, with the same results as an unsplit run; a row that
does not fit alone fails only its file, in one sentence, and the batcher goes on. Also the default batch size
from the GPU's free memory (a pure function)."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest
import soundfile as sf
import torch

from flashsr_tasks.enhance.per_file import process_file
from flashsr_tasks.model import gpu_memory
from flashsr_tasks.model.batched_enhancer import BatchedEnhancer
from flashsr_tasks.model.batcher import Batcher
from flashsr_tasks.runs.job import Job

GIB = 1 << 30
HUGE = 999.0  # a row starting with this does not fit even alone


class SmallDevice:
    """Doubles its rows; raises torch.OutOfMemoryError above `fits` rows, or for any batch holding a HUGE row."""

    def __init__(self, fits: int) -> None:
        self.fits = fits
        self.sizes: list[int] = []     # every batch it was given
        self.ran: list[int] = []       # the batches that ran
        self.freed = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.fits or (x[:, 0] == HUGE).any():
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} GiB")
        self.ran.append(x.shape[0])
        return x * 2

    def free(self) -> None:
        self.freed += 1


def rows(n: int, first: float) -> np.ndarray:
    return (first + np.arange(n, dtype=np.float32))[:, None] * np.ones((1, 3), np.float32)


def _too_big(device: SmallDevice):
    rule = gpu_memory.too_big_for(torch.device("cpu"))
    return type(rule)(rule.errors, device.free, rule.alone)


def _submit_together(batcher: Batcher, blocks: list[np.ndarray]) -> list[Future]:
    return [batcher.submit(block) for block in blocks]  # max_wait_s long: they share one batch


def test_the_real_exception_classes_are_caught():
    errors = gpu_memory.out_of_memory_errors()
    assert torch.cuda.OutOfMemoryError in errors and torch.OutOfMemoryError in errors
    assert issubclass(torch.cuda.OutOfMemoryError, RuntimeError)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_batch_too_big_runs_in_halves_with_the_same_results(asynchronous):
    blocks = [rows(n, 100 * i) for i, n in enumerate([3, 1, 2, 2])]  # 8 rows: one batch
    device = SmallDevice(fits=2)
    if asynchronous:  # the error comes when the launched batch is waited for, as CUDA may report it
        batcher = Batcher(lambda x: x, max_rows=8, max_wait_s=5.0, finish_batch=device, too_big=_too_big(device))
    else:
        batcher = Batcher(device, max_rows=8, max_wait_s=5.0, too_big=_too_big(device))
    try:
        results = [f.result(10) for f in _submit_together(batcher, blocks)]
    finally:
        batcher.close()
    reference = Batcher(lambda x: x * 2, max_rows=8, max_wait_s=5.0)  # the unsplit run
    try:
        expected = [f.result(10) for f in _submit_together(reference, blocks)]
    finally:
        reference.close()
    for got, want, block in zip(results, expected, blocks):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, block * 2)
    assert device.sizes[:3] == [8, 4, 2]  # halved until it fits
    assert device.ran == [2, 2, 2, 2]
    assert batcher.stats.halvings == 3 and device.freed == 3  # 8 → 4+4, each 4 → 2+2; cache freed before each
    assert batcher.stats.rows == 8 and batcher.stats.batches == 4


def test_a_row_that_does_not_fit_alone_fails_only_its_file_and_the_batcher_goes_on():
    device = SmallDevice(fits=4)
    batcher = Batcher(device, max_rows=4, max_wait_s=5.0, too_big=_too_big(device))
    try:
        huge = rows(2, 0)
        huge[1, 0] = HUGE
        futures = _submit_together(batcher, [rows(1, 10), huge, rows(1, 20)])
        np.testing.assert_array_equal(futures[0].result(10), rows(1, 10) * 2)
        np.testing.assert_array_equal(futures[2].result(10), rows(1, 20) * 2)
        with pytest.raises(gpu_memory.WindowTooLarge, match="one window alone does not fit in the memory of cpu"):
            futures[1].result(10)
        assert 1 in device.sizes  # it was tried alone
        np.testing.assert_array_equal(batcher.run(rows(4, 50)), rows(4, 50) * 2)  # still serving
    finally:
        batcher.close()


def test_other_errors_still_fail_the_whole_batch_without_halving():
    calls: list[int] = []

    def broken(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        raise ValueError("not memory")

    batcher = Batcher(broken, max_rows=4, max_wait_s=5.0, too_big=gpu_memory.too_big_for(torch.device("cpu")))
    try:
        futures = _submit_together(batcher, [rows(2, 0), rows(2, 10)])
        for future in futures:
            with pytest.raises(ValueError):
                future.result(10)
        assert calls == [4] and batcher.stats.halvings == 0
    finally:
        batcher.close()


def test_a_file_whose_window_does_not_fit_gets_one_sentence_and_the_others_are_enhanced(tmp_path):
    rate = 8000
    loud = (0.5 * np.sin(2 * np.pi * 300 * np.arange(2 * rate) / rate)).astype(np.float32)
    sf.write(str(tmp_path / "big.wav"), loud, rate, subtype="PCM_16")
    sf.write(str(tmp_path / "fine.wav"), 0.5 * loud, rate, subtype="PCM_16")

    def run_batch(x: np.ndarray) -> np.ndarray:
        if (np.abs(x).max(axis=1) > 0.4).any():  # big.wav's window never fits
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return x

    enhancer = BatchedEnhancer(run_batch, batch_size=2, model="stand-in", device="cpu", max_wait_s=0.2,
                               too_big=gpu_memory.too_big_for(torch.device("cpu")))
    job = Job(root=str(tmp_path), device="cpu")
    outcomes: dict[str, dict] = {}
    try:
        def one(source: str) -> None:
            outcomes[source] = process_file(tmp_path, source, job, lambda: enhancer)

        threads = [threading.Thread(target=one, args=(s,)) for s in ("big.wav", "fine.wav")]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
    finally:
        enhancer.close()
    assert outcomes["fine.wav"]["record"]["status"] == "ok"
    record = outcomes["big.wav"]["record"]
    assert record["status"] == "failed"
    assert record["error"] == ("big.wav cannot be enhanced here: one window alone does not fit in the memory of cpu "
                               "(CUDA out of memory); free the GPU of other processes or use a larger one.")
    assert not (tmp_path / "big_flashsr.wav").exists()


@pytest.mark.parametrize("free, expected", [
    (0, 1), (GIB // 2, 1), (2 * GIB, 1), (3 * GIB, 2), (5 * GIB + GIB // 2, 4), (11 * GIB, 8),
    (21 * GIB, 16), (75 * GIB, 16), (130 * GIB, 16),
])
def test_the_default_batch_size_follows_the_free_memory(free, expected):
    assert gpu_memory.batch_size_for(free) == expected


def test_the_default_batch_size_rule():
    assert gpu_memory.batch_size_for(10 * GIB, bytes_per_row=GIB, usable_share=1.0, largest=64) == 8
    assert gpu_memory.batch_size_for(100 * GIB, bytes_per_row=GIB, usable_share=1.0, largest=64) == 64
