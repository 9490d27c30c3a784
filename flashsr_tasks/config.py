"""Settings read from the environment (the contract's FLASHSR_* variables).

Each is read when asked for, not at import, so tests and orchestrators can set the
environment before building an app.
"""
from __future__ import annotations

import os
from typing import Optional

DEFAULT_BROKER_FOR_WORKERS = "redis://localhost:6379/0"
# A gpu task of a 30-minute call takes under a minute on a GPU; a gpu worker that fell back
# to its CPU can take far longer. Past this a task is killed and recorded as failed.
DEFAULT_TASK_TIME_LIMIT_S = 4 * 3600
# Redis hands an unacknowledged task to another worker after this long, so it must stay
# above the longest task or a healthy long task would run twice.
VISIBILITY_MARGIN_S = 600


def broker_url() -> Optional[str]:
    return os.environ.get("FLASHSR_BROKER_URL") or None


def result_backend(broker: Optional[str]) -> Optional[str]:
    return os.environ.get("FLASHSR_RESULT_BACKEND") or broker


def task_time_limit_s() -> int:
    return positive_int_env("FLASHSR_TASK_TIME_LIMIT", DEFAULT_TASK_TIME_LIMIT_S)


def visibility_timeout_s() -> int:
    return positive_int_env("FLASHSR_VISIBILITY_TIMEOUT", task_time_limit_s() + VISIBILITY_MARGIN_S)


def model_dir() -> Optional[str]:
    return os.environ.get("FLASHSR_MODEL_DIR") or None


def worker_device() -> str:
    """The device a gpu worker loads its model on (one worker per GPU: pin it with CUDA_VISIBLE_DEVICES)."""
    return os.environ.get("FLASHSR_DEVICE") or "cuda"


def cpu_prefetch() -> int:
    """Tasks a cpu worker process reserves ahead: resampling a call takes tens of milliseconds,
    comparable to fetching the next message, so a few in hand keep the processes busy. The
    cost: a crashed cpu worker's reserved tasks wait for the visibility timeout too."""
    return positive_int_env("FLASHSR_CPU_PREFETCH", 4)


# Selection's cliff (flashsr_tasks.selection, docs/selection.md): how far everything above a
# band edge must lie below the kHz under it for a 44.1/48 kHz source to count as band-limited.
# 20 dB: measured (benchmarks/selection_table.py, docs/selection.md), the weakest case that must
# be taken (speech at 22.05 kHz stored at 44.1 kHz through a 2-pole low-pass) needs 28 dB or less,
# and no full-band control is taken at any threshold.
DEFAULT_BAND_DROP_DB = 20.0


def band_drop_db() -> float:
    """FLASHSR_BAND_DROP_DB: lower selects gentler low-passes, at the risk of full-band files."""
    value = os.environ.get("FLASHSR_BAND_DROP_DB")
    if not value:
        return DEFAULT_BAND_DROP_DB
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"FLASHSR_BAND_DROP_DB must be a number of dB, not {value!r}") from None
    if not 0 < number <= 120:
        raise ValueError(f"FLASHSR_BAND_DROP_DB must lie between 0 and 120 dB, not {value!r}")
    return number


def positive_int_env(name: str, default: int) -> int:
    """A positive whole number from the environment, `default` when unset; ValueError names the variable."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {value!r}") from None
    if number <= 0:
        raise ValueError(f"{name} must be positive, not {value!r}")
    return number
