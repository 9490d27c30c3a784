"""A run's cancellation mark: set by an interrupted orchestrator, read by each task before it works.

The mark is one Redis key per run on the result backend, with an expiry as long as a result's
(nothing of the run outlives it): a task of a cancelled run that has not started does nothing
and stores nothing; one that was running when the mark was set journals its own record (nobody
collects its chord any more) and stores nothing either, so the run leaves no results behind.
"""
from __future__ import annotations

from typing import Any, Optional

KEY_PREFIX = "flashsr-cancelled-"


def key_for(run_id: str) -> str:
    return KEY_PREFIX + run_id


def mark_cancelled(client: Any, run_id: str, expires_s: int) -> None:
    client.set(key_for(run_id), b"1", ex=expires_s)


def is_cancelled(client: Any, run_id: Optional[str]) -> bool:
    """False for a message without a run id (sent by an older orchestrator) or a backend without a client."""
    if not run_id or client is None:
        return False
    return bool(client.exists(key_for(run_id)))
