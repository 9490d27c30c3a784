"""The run's progress bar on a terminal; nothing in logs, pipes or with --quiet."""
from __future__ import annotations

import sys
from typing import Any, Optional


class _NoBar:
    """What --quiet (or a pipe) gets instead of a disabled tqdm bar: importing tqdm costs ~30 ms."""

    total = None

    def update(self, n: int = 1) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: Optional[bool]) -> Any:
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return _NoBar()
    from tqdm import tqdm

    # No monitor thread: the in-process runner forks its pool after the bar exists.
    tqdm.monitor_interval = 0
    # enabled=None: a bar on a terminal, nothing in logs and pipes
    # No total at first: sources are found as the run goes; the total is set once discovery ends.
    return tqdm(unit="file", desc="flashsr", disable=None if enabled is None else not enabled,
                dynamic_ncols=True, leave=False)
