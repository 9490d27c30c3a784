"""Every setting flashsr reads from the environment (FLASHSR_* and HF_*), each parsed one way.

Each is read when asked for, not at import, so tests and orchestrators can set the
environment before building an app. A bad value is a ValueError that names the variable.
No other module reads the environment (tests/test_settings.py holds it so).
"""
from __future__ import annotations

import os
from typing import Optional

# Every setting, in the README's order (its "Configuration" tables): `flashsr-enhance --help` lists
# them, and tests/test_settings.py holds this list, the README and the reads below to one another.
SETTINGS = (
    "FLASHSR_BROKER_URL", "FLASHSR_RESULT_BACKEND", "FLASHSR_MODEL_DIR", "FLASHSR_CACHE_DIR",
    "FLASHSR_WEIGHTS_REPO", "FLASHSR_WEIGHTS_REPO_TYPE", "FLASHSR_WEIGHTS_REVISION", "FLASHSR_ALLOWED_ROOTS",
    "FLASHSR_BAND_DROP_DB", "FLASHSR_VISIBILITY_TIMEOUT", "FLASHSR_TASK_TIME_LIMIT", "FLASHSR_SHUTDOWN_GRACE",
    "FLASHSR_MAX_ATTEMPTS", "FLASHSR_QUORUM_QUEUES", "FLASHSR_OUTAGE_BUDGET_S", "FLASHSR_GIVE_UP_AFTER",
    "FLASHSR_CHORD_SIZE", "FLASHSR_MAX_IN_FLIGHT", "FLASHSR_DEVICE", "FLASHSR_CPU_PREFETCH", "FLASHSR_KEEP_INPUT_BAND",
    "FLASHSR_METRICS_PORT", "HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT",
    "FLASHSR_BATCH_SIZE", "FLASHSR_BATCH_WAIT_MS", "FLASHSR_FILES_IN_FLIGHT", "FLASHSR_LOWPASS_INPUT",
    "FLASHSR_AUTOCAST", "FLASHSR_VOCODER_DTYPE", "FLASHSR_TF32", "FLASHSR_FIXED_SHAPES",
    "FLASHSR_TORCH_THREADS", "FLASHSR_COMPILE_VOCODER", "FLASHSR_REQUIRE_MODEL",
    "FLASHSR_MEMORY_LIMIT",
)
# Of those, read by huggingface_hub itself (and honoured as it defines them), never here.
LIBRARY_SETTINGS = ("HF_TOKEN",)

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
# A file whose work kills its process is run at most this many times in all. A death that is not
# the file's doing (a host lost once) still gets a second run; three deaths on one file are its
# own. A hand-back on SIGTERM (preemption) is not a death and never counts.
DEFAULT_MAX_ATTEMPTS = 3
# RabbitMQ's quorum queues drop a message delivered this many times (RabbitMQ 4's default delivery limit):
# a file must be failed by its count before that, or its chord would wait for a message that is gone.
QUORUM_DELIVERY_LIMIT = 20


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


