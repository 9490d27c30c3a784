"""The orchestrator's result backend (`make_app(collector=True)`); workers never import it."""
from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend


class CollectorRedisBackend(RedisBackend):
    """Celery's Redis backend subscribes to the result channel of every task it sends, so an
    orchestrator would hold one subscription and receive one result message per file of the
    run. This one subscribes only to what it waits for: the chord callbacks, when it calls
    `get` (which also reads a result stored before the subscription)."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        pass
