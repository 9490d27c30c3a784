"""Removing task results from the result backend once their records are journaled."""
from __future__ import annotations

from typing import Any


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
