"""Finding the audio sources under a processed root, streamed folder by folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from flashsr_tasks.files.naming import is_audio_name, relative_posix
from flashsr_tasks.files.temporaries import remove_stale_temporaries


def discover_sources(root: Path, sweep: bool = True) -> Iterator[str]:
    """Audio files under `root` (recursively) as relative POSIX paths, our outputs excluded;
    streamed folder by folder (each folder's names sorted), so a run over an archive of any size
    holds one folder's listing at a time.

    Folders and symlinks with an audio name are listed too, so that the per-file work can
    give them a clear failed record instead of silently ignoring them. Our own temporary
    files that a killed run left behind (older than an hour) are removed on the way, unless
    `sweep` is False (a reader such as flashsr-status changes nothing).
    """
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        files.sort()
        if sweep:
            remove_stale_temporaries(folder, files)
        relative = relative_posix(root, Path(folder))
        prefix = "" if relative == "." else relative + "/"
        for name in [*dirs, *files]:
            if is_audio_name(name):
                yield prefix + name