def max_attempts() -> int:
    """Runs of a file whose worker process died under it (OOM kill, crash), after which its file
    gets a failed record instead of another run. With quorum queues, under their delivery limit."""
    attempts = positive_int_env("FLASHSR_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)
    if attempts >= QUORUM_DELIVERY_LIMIT and quorum_queues():
        raise ValueError(f"FLASHSR_MAX_ATTEMPTS={attempts} with FLASHSR_QUORUM_QUEUES=1: quorum queues drop a "
                         f"message after {QUORUM_DELIVERY_LIMIT} deliveries; use at most {QUORUM_DELIVERY_LIMIT - 1}")
    return attempts


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
    content, the model's only above it (flashsr_tasks.enhance.band_keeping). Off by default: FlashSR's
    own output is what its authors evaluated."""
    return bool_env("FLASHSR_KEEP_INPUT_BAND", False)


def quorum_queues() -> bool:
    """`FLASHSR_QUORUM_QUEUES=1`: on RabbitMQ, declare the gpu and cpu queues as quorum queues
    (replicated over a cluster, they survive the loss of a node). An existing classic queue of
    the same name must be deleted first: RabbitMQ refuses to change a queue's type."""
    return bool_env("FLASHSR_QUORUM_QUEUES", False)


# Selection's cliff (flashsr_tasks.enhance.selection, docs/selection.md): how far everything above a
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
    """FLASHSR_BATCH_SIZE: windows (channel rows) per forward pass; 4 on CUDA, 1 on the CPU.
    On CUDA the model's loader uses `explicit_batch_size` instead and sizes an unset one from
    the GPU's free memory (flashsr_tasks.model.gpu_memory)."""
    return positive_int_env("FLASHSR_BATCH_SIZE", 4 if on_cuda else 1)


def explicit_batch_size() -> Optional[int]:
    """FLASHSR_BATCH_SIZE when it is set, else None."""
    return positive_int_env("FLASHSR_BATCH_SIZE", 0) or None


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


# ---------------------------------------------------------------------------- worker metrics


def metrics_port() -> Optional[int]:
    """FLASHSR_METRICS_PORT: the port a worker serves Prometheus metrics on (None: no metrics
    server); a worker that finds it taken tries the next ones (flashsr_tasks.worker.metrics)."""
    port = positive_int_env("FLASHSR_METRICS_PORT", 0) or None
    if port is not None and port > 65535:
        raise ValueError(f"FLASHSR_METRICS_PORT must be a TCP port (1-65535), not {port}")
    return port


def export_prometheus_multiproc_dir(path: str) -> None:
    """Point prometheus_client's multiprocess mode at `path` in this process and the ones it
    forks (the library reads PROMETHEUS_MULTIPROC_DIR itself, whenever a metric file is opened)."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


# ---------------------------------------------------------------------------- distributed runs

# Files per chord: one callback and one journal write per chord. Small enough that a chord's
# records (its callback's message) stay small, large enough that callbacks cost little.
DEFAULT_CHORD_SIZE = 100
# Files sent and not yet collected. Redis holds about 4 KB per file in flight (message, result,
# chord entry), so this bounds Redis' memory for a run of any length; it is far above what
# the workers hold (their prefetch), so they never wait for the orchestrator.
DEFAULT_MAX_IN_FLIGHT = 2000


def chord_size() -> int:
    """FLASHSR_CHORD_SIZE: files per chord of a distributed run."""
    return positive_int_env("FLASHSR_CHORD_SIZE", DEFAULT_CHORD_SIZE)


def max_in_flight() -> int:
    """FLASHSR_MAX_IN_FLIGHT: files sent and not yet collected (at least one chord)."""
    return max(chord_size(), positive_int_env("FLASHSR_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT))


# ---------------------------------------------------------------------------- files and roots


def allowed_roots() -> list[str]:
    """FLASHSR_ALLOWED_ROOTS: `:`-separated folders a worker may read and write under (empty: any)."""
    return [p for p in os.environ.get("FLASHSR_ALLOWED_ROOTS", "").split(":") if p]


# ---------------------------------------------------------------------------- batching

DEFAULT_BATCH_WAIT_MS = 30
DEFAULT_FILES_IN_FLIGHT = 8


def batch_wait_s() -> float:
    """FLASHSR_BATCH_WAIT_MS in seconds: how long a batch waits to fill from its oldest row
    (0 allowed: never wait)."""
    if os.environ.get("FLASHSR_BATCH_WAIT_MS", "").strip() == "0":
        return 0.0
    return positive_int_env("FLASHSR_BATCH_WAIT_MS", DEFAULT_BATCH_WAIT_MS) / 1000


def files_in_flight() -> int:
    """FLASHSR_FILES_IN_FLIGHT: files one model process holds at once; default twice
    FLASHSR_BATCH_SIZE when that is set (a batch running and the next one filling), else 8."""
    batch = positive_int_env("FLASHSR_BATCH_SIZE", 0)
    return positive_int_env("FLASHSR_FILES_IN_FLIGHT", 2 * batch if batch else DEFAULT_FILES_IN_FLIGHT)


# ---------------------------------------------------------------------------- weights
# Each returns the environment's value or None; flashsr_tasks.model.weights holds the defaults.


def cache_dir() -> Optional[str]:
    """FLASHSR_CACHE_DIR: where downloaded weights are kept."""
    return os.environ.get("FLASHSR_CACHE_DIR") or None


def weights_repo() -> Optional[str]:
    """FLASHSR_WEIGHTS_REPO: the Hub repository of the weights."""
    return os.environ.get("FLASHSR_WEIGHTS_REPO") or None


def weights_repo_type() -> Optional[str]:
    """FLASHSR_WEIGHTS_REPO_TYPE: `dataset` or `model`."""
    return os.environ.get("FLASHSR_WEIGHTS_REPO_TYPE") or None


def weights_revision() -> Optional[str]:
    """FLASHSR_WEIGHTS_REVISION: the pinned branch, tag or commit of that repository."""
    return os.environ.get("FLASHSR_WEIGHTS_REVISION") or None


def hf_endpoint() -> Optional[str]:
    """HF_ENDPOINT, read at each download (huggingface_hub reads it only when imported)."""
    return os.environ.get("HF_ENDPOINT") or None


def hf_hub_offline() -> bool:
    """HF_HUB_OFFLINE, parsed as huggingface_hub parses it (1/ON/YES/TRUE, anything else is off),
    so that flashsr and the library never disagree on whether they are offline."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


# ---------------------------------------------------------------------------- memory

_MEMORY_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
                 "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40,
                 "TIB": 1 << 40}


def memory_limit() -> Optional[int]:
    """FLASHSR_MEMORY_LIMIT: a worker's memory budget in bytes, shared by its processes and files
    in flight (flashsr_tasks.enhance.memory_budget). `2G`, `500M`, `1.5GiB` or plain bytes (units
    are binary: K = 1024); `off` or `0`: refuse nothing, whatever the cgroup says. None when unset
    or `auto`: the cgroup's limit, if any, is the budget."""
    raw = os.environ.get("FLASHSR_MEMORY_LIMIT", "").strip()
    if not raw or raw.lower() == "auto":
        return None
    if raw.lower() in {"off", "none", "0"}:
        return 0
    number = raw.rstrip("bBiIkKmMgGtT").strip()
    unit = raw[len(number):].strip().upper() if number else ""
    try:
        value = float(number) * _MEMORY_UNITS[unit]
    except (KeyError, ValueError):
        raise ValueError(f"FLASHSR_MEMORY_LIMIT must be a size such as 2G, 500M or a number of bytes, "
                         f"or off, not {raw!r}") from None
    if value < 1:
        raise ValueError(f"FLASHSR_MEMORY_LIMIT must be positive (or off), not {raw!r}")
    return int(value)
