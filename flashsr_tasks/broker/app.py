"""Building a Celery app for flashsr: queue and task names, and every Celery setting.

The workers' app is flashsr_tasks.celery's (`make_app(include_tasks=True)`); orchestrators build
their own client app with `make_app(broker, collector=True)`, which sends tasks by name and never
imports the task code. Configuration comes from the environment (flashsr_tasks.config).
"""
from __future__ import annotations

from typing import Optional

from celery import Celery

from flashsr_tasks import config
from flashsr_tasks.broker import kombu_fixes
from flashsr_tasks.broker.queues import CPU_QUEUE, GPU_QUEUE

ENHANCE_TASK = {GPU_QUEUE: "flashsr.enhance_gpu", CPU_QUEUE: "flashsr.enhance_cpu"}
MERGE_TASK = "flashsr.merge_into_manifest"
# Results are deleted once a chord is journaled and its summary collected; this only bounds what
# is left by runs nobody waits for (--no-wait, a killed orchestrator): gone within a day.
RESULT_EXPIRES_S = 24 * 3600


def make_app(
    broker: Optional[str] = None, backend: Optional[str] = None, include_tasks: bool = False, collector: bool = False
) -> Celery:
    """`collector`: the orchestrator's app, which waits for chord callbacks only
    (flashsr_tasks.broker.collector_backend)."""
    kombu_fixes.apply()  # workers survive losing Redis while they hold messages
    broker = broker or config.broker_url() or config.DEFAULT_BROKER_FOR_WORKERS
    backend = backend or config.result_backend(broker)
    if backend and backend.split("://", 1)[0] in ("redis", "rediss"):
        backend = (f"flashsr_tasks.broker.collector_backend:CollectorRedisBackend+{backend}" if collector
                   else f"flashsr_tasks.broker.patient_backend:PatientRedisBackend+{backend}")
    app = Celery("flashsr_tasks", include=["flashsr_tasks.tasks"] if include_tasks else [])
    time_limit = config.task_time_limit_s()
    visibility = config.visibility_timeout_s()
    transport = {
        "visibility_timeout": visibility,
        # kombu scans for tasks of dead workers every interval × throttle seconds (100 s by
        # default); scan every interval so recovery takes about the visibility timeout.
        "unacked_restore_interval": max(1, min(10, visibility // 10)),
        "unacked_restore_throttle": 1,
    }
    app.conf.update(
        broker_url=broker,
        result_backend=backend,
        # JSON only: a pickle payload from the queue would be code execution on the worker.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Nothing lost: ack after the work, redeliver a task whose process died, and let
        # Redis hand unacknowledged tasks of a dead worker to another one.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # gpu tasks are long: one at a time per process, so idle GPUs get the next one. cpu
        # workers raise this in worker.lifecycle, where the worker knows its queues.
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": visibility},
        task_time_limit=time_limit,
        task_soft_time_limit=time_limit - 60 if time_limit > 120 else None,
        result_expires=RESULT_EXPIRES_S,
        result_extended=False,
        task_default_queue=CPU_QUEUE,
        task_routes={ENHANCE_TASK[GPU_QUEUE]: {"queue": GPU_QUEUE}, ENHANCE_TASK[CPU_QUEUE]: {"queue": CPU_QUEUE}},
        broker_connection_retry_on_startup=True,
        # A worker that loses the broker cancels its running tasks (kombu 5.7 cannot restore their
        # messages while the broker is away, and the worker would stop); the orchestrator sends a
        # file whose task was cancelled again (orchestrator_hooks.distributed.dispatch), so none is recorded failed.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # SIGTERM (a preemption notice, docker stop): the tasks running go on for the grace, then
        # whatever is unfinished goes back to the broker at once (worker.lifecycle makes SIGTERM the cold
        # shutdown that does this). Measured in docs/workers.md.
        worker_soft_shutdown_timeout=float(config.shutdown_grace_s()),
        result_backend_always_retry=not collector,
        result_backend_max_sleep_between_retries_ms=5000,
    )
    if config.quorum_queues() and broker.split("://", 1)[0].startswith("amqp"):
        # Celery then uses per-consumer prefetch, which quorum queues need (worker_detect_quorum_queues).
        app.conf.update(task_default_queue_type="quorum", task_create_missing_queue_type="quorum")
        config.max_attempts()  # refused at start when the queues' own delivery limit would cut the count short
    if collector:
        _bound_orchestrator_waits(app)
    return app


def _bound_orchestrator_waits(app: Celery) -> None:
    """The orchestrator's connections: a server that accepts a connection and never answers is an
    error within seconds, and retries are the orchestrator's own (orchestrator_hooks.distributed.outage)."""
    timeout = 5
    app.conf.update(
        broker_connection_timeout=timeout,
        broker_connection_retry=False,
        broker_transport_options={**app.conf.broker_transport_options,
                                  "socket_timeout": timeout, "socket_connect_timeout": timeout},
        redis_socket_timeout=timeout,
        redis_socket_connect_timeout=timeout,
        redis_retry_on_timeout=False,
    )
