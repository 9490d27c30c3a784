"""Where a job may read and write: inside its root, and inside FLASHSR_ALLOWED_ROOTS when set.

A worker takes paths from queue messages, so they are untrusted: every path is resolved
(symlinks included) before it is checked, and refusals name only the relative path.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

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


def discover_sources(root: Path) -> list[str]:
    """Audio files under `root` (recursively) as sorted relative POSIX paths, our outputs excluded.

    Folders and symlinks with an audio name are listed too, so that the per-file work can
    give them a clear failed record instead of silently ignoring them.
    """
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in [*dirs, *files]:
            if is_audio_name(name):
                found.append(relative_posix(root, Path(folder, name)))
    return sorted(found)
