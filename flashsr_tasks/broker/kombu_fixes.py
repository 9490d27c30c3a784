"""A fix for kombu 5.7's Redis transport, applied where flashsr's Celery app is built.

When a worker loses Redis while it holds unacknowledged messages (a task running with late
acks, or prefetched ones), Celery 5.7 clears the transport's connection info and then closes
the channel, which tries to put those messages back on the queue and needs that info: an
AttributeError, "Unrecoverable error", and the worker stops. Here a channel remembers its
connection info, so putting the messages back either works (Redis is back) or fails with a
connection error that Celery ignores, and the worker reconnects as it should.
"""
from __future__ import annotations

from typing import Any

_applied = False


def apply() -> None:
    global _applied
    if _applied:
        return
    _applied = True
    from kombu.transport import redis as redis_transport

    channel = redis_transport.Channel
    original = channel._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> dict:
        if self.connection.client is None and getattr(self, "_flashsr_conninfo", None) is not None:
            self.connection.client = self._flashsr_conninfo
            try:
                return original(self, asynchronous=asynchronous)
            finally:
                self.connection.client = None
        self._flashsr_conninfo = self.connection.client
        return original(self, asynchronous=asynchronous)

    channel._connparams = _connparams  # type: ignore[method-assign]  # the patch itself
