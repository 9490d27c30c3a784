"""Fixes for kombu 5.7's Redis transport, applied where flashsr's Celery app is built.

1. When a worker loses Redis while it holds unacknowledged messages (a task running with late
   acks, or prefetched ones), Celery 5.7 clears the transport's connection info and then closes
   the channel, which tries to put those messages back on the queue and needs that info: an
   AttributeError, "Unrecoverable error", and the worker stops. Here a channel remembers its
   connection info, so putting the messages back either works (Redis is back) or fails with a
   connection error that Celery ignores, and the worker reconnects as it should.

2. What a worker could not tell Redis while it was away, it tells it once it is back. Closing
   the lost channel puts the messages the worker holds back on the queue (the prefetched ones,
   which Celery then forgets, and those of the tasks it cancels); with Redis away that fails,
   and acknowledging a task that finished during the outage fails too. Either way the message
   stays in Redis' `unacked` hash, where only the visibility timeout (30 minutes by default)
   would hand it out again: a prefetched file nobody runs, and a run waiting for it. Here the
   delivery tags of both are kept in the worker's process, and the first channel it opens once
   Redis answers again puts the one kind back at the head of its queue and removes the other
   from `unacked`. Both are idempotent (a tag no longer in `unacked` is left alone), so one that
   Redis' own restore, the orchestrator or another worker dealt with meanwhile is harmless.
   A worker killed before it reconnects takes its tags with it: its messages wait for the
   visibility timeout, as those of any dead worker do (docs/faults.md, "Limits").
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)
_applied = False
# Delivery tags this process still owes Redis, by the `unacked` hash they sit in.
_lock = threading.Lock()
_to_restore: dict[str, set[str]] = {}
_to_ack: dict[str, set[str]] = {}


def _forget_in_child() -> None:
    """A pool process forked during an outage owes nothing: its parent pays. (Were it to pay too,
    later, it could put back a message that is by then delivered again under the same tag.)"""
    global _lock
    _lock = threading.Lock()  # a thread of the parent may have held it at the fork
    _to_restore.clear()
    _to_ack.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def apply() -> None:
    global _applied
    if _applied:
        return
    _applied = True
    from kombu.transport import redis as redis_transport

    _remember_connection_info(redis_transport.Channel)
    _settle_later(redis_transport.Channel, redis_transport.QoS)


def _remember_connection_info(channel: Any) -> None:
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

    channel._connparams = _connparams


def _owe(book: dict[str, set[str]], key: str, tags: Any) -> None:
    with _lock:
        book.setdefault(key, set()).update(str(tag) for tag in tags)


def owed() -> tuple[int, int]:
    """Messages this process still has to put back, and to acknowledge (for tests and logs)."""
    with _lock:
        return sum(map(len, _to_restore.values())), sum(map(len, _to_ack.values()))


def _settle_later(channel: Any, qos: Any) -> None:
    restore_unacked, ack, reject = qos.restore_unacked, qos.ack, qos.reject
    channel_init = channel.__init__

    def _restore_unacked(self: Any, client: Any = None) -> Any:
        try:
            return restore_unacked(self, client)
        except self.channel.connection_errors:
            # kombu gives up on these for good (the channel is closing): keep them for the next channel.
            _owe(_to_restore, self.unacked_key, self._delivered)
            log.warning("Redis is away: %d unacknowledged message(s) go back to the queue once it is back",
                        len(self._delivered))
            self._delivered.clear()
            return None  # accounted for: the channel's close goes on

    def _ack(self: Any, delivery_tag: Any) -> None:
        try:
            ack(self, delivery_tag)
        except self.channel.connection_errors as exc:
            _owe(_to_ack, self.unacked_key, [delivery_tag])
            log.warning("Redis is away (%s): the acknowledgement of %s is sent once it is back", exc, delivery_tag)
            # Done as far as this channel goes: closing it must not put the message back.
            super(qos, self).ack(delivery_tag)

    def _reject(self: Any, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            reject(self, delivery_tag, requeue=requeue)
        except self.channel.connection_errors:
            _owe(_to_restore if requeue else _to_ack, self.unacked_key, [delivery_tag])
            super(qos, self).ack(delivery_tag)

    def _init(self: Any, *args: Any, **kwargs: Any) -> None:
        channel_init(self, *args, **kwargs)  # raises unless Redis answered its PING
        _settle(self)

    qos.restore_unacked = _restore_unacked
    qos.ack = _ack
    qos.reject = _reject
    channel.__init__ = _init


def _settle(channel: Any) -> None:
    """Pay what this process owes the Redis that `channel` reaches; what fails stays owed."""
    key = channel.unacked_key
    with _lock:
        restore, acked = set(_to_restore.pop(key, ())), set(_to_ack.pop(key, ()))
    if not restore and not acked:
        return
    qos = channel.qos
    done_restore: set[str] = set()
    done_ack: set[str] = set()
    try:
        with channel.conn_or_acquire() as client:
            for tag in acked:
                qos._remove_from_indices(tag, client.pipeline()).execute()
                done_ack.add(tag)
            for tag in restore:
                qos.restore_by_tag(tag, client)  # to the end BRPOP takes next, as kombu's own restore
                done_restore.add(tag)
    except channel.connection_errors:
        pass
    finally:
        _owe(_to_restore, key, restore - done_restore)
        _owe(_to_ack, key, acked - done_ack)
    log.warning("Redis is back: %d message(s) put back on the queue, %d acknowledged",
                len(done_restore), len(done_ack))
