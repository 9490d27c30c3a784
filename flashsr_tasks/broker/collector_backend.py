"""The orchestrator's result backend (`make_app(collector=True)`); workers never import it."""
from __future__ import annotations

from typing import Any, Iterable, Optional

from celery.backends.redis import RedisBackend


class CollectorRedisBackend(RedisBackend):
    """Celery's Redis backend subscribes to the result channel of every task it sends, and every
    result object unsubscribes when it is destroyed (noisily, at interpreter exit). The
    orchestrator subscribes to nothing: it reads the results it waits for with GET/MGET
    (`results_of`), so result objects here never subscribe and have nothing to undo."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        pass

    def add_pending_result(self, result: Any, weak: bool = False, start_drainer: bool = True) -> Any:
        return result

    def add_pending_results(self, results: Iterable[Any], weak: bool = False) -> list[Any]:
        return list(results)

    def remove_pending_result(self, result: Any) -> Any:
        return result

    def results_of(self, task_ids: list[str]) -> list[Optional[dict[str, Any]]]:
        """The stored result (Celery's meta: status, result…) of each task, None where none is stored yet."""
        if not task_ids:
            return []
        payloads = self.client.mget([self.get_key_for_task(task_id) for task_id in task_ids])
        return [None if payload is None else self.decode_result(payload) for payload in payloads]

    def have_results(self, task_ids: list[str]) -> list[bool]:
        """Whether each task has a stored result, without reading the results (one round trip)."""
        with self.client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.exists(self.get_key_for_task(task_id))
            return [bool(n) for n in pipe.execute()]
