"""What flashsr's files are called: which names are audio sources, which are our outputs, where
each output goes, and the manifest's name."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Optional

from flashsr_tasks.files.roots import PathRefused

MANIFEST_NAME = "manifest.json"
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
