"""An `Enhancer` whose model runs behind a `Batcher`: many files share each forward pass.

`enhance` runs in the caller's thread; only the model call runs in the batcher's thread. numpy only: the model is
the `run_batch` function given. `FLASHSR_BATCH_WAIT_MS`: the README's configuration tables. docs/gpu-worker.md,
"The batcher", explains the split.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, ContextManager, Optional

import numpy as np

from flashsr_tasks import config
from flashsr_tasks.audio.resample import to_output_rate
from flashsr_tasks.model.batcher import Batcher, BatcherStats, RunBatch, TooBig
from flashsr_tasks.model.window_stream import WindowStream
from flashsr_tasks.model.windows import DEFAULT_OVERLAP, WINDOW, apply_windowed_async

log = logging.getLogger(__name__)

PrepareRows = Callable[[np.ndarray], np.ndarray]


class BatchedEnhancer:
    """Windows of any number of files, batched across files for one model (docs/gpu-worker.md).

    `run_batch`: float32 `[rows, WINDOW]` → same shape, called in the batcher's thread only.
    `prepare_rows`: per-window CPU work before the model (the input low-pass), in the caller's thread.
    `finish_batch`: with an asynchronous device, `run_batch` launches and this waits (see `Batcher`).
    `too_big`: how a batch the device has no memory for is recognised; it then runs again in halves (`Batcher`).
    `max_wait_s=0` and `ahead=0` give the old one-file-at-a-time behaviour (for comparisons).
    """

    method = "flashsr"

    def __init__(self, run_batch: RunBatch, *, batch_size: int, model: Optional[str],
                 device: str, prepare_rows: Optional[PrepareRows] = None, max_wait_s: Optional[float] = None,
                 ahead: int = 1, overlap: int = DEFAULT_OVERLAP,
                 thread_context: Optional[Callable[[], ContextManager]] = None,
                 finish_batch: Optional[Callable[[Any], np.ndarray]] = None,
                 too_big: Optional[TooBig] = None) -> None:
        self._run_batch = run_batch
        self._too_big = too_big
        self._finish_batch = finish_batch
        self._prepare_rows = prepare_rows
        self._thread_context = thread_context
        self.batch_size = batch_size
        self.max_wait_s = config.batch_wait_s() if max_wait_s is None else max_wait_s
        self.ahead = ahead
        self.overlap = overlap
        self.model = model
        self.device = device
        self._batcher: Optional[Batcher] = None
        self._batcher_lock = threading.Lock()

    @property
    def batcher(self) -> Batcher:
        """The process-wide batcher of this model, started on first use."""
        with self._batcher_lock:
            if self._batcher is None or self._batcher.closed:
                self._batcher = Batcher(self._run_batch, self.batch_size, self.max_wait_s,
                                        max_queued_rows=4 * self.batch_size, thread_context=self._thread_context,
                                        finish_batch=self._finish_batch, too_big=self._too_big)
            return self._batcher

    @property
    def stats(self) -> BatcherStats:
        """What the latest batcher did (it stays readable after `close`)."""
        with self._batcher_lock:
            return self._batcher.stats if self._batcher is not None else BatcherStats()

    def prepare_rows(self, rows: np.ndarray) -> np.ndarray:
        return self._prepare_rows(rows) if self._prepare_rows is not None else rows

    def enhance(self, audio: np.ndarray, rate: int) -> np.ndarray:
        audio48 = to_output_rate(np.asarray(audio, dtype=np.float32), rate)
        batcher = self.batcher
        out = apply_windowed_async(lambda rows: batcher.submit(self.prepare_rows(rows)), audio48, WINDOW,
                                   self.overlap, self.batch_size, ahead=self.ahead)
        self._check(out)
        return out

    def stream(self, rate: int, channels: int, frames: int,
               tap: Optional[Callable[[np.ndarray], None]] = None) -> WindowStream:
        """`enhance` block by block, for a source of `frames` frames (enhance.streaming): the same output, with a
        few windows of the file in memory rather than the file (model.window_stream). `tap` sees each 48 kHz input piece."""
        batcher = self.batcher
        return WindowStream(lambda rows: batcher.submit(self.prepare_rows(rows)), rate, channels, frames,
                            window=WINDOW, overlap=self.overlap, batch_size=self.batch_size, ahead=self.ahead,
                            check=self._check, tap=tap)

    def _check(self, out: np.ndarray) -> None:
        if not np.isfinite(out).all():
            raise RuntimeError("the model produced non-finite samples")

    def close(self) -> None:
        """Stop the batcher (pending windows fail); a later `enhance` starts a new one."""
        with self._batcher_lock:
            if self._batcher is not None:
                self._batcher.close()
