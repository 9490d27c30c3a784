"""Riding out a lost broker or result backend: retry with backoff for the run's outage budget.

Every call the orchestrator makes to Redis (or the broker) during a run goes through one
`Outage`: the first failure prints one line, each retry waits a little longer (up to
`MAX_BACKOFF_S`), success after a failure prints one line, and a connection that stays lost
past the budget (`FLASHSR_OUTAGE_BUDGET_S`) ends the run with `BrokerLost`: one sentence.
"""
from __future__ import annotations

import logging
import socket
import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")
log = logging.getLogger("flashsr")

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0


class BrokerLost(ConnectionError):
    """The broker or result backend could not be reached (at the start, or past the outage budget)."""


def connection_errors() -> tuple[type[BaseException], ...]:
    """What a lost, restarting or silent server raises through redis-py, kombu and Celery."""
    import redis.exceptions
    from kombu.exceptions import OperationalError

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError,
            ConnectionError, socket.timeout, TimeoutError)


def first_line(exc: BaseException) -> str:
    """An exception's first non-empty line, or its type's name: what a one-sentence message can quote."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


class Outage:
    """The state of the run's connection: up, or lost since a moment (shared by every call)."""

    def __init__(self, where: str, budget_s: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.where = where            # the broker's URL without its password
        self.budget_s = budget_s
        self.down_since: Optional[float] = None
        self.outages = 0              # how many times the connection was lost (for tests and the summary)
        self._sleep = sleep
        self.errors = connection_errors()

    def call(self, action: Callable[[], T]) -> T:
        """`action()`, retried while the connection is lost, for what is left of the budget."""
        backoff = FIRST_BACKOFF_S
        while True:
            try:
                value = action()
            except self.errors as exc:
                self.lost(exc)
                self._sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                continue
            self.back()
            return value

    def lost(self, exc: BaseException) -> None:
        """Note a failed call: one line at the first, `BrokerLost` once the budget is spent."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            self.outages += 1
            log.warning("lost the connection to %s (%s); retrying for up to %s", self.where, first_line(exc),
                        _duration(self.budget_s))
        elif now - self.down_since > self.budget_s:
            raise BrokerLost(f"lost the connection to {self.where} for more than {_duration(self.budget_s)} "
                             f"(FLASHSR_OUTAGE_BUDGET_S; last error: {first_line(exc)})") from None

    def back(self) -> None:
        if self.down_since is not None:
            log.warning("the connection to %s is back after %.0f s; the run goes on", self.where,
                        time.monotonic() - self.down_since)
            self.down_since = None


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 120 else f"{seconds:g} s"
