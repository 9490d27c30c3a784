"""A gpu worker whose model is a stand-in (SIMULATED): for `gpu_pipeline.py --celery`.

    FLASHSR_SIMULATE_MS=400 celery -A simulated_gpu_app worker -Q gpu ...   (cwd: benchmarks/)

The real tasks (`flashsr_tasks.tasks`), the real per-file work and batcher; only the model is
replaced by a sleep of FLASHSR_SIMULATE_MS per forward pass. Each pass is logged
("simulated pass: N rows") so the benchmark can count rows per pass.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from flashsr_tasks import tasks  # noqa: E402
from flashsr_tasks.enhance.lazy_enhancer import LazyEnhancer  # noqa: E402
from flashsr_tasks.model.batched_enhancer import BatchedEnhancer  # noqa: E402
from flashsr_tasks.model.lowpass import lowpass_rows  # noqa: E402

log = logging.getLogger("simulated_gpu")
app = tasks.app


def _simulated() -> BatchedEnhancer:
    ms = float(os.environ["FLASHSR_SIMULATE_MS"])

    def run_batch(x: np.ndarray) -> np.ndarray:
        time.sleep(ms / 1000)
        log.warning("simulated pass: %d rows", x.shape[0])
        return x

    return BatchedEnhancer(run_batch, batch_size=int(os.environ.get("FLASHSR_BATCH_SIZE", "8")), model="simulated",
                           device="simulated", prepare_rows=lowpass_rows)


tasks.gpu_enhancer = LazyEnhancer(_simulated)
