"""What a supervisor of child processes sends next: the files it owes again first (those a dead process
held), then new ones from the run's work; the skips met on the way pass through to the caller."""
from __future__ import annotations

import collections
from typing import Callable, Iterator, Union

from flashsr_tasks.manifest.records import Outcome
from flashsr_tasks.runs.planning import Todo


class WorkFeed:
    def __init__(self, work: Iterator[Union[Todo, Outcome]], again: collections.deque[Todo]) -> None:
        self.work = work
        self.again = again  # the supervisor's own queue, which its death handling fills
        self.exhausted = False

    def fill(self, send: Callable[[Todo], None], has_room: Callable[[], bool]) -> Iterator[Outcome]:
        """`send` files while `has_room()`; yields the skips passed on the way."""
        while has_room():
            if self.again:
                send(self.again.popleft())
                continue
            item = None if self.exhausted else next(self.work, None)
            if item is None:
                self.exhausted = True
                return
            if isinstance(item, dict):
                yield item
            else:
                send(item)

    @property
    def done(self) -> bool:
        """Nothing left to send."""
        return self.exhausted and not self.again
