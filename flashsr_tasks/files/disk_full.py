"""A full disk (or quota) stops a run: one sentence naming the folder, not a record per file."""
from __future__ import annotations

import errno
from typing import Any, Optional

_NO_ROOM = {errno.ENOSPC, errno.EDQUOT}
RECORD_REASON = "could not be written: no space left on device"


class DiskFull(Exception):
    """The run stopped because `folder` has no room; `summary` is what it did before."""

    def __init__(self, folder: str) -> None:
        super().__init__(f"no space left on device in {folder}; free some space and run the same command "
                         "again to finish")
        self.folder = folder
        self.summary: Optional[Any] = None


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _NO_ROOM
