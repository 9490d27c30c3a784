"""The stage's manifest.json: one record per source, kept durably through a journal.

Writers never rewrite manifest.json per file or per chunk: `append_records` adds records to
the journal beside it (flashsr_tasks.journal), and `fold` moves the journal into manifest.json
in one atomic replace (at the end of a run, at the start of the next, and whenever the journal
outgrows `FOLD_RATIO` × the manifest, above `FOLD_FLOOR_BYTES`: manifest rewrites then grow
geometrically, so the bytes a run writes stay within a small multiple of the final manifest).

Every writer holds the same lock file, so concurrent runs on one root serialise; manifest.json
is replaced atomically, so a reader never sees half-written JSON; other keys and other stages'
records are kept as they are. Full-band judgements (flashsr_tasks.full_band) travel the same
way into manifest.json's own `"full_band"` list: a source's last journaled line, record or
entry, decides which of the two lists holds it.

manifest.json is written one record per line (`_Writer`). That layout is read back as a stream
(`_events`), so folding a journal into a manifest of a million records holds neither of them
in memory; a manifest that someone reformatted is read whole once and written back in it.
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Optional, TypeVar

from flashsr_tasks import journal
from flashsr_tasks.atomic import atomic_path
from flashsr_tasks.full_band import FULL_BAND_KEY, is_entry

log = logging.getLogger(__name__)
T = TypeVar("T")

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".manifest.json.lock"
RECORDS_KEY = "enhancements"
RECORD_TYPE = "flashsr"
# A worker can wait behind another run's fold; an hour means something is stuck for real.
LOCK_TIMEOUT_S = 3600
# Fold while a run goes on once the journal is larger than both of these. The floor keeps runs
# below ~200,000 files to the one fold at their end (2× the final manifest written in all,
# journal included); above it, the ratio makes the manifest 5× larger at each fold, so a run
# writes at most 3.25× the final manifest, and typically about 2.5×.
FOLD_FLOOR_BYTES = 128 << 20
FOLD_RATIO = 4


class ManifestError(Exception):
    """The manifest exists but cannot be used; the message is one sentence for the user."""


def manifest_path(root: Path) -> Path:
    return Path(root) / MANIFEST_NAME


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """The root's manifest lock: every writer of manifest.json or its journal holds it."""
    from filelock import FileLock  # here, not at import: 20 ms of every command's start-up

    with FileLock(str(Path(root) / LOCK_NAME), timeout=LOCK_TIMEOUT_S):
        yield


def append_records(root: Path, records: Iterable[dict[str, Any]], sync: bool = False) -> None:
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
                _pick_into(picked, value.value if isinstance(value, _Raw) else value, wanted, pick)
        return picked

    picked = _restartable(manifest_path(root), collect)
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
            _restartable(manifest_path(root), lambda events: _write_folded(out, events, dict(latest), lines))
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
    writer = _Writer(out)
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
                item = value.value if isinstance(value, _Raw) else value
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
            if (value.value if isinstance(value, _Raw) else value) != []:
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


def _write_new(writer: "_Writer", latest: dict[str, Optional[int]], lines: IO[bytes], full_band: bool) -> None:
    for source in sorted(s for s, ref in latest.items() if ref is not None and (ref < 0) == full_band):
        writer.item(journal.read_line(lines, _ref_offset(latest[source])))
        latest[source] = None


def _is_ours(record: Any) -> bool:
    return isinstance(record, dict) and record.get("type") == RECORD_TYPE


