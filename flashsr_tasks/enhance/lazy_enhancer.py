"""Making an enhancer on first use. Free of numpy and torch, so a worker's main process can
import it and stay small."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from flashsr_tasks.enhance.enhancers import Enhancer


class LazyEnhancer:
    """An enhancer made on first use, once, even from several threads: a run whose files are all
    skipped or unselected never loads the model, and a gpu worker can start loading it in the
    background while its first task waits."""

    def __init__(self, factory: Callable[[], Enhancer]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._enhancer: Optional[Enhancer] = None

    def __call__(self) -> Enhancer:
        with self._lock:
            if self._enhancer is None:
                self._enhancer = self._factory()
            return self._enhancer

    @property
    def loaded(self) -> Optional[Enhancer]:
        return self._enhancer
