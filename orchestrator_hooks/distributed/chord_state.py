"""What Celery's Redis backend keeps of a chord, and removing it once the orchestrator is done with it."""
from __future__ import annotations

import time
from typing import Any


def forget_chord_state(backend: Any, group_id: str, failed: bool) -> None:
    """What Celery's Redis backend leaves of a chord. After success, a 'done' marker kept five
    minutes (it stops a late duplicate of a member from firing the callback twice), deleted
    only once it says done, so a callback still being published keeps its claim. For a
    chord that will not complete (an orphan), all of it: without its size (`.s`) no late
    member can fire its callback."""
    client = getattr(backend, "client", None)
    if client is None or not hasattr(backend, "get_key_for_group"):
        return
    key = backend.get_key_for_group
    # A worker that claimed the chord (to fire or fail its callback) cleans up and marks it done
    # just after the callback's result is stored; wait a moment for that claim to end, or its
    # clean-up would find its claim gone and leave the chord's state for a day.
    deadline = time.monotonic() + 2
    while client.eval(_DELETE_IF_DONE, 1, key(group_id, ".c")) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if failed:
        client.delete(*(key(group_id, suffix) for suffix in (".j", ".t", ".s", ".d", ".c")))


_DELETE_IF_DONE = """
local value = redis.call('GET', KEYS[1])
if value == 'done' then return redis.call('DEL', KEYS[1]) end
if value then return 0 end
return -1
"""
