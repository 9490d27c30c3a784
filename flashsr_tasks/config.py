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


# A lost broker or result backend is waited for this long, mid-run, before the run gives up
# (exit status 3): a Redis restart or failover takes seconds to a few minutes.
DEFAULT_OUTAGE_BUDGET_S = 600


def outage_budget_s() -> int:
    """Seconds a run waits for a lost broker or result backend to come back."""
    return positive_int_env("FLASHSR_OUTAGE_BUDGET_S", DEFAULT_OUTAGE_BUDGET_S)


def give_up_after_s() -> Optional[int]:
    """Seconds a waiting run goes on while no worker consumes its queue (None: wait for one)."""
    return positive_int_env("FLASHSR_GIVE_UP_AFTER", 0) or None
