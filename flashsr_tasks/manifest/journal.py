"""The record journal: an append-only file of JSON lines beside manifest.json.

Records are appended while a run goes on, so a run killed at any moment keeps them; `store.fold` moves them into
manifest.json. On replay only the last line may be torn. docs/manifest.md, "When a record reaches manifest.json",
explains appends, replay and when they reach the disk.
"""
from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Mapping, Optional

log = logging.getLogger(__name__)

JOURNAL_NAME = ".manifest.json.journal"


class JournalError(Exception):
    """The journal is damaged before its last line; the message is one sentence for the user."""


def journal_path(root: Path) -> Path:
    return Path(root) / JOURNAL_NAME


def dumps(value: Any) -> str:
    """JSON text as readable as it can be (UTF-8, not escaped) and always encodable: a file name
    that is not valid UTF-8 reaches Python with lone surrogates, and is then written escaped
    (`\\udce9`), which reads back as the same string."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value)
    return text


def encode(records: Iterable[Mapping[str, Any]]) -> bytes:
    """Whole JSON lines for the records whose source is a relative path inside the root (a
    forged task message can name any path; only paths inside the root belong here)."""
    return b"".join(dumps(r).encode("utf-8") + b"\n" for r in records if is_inside_relative(r.get("source")))


def append_locked(root: Path, records: Iterable[Mapping[str, Any]], sync: bool = False) -> int:
    """Append records in one write; the caller holds the manifest's lock. Returns the journal's size after."""
    data = encode(records)
    path = journal_path(root)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        start = _torn_last_line(fd, size)
        if start is not None:
            # replay skips it; cut it away, or ours would be glued onto it (or bury it mid-file)
            os.ftruncate(fd, start)
            size = start
            log.warning("%s: dropped a torn last line left by a killed run", JOURNAL_NAME)
        if data:
            written = os.write(fd, data)
            if written != len(data):  # a full disk: leave no half line behind
                os.ftruncate(fd, size)
                raise OSError(errno.ENOSPC, f"could not append to {JOURNAL_NAME}: no space left on device")
            size += written
            if sync:
                os.fsync(fd)
        return size
    finally:
        os.close(fd)


def replay(root: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Every whole record in the journal with its line's offset, in the order written.

    A torn or unparsable last line is skipped (with a warning); a damaged line before it
    raises JournalError. A missing journal is an empty one.
    """
    path = journal_path(root)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    with handle:
        offset = 0
        number = 0
        pending: Optional[tuple[int, bytes]] = None  # judged once we know whether it is the last line
        for line in handle:
            number += 1
            if pending is not None:
                yield _parsed(pending[0], pending[1], number - 1, last=False)
            pending = (offset, line)
            offset += len(line)
        if pending is not None:
            start, line = pending
            if not line.endswith(b"\n"):
                log.warning("%s: ignoring a torn last line left by a killed run", JOURNAL_NAME)
                return
            try:
                yield _parsed(start, line, number, last=True)
            except _TornLine:
                log.warning("%s: ignoring an unreadable last line left by a killed run", JOURNAL_NAME)


def read_line(handle: Any, offset: int) -> dict[str, Any]:
    """The record at `offset` of an open journal (as replay reported it)."""
    handle.seek(offset)
    return json.loads(handle.readline())


def is_inside_relative(source: Any) -> bool:
    if not isinstance(source, str):
        return False
    parts = PurePosixPath(source).parts
    return bool(parts) and not source.startswith("/") and ".." not in parts


class _TornLine(Exception):
    pass


def _parsed(offset: int, line: bytes, number: int, last: bool) -> tuple[int, dict[str, Any]]:
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if isinstance(record, dict) and is_inside_relative(record.get("source")):
        return offset, record
    if last:
        raise _TornLine()
    raise JournalError(
        f"{JOURNAL_NAME} line {number} is damaged (not a record); nothing was folded, move the file aside to go on"
    )


def _torn_last_line(fd: int, size: int) -> Optional[int]:
    """Where the journal's last line starts when it is torn (no newline, or not a record, as
    replay judges it); None when it is whole or the journal is empty."""
    if not size:
        return None
    if os.pread(fd, 1, size - 1) != b"\n":
        return _last_newline_end(fd, size)
    start = _last_newline_end(fd, size - 1)
    try:
        _parsed(start, os.pread(fd, size - start, start), 0, last=True)
    except _TornLine:
        return start
    return None


def _last_newline_end(fd: int, size: int) -> int:
    """The offset just after the last newline before `size` (0 when there is none)."""
    step = 4096  # a record's line is under 1 KB: one read almost always finds it
    end = size
    while end > 0:
        start = max(0, end - step)
        chunk = os.pread(fd, end - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
        step = min(step * 4, 1 << 20)
    return 0
