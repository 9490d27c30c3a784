"""Settings read from the environment (the contract's FLASHSR_* variables).

Each is read when asked for, not at import, so tests and orchestrators can set the
environment before building an app.
"""
from __future__ import annotations

import os
from typing import Optional

DEFAULT_BROKER_FOR_WORKERS = "redis://localhost:6379/0"
# Redis hands an unacknowledged task to another worker after this long: it is how long the files
# of a worker killed outright (a crashed host, a SIGKILL) wait on Redis. One file's task is a
# few seconds on a GPU even for an hour-long call, so 30 minutes is ample headroom while keeping
# a crash's cost bounded (docs/workers.md). RabbitMQ redelivers at once and needs none of this.
DEFAULT_VISIBILITY_TIMEOUT_S = 1800
# A task is killed (and recorded as failed) this long before the visibility timeout, so that a
# healthy long task never outlives it and runs twice.
VISIBILITY_MARGIN_S = 300
# A worker told to stop (SIGTERM) finishes what it can for this long, then hands back the rest:
# below the shortest notice it may get (30 s on GCP/Azure spot, 2 min on AWS; docker stop
# waits 10 s unless stop_grace_period says more, as docker-compose.yml does).
DEFAULT_SHUTDOWN_GRACE_S = 20


def broker_url() -> Optional[str]:
    return os.environ.get("FLASHSR_BROKER_URL") or None


def result_backend(broker: Optional[str]) -> Optional[str]:
    return os.environ.get("FLASHSR_RESULT_BACKEND") or broker


def task_time_limit_s() -> int:
    """Default: just below the visibility timeout (see VISIBILITY_MARGIN_S)."""
    explicit = os.environ.get("FLASHSR_TASK_TIME_LIMIT")
    if explicit:
        return positive_int_env("FLASHSR_TASK_TIME_LIMIT", 1)
    visibility = positive_int_env("FLASHSR_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT_S)
    # A visibility timeout of seconds (a test of redelivery) does not make every task that short.
    return max(visibility, DEFAULT_VISIBILITY_TIMEOUT_S) - VISIBILITY_MARGIN_S


def visibility_timeout_s() -> int:
    """Default: 30 minutes, or the task time limit plus the margin when that is set higher."""
    default = DEFAULT_VISIBILITY_TIMEOUT_S
    if os.environ.get("FLASHSR_TASK_TIME_LIMIT"):
        default = max(default, task_time_limit_s() + VISIBILITY_MARGIN_S)
    return positive_int_env("FLASHSR_VISIBILITY_TIMEOUT", default)


def shutdown_grace_s() -> int:
    """Seconds a worker sent SIGTERM keeps running its tasks before it hands them back."""
    return positive_int_env("FLASHSR_SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE_S)


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


def keep_input_band() -> bool:
    """FLASHSR_KEEP_INPUT_BAND=1: the output below the input's band edge is the input's own
    content, the model's only above it (flashsr_tasks.band_keeping). Off by default: FlashSR's
    own output is what its authors evaluated."""
    return bool_env("FLASHSR_KEEP_INPUT_BAND", False)


def quorum_queues() -> bool:
    """`FLASHSR_QUORUM_QUEUES=1`: on RabbitMQ, declare the gpu and cpu queues as quorum queues
    (replicated over a cluster, they survive the loss of a node). An existing classic queue of
    the same name must be deleted first: RabbitMQ refuses to change a queue's type."""
    return bool_env("FLASHSR_QUORUM_QUEUES", False)


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


# ---------------------------------------------------------------------------- the model's settings
# Each raises ValueError naming the variable; the model's loader turns that into ModelUnavailable.

AUTOCAST_NAMES = ("off", "bf16", "fp16")


def bool_env(name: str, default: bool) -> bool:
    """1/true/yes/on or 0/false/no/off from the environment, `default` when unset."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name} must be 1 or 0, got {raw!r}")


def model_batch_size(on_cuda: bool) -> int:
    """FLASHSR_BATCH_SIZE: windows (channel rows) per forward pass; 4 on CUDA, 1 on the CPU."""
    return positive_int_env("FLASHSR_BATCH_SIZE", 4 if on_cuda else 1)


def lowpass_input() -> bool:
    """FLASHSR_LOWPASS_INPUT: low-pass each window at its own detected cutoff first (upstream's default)."""
    return bool_env("FLASHSR_LOWPASS_INPUT", True)


def autocast_name() -> str:
    """FLASHSR_AUTOCAST: off | bf16 | fp16, mixed precision on CUDA for the UNet and the VAE."""
    name = os.environ.get("FLASHSR_AUTOCAST", "").strip().lower() or "off"
    if name not in AUTOCAST_NAMES:
        raise ValueError(f"FLASHSR_AUTOCAST must be off, bf16 or fp16, got {name!r}")
    return name


def require_model() -> bool:
    """FLASHSR_REQUIRE_MODEL=1: no graceful fallback to resampling where the model was asked for."""
    return bool_env("FLASHSR_REQUIRE_MODEL", False)


VOCODER_DTYPE_NAMES = ("float32", "bf16")


def tf32() -> bool:
    """FLASHSR_TF32: 1 lets CUDA matmuls and convolutions use TF32; default 0 (strict float32)."""
    return bool_env("FLASHSR_TF32", False)


def vocoder_dtype_name() -> str:
    """FLASHSR_VOCODER_DTYPE: float32 (default) | bf16, the SR vocoder's weights and activations."""
    name = os.environ.get("FLASHSR_VOCODER_DTYPE", "").strip().lower() or "float32"
    if name not in VOCODER_DTYPE_NAMES:
        raise ValueError(f"FLASHSR_VOCODER_DTYPE must be float32 or bf16, got {name!r}")
    return name


def fixed_shapes(on_cuda: bool) -> bool:
    """FLASHSR_FIXED_SHAPES: pad batches to a few fixed sizes (and let cuDNN autotune them);
    default on CUDA only (on a CPU a padded row costs as much as a real one and gains nothing)."""
    return bool_env("FLASHSR_FIXED_SHAPES", on_cuda)


def torch_threads_with_gpu() -> int:
    """FLASHSR_TORCH_THREADS: torch's CPU threads in a process whose model is on a GPU (default 1).
    Its CPU torch work is the input low-pass's STFT, one per task thread: each on all cores
    would oversubscribe the CPU, the task threads are the parallelism."""
    return positive_int_env("FLASHSR_TORCH_THREADS", 1)


def compile_vocoder() -> bool:
    """FLASHSR_COMPILE_VOCODER=1: torch.compile the SR vocoder (static shapes; the first batch of
    each shape compiles for a minute or more). Default 0."""
    return bool_env("FLASHSR_COMPILE_VOCODER", False)


# A lost broker or result backend is waited for this long, mid-run, before the run gives up
# (exit status 3): a Redis restart or failover takes seconds to a few minutes.
DEFAULT_OUTAGE_BUDGET_S = 600


def outage_budget_s() -> int:
    """Seconds a run waits for a lost broker or result backend to come back."""
    return positive_int_env("FLASHSR_OUTAGE_BUDGET_S", DEFAULT_OUTAGE_BUDGET_S)


def give_up_after_s() -> Optional[int]:
    """Seconds a waiting run goes on while no worker consumes its queue (None: wait for one)."""
    return positive_int_env("FLASHSR_GIVE_UP_AFTER", 0) or None
