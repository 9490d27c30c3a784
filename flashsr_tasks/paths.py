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

OUTPUT_MARK = "_flashsr"  # <stem>_flashsr.<ext>: our outputs, never taken as inputs
OUTPUT_SUFFIX = OUTPUT_MARK + ".wav"
# What libsndfile reads (lower-case names; matched case-insensitively). A FLAC source gets a
# FLAC output (lossless, about half the size); every other source a WAV, so a lossy source
# (MP3, Ogg Vorbis, Opus) is never re-encoded lossily.
LOSSLESS_KEEPING_SUFFIXES = {".flac": ".flac"}
AUDIO_SUFFIXES = (
    ".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".aifc",
    ".au", ".snd", ".caf", ".w64", ".rf64", ".sph", ".nist",
)
_SUFFIX_RANK = {suffix: rank for rank, suffix in enumerate(AUDIO_SUFFIXES)}


class PathRefused(Exception):
    """A path outside what the job may touch; the message is one sentence without absolute paths."""


def allowed_roots_from_env() -> list[Path]:
    value = os.environ.get("FLASHSR_ALLOWED_ROOTS", "")
    return [Path(p).resolve() for p in value.split(":") if p]


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


def output_name_for(source_name: str) -> str:
    """`<stem>_flashsr.flac` for a FLAC source, `<stem>_flashsr.wav` for any other."""
    stem, suffix = os.path.splitext(source_name)  # string functions: a re-run calls this per file
    return stem + OUTPUT_MARK + LOSSLESS_KEEPING_SUFFIXES.get(suffix.lower(), ".wav")


def output_relative_for(source: str) -> str:
    """The output's path relative to the output folder (the root, or --output_dir): the
    source's relative folder, the output's name."""
    relative = PurePosixPath(source)
    return str(relative.with_name(output_name_for(relative.name)))


def output_path_for(source_path: Path, root: Optional[Path] = None, output_dir: Optional[Path] = None) -> Path:
    """Where the output of `source_path` (under `root`) goes: beside it, or with `output_dir` at
    the same relative path under that folder. Refused when a link inside `output_dir` would
    lead the output out of it."""
    name = output_name_for(source_path.name)
    if output_dir is None or root is None:
        return source_path.with_name(name)
    relative = Path(os.path.relpath(source_path.parent, root))
    target = Path(output_dir, relative, name)
    folder, out = target.parent.resolve(), Path(output_dir).resolve()
    if folder != out and out not in folder.parents:
        raise PathRefused("would be written outside the output folder (a link inside it leads out)")
    return target


def output_owner(source_path: Path) -> Optional[str]:
    """The name of another source beside `source_path` that owns the same output name (a.wav and
    a.mp3 both give a_flashsr.wav), or None. The owner is the one whose extension comes first in
    AUDIO_SUFFIXES (a WAV keeps the output it had before other formats were read), then by
    name, so every worker decides the same way without listing the folder."""
    name = output_name_for(source_path.name)
    stem = source_path.stem
    mine = _rank(source_path.name)
    rivals = sorted(
        (_rank(candidate), candidate)
        for suffix in AUDIO_SUFFIXES[:mine[0] + 1]  # a later suffix never ranks first
        for candidate in {stem + suffix, stem + suffix.upper()}
        if _rank(candidate) < mine and output_name_for(candidate) == name
        and _another_file(source_path.parent / candidate, source_path)
    )
    return rivals[0][1] if rivals else None


def _rank(name: str) -> tuple[int, str]:
    # string functions and a table: this runs for every candidate of every file
    return (_SUFFIX_RANK.get(os.path.splitext(name)[1].lower(), len(AUDIO_SUFFIXES)), name)


def _another_file(candidate: Path, source_path: Path) -> bool:
    # On a case-insensitive file system a.WAV exists when a.wav does, and is the same file.
    try:
        return candidate.exists() and not (source_path.exists() and candidate.samefile(source_path))
    except OSError:
        return False


def is_output_name(name: str) -> bool:
    """`<stem>_flashsr.<ext>`: ours, whatever the extension."""
    return os.path.splitext(name)[0].lower().endswith(OUTPUT_MARK)


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
        relative = relative_posix(root, Path(folder))
        prefix = "" if relative == "." else relative + "/"
        for name in [*dirs, *files]:
            if is_audio_name(name):
                yield prefix + name


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
