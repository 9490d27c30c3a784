"""The orchestrator's side of the distributed stage: one chord per run, then wait for it.

Tasks are sent by name through a client app, so the orchestrator needs neither the model
nor the task code. The header goes to the queue that `--device` names, and so does the
chord callback, so a stack with only one kind of worker completes.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from flashsr_tasks.manifest import merge_records
from flashsr_tasks.pipeline import Job, failed_outcome


def queue_for(device: str) -> str:
    from flashsr_tasks.celery import CPU_QUEUE, GPU_QUEUE

    return GPU_QUEUE if device.startswith("cuda") else CPU_QUEUE


def run_distributed(
    job: Job,
    sources: Sequence[str],
    known: dict[str, str],
    broker: str,
    wait: bool,
    on_outcome: Callable[[dict[str, Any]], None],
    timeout_s: Optional[float] = None,
) -> Optional[str]:
    """Dispatch `sources` as one chord; with `wait`, report each outcome as it completes and
    return None once the manifest is merged; without, return the chord's id at once."""
    from celery import chord

    from flashsr_tasks.celery import ENHANCE_TASK, MERGE_TASK, make_app

    if not sources:
        return None
    app = make_app(broker)
    _check_reachable(app, broker)
    queue = queue_for(job.device)
    header = [app.signature(ENHANCE_TASK[queue], args=(job.to_dict(), s, known.get(s)), queue=queue) for s in sources]
    callback = app.signature(MERGE_TASK, args=(str(job.manifest_root),), queue=queue)
    try:
        result = chord(header, app=app)(callback)
    except Exception as exc:
        raise ConnectionError(f"cannot reach the broker ({type(exc).__name__}: {exc})") from None
    try:
        if not wait:
            return result.id
        records: list[dict[str, Any]] = []

        def collect(outcome: dict[str, Any]) -> None:
            if outcome.get("record"):
                records.append(outcome["record"])
            on_outcome(outcome)

        if not _follow(result, dict(zip((m.id for m in result.parent.results), sources)), collect, timeout_s):
            # A member raised (a hard time limit), so the callback will not run: merge here what
            # the other members returned, as it would have.
            merge_records(job.manifest_root, records)
        return None
    finally:
        # The Redis result backend subscribes to every sent task's result channel and would
        # unsubscribe from the result objects' destructors at interpreter exit, noisily;
        # unsubscribe now, while the connection is alive.
        for task_id in [result.id, *(member.id for member in result.parent.results)]:
            app.backend.result_consumer.cancel_for(task_id)
        app.close()


def _check_reachable(app: Any, broker: str) -> None:
    """Fail in seconds with one sentence, before Celery's own retry loops (20 s of log lines)."""
    from kombu.utils.url import maybe_sanitize_url

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5, timeout=5)
        client = getattr(app.backend, "client", None)  # the Redis result backend
        if client is not None:
            client.ping()
    except Exception as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConnectionError(f"cannot reach the broker at {maybe_sanitize_url(broker)} ({detail})") from None


def _follow(
    result: Any, sources: dict[str, str], on_outcome: Callable[[dict[str, Any]], None], timeout_s: Optional[float]
) -> bool:
    """Report each member's outcome as it arrives (pushed by the result backend, not polled),
    then wait for the callback's merge. False when a member raised and the callback will not run."""
    started = time.monotonic()

    def arrived(task_id: str, value: Any) -> None:
        on_outcome(value if isinstance(value, dict) else _lost(sources[task_id], value))

    result.parent.join_native(timeout=timeout_s, propagate=False, callback=arrived)
    remaining = None if timeout_s is None else max(1.0, timeout_s - (time.monotonic() - started))
    if any(m.failed() for m in result.parent.results):
        return False
    result.get(timeout=remaining, propagate=False)
    return True


def _lost(source: str, error: Any) -> dict[str, Any]:
    """A member that raised instead of returning a record: still an outcome and a record."""
    return failed_outcome(source, f"failed on its worker ({type(error).__name__}: {error})")
