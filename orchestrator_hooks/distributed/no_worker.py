"""Saying when nobody is listening: no worker consumes the queue a waiting run sends to.

Asked only while the run makes no progress (a run whose files finish never asks): the
workers are asked over Celery's control channel which queues they consume, and when none
consumes the run's queue the user reads one line naming the queue and the command that
starts such a worker. The run keeps waiting, since workers may start later; the line is
repeated every `REPEAT_S`. With a give-up time, a run that has had no worker for that long
ends (`NoWorker`, exit status 1).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

log = logging.getLogger("flashsr")

# Without progress for this long, ask whether any worker consumes the queue (the notice comes
# within QUIET_S + ASK_TIMEOUT_S of the last progress, well inside 30 s).
QUIET_S = 10.0
ASK_EVERY_S = 10.0
ASK_TIMEOUT_S = 1.0
REPEAT_S = 600.0


class NoWorker(RuntimeError):
    """No worker consumed the run's queue for the give-up time."""


def consumers_of(app: Any, queue: str) -> int:
    """How many running workers consume `queue` (they answer within ASK_TIMEOUT_S)."""
    answers = app.control.inspect(timeout=ASK_TIMEOUT_S).active_queues() or {}
    return sum(any(q.get("name") == queue for q in queues or ()) for queues in answers.values())


class ListenerCheck:
    def __init__(self, queue: str, broker_shown: str, give_up_after_s: Optional[float],
                 count: Callable[[], int]) -> None:
        self.queue = queue
        self.broker_shown = broker_shown
        self.give_up_after_s = give_up_after_s
        self._count = count
        self._asked_at = float("-inf")
        self._nobody_since: Optional[float] = None
        self._told_at = float("-inf")

    def check(self, quiet_since: float) -> None:
        """Called while waiting; `quiet_since`: when the run last made progress."""
        now = time.monotonic()
        if now - quiet_since < QUIET_S or now - self._asked_at < ASK_EVERY_S:
            return
        self._asked_at = now
        if self._count() > 0:
            self._nobody_since = None
            return
        if self._nobody_since is None:
            self._nobody_since = quiet_since
        if now - self._told_at >= REPEAT_S:
            self._told_at = now
            log.warning("no worker consumes the queue %r; start one with: FLASHSR_BROKER_URL=%s celery -A "
                        "flashsr_tasks worker -Q %s (still waiting)", self.queue, self.broker_shown, self.queue)
        if self.give_up_after_s is not None and now - self._nobody_since >= self.give_up_after_s:
            raise NoWorker(f"no worker consumed the queue {self.queue!r} for {self.give_up_after_s:g} s "
                           f"(--give-up-after); nothing of this run is left queued, and the same command "
                           f"sends its files again")
