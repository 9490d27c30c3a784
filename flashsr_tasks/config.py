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
