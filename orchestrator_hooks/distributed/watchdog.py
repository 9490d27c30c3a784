"""Noticing work that can no longer finish: a member whose message is gone.

A member with no result that the Redis broker holds neither in a queue nor in `unacked` at two looks in a row is
lost, and the orchestrator sends it again. docs/faults.md, "How the orchestrator does it" (orphans and the
watchdog) and "Limits", explains why two looks and why Redis only.
"""
from __future__ import annotations

import re
import time
from typing import Any, Iterable, Optional

from flashsr_tasks.broker.queues import PRIORITY_SEPARATOR, PRIORITY_STEPS

# Seconds between looks: a lost member is sent again 2-3 looks after it was lost.
INTERVAL_S = 5.0
PAGE = 1000
# A task message names its task id as "id" among its headers (root_id, parent_id and
# correlation_id do not match: their names end in "_id").
_TASK_ID = re.compile(rb'"id": "([0-9a-f-]{36})"')


class RedisMessages:
    """Which task ids the Redis broker still holds, queued or delivered and unacknowledged."""

    def __init__(self, client: Any, queue: str) -> None:
        self.client = client
        self.queue = queue

    def _keys(self) -> list[str]:
        return [self.queue, *(f"{self.queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS)]

    def count(self) -> int:
        """Messages queued (every priority) and delivered but unacknowledged, in one round trip."""
        with self.client.pipeline(transaction=False) as pipe:
            for key in self._keys():
                pipe.llen(key)
            pipe.hlen("unacked")
            return sum(pipe.execute())

    def held(self, task_ids: set[str]) -> set[str]:
        found: set[str] = set()
        for key in self._keys():
            start = 0
            while True:
                page = self.client.lrange(key, start, start + PAGE - 1)
                found |= _ids_in(page, task_ids)
                if len(page) < PAGE:
                    break
                start += PAGE
        found |= _ids_in((value for _, value in self.client.hscan_iter("unacked", count=PAGE)), task_ids)
        return found

    def drop_unacked(self, task_ids: set[str]) -> None:
        """Remove the messages of tasks known to be over (cancelled) from `unacked`, where kombu would
        otherwise hand them out again after the visibility timeout."""
        tags = [tag for tag, value in self.client.hscan_iter("unacked", count=PAGE) if _ids_in([value], task_ids)]
        if tags:
            self.client.hdel("unacked", *tags)
            self.client.zrem("unacked_index", *tags)


def _ids_in(messages: Iterable[bytes], wanted: set[str]) -> set[str]:
    found = set()
    for raw in messages:
        for match in _TASK_ID.finditer(raw):
            task_id = match.group(1).decode()
            if task_id in wanted:
                found.add(task_id)
    return found


class Watchdog:
    """Two looks in a row: the ids that nobody held at both.

    Reading the queue costs a pass over its messages, so a look reads it only when Redis holds
    fewer messages (queued and unacknowledged) than the run waits for, which is certain when
    one of its own is gone, or when it last read it `FULL_LOOK_S` ago (other runs' messages
    in the same queue can hide a lost one from the count)."""

    FULL_LOOK_S = 60.0

    def __init__(self, messages: Optional[RedisMessages]) -> None:
        self.messages = messages
        self._absent_before: set[str] = set()
        self._read_at = float("-inf")

    def lost(self, waiting: set[str]) -> set[str]:
        """Of `waiting` (ids with no result yet), those held by nobody at this look and the last."""
        if self.messages is None or not waiting:
            self._absent_before = set()
            return set()
        now = time.monotonic()
        if self.messages.count() >= len(waiting) and now - self._read_at < self.FULL_LOOK_S:
            return set()
        self._read_at = now
        absent = waiting - self.messages.held(waiting)
        lost = absent & self._absent_before
        self._absent_before = absent - lost
        return lost