class _Writer:
    """Writes manifest.json's layout: indented at the top, one line per list item, each written
    by json's C encoder (`indent=` switches to its pure-Python one, ten times slower)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.keys = 0
        self.items = 0

    def _key(self, key: str) -> None:
        self.out.write(("{\n" if self.keys == 0 else ",\n") + f"  {journal.dumps(key)}: ")
        self.keys += 1

    def value(self, key: str, value: Any) -> None:
        self._key(key)
        self.out.write(value if isinstance(value, _Raw) else journal.dumps(value))

    def list_start(self, key: str) -> None:
        self._key(key)
        self.out.write("[")
        self.items = 0

    def item(self, value: Any) -> None:
        text = value if isinstance(value, _Raw) else journal.dumps(value)
        self.out.write(("\n    " if self.items == 0 else ",\n    ") + text)
        self.items += 1

    def list_end(self) -> None:
        self.out.write("\n  ]" if self.items else "]")

    def close(self) -> None:
        self.out.write("{}\n" if self.keys == 0 else "\n}\n")


class _Raw(str):
    """JSON text read from manifest.json and already checked (its parsed value in `.value`):
    written back as it was, so a fold does not encode what it did not change."""

    value: Any


# ------------------------------------------------------------------------------- reading

def _restartable(path: Path, consume: Callable[[Iterator[tuple[str, str, Any]]], T]) -> T:
    """`consume(events)` over manifest.json, streamed when it is in the one-record-per-line
    layout. A file in another layout can only be told apart part-way through, so `consume`
    must be restartable: it is then called again with the file parsed whole."""
    try:
        return consume(_events(path))
    except _NotLineLayout:
        return consume(_events(path, whole=True))


def _events(path: Path, whole: bool = False) -> Iterator[tuple[str, str, Any]]:
    """manifest.json as a stream of ("value", key, v) | ("list_start", key, None) |
    ("item", key, v) | ("list_end", key, None). v is checked JSON text (`_Raw`) in the
    one-record-per-line layout; with `whole`, the file is parsed whole and v is a value.
    Raises _NotLineLayout when the file is in another layout (after some events, maybe)."""
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with handle:
        if whole:
            yield from _events_of(_parse_whole(handle.read()))
            return
        first = handle.readline()
        if first != "{\n":
            raise _NotLineLayout()
        yield from _line_events(handle)


class _NotLineLayout(Exception):
    pass


_decoder = json.JSONDecoder()


def _line_events(handle: IO[str]) -> Iterator[tuple[str, str, Any]]:
    """The one-record-per-line layout after its first line, checked as it goes. A key given twice
    counts as another layout: JSON readers keep its last value, and the whole-file parse does too."""
    keys: set[str] = set()
    for line in handle:
        if not line.startswith('  "'):
            raise _NotLineLayout()
        try:
            key, end = _decoder.raw_decode(line, 2)
        except ValueError:
            raise _NotLineLayout() from None
        if not line.startswith(": ", end) or key in keys:
            raise _NotLineLayout()
        keys.add(key)
        text = line[end + 2:].rstrip("\n")
        last = not text.endswith(",")
        text = text if last else text[:-1]
        if text == "[":
            yield ("list_start", key, None)
            for item in handle:
                stripped = item.rstrip("\n")
                if stripped in ("  ]", "  ],"):
                    last = stripped == "  ]"
                    break
                if not stripped.startswith("    "):
                    raise _NotLineLayout()
                text = stripped[4:]
                yield ("item", key, _checked(text[:-1] if text.endswith(",") else text))
            else:
                raise _NotLineLayout()
            yield ("list_end", key, None)
        else:
            yield ("value", key, _checked(text))
        if last:
            if handle.readline().rstrip("\n") != "}" or handle.read().strip():
                raise _NotLineLayout()
            return
    raise _NotLineLayout()


def _checked(text: str) -> "_Raw":
    raw = _Raw(text)
    try:
        raw.value = json.loads(text)
    except ValueError:
        raise _NotLineLayout() from None
    return raw


def _events_of(content: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    for key, value in content.items():
        if isinstance(value, list) and value:
            yield ("list_start", key, None)
            for item in value:
                yield ("item", key, item)
            yield ("list_end", key, None)
        else:
            yield ("value", key, value)


def _parse_whole(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{MANIFEST_NAME} is not valid JSON (line {exc.lineno}); fix or move it, nothing was overwritten"
        ) from None
    if not isinstance(data, dict):
        raise ManifestError(f"{MANIFEST_NAME} does not hold a JSON object; fix or move it, nothing was overwritten")
    for key in (RECORDS_KEY, FULL_BAND_KEY):
        if not isinstance(data.get(key, []), list):
            raise ManifestError(f"'{key}' in {MANIFEST_NAME} is not a list; fix or move it, nothing was overwritten")
    return data


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
