"""The workers' result backend: Celery's Redis backend, patient with a lost Redis in chord bookkeeping.

Celery retries storing a task's result while Redis is away (`result_backend_always_retry`), but
not the chord bookkeeping that follows (`on_chord_part_return`): a task that finished while
Redis restarted would then be marked failed, and its file recorded as failed although its
output is whole. Here that step is retried too, with backoff, until Redis answers. Its script
is idempotent (a member is counted once), so a retry after a lost reply counts nothing twice;
if the lost reply was the one that claimed the callback, the orchestrator collects the chord
itself (orchestrator_hooks.distributed.watchdog).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import redis.exceptions
from celery.backends.redis import RedisBackend

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 5.0


class PatientRedisBackend(RedisBackend):
    def on_chord_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> Any:
        backoff = 0.2
        while True:
            try:
                return super().on_chord_part_return(request, state, result, **kwargs)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("Redis is away (%s); retrying the chord bookkeeping of task %s in %.1f s",
                            exc, request.id, backoff)
                time.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
