"""Where a job may read and write: inside its root, and inside FLASHSR_ALLOWED_ROOTS when set.

A worker takes paths from queue messages, so they are untrusted: every path is resolved
(symlinks included) before it is checked, and refusals name only the relative path.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional, Sequence

from flashsr_tasks.manifest import MANIFEST_NAME

OUTPUT_SUFFIX = "_flashsr.wav"
AUDIO_SUFFIXES = (".wav", ".wave")


class PathRefused(Exception):
    """A path outside what the job may touch; the message is one sentence without absolute paths."""


def allowed_roots_from_env() -> list[Path]:
    value = os.environ.get("FLASHSR_ALLOWED_ROOTS", "")
    return [Path(p).resolve() for p in value.split(":") if p]


def check_root(root: Path, allowed: Optional[Sequence[Path]] = None) -> Path:
    """The job's root, resolved; refused when it is not an existing folder inside an allowed root."""
    allowed = allowed_roots_from_env() if allowed is None else allowed
    resolved = Path(root).resolve()
    if allowed and not any(resolved == a or a in resolved.parents for a in allowed):
        raise PathRefused("the job's root is outside FLASHSR_ALLOWED_ROOTS")
    if not resolved.is_dir():
        raise PathRefused("the job's root is not an existing folder")
    return resolved


def resolve_source(root: Path, source: str) -> Path:
    """The source's path under an already checked `root`; refused when it leaves the root."""
    relative = PurePosixPath(source)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise PathRefused("is not a relative path inside the processed root")
    lexical = Path(root, *relative.parts)
    resolved = lexical.resolve()
    if root not in resolved.parents:
        raise PathRefused("resolves outside the processed root")
    return lexical


def output_path_for(source_path: Path) -> Path:
    return source_path.with_name(source_path.stem + OUTPUT_SUFFIX)


def is_output_name(name: str) -> bool:
    return name.lower().endswith(OUTPUT_SUFFIX)


def is_audio_name(name: str) -> bool:
    return name.lower().endswith(AUDIO_SUFFIXES) and not is_output_name(name)


def relative_posix(root: Path, path: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def discover_sources(root: Path) -> Iterator[str]:
    """Audio files under `root` (recursively) as relative POSIX paths, our outputs excluded;
    streamed folder by folder (each folder's names sorted), so a run over an archive of any size
    holds one folder's listing at a time.

    Folders and symlinks with an audio name are listed too, so that the per-file work can
    give them a clear failed record instead of silently ignoring them. Our own temporary
    files that a killed run left behind (older than an hour) are removed on the way.
    """
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        files.sort()
        remove_stale_temporaries(folder, files)
        for name in [*dirs, *files]:
            if is_audio_name(name):
                yield relative_posix(root, Path(folder, name))


# What atomic_path leaves when its writer is killed: ".<target>.<8 random characters>.tmp",
# where the target is one of our outputs or the manifest.
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
STALE_TEMPORARY_S = 3600


def remove_stale_temporaries(folder: str, names: Iterable[str], now: Optional[float] = None) -> int:
    """Remove our temporary files in `folder` older than an hour (a live writer renames its own
    within seconds); returns how many. Other programs' temporary files are left alone."""
    removed = 0
    deadline = (time.time() if now is None else now) - STALE_TEMPORARY_S
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
