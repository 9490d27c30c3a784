"""Removing the temporary files that a killed writer left behind (atomic_path's)."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Iterable

from flashsr_tasks.files.naming import MANIFEST_NAME, is_output_name

# What atomic_path leaves when its writer is killed: ".<target>.<8 random characters>.tmp",
# where the target is one of our outputs or the manifest.
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
STALE_TEMPORARY_S = 3600


def sweep_stale_temporaries(root: Path) -> int:
    """`remove_stale_temporaries` in every folder under `root` (an --output_dir tree)."""
    return sum(remove_stale_temporaries(folder, files) for folder, _, files in os.walk(root))


def remove_stale_temporaries(folder: str, names: Iterable[str]) -> int:
    """Remove our temporary files in `folder` older than an hour (a live writer renames its own
    within seconds); returns how many. Other programs' temporary files are left alone."""
    removed = 0
    deadline = time.time() - STALE_TEMPORARY_S
    for name in names:
        match = _TEMPORARY.match(name)
        if not match or not (is_output_name(match["target"]) or match["target"] == MANIFEST_NAME):
            continue
        path = os.path.join(folder, name)
        try:
            if os.lstat(path).st_mtime < deadline:
                os.unlink(path)
                removed += 1
        except OSError:  # gone already, or a read-only tree
            pass
    return removed


def remove_temporaries_of(target: Path) -> int:
    """Remove every temporary file of `target` (atomic_path's), whatever its age: for a writer
    known to be dead (a pool process killed on that file). Returns how many."""
    removed = 0
    try:
        names = os.listdir(target.parent)
    except OSError:
        return 0
    for name in names:
        match = _TEMPORARY.match(name)
        if match and match["target"] == target.name:
            try:
                os.unlink(target.parent / name)
                removed += 1
            except OSError:
                pass
    return removed
