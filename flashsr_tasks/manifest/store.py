"""The stage's manifest.json: one record per source, kept durably through a journal.

`append_records` adds records to the journal; `fold` moves it into manifest.json in one atomic replace, streamed,
under the lock every writer holds. docs/manifest.md, "When a record reaches manifest.json", explains when folds
happen, concurrent runs and the bytes written; "Full-band files", the second list.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, Optional, TypeVar

from flashsr_tasks.files.atomic import atomic_path
from flashsr_tasks.files.naming import MANIFEST_NAME
from flashsr_tasks.manifest import journal
from flashsr_tasks.manifest.full_band import FULL_BAND_KEY, is_entry
from flashsr_tasks.manifest.layout import RECORDS_KEY, ManifestError, Raw, Writer, restartable
from flashsr_tasks.manifest.records import RECORD_TYPE

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCK_NAME = ".manifest.json.lock"
# A worker can wait behind another run's fold; an hour means something is stuck for real.
LOCK_TIMEOUT_S = 3600
# Fold while a run goes on once the journal is larger than both of these. The floor keeps runs
# below ~200,000 files to the one fold at their end (2× the final manifest written in all,
# journal included); above it, the ratio makes the manifest 5× larger at each fold, so a run
# writes at most 3.25× the final manifest, and typically about 2.5×.
FOLD_FLOOR_BYTES = 128 << 20
FOLD_RATIO = 4


def manifest_path(root: Path) -> Path:
    return Path(root) / MANIFEST_NAME


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """The root's manifest lock: every writer of manifest.json or its journal holds it."""
    from filelock import FileLock  # here, not at import: 20 ms of every command's start-up

    with FileLock(str(Path(root) / LOCK_NAME), timeout=LOCK_TIMEOUT_S):
        yield


def append_records(root: Path, records: Iterable[Mapping[str, Any]], sync: bool = False) -> None:
    """Make records durable in the root's journal (one write), folding it when it has grown large.

    Duplicates of one source collapse to the last one when folded, so a task delivered twice
    still leaves one record.
    """
    records = list(records)
    if not records:
        return
    with locked(root):
        size = journal.append_locked(root, records, sync=sync)
        if size > max(FOLD_FLOOR_BYTES, FOLD_RATIO * _size_of(manifest_path(root))):
            _fold_locked(root)


def fold(root: Path) -> int:
    """Move every journaled record into manifest.json (atomically); returns how many were folded."""
    with locked(root):
        return _fold_locked(root)


def records_by_source(root: Path, pick: Callable[[dict[str, Any]], Optional[T]]) -> dict[str, T]:
    """`pick(record)` for this stage's records as a reader sees them (manifest.json, then the
    journal on top), keyed by source; records that `pick` maps to None are left out. Streams
    manifest.json, so a run holds `pick`'s small values, not the records."""
    return _by_source(root, RECORDS_KEY, _is_ours, pick)


def full_band_by_source(root: Path, pick: Callable[[dict[str, Any]], Optional[T]]) -> dict[str, T]:
    """As `records_by_source`, for the entries of the `"full_band"` list."""
    return _by_source(root, FULL_BAND_KEY, is_entry, pick)


