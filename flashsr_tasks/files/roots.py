"""Where a job may read and write: inside its root, and inside FLASHSR_ALLOWED_ROOTS when set.

A worker takes paths from queue messages, so they are untrusted: every path is resolved
(symlinks included) before it is checked, and refusals name only the relative path.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

from flashsr_tasks import config


class PathRefused(Exception):
    """A path outside what the job may touch; the message is one sentence without absolute paths."""


def allowed_roots_from_env() -> list[Path]:
    return [Path(p).resolve() for p in config.allowed_roots()]


def check_root(
    root: Path, allowed: Optional[Sequence[Path]] = None, what: str = "the job's root", create: bool = False
) -> Path:
    """The job's root (or, with `what`, its output folder), resolved; refused when it is not an
    existing folder inside an allowed root. `create`: make the folder once it is known allowed."""
    allowed = allowed_roots_from_env() if allowed is None else allowed
    resolved = Path(root).resolve()
    if allowed and not any(resolved == a or a in resolved.parents for a in allowed):
        raise PathRefused(f"{what} is outside FLASHSR_ALLOWED_ROOTS")
    if create:
        try:
            resolved.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PathRefused(f"{what} cannot be created ({exc.strerror})") from None
    if not resolved.is_dir():
        raise PathRefused(f"{what} is not an existing folder")
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
