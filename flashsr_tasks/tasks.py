"""Celery tasks: thin callers of the per-file pipeline, plus the chord callback.

Lifecycle of a gpu worker process: the main process learns from `-Q` that it serves the
gpu queue. On the threads pool (the pipelined gpu worker: `--pool threads --concurrency N`)
it starts loading the model in a background thread at once; its N task threads share the
one model and its batcher, so windows of N files share forward passes. On the prefork pool
each pool process, once forked, starts loading the model in a background thread (a
`worker_process_init` handler that blocked for the whole load would be killed after 4 s,
and CUDA must only be touched after the fork). The first task waits for that load. A cpu
worker never loads the model, nor torch, nor even numpy until its first task.
"""
from __future__ import annotations

import logging
import sys
import threading
from typing import Any, NoReturn, Optional

from celery import signals
from celery.exceptions import Ignore

from flashsr_tasks import config
from flashsr_tasks.job import Job
from flashsr_tasks.celery import CPU_QUEUE, ENHANCE_TASK, GPU_QUEUE, MERGE_TASK, app
from flashsr_tasks.lazy import LazyEnhancer

log = logging.getLogger(__name__)

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
    """SIGTERM: finish within FLASHSR_SHUTDOWN_GRACE, then hand the rest back (flashsr_tasks.shutdown)."""
    from flashsr_tasks import shutdown

    worker = getattr(sender, "controller", None)
    if worker is not None:
        shutdown.install(worker, config.shutdown_grace_s(), _forks(getattr(worker, "pool_cls", None)))


@signals.worker_init.connect
def _prepare_threads_pool(sender: Any = None, **_: Any) -> None:
    """A gpu worker on the threads pool (the pipelined one: see README) runs its tasks in this
    process, with no fork to wait for: start loading the model now."""
    if _serves_gpu and not _forks(getattr(sender, "pool_cls", None)):
        threading.Thread(target=gpu_enhancer, name="flashsr-model-load", daemon=True).start()


def _forks(pool_cls: Any) -> bool:
    from celery import concurrency
    from celery.concurrency.prefork import TaskPool

    try:
        implementation = concurrency.get_implementation(pool_cls)
    except Exception:
        return True  # unknown: be safe, load after the fork
    return isinstance(implementation, type) and issubclass(implementation, TaskPool)


_forked_pool_process = False


@signals.worker_process_init.connect
def _prepare_pool_process(**_: Any) -> None:
    from flashsr_tasks import shutdown

    shutdown.install_in_pool_process()
    global _forked_pool_process
    _forked_pool_process = True
    if _serves_gpu:
        threading.Thread(target=gpu_enhancer, name="flashsr-model-load", daemon=True).start()
    else:
        from flashsr_tasks.memory import keep_freed_memory

        keep_freed_memory()


@signals.worker_ready.connect
def _warn_if_redis_evicts(sender: Any = None, **_: Any) -> None:
    """A broker that evicts keys under memory pressure silently drops queued tasks and chord state."""
    try:
        with app.connection_for_write() as conn:
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
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"flashsr: worker ready: taking tasks from queue {queues}\n")
    stream.flush()


def _load_gpu_model() -> Any:
    from flashsr_tasks.enhancers import ModelRequired, load_enhancer

    try:
        enhancer = load_enhancer(config.worker_device(), config.model_dir())
    except (ModelRequired, ValueError) as exc:  # ValueError: FLASHSR_REQUIRE_MODEL itself is not 1 or 0
        _exit_worker(str(exc))
    log.info("gpu worker ready: method=%s device=%s", enhancer.method, enhancer.device)
    return enhancer


def _exit_worker(sentence: str) -> NoReturn:
    """Strict model mode: a gpu worker without its model stops at once, visibly to a supervisor
    (status 3, one line on stderr), instead of serving resampled audio or tasks that fail.
    A prefork pool process also stops its main process, which would otherwise fork another."""
    import os
    import signal
    import sys

    # sys.__stderr__: Celery redirects sys.stderr into its log
    print(f"flashsr: error: {sentence}", file=sys.__stderr__, flush=True)
    if _forked_pool_process:
        os.kill(os.getppid(), signal.SIGQUIT)  # the main process's cold shutdown
    os._exit(3)


# This process's model, loaded once (the resampler when the model cannot load).
gpu_enhancer = LazyEnhancer(_load_gpu_model)


def _enhance(task: Any, job: dict[str, Any], source: str, known_sha256: Optional[str], enhancer_for: Any) -> dict[str, Any]:
    # Imported here so an idle worker's processes stay small.
    from flashsr_tasks.worker_side import enhance_one, journal_outcomes

    run_id = job.get("run_id")
    if _cancelled(run_id):
        raise Ignore()  # an interrupted run: do nothing, store nothing
    outcome = enhance_one(job, source, known_sha256, enhancer_for)
    if _cancelled(run_id):
        # Interrupted while this file was being done: nobody collects its chord, so keep its record here.
        journal_outcomes([outcome], str(Job.from_dict(job).manifest_root))
        raise Ignore()
    # The chord callback deletes its members' results by these ids once it has journaled them.
    outcome["task_id"] = task.request.id
    return outcome


@app.task(name=ENHANCE_TASK[GPU_QUEUE], bind=True)
def enhance_gpu(self: Any, job: dict[str, Any], source: str, known_sha256: Optional[str] = None) -> dict[str, Any]:
    return _enhance(self, job, source, known_sha256, gpu_enhancer)


@app.task(name=ENHANCE_TASK[CPU_QUEUE], bind=True)
def enhance_cpu(self: Any, job: dict[str, Any], source: str, known_sha256: Optional[str] = None) -> dict[str, Any]:
    from flashsr_tasks.enhancers import Resampler

    return _enhance(self, job, source, known_sha256, Resampler)


@app.task(name=MERGE_TASK)
def merge_into_manifest(outcomes: list[dict[str, Any]], root: str, run_id: Optional[str] = None) -> dict[str, Any]:
    """The chord callback: its members' records into the root's journal (folded into manifest.json
    by the orchestrator at the end of the run, or by any later run), then their results out of
    the result backend. Returns the members' outcomes, for the orchestrator's progress and summary
    (nothing for an interrupted run: nobody will collect it)."""
    from flashsr_tasks.worker_side import journal_outcomes

    reported = journal_outcomes(outcomes, root)
    forget_results(app, [o["task_id"] for o in outcomes if o.get("task_id")])
    if _cancelled(run_id):
        raise Ignore()
    return {"outcomes": reported}


def _cancelled(run_id: Optional[str]) -> bool:
    """Whether the task's run was interrupted; False while Redis is away (the work goes on, and its
    result is stored once Redis is back)."""
    import redis.exceptions

    from flashsr_tasks.cancellation import is_cancelled

    try:
        return is_cancelled(getattr(app.backend, "client", None), run_id)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        return False


def forget_results(celery_app: Any, task_ids: list[str]) -> None:
    """Delete task results from the result backend: one command on Redis, one call each elsewhere."""
    if not task_ids:
        return
    backend = celery_app.backend
    client = getattr(backend, "client", None)
    if client is not None and hasattr(backend, "get_key_for_task"):
        client.delete(*(backend.get_key_for_task(task_id) for task_id in task_ids))
    else:
        for task_id in task_ids:
            backend.forget(task_id)