def _by_source(root: Path, key: str, wanted: Callable[[Any], bool], pick: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    def collect(events: Iterator[tuple[str, str, Any]]) -> dict[str, Any]:
        picked: dict[str, Any] = {}
        for kind, list_key, value in events:
            if kind == "item" and list_key == key:
                _pick_into(picked, value.value if isinstance(value, Raw) else value, wanted, pick)
        return picked

    picked = restartable(manifest_path(root), collect)
    for _, line in journal.replay(root):
        picked.pop(line["source"], None)  # the last judgement wins, whichever list it belongs to
        _pick_into(picked, line, wanted, pick)
    return picked


def _pick_into(picked: dict[str, Any], record: Any, wanted: Callable[[Any], bool],
               pick: Callable[[dict[str, Any]], Any]) -> None:
    if wanted(record) and isinstance(record.get("source"), str):
        value = pick(record)
        if value is not None:
            picked[record["source"]] = value


# ------------------------------------------------------------------------------- folding

def _fold_locked(root: Path) -> int:
    # source → its last journal line, encoded by _line_ref: ~150 bytes a record; None once written
    latest: dict[str, Optional[int]] = {}
    for offset, record in journal.replay(root):
        latest[record["source"]] = _line_ref(offset, is_entry(record))
    path = journal.journal_path(root)
    if not latest:
        _remove(path)  # empty, or only a torn line
        return 0
    count = len(latest)
    with open(path, "rb") as lines, atomic_path(manifest_path(root)) as tmp:
        with open(tmp, "w", encoding="utf-8") as out:
            restartable(manifest_path(root), lambda events: _write_folded(out, events, dict(latest), lines))
            out.flush()
            os.fsync(out.fileno())
    _fsync_folder(root)
    journal_bytes = _size_of(path)
    # Only now: until the new manifest is durable, the journal is the only copy of its records.
    _remove(path)
    log.info("folded %d records (%d journal bytes) into %s (%d bytes)",
             count, journal_bytes, MANIFEST_NAME, _size_of(manifest_path(root)))
    return count


def _line_ref(offset: int, full_band: bool) -> int:
    """A journal line's offset with its list in the sign (an int, not a tuple: the fold's index
    holds one per journaled source)."""
    return -offset - 1 if full_band else offset


def _ref_offset(ref: int) -> int:
    return -ref - 1 if ref < 0 else ref


def _write_folded(out: IO[str], events: Iterator[tuple[str, str, Any]], latest: dict[str, Optional[int]],
                  lines: IO[bytes]) -> None:
    """Copy the manifest's events to `out` with journaled records in place of their source's
    record and journaled full-band entries in place of their source's entry; the remaining
    ones (new sources, sorted) go at the end of their list. A source whose last journal line
    belongs to the other list leaves this one."""
    out.seek(0)
    out.truncate()
    writer = Writer(out)
    lists = {RECORDS_KEY: (_is_ours, False), FULL_BAND_KEY: (is_entry, True)}
    current: Optional[str] = None
    seen: set[str] = set()
    for kind, key, value in events:
        if kind == "list_start":
            current = key if key in lists else None
            seen.add(key)
            writer.list_start(key)
        elif kind == "item":
            if current is not None:
                ours, full_band = lists[current]
                item = value.value if isinstance(value, Raw) else value
                source = item.get("source") if ours(item) else None
                if isinstance(source, str) and source in latest:
                    ref = latest[source]
                    if ref is None or (ref < 0) != full_band:
                        continue  # already written (a source listed twice), or it moved to the other list
                    value = journal.read_line(lines, _ref_offset(ref))
                    latest[source] = None
            writer.item(value)
        elif kind == "list_end":
            if current is not None:
                _write_new(writer, latest, lines, lists[current][1])
            current = None
            writer.list_end()
        elif key in lists:  # an empty list (or not a list at all)
            if (value.value if isinstance(value, Raw) else value) != []:
                raise ManifestError(f"'{key}' in {MANIFEST_NAME} is not a list; fix or move it, nothing was overwritten")
            seen.add(key)
            writer.list_start(key)
            _write_new(writer, latest, lines, lists[key][1])
            writer.list_end()
        else:
            writer.value(key, value)
    for key, (_, full_band) in lists.items():
        if key not in seen and (key == RECORDS_KEY or _has_new(latest, full_band)):
            writer.list_start(key)
            _write_new(writer, latest, lines, full_band)
            writer.list_end()
    writer.close()


def _has_new(latest: dict[str, Optional[int]], full_band: bool) -> bool:
    return any(ref is not None and (ref < 0) == full_band for ref in latest.values())


def _write_new(writer: "Writer", latest: dict[str, Optional[int]], lines: IO[bytes], full_band: bool) -> None:
    for source, ref in sorted((s, ref) for s, ref in latest.items() if ref is not None and (ref < 0) == full_band):
        writer.item(journal.read_line(lines, _ref_offset(ref)))
        latest[source] = None


def _is_ours(record: Any) -> bool:
    return isinstance(record, dict) and record.get("type") == RECORD_TYPE


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_folder(root: Path) -> None:
    """The rename is durable once the folder is synced (POSIX); not every platform allows it."""
    try:
        fd = os.open(root, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
