"""A worker's lifecycle: Celery's signal handlers, from the command line's queues to the ready line.

A gpu worker process starts loading its model before its first task: on the threads pool (the
pipelined gpu worker) in the main process at once; on the prefork pool in each pool process
once forked, in a background thread (a `worker_process_init` handler that blocked for the whole
load would be killed after 4 s, and CUDA must only be touched after the fork). A cpu worker
never loads the model, nor torch, nor even numpy until its first task. SIGTERM hands back what
is unfinished (worker.shutdown). With FLASHSR_METRICS_PORT, the main process serves the metrics of
all its processes (worker.metrics), started before the pool forks and named in the ready line.
"""
from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Callable, Optional

from celery import Celery, signals

from flashsr_tasks import config
from flashsr_tasks.broker.queues import CPU_QUEUE, GPU_QUEUE
from flashsr_tasks.worker import gpu_model, metrics, shutdown
from flashsr_tasks.worker.memory import be_the_oom_victim, keep_freed_memory

log = logging.getLogger(__name__)


def _no_model() -> Any:
    return None


# What a gpu worker process loads before its first task: set by tasks.py to its model's loader.
_load_model: Callable[[], Any] = _no_model
# The app whose broker _warn_if_redis_evicts asks (tasks.py's).
_app: Optional[Celery] = None


def preload_with(load: Callable[[], Any], app: Celery) -> None:
    """Name the process's model loader (started before the first task on a gpu worker) and app."""
    global _load_model, _app
    _load_model, _app = load, app


_serves_gpu = False
_queues: list[str] = []  # as given with -Q, for the "ready" line


@signals.celeryd_init.connect
def _note_queues(conf: Any = None, options: Optional[dict] = None, **_: Any) -> None:
    global _serves_gpu
    queues = (options or {}).get("queues") or []
    if isinstance(queues, str):
        queues = queues.split(",")
    _serves_gpu = GPU_QUEUE in queues
    _queues[:] = list(queues)
    if not _serves_gpu and conf is not None:
        conf.worker_prefetch_multiplier = config.cpu_prefetch()


@signals.worker_init.connect
def _apply_cpu_prefetch(sender: Any = None, **_: Any) -> None:
    """The command line has already filled in the prefetch multiplier from the configuration by
    the time celeryd_init runs, so that handler's change alone never reaches the worker."""
    if not _serves_gpu and sender is not None:
        sender.prefetch_multiplier = config.cpu_prefetch()


@signals.worker_ready.connect
def _hand_back_on_sigterm(sender: Any = None, **_: Any) -> None:
    """SIGTERM: finish within FLASHSR_SHUTDOWN_GRACE, then hand the rest back (flashsr_tasks.worker.shutdown)."""
    worker = getattr(sender, "controller", None)
    if worker is not None:
        shutdown.install(worker, config.shutdown_grace_s(), _forks(getattr(worker, "pool_cls", None)))


@signals.worker_init.connect
def _start_metrics(sender: Any = None, **_: Any) -> None:
    """FLASHSR_METRICS_PORT: serve the metrics from this (main) process, before the pool forks
    and before a threads pool's model starts loading (connected first for that)."""
    try:
        metrics.start(_queues or [CPU_QUEUE], _app)
    except (ValueError, OSError) as exc:  # a bad setting, a port we may not bind: say so, work on
        stream = sys.__stderr__ or sys.stderr
        stream.write(f"flashsr: warning: no metrics: {exc}\n")
        stream.flush()


@signals.worker_shutdown.connect
def _stop_metrics(**_: Any) -> None:
    metrics.stop()


@signals.worker_process_shutdown.connect
def _pool_process_exits(pid: Optional[int] = None, **_: Any) -> None:
    metrics.pool_process_exits(pid or 0)


@signals.worker_init.connect
def _prepare_threads_pool(sender: Any = None, **_: Any) -> None:
    """A gpu worker on the threads pool (the pipelined one: see README) runs its tasks in this
    process, with no fork to wait for: start loading the model now."""
    if _serves_gpu and not _forks(getattr(sender, "pool_cls", None)):
        threading.Thread(target=_load_model, name="flashsr-model-load", daemon=True).start()


def _forks(pool_cls: Any) -> bool:
    from celery import concurrency
    from celery.concurrency.prefork import TaskPool

    try:
        implementation = concurrency.get_implementation(pool_cls)
    except Exception:
        return True  # unknown: be safe, load after the fork
    return isinstance(implementation, type) and issubclass(implementation, TaskPool)


@signals.worker_process_init.connect
def _prepare_pool_process(**_: Any) -> None:
    shutdown.install_in_pool_process()
    be_the_oom_victim()
    gpu_model.in_forked_pool_process = True
    metrics.in_pool_process()
    if _serves_gpu:
        threading.Thread(target=_load_model, name="flashsr-model-load", daemon=True).start()
    else:
        keep_freed_memory()


@signals.worker_ready.connect
def _warn_if_redis_evicts(sender: Any = None, **_: Any) -> None:
    """A broker that evicts keys under memory pressure silently drops queued tasks and chord state."""
    if _app is None:
        return
    try:
        with _app.connection_for_write() as conn:
            client = conn.default_channel.client
            policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except Exception:  # not Redis, or CONFIG is disabled: nothing to check
        return
    if policy and policy != "noeviction":
        log.warning("Redis maxmemory-policy is %r; set it to 'noeviction' or queued tasks can be lost", policy)


@signals.worker_ready.connect
def _say_ready(sender: Any = None, **_: Any) -> None:
    """One line a user sees at Celery's default log level (warnings only): the worker takes tasks.
    Written to the real stderr, as Celery turns print() into WARNING log lines."""
    queues = ", ".join(_queues) or "default"
    port = metrics.port()
    serving = f"; metrics on port {port}" if port is not None else ""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"flashsr: worker ready: taking tasks from queue {queues}{serving}\n")
    stream.flush()


@signals.worker_init.connect
def _share_memory_limit(sender: Any = None, **_: Any) -> None:
    """The worker's memory limit is shared by its files in flight (flashsr_tasks.enhance.memory_budget):
    a prefork pool's N processes hold one file each, a threads pool's one process holds N. Set before the
    pool forks, so its processes inherit it."""
    from flashsr_tasks.enhance import memory_budget

    concurrency = int(getattr(sender, "concurrency", None) or 1)
    memory_budget.share_among(concurrency if _forks(getattr(sender, "pool_cls", None)) else 1, concurrency)
